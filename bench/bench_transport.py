"""HTTP transport benchmark: asynclm's transports against raw aiohttp, httpx2 and httpx.

N POSTs of a ~1 KB chat-completion request to a loopback server (a separate process) that
answers each with a ~1 KB chat-completion JSON after a fixed latency. Each row runs in its own
client process; "CPU ms/call" is that process's ``time.process_time()`` over the timed run,
divided by N. A warm-up round (one call per connection) runs first, untimed, so every client is
measured with its pool already open.

    python bench/bench_transport.py                      # full table, c=64 and c=256
    python bench/bench_transport.py --clients http11-asyncio,aiohttp --concurrency 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

REQUEST = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 12},
            {
                "role": "user",
                "content": "Summarise the following text in one sentence. " + "lorem ipsum " * 45,
            },
        ],
        "temperature": 0.0,
        "max_tokens": 256,
    }
).encode()

RESPONSE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A summary sentence. " * 35},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 250, "completion_tokens": 140, "total_tokens": 390},
    }
).encode()

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}

CLIENTS = ["http11-asyncio", "http11-trio", "aiohttp-adapter", "aiohttp", "httpx2", "httpx"]


# -- the server (separate process) ------------------------------------------------------------


class _ServerProtocol(asyncio.Protocol):
    """Answers every POST with RESPONSE after ``delay`` seconds; HTTP/1.1 keep-alive."""

    delay = 0.05
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(RESPONSE)).encode()
        + b"\r\n\r\n"
        + RESPONSE
    )

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            idx = self.buf.find(b"\r\n\r\n")
            if idx < 0:
                return
            head = self.buf[:idx].lower()
            length = 0
            pos = head.find(b"content-length:")
            if pos >= 0:
                length = int(head[pos + 15 :].split(b"\r\n", 1)[0])
            end = idx + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            loop.call_later(self.delay, self._answer)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.reply)


def serve(delay: float) -> None:
    _ServerProtocol.delay = delay

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ServerProtocol, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# -- the clients ------------------------------------------------------------------------------


async def _drive(post: Any, n: int, concurrency: int) -> None:
    import anyio

    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await post()
            if status != 200:
                raise RuntimeError(f"status {status}")

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def _measure(post: Any, n: int, concurrency: int) -> dict[str, float]:
    await _drive(post, concurrency, concurrency)  # warm-up: open the pool
    cpu0, t0 = time.process_time(), time.perf_counter()
    await _drive(post, n, concurrency)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"calls_per_s": n / wall, "cpu_ms_per_call": 1000 * cpu / n}


async def _run_asynclm(kind: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    from asynclm.lm._transports import AiohttpTransport, HTTP11Transport, Transport

    transport: Transport = HTTP11Transport() if kind == "http11" else AiohttpTransport()

    async def post() -> int:
        return (await transport.post(url, REQUEST, HEADERS)).status

    try:
        return await _measure(post, n, concurrency)
    finally:
        await transport.aclose()


async def _run_aiohttp(url: str, n: int, concurrency: int) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post() -> int:
            async with session.post(url, data=REQUEST, headers=HEADERS) as r:
                await r.read()
                return r.status

        return await _measure(post, n, concurrency)


async def _run_httpx(module: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    httpx: Any = __import__(module)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def post() -> int:
            r = await client.post(url, content=REQUEST, headers=HEADERS)
            return int(r.status_code)

        return await _measure(post, n, concurrency)


def run_client(name: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    import anyio

    if name == "http11-asyncio":
        return anyio.run(_run_asynclm, "http11", url, n, concurrency, backend="asyncio")
    if name == "http11-trio":
        return anyio.run(_run_asynclm, "http11", url, n, concurrency, backend="trio")
    if name == "aiohttp-adapter":
        return anyio.run(_run_asynclm, "aiohttp", url, n, concurrency, backend="asyncio")
    if name == "aiohttp":
        return anyio.run(_run_aiohttp, url, n, concurrency, backend="asyncio")
    if name in ("httpx", "httpx2"):
        return anyio.run(_run_httpx, name, url, n, concurrency, backend="asyncio")
    raise SystemExit(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")


# -- the driver -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="timed calls per row (default 2000)")
    parser.add_argument("--concurrency", default="64,256", help="comma-separated (default 64,256)")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the median is shown")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset")
    parser.add_argument(
        "--server",
        choices=["raw", "fake"],
        default="raw",
        help="raw: a minimal asyncio server replying a fixed body (default; least server CPU); "
        "fake: asynclm.testing.FakeOpenAIServer in a separate process",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve(args.latency)
        return
    if args.client:
        print(json.dumps(run_client(args.client, args.url, args.n, int(args.concurrency))))
        return

    server: Any
    if args.server == "fake":
        from asynclm.testing import FakeOpenAIServer

        server = FakeOpenAIServer.spawn(latency=args.latency, text="A summary sentence. " * 35)
        url = server.base_url + "/chat/completions"
    else:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--latency", str(args.latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1/chat/completions"
    try:
        clients = args.clients.split(",")
        print(
            f"{args.n} POSTs, ~{len(REQUEST)} B request / {len(RESPONSE)} B response, "
            f"server latency {1000 * args.latency:g} ms ({args.server} server), {os.cpu_count()} CPUs"
        )
        for c in (int(x) for x in args.concurrency.split(",")):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in clients}
            for _ in range(args.repeat):  # interleaved, so background load hits every client alike
                for name in clients:
                    cmd = [sys.executable, __file__, "--client", name, "--url", url]
                    cmd += ["--n", str(args.n), "--concurrency", str(c)]
                    out = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    if out.returncode:
                        print(f"  {name}: FAILED\n{out.stderr[-2000:]}")
                        continue
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            rows = {
                name: {k: statistics.median(r[k] for r in results) for k in results[0]}
                for name, results in runs.items()
                if results
            }
            base = rows.get("aiohttp", {}).get("calls_per_s")
            ideal = c / args.latency
            print(f"\nconcurrency {c} (ideal {ideal:.0f} calls/s; median of {args.repeat})")
            print(f"  {'client':<16} {'calls/s':>9} {'CPU ms/call':>12} {'vs aiohttp':>11}")
            for name, r in rows.items():
                ratio = f"{r['calls_per_s'] / base:.2f}x" if base else "-"
                print(f"  {name:<16} {r['calls_per_s']:>9.0f} {r['cpu_ms_per_call']:>12.3f} {ratio:>11}")
    finally:
        if args.server == "fake":
            server.stop()
        else:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
