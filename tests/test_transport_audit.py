"""Regression tests for the transport audit (issue 12): each defect, as observed with a crafted
server on loopback, on asyncio and on trio. Each test failed before its fix.

1. unsolicited response over HTTPS read as the next answer   -> test_unsolicited_response_*
2. a POST re-sent after the server received it               -> test_a_request_*_never_re_sent*
3. TLS handshake failures escaping the error contract        -> test_tls_handshake_failures_*
4. parser leniency                                           -> test_malformed_responses_are_rejected
5. an early response lost as a connection reset              -> test_an_early_response_*
6. idle sockets kept open across origins                     -> test_idle_connections_to_every_origin_expire
7. URLs and header values                                    -> test_urls_*, test_control_characters_*
8. hangs on bare LF and non-chunked Transfer-Encoding        -> test_framing_that_would_hang_*
and: unbounded bodies (gzip bombs, streams)                  -> test_*_too_large*
     trust changing with a proxy                             -> test_trust_*
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from asynclm import LM, LMConnectionError, ResponseTooLargeError
from asynclm.lm._transports import (
    HTTP11Transport,
    ResponseTooLarge,
    TransportError,
    default_ssl_context,
    default_transport,
)

from .rawhttp import RawServer, Request, eventually, reply, static

MESSAGE = {"role": "assistant", "content": "hi"}
COMPLETION = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": MESSAGE}]}).encode()


@pytest.fixture
def server() -> Iterator[RawServer]:
    with RawServer() as s:
        yield s


@pytest.fixture
def ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def tls_server(ca: Any) -> Iterator[tuple[RawServer, ssl.SSLContext]]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with RawServer(ssl_context=server_ctx) as s:
        yield s, client_ctx


def lm_for(url: str, **kw: Any) -> LM:
    return LM("openai/m", base_url=url + "/v1", api_key="sk-test", cache=False, **kw)


# -- 1. unsolicited bytes after a response ----------------------------------------------------------


async def unsolicited(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
    w.write(reply(json.dumps({"n": req.body.decode()}).encode()))
    w.write(reply(b'{"n": "unsolicited"}'))  # a second TLS record, in the same TCP segment
    return True


async def test_unsolicited_response_over_https_is_never_read_as_the_next_answer(
    tls_server: tuple[RawServer, ssl.SSLContext],
) -> None:
    server, ctx = tls_server
    server.routes["/u"] = unsolicited
    t = HTTP11Transport(ssl_context=ctx)
    try:
        for i in range(10):
            resp = await t.post(server.url + "/u", str(i).encode(), {})
            assert json.loads(resp.body) == {"n": str(i)}
            # (an unsolicited response that arrives after the next request went out cannot be told
            # from the real answer by any HTTP/1.1 client: give it time to arrive first)
            await anyio.sleep(0.05)
    finally:
        await t.aclose()
    assert server.connections == 10  # none of them was reused


async def test_unsolicited_response_in_the_same_packet_over_http(server: RawServer) -> None:
    server.routes["/u"] = static(reply(b'{"n": "1"}') + reply(b'{"n": "unsolicited"}'))
    t = HTTP11Transport()
    try:
        for _ in range(3):
            assert json.loads((await t.post(server.url + "/u", b"", {})).body) == {"n": "1"}
    finally:
        await t.aclose()
    assert server.connections == 3


# -- 2. no replay once the request was written --------------------------------------------------------


async def close_after_reading_on_reuse(server: RawServer, req: Request, r: Any, w: asyncio.StreamWriter) -> bool:
    if req.index_on_conn == 0:
        w.write(reply(COMPLETION))
        return True
    return False  # read the whole request, then close without answering


@pytest.mark.parametrize("max_retries", [0, 1])
async def test_a_request_the_server_received_is_never_re_sent_by_the_transport(
    server: RawServer, max_retries: int
) -> None:
    """Retrying is the LM's policy: with max_retries=0 the server sees the request exactly once."""
    server.routes["/v1/chat/completions"] = close_after_reading_on_reuse
    lm = lm_for(server.url, max_retries=max_retries)
    lm.backoff_base = 0.001
    assert (await lm("first")).texts == ["hi"]
    if max_retries == 0:
        with pytest.raises(LMConnectionError, match=r"receive failed|closed the connection before the response"):
            await lm("second")
        assert len(server.requests) == 2  # "second" reached the server once
    else:
        assert (await lm("second")).texts == ["hi"]  # the LM's retry, on a new connection
        assert len(server.requests) == 3
        assert [r.index_on_conn for r in server.requests] == [0, 1, 0]


