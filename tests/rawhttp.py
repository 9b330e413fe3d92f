"""A raw HTTP/1.1 server on 127.0.0.1 for the transport tests: it answers with exactly the bytes a
test gives, so framing and faults are what the test says. It runs its own asyncio loop in a thread,
so the same tests run with the client on asyncio and on trio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    conn_id: int
    index_on_conn: int


Handler = Callable[["RawServer", Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def reply(body: bytes = b'{"ok": true}', status: str = "200 OK", headers: dict[str, str] | None = None) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


def chunked(*parts: bytes, head: str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") -> bytes:
    return head.encode() + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def ok(server: RawServer, req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    w.write(reply(json.dumps({"echo": req.body.decode(), "path": req.path}).encode()))
    return True


def static(data: bytes, keep: bool = True) -> Handler:
    async def handler(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(data)
        return keep

    return handler


async def hang(server: RawServer, req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    """Never answer; record the client's disconnect."""
    server.waiting.set()
    if not await r.read(1):
        server.disconnects += 1
        server.disconnected.set()
    return False


@dataclass
class RawServer:
    routes: dict[str, Handler] = field(default_factory=dict)
    connections: int = 0
    disconnects: int = 0
    requests: list[Request] = field(default_factory=list)
    waiting: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    closed_conns: int = 0
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    # path -> bytes answered right after the request's head, before its body is read; then the
    # connection is closed with the body unread (the peer sees a reset), as a gateway does
    before_body: dict[str, bytes] = field(default_factory=dict)
    bind: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                early = self.before_body.get(path.split("?")[0])
                if early is not None:
                    self.requests.append(Request(method, path, headers, b"", conn_id, index))
                    writer.write(early)
                    await writer.drain()
                    writer.transport.abort()  # unread body: a reset, as the kernel does on close
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(method, path, headers, body, conn_id, index)
                index += 1
                self.requests.append(req)
                handler = self.routes.get(path.split("?")[0], ok)
                keep = await handler(self, req, reader, writer)
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()
            # Counted once the socket is really closed (the FIN sent), not when close() is
            # scheduled: tests check the client's view right after this count changes.
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.closed_conns += 1

    def __enter__(self) -> RawServer:
        started = threading.Event()

        def run() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                server = await asyncio.start_server(self._handle, self.bind, 0, ssl=self.ssl_context)
                self.port = server.sockets[0].getsockname()[1]
                self._stop = asyncio.Event()
                started.set()
                async with server:
                    await self._stop.wait()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not pred():  # the condition is set by the server thread
            await anyio.sleep(0.01)


