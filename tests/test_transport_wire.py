"""Property tests of the HTTP/1.1 client's response handling (issue 12), sans socket: generated
responses — valid and invalid framing, cut at random points, with bytes after the body — go through
the transport's real exchange on a scripted connection. Each ends in a correct parse or a typed
``TransportError``, never a hang; a connection with bytes left over is never reused; and the
verdict agrees with h11's (httpx's parser) wherever h11 rejects: we never accept what it refuses.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from asynclm.lm._transports import HTTP11Transport, Response, TransportError
from asynclm.lm._transports._parser import ResponseParser
from asynclm.lm._transports._urls import Target

TARGET = Target("http://example.test/v1/chat/completions")
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n"


class ScriptedConnection:
    """The connection interface ``_http11`` uses, delivering pre-cut segments, then EOF."""

    def __init__(self, segments: list[bytes]) -> None:
        self.segments = segments
        self.buf = bytearray()
        self.reused = False
        self.expires = 0.0
        self.closed = False
        self.origin = TARGET.origin
        self.parser = ResponseParser()
        self.sent = b""

    def looks_alive(self) -> bool:
        """Like a socket poll: anything still to arrive (``segments``) makes it unusable."""
        return not self.buf and not self.segments and not self.closed

    async def fill(self, scope: Any, timeout: Any) -> None:
        await anyio.lowlevel.checkpoint()
        if not self.segments:
            raise anyio.EndOfStream
        self.buf += self.segments.pop(0)

    async def send(self, head: bytes, body: bytes) -> bool:
        self.sent += head + body
        return True

    async def send_more(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


@dataclass
class Case:
    wire: bytes
    status: int
    body: bytes  # decoded
    valid: bool
    reusable: bool | None  # keep-alive and nothing after the response; None: either is right
    gzipped: bool


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


OURS = ("content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive")
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
TOKEN = TOKEN.filter(lambda n: n not in OURS)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(str.strip)

# Bytes after the final response: none, CR/LF that llhttp skips between messages (harmless), or
# anything a desynchronised or hostile server might send.
EXTRA = st.sampled_from(
    [b"", b"", b"\r\n", b"x", b"garbage\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 2"]
)


@st.composite
def valid_responses(draw: Any) -> Case:
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 503]))
    bodyless = status in (204, 304)
    framing = "none" if bodyless else draw(st.sampled_from(["length", "chunked", "close"]))
    body = b"" if bodyless else draw(st.binary(max_size=400))
    gzipped = bool(body) and draw(st.booleans())
    payload = gzip.compress(body) if gzipped else body
    keep = framing != "close" and draw(st.booleans())
    lines = []
    if draw(st.booleans()):
        lines.append(b"HTTP/1.1 100 Continue\r\n\r\n")
    reason = draw(st.sampled_from(["OK", "Whatever", "", "Too Many Requests"]))
    head = [f"HTTP/1.1 {status} {reason}".rstrip() if reason else f"HTTP/1.1 {status} "]
    head += [f"{n}: {v}" for n, v in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))]
    if gzipped:
        head.append("Content-Encoding: gzip")
    if not keep:
        head.append("Connection: close")
    if framing == "length":
        head.append(f"Content-Length: {len(payload)}")
        data = payload
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(min_value=1, max_value=64), max_size=20))
        pieces, pos = [], 0
        for size in sizes:
            if pos >= len(payload):
                break
            pieces.append(payload[pos : pos + size])
            pos += size
        if pos < len(payload):
            pieces.append(payload[pos:])
        ext = draw(st.sampled_from(["", ";a=b", ';name="v"']))
        data = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext.encode(), p) for p in pieces) + b"0\r\n"
        data += b"Trailer-Field: x\r\n\r\n" if draw(st.booleans()) else b"\r\n"
    else:
        data = payload
    wire = b"".join(lines) + ("\r\n".join(head) + "\r\n\r\n").encode() + data
    extra = b"" if framing == "close" else draw(EXTRA)  # after a close-delimited body, more body
    return Case(
        wire=wire + extra,
        status=status,
        body=body,
        valid=True,
        # CR/LF between responses is skipped by every parser: harmless, but whether the connection
        # is reused then depends on when it arrives (a readable idle socket is never reused)
        reusable=(keep and not extra) if not extra or extra.strip(b"\r\n") else None,
        gzipped=gzipped,
    )


# Ways to break a valid response that h11 and aiohttp reject too (the audit's list and more).
MUTATIONS = {
    "bare LF in the head": lambda w: w.replace(b"\r\n", b"\n", 1),
    "NUL in a value": lambda w: w.replace(b"\r\n", b"\r\nX-Bad: a\x00b\r\n", 1),
    "CR in a value": lambda w: w.replace(b"\r\n", b"\r\nX-Bad: a\rb\r\n", 1),
    "space in a name": lambda w: w.replace(b"\r\n", b"\r\nX Bad: a\r\n", 1),
    "status 2000": lambda w: b"HTTP/1.1 2000" + w[12:] if w.startswith(b"HTTP/1.1 2") else b"HTTP/1.1 2000 " + w,
    "status 200OK": lambda w: b"HTTP/1.1 200OK\r\n" + w.split(b"\r\n", 1)[1],
    "conflicting lengths": lambda w: w.replace(b"\r\n", b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n", 1),
    "Transfer-Encoding gzip": lambda w: w.replace(b"\r\n", b"\r\nTransfer-Encoding: gzip\r\n", 1),
    "chunk size 0x": lambda w: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n"
    ),
    "truncated": lambda w: w[: max(0, w.find(b"\r\n\r\n"))],
    "HTTP/2 status line": lambda w: b"HTTP/2.0" + w[8:],
}


@st.composite
def invalid_responses(draw: Any) -> Case:
    wire = draw(valid_responses()).wire.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")  # break the final one
    name = draw(st.sampled_from(sorted(MUTATIONS)))
    return Case(wire=MUTATIONS[name](wire), status=0, body=b"", valid=False, reusable=False, gzipped=False)


async def exchange(wire: bytes, cuts: list[int]) -> tuple[Response | TransportError, bool]:
    """(the response or the error, whether the next request would reuse the connection)."""
    transport = HTTP11Transport()
    conn = ScriptedConnection(cut(wire, cuts))
    result: Response | TransportError
    with anyio.fail_after(5):  # never a hang: every path ends at the data or at EOF
        try:
            result = await transport._exchange(  # type: ignore[arg-type]
                conn, TARGET, HEAD, b"", None, None, None, 1 << 20, False
            )
        except TransportError as exc:
            result = exc
    pooled = conn in transport._idle.get(TARGET.origin, ())
    assert pooled != conn.closed
    return result, pooled and conn.looks_alive()


def h11_verdict(wire: bytes) -> tuple[int, bytes] | None:
    """(status, body) as h11 reads the response to our request, or ``None`` if it rejects it."""
    h11 = pytest.importorskip("h11")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    conn.receive_data(b"")
    status, body = 0, b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


def decoded(body: bytes, gzipped: bool) -> bytes:
    return zlib.decompress(body, 16 + zlib.MAX_WBITS) if gzipped and body else body


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CUTS = st.lists(st.integers(min_value=0, max_value=4000), max_size=12)


@PROPERTY
@given(case=valid_responses(), cuts=CUTS)
async def test_valid_responses_parse_whatever_the_segmentation(case: Case, cuts: list[int]) -> None:
    result, pooled = await exchange(case.wire, cuts)
    assert isinstance(result, Response), result
    assert (result.status, result.body) == (case.status, case.body)
    if case.reusable is not None:
        assert pooled == case.reusable  # bytes beyond the response: never used again
    verdict = h11_verdict(case.wire)  # h11 agrees it is valid, and on what it says
    assert verdict is not None
    assert (verdict[0], decoded(verdict[1], case.gzipped)) == (case.status, case.body)


@PROPERTY
@given(case=invalid_responses(), cuts=CUTS)
async def test_invalid_responses_are_typed_errors_and_never_pooled(case: Case, cuts: list[int]) -> None:
    result, pooled = await exchange(case.wire, cuts)
    assert isinstance(result, TransportError), result
    assert result.phase == "receive" and str(result).startswith(TARGET.safe_url)
    assert not pooled


@PROPERTY
@given(wire=st.one_of(valid_responses(), invalid_responses()).map(lambda c: c.wire), cuts=CUTS)
async def test_never_accepts_what_h11_rejects(wire: bytes, cuts: list[int]) -> None:
    """Same bytes to both parsers: whatever h11 refuses we refuse; whatever we accept, h11 reads
    the same status and body. (We are stricter than h11 in places — bare LF line endings, control
    characters and obsolete folding in values, HTTP/2.0 status lines, duplicate Content-Length —
    as llhttp and aiohttp are.)"""
    ours, _ = await exchange(wire, cuts)
    theirs = h11_verdict(wire)
    if theirs is None:
        assert isinstance(ours, TransportError)
    if isinstance(ours, Response):
        assert theirs is not None
        encoded = ours.headers.get("content-encoding") == "gzip"
        assert (theirs[0], decoded(theirs[1], encoded)) == (ours.status, ours.body)
