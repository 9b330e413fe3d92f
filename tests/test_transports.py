"""The HTTP transports, against a real HTTP server on 127.0.0.1 (raw bytes, so framing and faults
are exactly what each test says). The server runs its own asyncio loop in a thread, so the same
tests run with the client on asyncio and on trio."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from asynclm.lm._transports import (
    AiohttpTransport,
    DeadlineExceeded,
    HTTP11Transport,
    HttpxTransport,
    Response,
    TransportError,
    TransportTimeout,
    default_transport,
    get_transport,
    transport_factory,
)
from asynclm.lm._transports._asyncio_conn import ProtocolConnection, SocketConnection

from .rawhttp import RawServer, Request, chunked, eventually, hang, reply, static


@pytest.fixture
def server() -> Iterator[RawServer]:
    with RawServer() as s:
        yield s


HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}


# -- plain requests ---------------------------------------------------------------------------


async def test_post_round_trip_and_request_framing(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/v1/chat?x=1", b'{"a": 1}', {**HEADERS, "X-Custom": "yes"})
    finally:
        await t.aclose()
    assert isinstance(resp, Response)
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.body) == {"echo": '{"a": 1}', "path": "/v1/chat?x=1"}
    req = server.requests[0]
    assert req.method == "POST"
    assert req.headers["host"] == f"127.0.0.1:{server.port}"
    assert req.headers["content-length"] == "8"
    assert req.headers["x-custom"] == "yes"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["user-agent"].startswith("asynclm/")


async def test_caller_cannot_override_framing_headers(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        await t.post(server.url, b"abc", {"Content-Length": "999", "Transfer-Encoding": "chunked"})
        resp = await t.post(server.url, b"de", {})  # the connection is still in sync
    finally:
        await t.aclose()
    assert server.requests[0].headers["content-length"] == "3"
    assert "transfer-encoding" not in server.requests[0].headers
    assert json.loads(resp.body)["echo"] == "de"
    assert server.connections == 1


async def test_keep_alive_reuses_one_connection(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        for i in range(10):
            resp = await t.post(server.url, str(i).encode(), HEADERS)
            assert json.loads(resp.body)["echo"] == str(i)
    finally:
        await t.aclose()
    assert server.connections == 1
    assert [r.index_on_conn for r in server.requests] == list(range(10))


async def test_concurrent_requests_each_get_their_own_response(server: RawServer) -> None:
    async def slow(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        w.write(reply(req.body))
        return True

    server.routes["/slow"] = slow
    t = HTTP11Transport()
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = (await t.post(server.url + "/slow", str(i).encode(), HEADERS)).body

    try:
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        first_wave = server.connections
        async with anyio.create_task_group() as tg:
            for i in range(30, 60):
                tg.start_soon(one, i)
    finally:
        await t.aclose()
    assert results == {i: str(i).encode() for i in range(60)}
    assert first_wave == 30
    assert server.connections == 30  # the second wave reused the pool


async def test_chunked_body_with_extensions_and_trailers(server: RawServer) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server.routes["/c"] = static(raw)
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/c", b"", {})
        again = await t.post(server.url + "/c", b"", {})
    finally:
        await t.aclose()
    assert resp.body == b"hello 0123456789" == again.body
    assert server.connections == 1


async def test_body_until_close_is_read_and_connection_not_reused(server: RawServer) -> None:
    server.routes["/eof"] = static(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000, keep=False)
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/eof", b"", {})
        resp2 = await t.post(server.url + "/eof", b"", {})
    finally:
        await t.aclose()
    assert resp.body == b"x" * 100_000 == resp2.body
    assert server.connections == 2


async def test_connection_close_header_is_honoured(server: RawServer) -> None:
    server.routes["/close"] = static(reply(b"bye", headers={"Connection": "close"}))
    t = HTTP11Transport()
    try:
        assert (await t.post(server.url + "/close", b"", {})).body == b"bye"
        assert (await t.post(server.url + "/close", b"", {})).body == b"bye"
    finally:
        await t.aclose()
    assert server.connections == 2


async def test_large_content_length_body_over_many_reads(server: RawServer) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    server.routes["/big"] = static(reply(big))
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/big", b"q" * 300_000, {})
    finally:
        await t.aclose()
    assert resp.body == big
    assert len(server.requests[0].body) == 300_000


async def test_gzip_body_is_decoded(server: RawServer) -> None:
    payload = b'{"text": "' + b"abc" * 1000 + b'"}'
    server.routes["/gz"] = static(reply(gzip.compress(payload), headers={"Content-Encoding": "gzip"}))
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/gz", b"", {})
    finally:
        await t.aclose()
    assert resp.body == payload


async def test_gzip_streamed_body_is_decoded(server: RawServer) -> None:
    payload = b"data: " + b"xyz" * 5000 + b"\n\n"
    packed = gzip.compress(payload)
    half = len(packed) // 2
    raw = chunked(
        packed[:half],
        packed[half:],
        head="HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    server.routes["/gz"] = static(raw)
    t = HTTP11Transport()
    try:
        async with await t.post_stream(server.url + "/gz", b"", {}) as resp:
            assert await resp.aread() == payload
    finally:
        await t.aclose()


async def test_interim_1xx_and_bodyless_204(server: RawServer) -> None:
    server.routes["/early"] = static(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + reply(b"final"))
    server.routes["/empty"] = static(b"HTTP/1.1 204 No Content\r\n\r\n")
    t = HTTP11Transport()
    try:
        early = await t.post(server.url + "/early", b"", {})
        empty = await t.post(server.url + "/empty", b"", {})
        after = await t.post(server.url + "/", b"z", {})
    finally:
        await t.aclose()
    assert (early.status, early.body) == (200, b"final")
    assert (empty.status, empty.body) == (204, b"")
    assert json.loads(after.body)["echo"] == "z"
    assert server.connections == 1


async def test_error_statuses_are_responses_not_errors(server: RawServer) -> None:
    server.routes["/429"] = static(reply(b'{"error": "slow down"}', "429 Too Many Requests", {"Retry-After": "2"}))
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/429", b"", {})
    finally:
        await t.aclose()
    assert resp.status == 429
    assert resp.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["status", "garbage", "content-length", "header", "chunk-size"],
)
async def test_malformed_responses_raise_transport_error(server: RawServer, raw: bytes, anyio_backend: str) -> None:
    server.routes["/bad"] = static(raw, keep=False)
    t = HTTP11Transport()
    try:
        with pytest.raises(TransportError, match=r"malformed|conflicting"):
            await t.post(server.url + "/bad", b"", {})
        assert (await t.post(server.url + "/", b"", {})).status == 200
    finally:
        await t.aclose()


async def test_truncated_body_raises(server: RawServer) -> None:
    server.routes["/cut"] = static(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", keep=False)
    t = HTTP11Transport()
    try:
        with pytest.raises(TransportError, match="closed the connection before the response was complete"):
            await t.post(server.url + "/cut", b"", {})
    finally:
        await t.aclose()
    assert len(server.requests) == 1  # a partly received response is never retried


# -- the connection cap ------------------------------------------------------------------------


async def test_max_connections_caps_open_connections(server: RawServer) -> None:
    in_flight = max_in_flight = 0

    async def slow(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        w.write(reply(req.body))
        return True

    server.routes["/slow"] = slow
    t = HTTP11Transport(max_connections=4)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = (await t.post(server.url + "/slow", str(i).encode(), {})).body

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    finally:
        await t.aclose()
    assert results == {i: str(i).encode() for i in range(40)}
    assert server.connections == 4
    assert max_in_flight == 4


async def test_max_connections_waiter_cancelled_does_not_lose_the_slot(server: RawServer) -> None:
    release = threading.Event()

    async def gated(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        await asyncio.to_thread(release.wait, 5)
        w.write(reply(b"done"))
        return True

    server.routes["/gated"] = gated
    t = HTTP11Transport(max_connections=1)
    done: list[str] = []

    async def call(name: str, path: str) -> None:
        await t.post(server.url + path, b"", {})
        done.append(name)

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "holder", "/gated")
                await eventually(lambda: len(server.requests) == 1)
                with anyio.CancelScope() as waiter_scope:
                    tg.start_soon(call, "third", "/")
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(call, "cancelled", "/")
                        await anyio.sleep(0.05)
                        assert len(t._slot_waiters) == 2
                        inner.cancel_scope.cancel()
                assert not waiter_scope.cancel_called
                assert len(t._slot_waiters) == 1
                release.set()
    finally:
        await t.aclose()
    assert done == ["holder", "third"]
    assert server.connections == 1  # "third" reused the holder's connection


async def test_max_connections_closes_idle_connections_to_other_origins(server: RawServer) -> None:
    t = HTTP11Transport(max_connections=1)
    try:
        with RawServer() as other:
            assert (await t.post(server.url, b"a", {})).status == 200
            assert (await t.post(other.url, b"b", {})).status == 200  # evicts the idle one to `server`
            assert (await t.post(server.url, b"c", {})).status == 200
            assert (server.connections, other.connections) == (2, 1)
            await eventually(lambda: server.closed_conns == 1 and other.closed_conns == 1)
            assert t._open == 1
    finally:
        await t.aclose()


# -- stale keep-alive connections -------------------------------------------------------------


async def test_idle_connection_closed_by_server_is_detected(server: RawServer) -> None:
    server.routes["/once"] = static(reply(b"1"), keep=False)  # answers, then closes (no Connection: close)
    t = HTTP11Transport()
    try:
        assert (await t.post(server.url + "/once", b"", {})).body == b"1"
        (conn,) = t._idle[("http", "127.0.0.1", server.port)]
        await eventually(lambda: server.closed_conns == 1)
        assert not conn.looks_alive()
        assert (await t.post(server.url + "/", b"", {})).status == 200
        (conn,) = t._idle[("http", "127.0.0.1", server.port)]
        assert conn.looks_alive()
    finally:
        await t.aclose()
    assert server.connections == 2
    assert len(server.requests) == 2  # no failed attempt on the dead connection


async def test_idle_connections_expire(server: RawServer) -> None:
    server.routes["/ka"] = static(reply(b"k", headers={"Keep-Alive": "timeout=1"}))
    t = HTTP11Transport()
    try:
        await t.post(server.url, b"", {})
        await t.post(server.url, b"", {})
        assert server.connections == 1
        t.keepalive_expiry = 0.05  # applies from the next release
        await t.post(server.url, b"", {})
        await anyio.sleep(0.2)
        t.keepalive_expiry = 30
        await t.post(server.url + "/ka", b"", {})
        assert server.connections == 2
        await anyio.sleep(0.6)  # Keep-Alive: timeout=1 -> kept 0.5 s at most, despite 30
        await t.post(server.url, b"", {})
        assert server.connections == 3
    finally:
        await t.aclose()


async def test_a_request_the_server_received_is_never_re_sent(server: RawServer) -> None:
    """Audit defect 2: a reused connection closed after the server read the whole request (the
    race a keep-alive timeout causes, or a crash mid-generation) must not be replayed by the
    transport — the server may have acted on it. The error says where it failed."""

    async def drop_on_reuse(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        if req.index_on_conn == 0:
            w.write(reply(b"first"))
            return True
        return False  # request read in full, connection closed, no response

    server.routes["/r"] = drop_on_reuse
    t = HTTP11Transport()
    try:
        assert (await t.post(server.url + "/r", b"{}", {})).body == b"first"
        with pytest.raises(TransportError, match="closed the connection before the response") as info:
            await t.post(server.url + "/r", b"{}", {})
        assert info.value.phase == "receive"
        assert server.url + "/r" in str(info.value)
    finally:
        await t.aclose()
    assert server.connections == 1
    assert [(r.conn_id, r.index_on_conn) for r in server.requests] == [(1, 0), (1, 1)]


async def test_fresh_connection_dropped_is_not_retried(server: RawServer) -> None:
    server.routes["/drop"] = static(b"", keep=False)
    t = HTTP11Transport()
    try:
        with pytest.raises(TransportError, match="closed the connection"):
            await t.post(server.url + "/drop", b"", {})
    finally:
        await t.aclose()
    assert len(server.requests) == 1


# -- cancellation and timeouts ----------------------------------------------------------------


async def test_cancelling_the_caller_closes_the_connection(server: RawServer) -> None:
    server.routes["/hang"] = hang
    t = HTTP11Transport()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(t.post, server.url + "/hang", b"", {})
            await eventually(server.waiting.is_set)
            tg.cancel_scope.cancel()
        await eventually(server.disconnected.is_set)
        assert (await t.post(server.url + "/", b"ok", {})).status == 200
    finally:
        await t.aclose()
    assert server.disconnects == 1
    assert server.connections == 2  # the cancelled connection never went back to the pool


async def test_read_timeout_raises_transport_timeout_and_closes(server: RawServer) -> None:
    server.routes["/hang"] = hang
    t = HTTP11Transport()
    try:
        with anyio.fail_after(5):
            with pytest.raises(TransportTimeout, match="read timeout") as info:
                await t.post(server.url + "/hang", b"", {}, timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        await eventually(server.disconnected.is_set)
    finally:
        await t.aclose()


async def test_default_read_timeout_is_per_read_not_total(server: RawServer) -> None:
    async def trickle(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            w.write(b"1\r\n.\r\n")
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    server.routes["/trickle"] = trickle
    t = HTTP11Transport(read_timeout=0.4)
    try:
        resp = await t.post(server.url + "/trickle", b"", {})  # 0.6 s in total, each read < 0.4 s
    finally:
        await t.aclose()
    assert resp.body == b"......"


@contextlib.contextmanager
def port_that_never_accepts() -> Iterator[int]:
    """A listening port whose accept queue is full: new connections hang in the SYN stage (Linux
    drops SYNs to a full queue)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