# -- 3. TLS handshake failures are typed and say why -----------------------------------------------


@contextlib.contextmanager
def tcp_server(handle: Any) -> Iterator[int]:
    """A TCP port on 127.0.0.1 whose server thread calls ``handle(conn)`` for each connection, then
    closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def closes_on_accept() -> contextlib.AbstractContextManager[int]:
    """A server that closes every connection at once (a TLS peer that gives up)."""
    return tcp_server(lambda conn: None)


def answers_in_plain_http() -> contextlib.AbstractContextManager[int]:
    """A server that answers whatever arrives with a plain-HTTP 400 (TLS on the wrong port)."""

    def handle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return tcp_server(handle)


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        (closes_on_accept, "the server closed the connection during the handshake"),
        (answers_in_plain_http, "WRONG_VERSION_NUMBER"),
    ],
    ids=["peer-closes", "plain-http-port"],
)
async def test_tls_handshake_failures_are_typed_errors_with_the_reason(peer: Any, reason: str) -> None:
    """On trio a peer closing during the handshake escaped as a bare anyio.EndOfStream; other
    failures said "cannot connect to https://...: " with no reason."""
    with peer() as port:
        t = HTTP11Transport()
        try:
            with anyio.fail_after(10), pytest.raises(TransportError) as info:
                await t.post(f"https://127.0.0.1:{port}/v1", b"", {})
        finally:
            await t.aclose()
        assert info.value.phase == "TLS handshake"
        assert str(info.value).startswith(f"https://127.0.0.1:{port}/v1: TLS handshake failed: {reason}")

        lm = LM("openai/m", base_url=f"https://127.0.0.1:{port}/v1", api_key="sk-test", cache=False, max_retries=0)
        with anyio.fail_after(10), pytest.raises(LMConnectionError, match=f"TLS handshake failed: {reason}"):
            await lm("hi")


async def test_a_broken_stream_names_the_url_once_the_phase_and_the_reason(server: RawServer) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    server.routes["/v1/chat/completions"] = static(head + b"%x\r\n%s\r\n" % (len(event), event), keep=False)
    lm = lm_for(server.url, max_retries=0)
    got = []
    with pytest.raises(LMConnectionError) as info:
        async for delta in lm.stream("hi"):
            got.append(delta.text)
    assert got == ["hi"]
    url = f"{server.url}/v1/chat/completions"
    assert str(info.value).count(url) == 1
    assert str(info.value) == (
        f"{url}: the server closed the connection before the response was complete (the stream broke)"
    )


# -- 4. malformed responses are rejected, as h11 and aiohttp reject them ----------------------------


@pytest.mark.parametrize(
    "raw",
    [
        # a bare LF ends a header value: "X: a" then "Content-Length: 5" must not become one value
        b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 5\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",  # NUL in a value
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",  # CR in a value
        b"HTTP/1.1 200 OK\r\nX Y: a\r\nContent-Length: 2\r\n\r\nok",  # space inside a name
        b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 2\r\n\r\nok",  # space before the colon
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",  # chunk size 0x2
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",  # obsolete line folding
    ],
    ids=[
        "bare-LF-then-CL",
        "NUL",
        "CR",
        "space-in-name",
        "space-before-colon",
        "chunk-0x",
        "status-2000",
        "status-200OK",
        "HTTP/2.0",
        "conflicting-CL",
        "CL-plus",
        "TE-and-CL",
        "obs-fold",
    ],
)
async def test_malformed_responses_are_rejected(server: RawServer, raw: bytes) -> None:
    server.routes["/m"] = static(raw, keep=True)
    t = HTTP11Transport()
    try:
        with anyio.fail_after(5), pytest.raises(TransportError, match=r"malformed HTTP response|HTTP version") as info:
            await t.post(server.url + "/m", b"", {})
        assert info.value.phase == "receive"
        assert not any(t._idle.values())  # the connection was closed, not pooled
    finally:
        await t.aclose()


# -- 5. an early response is returned ------------------------------------------------------------------


TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 17\r\nConnection: close\r\n\r\nrequest too large"


async def test_an_early_response_to_a_large_upload_is_returned(server: RawServer) -> None:
    server.before_body["/upload"] = TOO_LARGE
    t = HTTP11Transport()
    try:
        with anyio.fail_after(20):
            resp = await t.post(server.url + "/upload", b"x" * (8 * 1024 * 1024), {})
    finally:
        await t.aclose()
    assert (resp.status, resp.body) == (413, b"request too large")
    assert len(server.requests) == 1


async def test_an_early_response_over_tls_is_returned(tls_server: tuple[RawServer, ssl.SSLContext]) -> None:
    server, ctx = tls_server
    server.before_body["/upload"] = TOO_LARGE
    t = HTTP11Transport(ssl_context=ctx)
    try:
        for _ in range(3):
            with anyio.fail_after(20):
                resp = await t.post(server.url + "/upload", b"x" * (8 * 1024 * 1024), {})
            assert (resp.status, resp.body) == (413, b"request too large")
    finally:
        await t.aclose()
    assert len(server.requests) == 3


async def test_an_early_413_reaches_the_lm_caller_and_the_upload_is_not_retried(server: RawServer) -> None:
    server.before_body["/v1/chat/completions"] = TOO_LARGE
    lm = lm_for(server.url)
    with anyio.fail_after(30), pytest.raises(Exception) as info:
        await lm("x" * (8 * 1024 * 1024))
    assert getattr(info.value, "status", None) == 413
    assert len(server.requests) == 1


# -- 6. idle connections expire whatever origin is used next ---------------------------------------


async def test_idle_connections_to_every_origin_expire() -> None:
    with RawServer(bind="0.0.0.0") as server:
        t = HTTP11Transport(keepalive_expiry=0.3)
        try:
            for i in range(1, 21):  # 20 origins: 127.0.0.1 ... 127.0.0.20
                await t.post(f"http://127.0.0.{i}:{server.port}/", b"", {})
            assert server.connections == 20 and server.closed_conns == 0
            await anyio.sleep(0.5)
            await t.post(f"http://127.0.0.1:{server.port}/", b"", {})  # one origin used again
            await eventually(lambda: server.closed_conns == 20)  # every expired one closed
            assert sum(len(d) for d in t._idle.values()) == 1
        finally:
            await t.aclose()


# -- 7. URLs and header values ----------------------------------------------------------------------


async def test_urls_are_percent_encoded_like_httpx(server: RawServer) -> None:
    t = HTTP11Transport()
    try:
        for path in ("/v1/café", "/v1/模型", "/a b/%41/%zz", "/q?x=é&y=a b"):
            await t.post(server.url + path, b"", {})
    finally:
        await t.aclose()
    assert [r.path for r in server.requests] == [
        "/v1/caf%C3%A9",
        "/v1/%E6%A8%A1%E5%9E%8B",
        "/a%20b/%41/%zz",
        "/q?x=%C3%A9&y=a%20b",
    ]
    httpx = pytest.importorskip("httpx")
    for path, sent in zip(("/v1/café", "/v1/模型", "/a b/%41/%zz", "/q?x=é&y=a b"), server.requests, strict=True):
        assert httpx.URL(server.url + path).raw_path.decode() == sent.path


async def test_a_non_ascii_base_url_reaches_the_server(server: RawServer) -> None:
    server.routes["/v1/caf%C3%A9/chat/completions"] = static(reply(COMPLETION))
    lm = LM("openai/m", base_url=server.url + "/v1/café", api_key="k", cache=False)
    assert (await lm("hi")).texts == ["hi"]


@pytest.mark.parametrize(
    ("base_url", "match"),
    [
        ("http://127.0.0.1/v1\r\nX-Injected: 1", "control character '\\\\r'"),
        ("http://127.0.0.1/v\x01", "control character"),
        ("http://127.0.0.1/v\x7f", "control character"),
        ("ftp://127.0.0.1/v1", "unsupported URL scheme"),
    ],
)
def test_control_characters_in_the_base_url_fail_at_construction(base_url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LM("openai/m", base_url=base_url, api_key="k")


def test_control_characters_in_the_api_key_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="control character") as info:
        LM("openai/m", base_url="http://127.0.0.1/v1", api_key="sk-secret\n")
    assert "sk-secret" not in str(info.value)


@pytest.mark.parametrize("value", ["a\x01", "a\x7f", "a\r\nX: y", "a\x00"])
async def test_control_characters_in_header_values_are_refused(server: RawServer, value: str) -> None:
    t = HTTP11Transport()
    try:
        with pytest.raises(ValueError, match="control character"):
            await t.post(server.url, b"", {"X-Value": value})
    finally:
        await t.aclose()
    assert server.requests == []


# -- 8. framing that used to hang until the read timeout --------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare-LF line endings
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",  # body "until close" on a kept connection
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["bare-LF", "TE-gzip", "TE-gzip-chunked"],
)
async def test_framing_that_would_hang_fails_at_once(server: RawServer, raw: bytes) -> None:
    server.routes["/h"] = static(raw, keep=True)  # the server keeps the connection open
    t = HTTP11Transport()  # no read timeout
    try:
        with anyio.fail_after(5), pytest.raises(TransportError):
            await t.post(server.url + "/h", b"", {})
    finally:
        await t.aclose()


# -- bounded memory ----------------------------------------------------------------------------------


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


async def test_a_gzip_bomb_stops_at_the_limit_after_decompression(server: RawServer) -> None:
    bomb = gzip_bomb(64 * 1024 * 1024)  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    server.routes["/bomb"] = static(reply(bomb, headers={"Content-Encoding": "gzip"}))
    t = HTTP11Transport(max_response_bytes=1024 * 1024)
    try:
        with pytest.raises(ResponseTooLarge, match="larger than 1048576 bytes") as info:
            await t.post(server.url + "/bomb", b"", {})
        assert info.value.phase == "receive"
        # at or under the limit it is decoded in full
        ok = await t.post(server.url + "/bomb", b"", {}, max_response_bytes=64 * 1024 * 1024)
        assert len(ok.body) == 64 * 1024 * 1024
    finally:
        await t.aclose()


async def test_a_plain_body_over_the_limit_is_refused_and_the_connection_closed(server: RawServer) -> None:
    server.routes["/big"] = static(reply(b"x" * 5000))
    t = HTTP11Transport()
    try:
        assert len((await t.post(server.url + "/big", b"", {}, max_response_bytes=5000)).body) == 5000
        with pytest.raises(ResponseTooLarge):
            await t.post(server.url + "/big", b"", {}, max_response_bytes=4999)
    finally:
        await t.aclose()
    await eventually(lambda: server.closed_conns == 1)


async def test_response_too_large_reaches_the_lm_caller_and_is_not_retried(server: RawServer) -> None:
    server.routes["/v1/chat/completions"] = static(reply(COMPLETION))
    lm = lm_for(server.url, max_response_bytes=len(COMPLETION) - 1, max_retries=3)
    with pytest.raises(ResponseTooLargeError, match="larger than"):
        await lm("hi")
    assert len(server.requests) == 1
    assert (await lm_for(server.url, max_response_bytes=len(COMPLETION))("hi")).texts == ["hi"]


async def test_a_stream_longer_than_the_limit_stops_there() -> None:
    from asynclm.testing import FakeOpenAIServer

    with FakeOpenAIServer("word " * 2000, chunk_delay=0.0005) as fake:
        lm = LM("openai/m", base_url=fake.base_url, api_key="k", cache=False, max_response_bytes=20_000)
        got = []
        with pytest.raises(ResponseTooLargeError):
            async for delta in lm.stream("hi"):
                got.append(delta.text)
        assert 0 < len("".join(got)) < 20_000


# -- one trust store -----------------------------------------------------------------------------------


def test_the_default_context_is_the_system_trust_store_with_tls_1_2_at_least() -> None:
    truststore = pytest.importorskip("truststore")
    ctx = default_ssl_context()
    assert isinstance(ctx, truststore.SSLContext)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert default_ssl_context() is ctx  # one per process


async def test_lm_ssl_context_is_used_for_https(tls_server: tuple[RawServer, ssl.SSLContext]) -> None:
    server, ctx = tls_server
    server.routes["/v1/chat/completions"] = static(reply(COMPLETION))
    assert (await lm_for(server.url, ssl_context=ctx)("hi")).texts == ["hi"]
    with pytest.raises(LMConnectionError, match="certificate verification failed"):
        await lm_for(server.url, max_retries=0)("hi")  # the system store does not know the test CA


def test_lm_ssl_context_and_http_client_factory_are_exclusive() -> None:
    with pytest.raises(ValueError, match="give the TLS settings to the client"):
        LM("openai/m", api_key="k", ssl_context=ssl.create_default_context(), http_client_factory=object)
    with pytest.raises(TypeError, match=r"ssl\.SSLContext"):
        LM("openai/m", api_key="k", ssl_context="/etc/ssl/cert.pem")  # type: ignore[arg-type]


def test_the_system_trust_store_is_what_the_default_context_trusts(
    tls_server: tuple[RawServer, ssl.SSLContext], ca: Any, tmp_path: Any
) -> None:
    """A CA added to the system store (here through SSL_CERT_FILE, which OpenSSL's default paths
    honour) is trusted by a plain LM, with no ssl_context."""
    server, _ = tls_server
    server.routes["/v1/chat/completions"] = static(reply(COMPLETION))
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    code = (
        "import asynclm, sys\n"
        f"lm = asynclm.LM('openai/m', base_url='{server.url}/v1', api_key='k', cache=False, max_retries=0)\n"
        "print(lm.sync('hi').texts[0])\n"
    )
    env = {**os.environ, "SSL_CERT_FILE": str(pem)}
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "hi"


@contextlib.contextmanager
def connect_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP CONNECT proxy on loopback (a thread with its own loop); yields its URL and the
    targets it tunnelled to."""
    tunnels: list[str] = []
    started = threading.Event()
    state: dict[str, Any] = {}

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        assert method == "CONNECT"
        tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def run() -> None:
        async def main() -> None:
            proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
            state["port"] = proxy.sockets[0].getsockname()[1]
            state["loop"] = asyncio.get_running_loop()
            state["stop"] = asyncio.Event()
            started.set()
            async with proxy:
                await state["stop"].wait()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield f"http://127.0.0.1:{state['port']}", tunnels
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(5)


