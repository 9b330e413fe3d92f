"""Streaming: SSE parsing (unit), deltas and usage from a real server, early break closing the
HTTP response, truncated/malformed streams, retries before the first byte, the deadline."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json

import anyio
import pytest
from hypothesis import given, strategies as st

from asynclm.lm import LM, LMConnectionError, LMTimeoutError, ServerError, track_usage
from asynclm.lm._stream import SSEDecoder
from asynclm.testing import FakeOpenAIServer, Fault, Reply

KEY = "sk-stream"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    lm = LM("openai/fake-model", base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]
    lm.backoff_base = 0.001
    return lm


# -- the SSE decoder -------------------------------------------------------------------------------


def test_sse_decoder_basics() -> None:
    d = SSEDecoder()
    assert d.feed(b'data: {"a": 1}\n\n') == ['{"a": 1}']
    assert d.feed(b": a comment\nevent: x\nid: 3\ndata: one\ndata: two\n\n") == ["one\ntwo"]
    assert d.feed(b"data:no-space\r\n\r\n") == ["no-space"]
    assert d.feed(b"data: [DONE]\n") == [] and d.pending
    assert d.feed(b"\n") == ["[DONE]"] and not d.pending
    assert d.feed(b"data: tail") == [] and d.flush() == ["tail"]


STREAM = (
    'data: {"x": "h\u00e9llo \u2603"}\r\n\r\n: keep-alive\n\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
).encode()
EXPECTED = ['{"x": "h\u00e9llo \u2603"}', "line one\nline two", "[DONE]"]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_sse_decoder_is_independent_of_chunk_boundaries(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    d = SSEDecoder()
    events: list[str] = []
    for a, b in itertools.pairwise(bounds):
        events += d.feed(STREAM[a:b])
    assert events == EXPECTED


# -- streaming from the server ---------------------------------------------------------------------


async def test_stream_deltas_and_final_usage(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("the quick brown fox", prompt_tokens=7, completion_tokens=4))
    lm = make_lm(server, temperature=0.2)
    with track_usage() as usage:
        deltas = [d async for d in lm.stream("go")]
    assert "".join(d.text for d in deltas) == "the quick brown fox"
    assert sum(1 for d in deltas if d.text) > 1  # really streamed in pieces
    assert any(d.finish_reason == "stop" for d in deltas)
    assert deltas[-1].usage is not None and deltas[-1].usage.total_tokens == 11
    assert (usage.calls, usage.total_tokens) == (1, 11)
    body = server.last_request.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2
    entry = lm.history[-1]
    assert entry["outputs"] == ["the quick brown fox"] and entry["usage"]["total_tokens"] == 11


async def test_breaking_out_with_aclosing_closes_the_response(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply(" ".join(f"w{i}" for i in range(200))))
    server.chunk_delay = 0.02
    lm = make_lm(server, max_concurrency=1)
    async with contextlib.aclosing(lm.stream("go")) as stream:
        async for delta in stream:
            if delta.text:
                break
    await server.wait_until(lambda s: s.client_disconnects == 1)
    with anyio.fail_after(10):
        await lm("the slot was released")  # would wait forever on max_concurrency=1 otherwise


async def test_a_plain_break_closes_the_response_when_the_generator_is_collected(
    server: FakeOpenAIServer,
) -> None:
    server.set_responses(Reply(" ".join(f"w{i}" for i in range(200))))
    server.chunk_delay = 0.02
    lm = make_lm(server)
    async for delta in lm.stream("go"):
        if delta.text:
            break
    gc.collect()
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_cancelling_a_stream_closes_the_response(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang(after_chunks=2))
    lm = make_lm(server)
    got: list[str] = []
    with anyio.move_on_after(0.5):
        async with contextlib.aclosing(lm.stream("go")) as stream:
            async for delta in stream:
                got.append(delta.text)
    assert got  # the first events arrived before the hang
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_stream_deadline(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang(after_chunks=1))
    with pytest.raises(LMTimeoutError, match=r"timeout of 0\.3 s"):
        async with contextlib.aclosing(make_lm(server).stream("go", timeout=0.3)) as stream:
            async for _ in stream:
                pass
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_truncated_and_malformed_streams_raise(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    server.fail_next(Fault.truncated(after_chunks=2, clean=True))
    with pytest.raises(LMConnectionError, match=r"\[DONE\]"):
        async for _ in lm.stream("go"):
            pass
    server.fail_next(Fault.truncated(after_chunks=2))
    with pytest.raises(LMConnectionError):
        async for _ in lm.stream("go"):
            pass
    server.fail_next(Fault.malformed_json())
    with pytest.raises(ServerError, match="invalid JSON"):
        async for _ in lm.stream("go"):
            pass
    assert "LMConnectionError" in lm.history[-3]["error"] and "ServerError" in lm.history[-1]["error"]


async def test_errors_before_the_first_byte_are_retried(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.rate_limit(retry_after_ms=10))
    server.fail_next(Fault.server_error(503))
    server.fail_next(Fault.connection_reset())
    lm = make_lm(server, max_concurrency=1)
    text = "".join([d.text async for d in lm.stream("go")])
    assert text == "ok" and server.requests == 4
    server.fail_next(Fault.error(401))
    with pytest.raises(Exception, match="401"):
        async for _ in lm.stream("go"):
            pass
    assert server.requests == 5
    assert (await lm("slots all released")).text == "ok"


async def test_stream_of_n_choices(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply(texts=["alpha beta", "gamma delta"]))
    parts: dict[int, str] = {}
    async for delta in make_lm(server).stream("go", n=2):
        parts[delta.index] = parts.get(delta.index, "") + delta.text
    assert parts == {0: "alpha beta", 1: "gamma delta"}


def test_stream_chunks_are_json_dicts_in_raw(fake_openai_server: FakeOpenAIServer) -> None:
    async def main() -> list[dict[str, object]]:
        return [d.raw async for d in make_lm(fake_openai_server).stream("go")]

    raws = anyio.run(main)
    assert all(isinstance(r, dict) for r in raws) and json.dumps(raws)


def test_stream_sync_twin(fake_openai_server: FakeOpenAIServer) -> None:
    server = fake_openai_server
    server.set_responses(Reply("one two three"))
    lm = make_lm(server)
    assert "".join(d.text for d in lm.stream.sync("go")) == "one two three"
    server.set_responses(Reply(" ".join(f"w{i}" for i in range(200))))
    server.chunk_delay = 0.02
    for delta in lm.stream.sync(messages=[{"role": "user", "content": "go"}]):
        if delta.text:
            break
    gc.collect()
    server.wait_until.sync(lambda s: s.client_disconnects == 1)


async def test_stream_sync_refused_inside_a_loop(server: FakeOpenAIServer) -> None:
    from asynclm.runtime import SyncInAsyncContextError

    with pytest.raises(SyncInAsyncContextError):
        make_lm(server).stream.sync("go")


async def test_a_server_rejecting_stream_options_is_asked_again_without(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.error(400, message="stream_options: extra fields not permitted"))
    text = "".join([d.text async for d in make_lm(server).stream("go")])
    assert text == "ok" and server.requests == 2
    assert "stream_options" not in server.last_request.json
    server.fail_next(Fault.error(400, message="something else"))
    with pytest.raises(Exception, match="something else"):
        async for _ in make_lm(server).stream("go"):
            pass
    assert server.requests == 3