async def test_connect_timeout_raises_transport_timeout() -> None:
    with port_that_never_accepts() as port:
        t = HTTP11Transport(connect_timeout=0.3)
        try:
            with anyio.fail_after(5), pytest.raises(TransportTimeout, match=r"connect timed out after 0.3 s") as info:
                await t.post(f"http://127.0.0.1:{port}/", b"", {})
            assert info.value.phase == "connect"
        finally:
            await t.aclose()


async def test_connection_refused_is_transport_error_without_the_query() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    t = HTTP11Transport()
    try:
        with pytest.raises(TransportError) as info:
            await t.post(f"http://127.0.0.1:{port}/v1?key=SECRET", b"", {})
    finally:
        await t.aclose()
    assert not isinstance(info.value, TransportTimeout)
    assert info.value.phase == "connect"
    assert str(info.value) == f"http://127.0.0.1:{port}/v1: connect failed: Connection refused"
    assert "SECRET" not in str(info.value)


# -- the caller's deadline (post(..., deadline=)) ------------------------------------------------


async def test_deadline_raises_deadline_exceeded_and_closes_the_connection(server: RawServer) -> None:
    server.routes["/hang"] = hang
    t = HTTP11Transport()
    try:
        start = anyio.current_time()
        with anyio.fail_after(5), pytest.raises(DeadlineExceeded, match="deadline") as info:
            await t.post(server.url + "/hang", b"", {}, deadline=start + 0.3)
        assert anyio.current_time() - start >= 0.29
        assert isinstance(info.value, TransportTimeout) and isinstance(info.value, TimeoutError)
        await eventually(server.disconnected.is_set)  # the request was abandoned, not left open
        assert (await t.post(server.url + "/", b"again", {}, deadline=anyio.current_time() + 5)).status == 200
    finally:
        await t.aclose()
    assert server.connections == 2