async def test_trust_does_not_change_when_a_proxy_is_configured(
    tls_server: tuple[RawServer, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set, calls go through httpx, and with the LM's own TLS context: a custom
    CA that works without the proxy works with it (httpx alone would trust certifi instead)."""
    pytest.importorskip("httpx")
    server, ctx = tls_server
    server.routes["/v1/chat/completions"] = static(reply(COMPLETION))
    with connect_proxy() as (proxy_url, tunnels):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        lm = lm_for(server.url.replace("127.0.0.1", "localhost"), ssl_context=ctx, max_retries=0)
        assert (await lm("hi")).texts == ["hi"]
        assert tunnels == [f"localhost:{server.port}"]
        transport = default_transport(ctx)
        assert type(transport).__name__ == "HttpxTransport"
        await transport.aclose()


async def test_a_refused_certificate_through_a_proxy_says_why(
    tls_server: tuple[RawServer, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx raises ``ConnectError()`` with no text for a refused certificate: the error names the
    reason from its cause, as the built-in client's does."""
    pytest.importorskip("httpx")
    server, _ = tls_server
    server.routes["/v1/chat/completions"] = static(reply(COMPLETION))
    with connect_proxy() as (proxy_url, _tunnels):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        lm = lm_for(server.url.replace("127.0.0.1", "localhost"), max_retries=0)  # the test CA is unknown
        with pytest.raises(LMConnectionError, match="ConnectError: certificate verification failed"):
            await lm("hi")
