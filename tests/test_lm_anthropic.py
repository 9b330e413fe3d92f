"""``LM("anthropic/...")`` speaking Anthropic's Messages API over real HTTP on loopback, against
``FakeOpenAIServer``'s ``/v1/messages``: the wire format, Predict, streaming, every error kind,
retries on 529/overloaded and Retry-After, the API key kept secret. Both backends."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import anyio
import pytest

import asynclm
from asynclm.lm import (
    LM,
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMConnectionError,
    LMError,
    RateLimitError,
    ServerError,
    track_usage,
)
from asynclm.testing import FakeOpenAIServer, Fault, Fields, Reply

KEY = "sk-ant-SECRET-0123456789"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, model: str = "anthropic/claude-fake", **kw: object) -> LM:
    kw.setdefault("cache", False)
    lm = LM(model, base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]
    lm.backoff_base = 0.001
    return lm


# -- the request and the response ----------------------------------------------------------------------


async def test_a_call_speaks_the_messages_api(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("Paris", prompt_tokens=12, completion_tokens=2))
    lm = make_lm(server, temperature=0.2)
    with track_usage() as usage:
        resp = await lm(
            messages=[
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "user", "content": "Be brief."},
            ],
            stop=["\n\n"],
        )
    assert (resp.text, resp.texts, resp.finish_reason) == ("Paris", ["Paris"], "stop")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (12, 2, 14)
    assert resp.model == "claude-fake" and resp.raw["type"] == "message"
    req = server.last_request
    assert (req.api, req.path) == ("anthropic", "/v1/messages")
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.json == {
        "model": "claude-fake",
        "system": "Answer in one word.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Capital of France?"}, {"type": "text", "text": "Be brief."}],
            }
        ],
        "max_tokens": 4096,
        "stop_sequences": ["\n\n"],
        "temperature": 0.2,
    }
    assert (usage.calls, usage.total_tokens, list(usage.by_model())) == (1, 14, ["claude-fake"])
    entry = lm.history[-1]
    assert entry["model"] == "claude-fake" and entry["outputs"] == ["Paris"]
    assert entry["messages"][0] == {"role": "system", "content": "Answer in one word."}  # as the caller gave them
    assert entry["params"]["max_tokens"] == 4096


async def test_max_tokens_and_finish_reason_length(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("trunc", finish_reason="length"))
    lm = make_lm(server, max_tokens=20)
    assert repr(lm) == f"LM('anthropic/claude-fake', base_url='{server.base_url}', max_tokens=20)"
    assert lm.provider == "anthropic" and LM("openai/m", api_key="k").provider == "openai"
    resp = await lm("go")
    assert resp.finish_reason == "length" and server.last_request.json["max_tokens"] == 20
    await lm("go", max_tokens=None)  # the API requires it: the default is sent
    assert server.last_request.json["max_tokens"] == 4096


async def test_a_raw_response_with_tool_use_and_cache_tokens(server: FakeOpenAIServer) -> None:
    raw = {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake-2025",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 3,
            "cache_read_input_tokens": 40,
            "cache_creation_input_tokens": 7,
            "output_tokens": 9,
        },
    }
    server.set_responses(raw)
    resp = await make_lm(server)("weather?")
    assert resp.text == "Checking." and resp.finish_reason == "tool_calls" and resp.model == "claude-fake-2025"
    assert resp.usage.prompt_tokens == 50 and resp.usage.completion_tokens == 9
    assert resp.raw["content"][1]["type"] == "tool_use"
    assert resp.tool_calls[0]["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert resp.usage.cached_tokens == 40  # cache reads, priced as cached input


async def test_cost_and_budgets_read_anthropic_usage(server: FakeOpenAIServer) -> None:
    """Cost and usage_limits settle with Anthropic's own usage fields (not OpenAI's names)."""
    usage = {"input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 10}
    server.set_responses({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}],
                          "stop_reason": "end_turn", "usage": usage})  # fmt: skip
    lm = make_lm(server, price={"input": 3.0, "output": 15.0, "cached_input": 0.3})
    with asynclm.usage_limits(max_total_tokens=10_000) as limits, track_usage() as tracked:
        resp = await lm("priced?")
    # 100 input at $3/M + 1000 cached at $0.3/M + 10 output at $15/M
    assert resp.usage.cost == pytest.approx((100 * 3.0 + 1000 * 0.3 + 10 * 15.0) / 1e6)
    assert (limits.requests, limits.input_tokens, limits.output_tokens) == (1, 1100, 10)
    assert tracked.cost == pytest.approx(resp.usage.cost)


async def test_the_cache_keeps_anthropic_responses(
    server: FakeOpenAIServer, tmp_path: Path, anyio_backend: str
) -> None:
    server.set_responses(["first", "second"])
    with asynclm.context(cache_dir=str(tmp_path)):
        lm = make_lm(server, cache=True)
        one = await lm(f"same question on {anyio_backend} in {tmp_path}")
        two = await lm(f"same question on {anyio_backend} in {tmp_path}")
    assert (one.text, one.cache_hit, two.text, two.cache_hit) == ("first", False, "first", True)
    assert server.requests == 1


async def test_an_anthropic_cache_hit_costs_a_known_zero(server: FakeOpenAIServer, tmp_path: Path) -> None:
    # A hit is free, as on OpenAI's path: a total over priced calls stays known (it was None).
    server.set_responses("answer")
    with asynclm.context(cache_dir=str(tmp_path)):
        lm = make_lm(server, cache=True, price={"input": 3.0, "output": 15.0})
        first = await lm(f"priced question in {tmp_path}")
        with track_usage() as tracked:
            hit = await lm(f"priced question in {tmp_path}")
    assert first.usage.cost is not None and first.usage.cost > 0
    assert hit.cache_hit and hit.usage.cost == 0.0
    assert (tracked.calls, tracked.cache_hits, tracked.cost, tracked.unknown_cost_calls) == (1, 1, 0.0, 0)


def test_sync_call(server: FakeOpenAIServer) -> None:
    server.set_responses("from sync")
    assert make_lm(server).sync("hi").text == "from sync"


async def test_n_above_one_is_refused_before_sending(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    with pytest.raises(BadRequestError, match="one completion per request"):
        await lm("x", n=2)
    assert server.requests == 0
    assert "BadRequestError" in lm.history[-1]["error"]


# -- Predict, configure, context ---------------------------------------------------------------------------


async def test_predict_with_an_anthropic_lm(server: FakeOpenAIServer) -> None:
    server.set_responses(Fields(lambda inputs: {"answer": inputs["question"].upper()}))
    lm = make_lm(server)
    qa = asynclm.Predict("question -> answer")
    with asynclm.context(lm=lm):
        pred = await qa(question="paris?")
    assert pred.answer == "PARIS?"
    req = server.last_request
    assert req.api == "anthropic" and isinstance(req.system, str) and "question" in req.system
    assert [m["role"] for m in req.messages] == ["user"]
    # n=2: the API has no n, Predict asks for each candidate on its own
    preds = await qa(question="lyon?", config={"n": 2}, lm=lm)
    assert [c["answer"] for c in preds.completions] == ["LYON?", "LYON?"]
    assert server.requests == 3


def test_predict_sync_with_configure(server: FakeOpenAIServer) -> None:
    server.set_responses(Fields(answer="42"))
    asynclm.configure(lm=make_lm(server))
    assert asynclm.Predict("question -> answer").sync(question="?").answer == "42"


# -- streaming ---------------------------------------------------------------------------------------------------


async def test_streaming(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("the quick brown fox", prompt_tokens=7, completion_tokens=4))
    lm = make_lm(server)
    with track_usage() as usage:
        async with contextlib.aclosing(lm.stream("go", temperature=0.5)) as stream:
            deltas = [d async for d in stream]
    assert "".join(d.text for d in deltas) == "the quick brown fox"
    assert sum(1 for d in deltas if d.text) > 1
    final = deltas[-1]
    assert final.finish_reason == "stop" and final.usage is not None and final.usage.total_tokens == 11
    assert (usage.calls, usage.total_tokens) == (1, 11)
    body = server.last_request.json
    assert body["stream"] is True and "stream_options" not in body and body["temperature"] == 0.5
    assert lm.history[-1]["outputs"] == ["the quick brown fox"]


def test_streaming_sync(server: FakeOpenAIServer) -> None:
    server.set_responses("one two three")
    assert "".join(d.text for d in make_lm(server).stream.sync("go")) == "one two three"


async def test_streamify_a_predict_with_an_anthropic_lm(server: FakeOpenAIServer) -> None:
    server.set_responses(Fields(answer="streamed answer"))
    program = asynclm.streamify(asynclm.Predict("question -> answer", lm=make_lm(server)))
    chunks = []
    final = None
    async with contextlib.aclosing(program(question="q")) as stream:
        async for item in stream:
            if isinstance(item, asynclm.StreamChunk):
                chunks.append(item.text)
            else:
                final = item
    assert final is not None and final.answer == "streamed answer"
    assert "".join(chunks) == "streamed answer"


async def test_an_error_event_mid_stream_raises_typed(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    server.fail_next(Fault.stream_error(after_chunks=4, error_type="overloaded_error"))
    got: list[str] = []
    with pytest.raises(ServerError, match=r"overloaded_error"):
        async for delta in lm.stream("go"):
            got.append(delta.text)
    assert "".join(got)  # text had arrived before the error
    assert server.requests == 1  # not retried after the first byte
    server.fail_next(Fault.stream_error(after_chunks=0, error_type="rate_limit_error", message="slow down"))
    with pytest.raises(RateLimitError, match="slow down"):
        async for _ in lm.stream("go"):
            pass
    assert "RateLimitError" in lm.history[-1]["error"]


async def test_truncated_and_malformed_streams(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    server.fail_next(Fault.truncated(after_chunks=4, clean=True))
    with pytest.raises(LMConnectionError, match="before its message_stop event"):
        async for _ in lm.stream("go"):
            pass
    server.fail_next(Fault.malformed_json())
    with pytest.raises(ServerError, match="invalid JSON"):
        async for _ in lm.stream("go"):
            pass


async def test_a_stream_is_retried_on_529_before_the_first_byte(server: FakeOpenAIServer) -> None:
    server.set_responses("after retries")
    server.fail_next(Fault.overloaded(), times=2)
    text = "".join([d.text async for d in make_lm(server).stream("go")])
    assert text == "after retries" and server.requests == 3


# -- errors and retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_class", "requests", "match"),
    [
        (Fault.error(401), AuthenticationError, 1, "ANTHROPIC_API_KEY"),
        (Fault.error(403), AuthenticationError, 1, "permission"),
        (Fault.error(400, message="temperature: Input should be <= 1"), BadRequestError, 1, "temperature"),
        (Fault.context_window_exceeded(200000, 210000), ContextWindowExceededError, 1, "prompt is too long"),
        (Fault.error(404), BadRequestError, 1, "base_url"),
        (Fault.error(413), BadRequestError, 1, "maximum allowed number of bytes"),
        (Fault.rate_limit(), RateLimitError, 3, "rate limit"),
        (Fault.overloaded(), ServerError, 3, "Overloaded"),
        (Fault.server_error(500), ServerError, 3, "Internal server error"),
    ],
)
async def test_each_error_kind(
    server: FakeOpenAIServer, fault: Fault, error_class: type[LMError], requests: int, match: str
) -> None:
    server.fail_next(fault, times=5)
    lm = make_lm(server, max_retries=2)
    with pytest.raises(error_class, match=match) as info:
        await lm("x")
    assert server.requests == requests
    err = info.value
    assert err.status == fault.status and err.request_id == f"req_fake_{requests}" and err.model == "claude-fake"
    assert KEY not in str(err)


async def test_retry_on_529_overloaded_then_success(server: FakeOpenAIServer) -> None:
    server.set_responses("finally")
    server.fail_next(Fault.overloaded(), times=2)
    resp = await make_lm(server)("x")
    assert resp.text == "finally" and server.requests == 3


async def test_retry_after_is_honoured_and_reported(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.rate_limit(retry_after=0.05), times=2)
    lm = make_lm(server, max_retries=1)
    with pytest.raises(RateLimitError) as info:
        await lm("x")
    assert info.value.retry_after == 0.05 and server.requests == 2
    server.fail_next(Fault.overloaded(retry_after=0.01))
    server.set_responses("ok after 529")
    assert (await lm("y")).text == "ok after 529"


async def test_wrong_key_is_an_authentication_error() -> None:
    async with FakeOpenAIServer(api_key="sk-ant-right") as server:
        lm = make_lm(server)
        with pytest.raises(AuthenticationError, match="invalid x-api-key"):
            await lm("x")
        assert server.requests == 1
        right = LM("anthropic/claude-fake", base_url=server.base_url, api_key="sk-ant-right", cache=False)
        assert (await right("x")).text == "ok"


# -- keys ----------------------------------------------------------------------------------------------------------


async def test_the_key_comes_from_anthropic_api_key(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-not-this")
    lm = LM("anthropic/claude-fake", base_url=server.base_url, cache=False)
    await lm("x")
    assert server.last_request.headers["x-api-key"] == "sk-ant-from-env"


async def test_no_key_for_anthropic_itself_fails_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    lm = LM("anthropic/claude-sonnet-4-5", cache=False)
    assert lm.base_url == "https://api.anthropic.com/v1"
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        await lm("x")


async def test_the_key_never_shows(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.error(400, message=f"you sent {KEY}, which is odd"))
    lm = make_lm(server, max_retries=0)
    with pytest.raises(BadRequestError) as info:
        await lm("x")
    assert KEY not in str(info.value)
    server.fail_next(Fault.stream_error(after_chunks=0, error_type="api_error", message=f"echo {KEY}"))
    with pytest.raises(ServerError) as streamed:
        async for _ in lm.stream("x"):
            pass
    assert KEY not in str(streamed.value) and "echo ***" in str(streamed.value)
    server.set_responses("fine")
    await lm("x")
    shown = [repr(lm), repr(vars(lm)), json.dumps(list(lm.history)), repr(lm._headers)]
    assert not any(KEY in text for text in shown)
    assert "'x-api-key': '***'" in repr(lm._headers)


# -- the fake server's own checks ------------------------------------------------------------------------------


async def test_the_fake_server_refuses_what_the_api_refuses(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    # a parameter the Messages API does not know reaches it as is, and gets its error
    with pytest.raises(BadRequestError, match="presence_penalty: Extra inputs are not permitted"):
        await lm("x", presence_penalty=0.5)
    with anyio.fail_after(10):
        async with contextlib.aclosing(lm.stream("fine")) as stream:
            assert "".join([d.text async for d in stream]) == "ok"