async def test_deadline_is_disarmed_once_the_response_is_read(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        resp = await t.post(server.url + "/", b"1", {}, deadline=anyio.current_time() + 0.2)
        assert resp.status == 200
        await anyio.sleep(0.4)  # past that deadline, with the connection idle in the pool
        resp = await t.post(server.url + "/", b"2", {}, deadline=anyio.current_time() + 5)
        assert json.loads(resp.body)["echo"] == "2"
    finally:
        await t.aclose()
    assert server.connections == 1  # the pooled connection survived its first request's deadline


async def test_deadline_covers_waiting_for_a_connection_slot(server: RawServer) -> None:
    server.routes["/hang"] = hang
    t = HTTP11Transport(max_connections=1)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(t.post, server.url + "/hang", b"", {})
            await eventually(server.waiting.is_set)
            with anyio.fail_after(5), pytest.raises(DeadlineExceeded, match="deadline"):
                await t.post(server.url + "/", b"", {}, deadline=anyio.current_time() + 0.2)
            tg.cancel_scope.cancel()
        # neither the cancelled request nor the timed-out waiter kept the only slot
        assert (await t.post(server.url + "/", b"ok", {}, deadline=anyio.current_time() + 5)).status == 200
    finally:
        await t.aclose()


async def test_deadline_and_read_timeout_each_raise_their_own_error(server: RawServer) -> None:
    server.routes["/hang"] = hang
    t = HTTP11Transport(read_timeout=5)
    try:
        with anyio.fail_after(5):
            with pytest.raises(DeadlineExceeded):
                await t.post(server.url + "/hang", b"", {}, deadline=anyio.current_time() + 0.2)
            with pytest.raises(TransportTimeout, match="read timeout") as info:
                await t.post(server.url + "/hang", b"", {}, timeout=0.2, deadline=anyio.current_time() + 5)
        assert not isinstance(info.value, DeadlineExceeded)
    finally:
        await t.aclose()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
async def test_deadline_bounds_connecting() -> None:
    with port_that_never_accepts() as port:
        t = HTTP11Transport(connect_timeout=30)
        try:
            with anyio.fail_after(5), pytest.raises(DeadlineExceeded, match="deadline"):
                await t.post(f"http://127.0.0.1:{port}/", b"", {}, deadline=anyio.current_time() + 0.3)
        finally:
            await t.aclose()


async def test_deadline_during_a_stalled_upload(anyio_backend: str) -> None:
    """A server that accepts but never reads: the request body fills the socket buffers and the
    send waits — the deadline still ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t = HTTP11Transport()
        try:
            with anyio.fail_after(10), pytest.raises(DeadlineExceeded):
                await t.post(f"http://127.0.0.1:{port}/", b"x" * 32_000_000, {}, deadline=anyio.current_time() + 0.5)
        finally:
            await t.aclose()


async def test_reset_mid_response_is_a_transport_error(server: RawServer) -> None:
    async def reset(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()
        await asyncio.sleep(0.05)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        w.transport.abort()  # RST, not FIN
        return False

    server.routes["/reset"] = reset
    t = HTTP11Transport()
    try:
        with anyio.fail_after(5), pytest.raises(TransportError) as info:
            await t.post(server.url + "/reset", b"", {})
        assert not isinstance(info.value, TransportTimeout)
        assert (await t.post(server.url + "/", b"", {})).status == 200  # a fresh connection
    finally:
        await t.aclose()


async def test_host_name_with_one_address(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        resp = await t.post(f"http://localhost:{server.port}/", b"named", {})
    finally:
        await t.aclose()
    assert json.loads(resp.body)["echo"] == "named"


async def test_a_pooled_connection_keeps_nothing_of_the_call_that_opened_it(server: RawServer) -> None:
    """Context variables set by the call that opened a connection (call ids, usage trackers,
    settings overrides) are not kept alive by the connection once it idles in the pool."""
    import contextvars
    import gc
    import weakref

    class Payload:
        pass

    var: contextvars.ContextVar[Payload | None] = contextvars.ContextVar("test_payload", default=None)
    t = HTTP11Transport()
    ref: weakref.ref[Payload] | None = None

    async def call() -> None:
        nonlocal ref
        payload = Payload()
        ref = weakref.ref(payload)
        var.set(payload)
        assert (await t.post(server.url + "/", b"", {}, deadline=anyio.current_time() + 5)).status == 200

    try:
        async with anyio.create_task_group() as tg:  # a task: its context ends with it
            tg.start_soon(call)
        gc.collect()
        assert ref is not None and ref() is None
        assert [c for idle in t._idle.values() for c in idle]  # the connection is still pooled
    finally:
        await t.aclose()


# -- the asyncio connection kinds ---------------------------------------------------------------
# (asyncio only: on trio the transport uses anyio streams, tested by everything above)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_plain_http_is_a_socket_connection_and_https_a_protocol_one(
    server: RawServer, tls_server: tuple[RawServer, ssl.SSLContext]
) -> None:
    plain = HTTP11Transport()
    tls_srv, client_ctx = tls_server
    tls = HTTP11Transport(ssl_context=client_ctx)
    try:
        assert (await plain.post(server.url + "/", b"", {})).status == 200
        assert (await tls.post(tls_srv.url + "/", b"", {})).status == 200
        (plain_conn,) = [c for idle in plain._idle.values() for c in idle]
        (tls_conn,) = [c for idle in tls._idle.values() for c in idle]
    finally:
        await plain.aclose()
        await tls.aclose()
    assert isinstance(plain_conn, SocketConnection)
    assert isinstance(tls_conn, ProtocolConnection)
    assert plain_conn._sock is None  # closed with the transport: socket unregistered and closed


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_deadline_that_passed_after_the_last_read_does_not_follow_the_connection() -> None:
    """The timer can fire after a response's last byte was read but before ``disarm``; the pooled
    connection must not carry that into its next request (which may have no deadline at all)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    conn = SocketConnection(loop, ("http", "x", 0), ours)
    try:
        conn.arm(loop.time())  # due now
        await asyncio.sleep(0.01)  # ...and fired
        conn.disarm()
        theirs.sendall(b"next response")
        with anyio.fail_after(5):
            await conn.fill(None, None)
        assert bytes(conn.buf) == b"next response"
    finally:
        conn.close()
        theirs.close()


@pytest.mark.parametrize("first", ["refused", "unroutable", "all refused"])
async def test_a_host_with_several_addresses_races_them(
    server: RawServer, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A name resolving to several addresses: a refused or silent first address does not stop the
    connection (Happy Eyeballs, 250 ms apart); when every address fails, the error names them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    bad = ("127.0.0.1", refused_port) if first != "unroutable" else ("10.255.255.1", server.port)
    good = ("127.0.0.1", server.port) if first != "all refused" else bad

    async def getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        assert host == "api.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", bad), (socket.AF_INET, socket.SOCK_STREAM, 6, "", good)]

    monkeypatch.setattr(anyio, "getaddrinfo", getaddrinfo)
    t = HTTP11Transport()
    try:
        with anyio.fail_after(5):
            if first == "all refused":
                with pytest.raises(TransportError, match=r"connect failed: 127\.0\.0\.1: Connection refused; 127"):
                    await t.post(f"http://api.example:{server.port}/", b"x", {})
                return
            resp = await t.post(f"http://api.example:{server.port}/", b"x", {})
    finally:
        await t.aclose()
    assert json.loads(resp.body)["echo"] == "x"
    assert server.connections == 1


# -- streaming --------------------------------------------------------------------------------


async def test_stream_returns_after_headers_and_yields_chunks(server: RawServer) -> None:
    go = threading.Event()

    async def sse(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await asyncio.to_thread(go.wait, 5)
        for i in range(3):
            event = f"data: {i}\n\n".encode()
            w.write(b"%x\r\n%s\r\n" % (len(event), event))
            await w.drain()
            await asyncio.sleep(0.02)
        w.write(b"0\r\n\r\n")
        return True

    server.routes["/sse"] = sse
    t = HTTP11Transport()
    try:
        with anyio.fail_after(5):
            resp = await t.post_stream(server.url + "/sse", b"", {})  # the body has not started yet
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream"
        go.set()
        chunks = [c async for c in resp.aiter_bytes()]
        await resp.aclose()
        assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(chunks) >= 2  # delivered as they arrived, not buffered to the end
        assert (await t.post(server.url + "/", b"", {})).status == 200
    finally:
        await t.aclose()
    assert server.connections == 1  # fully read: the connection went back to the pool


async def test_stream_content_length_body_and_aread(server: RawServer) -> None:
    server.routes["/cl"] = static(reply(b"x" * 200_000))
    t = HTTP11Transport()
    try:
        async with await t.post_stream(server.url + "/cl", b"", {}) as resp:
            assert await resp.aread() == b"x" * 200_000
        assert (await t.post(server.url + "/", b"", {})).status == 200
    finally:
        await t.aclose()
    assert server.connections == 1


async def test_stream_aclose_mid_body_closes_the_connection(server: RawServer) -> None:
    async def endless(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        return await hang(server, req, r, w)

    server.routes["/endless"] = endless
    t = HTTP11Transport()
    try:
        resp = await t.post_stream(server.url + "/endless", b"", {})
        async for chunk in resp.aiter_bytes():
            assert chunk == b"first"
            break
        await resp.aclose()
        await eventually(server.disconnected.is_set)
        assert (await t.post(server.url + "/", b"", {})).status == 200
    finally:
        await t.aclose()
    assert server.connections == 2


async def test_stream_read_timeout_and_cancellation(server: RawServer) -> None:
    async def stalls(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        return await hang(server, req, r, w)

    server.routes["/stalls"] = stalls
    t = HTTP11Transport()
    try:
        resp = await t.post_stream(server.url + "/stalls", b"", {}, timeout=0.2)
        with anyio.fail_after(5), pytest.raises(TransportTimeout):
            async for _ in resp.aiter_bytes():
                pass
        await eventually(server.disconnected.is_set)
        server.disconnected.clear()

        resp = await t.post_stream(server.url + "/stalls", b"", {})
        with anyio.move_on_after(0.2):
            async for _ in resp.aiter_bytes():
                pass
        await eventually(server.disconnected.is_set)
        assert [c async for c in resp.aiter_bytes()] == []  # closed, nothing more
    finally:
        await t.aclose()
    assert server.disconnects == 2


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "headers", "match"),
    [
        ("ftp://127.0.0.1/x", {}, "unsupported URL scheme"),
        ("http://user:pw@127.0.0.1/x", {}, "credentials"),
        ("http:///x", {}, "no host"),
        ("http://127.0.0.1/x", {"X-Bad": "a\r\nInjected: 1"}, "'X-Bad' contains the control character '\\\\r'"),
        ("http://127.0.0.1/x", {"X-Bad": "a\x01"}, "control character"),
        ("http://127.0.0.1/x", {"X-Bad": "a\x7f"}, "control character"),
        ("http://127.0.0.1/x\r\nX: y", {}, "control character"),
        ("http://127.0.0.1/x\x00", {}, "control character"),
        ("http://127.0.0.1/x", {"Bad Name": "a"}, "invalid HTTP header"),
        ("http://127.0.0.1/x", {"X-Text": "emoji 🙂"}, "latin-1"),
    ],
)
async def test_invalid_requests_raise_value_error(
    url: str, headers: dict[str, str], match: str, anyio_backend: str
) -> None:
    t = HTTP11Transport()
    try:
        with pytest.raises(ValueError, match=match):
            await t.post(url, b"", headers)
    finally:
        await t.aclose()


async def test_non_text_header_value_is_a_type_error() -> None:
    t = HTTP11Transport()
    with pytest.raises(TypeError, match="'X-N' must be a str"):
        await t.post("http://127.0.0.1:1/", b"", {"X-N": 3})  # type: ignore[dict-item]


async def test_closed_transport_refuses_requests(server: RawServer) -> None:
    t = HTTP11Transport()
    await t.post(server.url, b"", {})
    await t.aclose()
    with pytest.raises(TransportError, match="closed"):
        await t.post(server.url, b"", {})
    await eventually(lambda: server.closed_conns == 1)  # aclose closed the idle connection


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture
def tls_server() -> Iterator[tuple[RawServer, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with RawServer(ssl_context=server_ctx) as s:
        yield s, client_ctx


async def test_https_with_custom_ca(tls_server: tuple[RawServer, ssl.SSLContext]) -> None:
    server, client_ctx = tls_server
    t = HTTP11Transport(ssl_context=client_ctx)
    try:
        for i in range(3):
            assert json.loads((await t.post(server.url, str(i).encode(), {})).body)["echo"] == str(i)
        async with await t.post_stream(server.url, b"s", {}) as resp:
            assert json.loads(await resp.aread())["echo"] == "s"
    finally:
        await t.aclose()
    assert server.connections == 1


async def test_https_untrusted_certificate_is_transport_error(
    tls_server: tuple[RawServer, ssl.SSLContext],
) -> None:
    server, _ = tls_server
    t = HTTP11Transport()  # the system's trust store: the test CA is unknown
    try:
        with pytest.raises(TransportError, match="TLS handshake failed: certificate verification failed") as info:
            await t.post(server.url, b"", {})
        assert info.value.phase == "TLS handshake"
    finally:
        await t.aclose()


# -- one transport per loop -------------------------------------------------------------------


def test_get_transport_is_per_loop_and_closed_with_it(server: RawServer) -> None:
    seen: list[Any] = []

    async def use() -> None:
        t = get_transport()
        assert get_transport() is t
        assert (await t.post(server.url, b"", {})).status == 200
        seen.append(t)

    anyio.run(use, backend="asyncio")
    anyio.run(use, backend="trio")
    anyio.run(use, backend="asyncio")
    assert len({id(t) for t in seen}) == 3
    assert all(isinstance(t, HTTP11Transport) for t in seen)
    # Each loop's transport closed its keep-alive connection when its run ended.
    assert server.connections == 3
    anyio.run(eventually, lambda: server.closed_conns == 3)
    with pytest.raises(TransportError, match="closed"):
        anyio.run(seen[0].post, server.url, b"", {})


def test_get_transport_from_many_threads_and_both_backends_at_once(server: RawServer) -> None:
    seen: list[Any] = []  # the transports themselves: ids of dead objects can be reused
    errors: list[BaseException] = []

    async def use() -> None:
        t = get_transport()
        for i in range(20):
            assert json.loads((await t.post(server.url, str(i).encode(), {})).body)["echo"] == str(i)
        seen.append(t)

    def thread(backend: str) -> None:
        try:
            anyio.run(use, backend=backend)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(b,)) for b in ["asyncio", "trio"] * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == []
    assert len({id(t) for t in seen}) == 8
    assert server.connections == 8  # one keep-alive connection per loop, reused within it


def test_transport_used_from_another_loop_raises(server: RawServer) -> None:
    t = HTTP11Transport()
    anyio.run(t.post, server.url, b"", {})
    with pytest.raises(RuntimeError, match="another event loop"):
        anyio.run(t.post, server.url, b"", {}, backend="trio")


async def test_get_transport_with_a_factory_is_keyed_by_the_factory(server: RawServer) -> None:
    made: list[HTTP11Transport] = []

    def factory() -> HTTP11Transport:
        made.append(HTTP11Transport())
        return made[-1]

    a, b = get_transport(factory), get_transport(factory)
    assert a is b is made[0]
    assert get_transport() is not a
    assert (await a.post(server.url, b"", {})).status == 200


# -- adapters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
async def test_httpx_adapter_via_transport_factory(server: RawServer, module: str, anyio_backend: str) -> None:
    httpx = pytest.importorskip(module)
    factory = transport_factory(lambda: httpx.AsyncClient())
    t = get_transport(factory)
    assert isinstance(t, HttpxTransport)
    assert get_transport(factory) is t
    resp = await t.post(server.url + "/p?q=1", b"hi", HEADERS)
    assert resp.status == 200
    assert json.loads(resp.body) == {"echo": "hi", "path": "/p?q=1"}
    assert resp.headers["content-type"] == "application/json"
    server.routes["/c"] = static(chunked(b"ab", b"cd"))
    async with await t.post_stream(server.url + "/c", b"", {}) as stream:
        assert b"".join([c async for c in stream.aiter_bytes()]) == b"abcd"


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
async def test_httpx_adapter_translates_errors(server: RawServer, module: str, anyio_backend: str) -> None:
    httpx = pytest.importorskip(module)
    server.routes["/hang"] = hang
    t = HttpxTransport(httpx.AsyncClient())
    try:
        with pytest.raises(TransportTimeout):
            await t.post(server.url + "/hang", b"", {}, timeout=0.2)
        server.routes["/drop"] = static(b"", keep=False)
        with pytest.raises(TransportError):
            await t.post(server.url + "/drop?key=SECRET", b"", {})
    finally:
        await t.aclose()


def test_transport_factory_accepts_transports_and_rejects_other_objects() -> None:
    own = HTTP11Transport()
    assert transport_factory(lambda: own)() is own
    with pytest.raises(TypeError, match="httpx-compatible AsyncClient"):
        transport_factory(lambda: object())()


async def test_aiohttp_adapter(server: RawServer, anyio_backend: str) -> None:
    pytest.importorskip("aiohttp")
    if anyio_backend == "trio":
        with pytest.raises(RuntimeError, match="asyncio only"):
            AiohttpTransport()
        return
    server.routes["/hang"] = hang
    t = AiohttpTransport()
    try:
        resp = await t.post(server.url, b"x", HEADERS)
        assert json.loads(resp.body)["echo"] == "x"
        server.routes["/c"] = static(chunked(b"ab", b"cd"))
        async with await t.post_stream(server.url + "/c", b"", {}) as stream:
            assert b"".join([c async for c in stream.aiter_bytes()]) == b"abcd"
        with pytest.raises(TransportTimeout):
            await t.post(server.url + "/hang", b"", {}, timeout=0.2)
        await eventually(server.disconnected.is_set)
    finally:
        await t.aclose()


async def test_default_transport_choice(monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ASYNCLM_HTTP_TRANSPORT", raising=False)
    assert isinstance(default_transport(), HTTP11Transport)
    monkeypatch.setenv("ASYNCLM_HTTP_TRANSPORT", "aiohttp")
    t = default_transport()
    expected = AiohttpTransport if anyio_backend == "asyncio" else HTTP11Transport
    assert isinstance(t, expected)
    await t.aclose()
    monkeypatch.setenv("ASYNCLM_HTTP_TRANSPORT", "carrier-pigeon")
    with pytest.raises(ValueError, match="ASYNCLM_HTTP_TRANSPORT"):
        default_transport()
    monkeypatch.delenv("ASYNCLM_HTTP_TRANSPORT")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    t = default_transport()
    assert isinstance(t, HttpxTransport)  # our client does not speak to proxies; httpx does
    await t.aclose()


# -- against FakeOpenAIServer with mixed faults -----------------------------------------------


async def test_mixed_faults_every_call_ends_and_nothing_leaks() -> None:
    testing = pytest.importorskip("asynclm.testing")
    Fault = testing.Fault
    faults = [
        Fault.connection_reset(),
        Fault.truncated(after_chunks=2),
        Fault.malformed_json(),
        Fault.server_error(500),
        Fault.rate_limit(retry_after=1),
        Fault.hang(),
    ]
    n = 300
    outcomes: dict[int, str] = {}
    t = HTTP11Transport()
    with testing.FakeOpenAIServer("hello there", latency=0.005, fault_rate=0.3, faults=faults, seed=7) as fake:
        url = fake.base_url + "/chat/completions"

        async def call(i: int) -> None:
            stream = i % 3 == 0
            body = json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": str(i)}], "stream": stream}
            ).encode()
            try:
                if stream:
                    async with await t.post_stream(url, body, HEADERS, timeout=1.0) as resp:
                        data = await resp.aread()
                        complete = data.rstrip().endswith(b"data: [DONE]")
                        outcomes[i] = f"{resp.status}{'' if complete else '-cut'}"
                else:
                    resp = await t.post(url, body, HEADERS, timeout=1.0)
                    outcomes[i] = str(resp.status)
            except TransportTimeout:
                outcomes[i] = "timeout"
            except TransportError:
                outcomes[i] = "error"

        limiter = anyio.Semaphore(32)

        async def limited(i: int) -> None:
            async with limiter:
                await call(i)

        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(limited, i)
            kinds = set(outcomes.values())
            assert len(outcomes) == n  # every call ended, as a response or its own error
            assert {"200", "500", "429", "timeout", "error"} <= kinds
            assert sum(v == "200" for v in outcomes.values()) > n // 2
            hangs = sum(v == "timeout" for v in outcomes.values())
            await fake.wait_until(lambda s: s.client_disconnects >= hangs)
            # The pool survives: a clean call afterwards works.
            fake.fault_rate = 0.0
            resp = await t.post(url, b'{"model": "m", "messages": []}', HEADERS)
            assert resp.status == 200
        finally:
            await t.aclose()
        await fake.wait_until(lambda s: s.in_flight == 0)


# -- flow control (on asyncio: the Protocol-based connection's pause/resume paths) --------------


async def test_request_body_larger_than_the_socket_buffers_is_sent_whole(server: RawServer) -> None:
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: the write has to wait for the server to read
    server.routes["/upload"] = static(reply(b"{}"))
    t = HTTP11Transport()
    try:
        with anyio.fail_after(30):
            resp = await t.post(server.url + "/upload", big, {})
            assert resp.status == 200
            assert (await t.post(server.url + "/", b"again", {})).status == 200
    finally:
        await t.aclose()
    assert server.requests[0].body == big
    assert server.connections == 1  # the same connection served the next request


async def test_slow_stream_consumer_gets_every_byte_and_the_connection_back(server: RawServer) -> None:
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB, arriving faster than it is consumed
    server.routes["/big"] = static(reply(big))
    t = HTTP11Transport()
    try:
        with anyio.fail_after(30):
            async with await t.post_stream(server.url + "/big", b"", {}) as resp:
                chunks = []
                async for chunk in resp.aiter_bytes():
                    chunks.append(chunk)
                    await anyio.sleep(0.002)
            assert b"".join(chunks) == big
            assert (await t.post(server.url + "/", b"", {})).status == 200
    finally:
        await t.aclose()
    assert server.connections == 1
