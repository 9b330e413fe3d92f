"""``FallbackLM`` over real HTTP with two ``FakeOpenAIServer``s: fallback on each error kind in
``on`` and not on others, all failing, streaming before/after the first delta, Predict,
configure/context, .sync, deepcopy/save. Both backends."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import asynclm
from asynclm.lm import (
    LM,
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    FallbackLM,
    LMConnectionError,
    LMError,
    LMTimeoutError,
    RateLimitError,
    ServerError,
    track_usage,
)
from asynclm.testing import FakeOpenAIServer, Fault, Fields, Reply

KEY = "sk-fallback-SECRET"


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer("from primary") as one, FakeOpenAIServer("from secondary") as two:
        yield one, two


def make_lm(server: FakeOpenAIServer, model: str, **kw: object) -> LM:
    kw.setdefault("cache", False)
    kw.setdefault("max_retries", 1)
    lm = LM(model, base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]
    lm.backoff_base = 0.001
    return lm


def pair(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer], **kw: object
) -> tuple[FallbackLM, LM, LM]:
    one, two = servers
    primary = make_lm(one, "openai/primary-model", **kw)
    secondary = make_lm(two, "openai/secondary-model", **kw)
    return FallbackLM([primary, secondary]), primary, secondary


# -- falling back ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault.rate_limit(), RateLimitError),
        (Fault.server_error(500), ServerError),
        (Fault.server_error(503), ServerError),
        (Fault.overloaded(), ServerError),
        (Fault.connection_reset(), LMConnectionError),
        (Fault.truncated(), LMConnectionError),
        (Fault.malformed_json(), ServerError),
        (Fault.error(408), LMTimeoutError),
    ],
)
async def test_falls_back_on_each_error_kind_in_on(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer], fault: Fault, error_class: type[LMError]
) -> None:
    one, two = servers
    lm, primary, secondary = pair(servers)
    one.fail_next(fault, times=10)
    with track_usage() as usage:
        resp = await lm("question")
    assert resp.text == "from secondary" and resp.model == "secondary-model"
    assert one.requests == 2 and two.requests == 1  # the primary's own retries first (max_retries=1)
    assert list(usage.by_model()) == ["secondary-model"] and usage.calls == 1
    assert error_class.__name__ in primary.history[-1]["error"]
    assert secondary.history[-1]["outputs"] == ["from secondary"]
    entry = lm.history[-1]
    assert entry["model"] == "secondary-model" and entry["outputs"] == ["from secondary"]
    assert len(entry["fallbacks"]) == 1
    assert entry["fallbacks"][0].startswith(f"openai/primary-model: {error_class.__name__}")


async def test_falls_back_when_the_primary_deadline_passes(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    one.fail_next(Fault.hang())
    primary = make_lm(one, "openai/primary-model", timeout=0.3)
    lm = FallbackLM([primary, make_lm(two, "openai/secondary-model")])
    assert (await lm("q")).text == "from secondary"
    assert "LMTimeoutError" in lm.history[-1]["fallbacks"][0]
    await one.wait_until(lambda s: s.client_disconnects == 1)


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault.error(400), BadRequestError),
        (Fault.error(401), AuthenticationError),
        (Fault.error(403), AuthenticationError),
        (Fault.error(404), BadRequestError),
        (Fault.context_window_exceeded(), ContextWindowExceededError),
    ],
)
async def test_other_errors_propagate_at_once(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer], fault: Fault, error_class: type[LMError]
) -> None:
    one, two = servers
    lm, _, _ = pair(servers)
    one.fail_next(fault)
    with pytest.raises(error_class):
        await lm("q")
    assert one.requests == 1 and two.requests == 0
    assert lm.history[-1]["error"].startswith(error_class.__name__)


async def test_on_chooses_the_errors(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    _, primary, secondary = pair(servers)
    lm = FallbackLM([primary, secondary], on=RateLimitError)
    one.fail_next(Fault.server_error(500), times=2)
    with pytest.raises(ServerError):
        await lm("q")
    assert two.requests == 0
    one.fail_next(Fault.rate_limit(), times=2)
    assert (await lm("q")).text == "from secondary"
    # a wider net: BadRequestError too
    wide = FallbackLM([primary, secondary], on=(LMError,))
    one.fail_next(Fault.error(400))
    assert (await wide("q")).text == "from secondary"


async def test_an_error_after_a_fallback_keeps_the_earlier_one(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    one, two = servers
    lm, _, _ = pair(servers)
    one.fail_next(Fault.rate_limit(), times=2)
    two.fail_next(Fault.error(401))
    with pytest.raises(AuthenticationError) as info:
        await lm("q")
    assert isinstance(info.value.__cause__, RateLimitError)


async def test_all_fail_raises_the_last_error_with_the_others_chained(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    one, two = servers
    with FakeOpenAIServer() as three:
        lms = [make_lm(s, f"openai/m{i}") for i, s in enumerate((one, two, three))]
        lm = FallbackLM(lms)
        one.fail_next(Fault.rate_limit(), times=2)
        two.fail_next(Fault.connection_reset(), times=2)
        three.fail_next(Fault.overloaded(), times=2)
        with pytest.raises(ServerError) as info:
            await lm("q")
    last = info.value
    assert last.model == "m2" and last.status == 529
    assert isinstance(last.__cause__, LMConnectionError) and last.__cause__.model == "m1"
    assert isinstance(last.__cause__.__cause__, RateLimitError) and last.__cause__.__cause__.model == "m0"
    (note,) = last.__notes__
    assert "openai/m0 failed (RateLimitError)" in note and "openai/m1 failed (LMConnectionError)" in note
    assert "from openai/m2" in note and KEY not in note
    entry = lm.history[-1]
    assert entry["model"] is None and entry["error"].startswith("ServerError") and len(entry["fallbacks"]) == 2


async def test_each_lm_keeps_its_cache(servers: tuple[FakeOpenAIServer, FakeOpenAIServer], tmp_path: Path) -> None:
    one, two = servers
    with asynclm.context(cache_dir=str(tmp_path)):
        lm, _, _ = pair(servers, cache=True)
        one.fail_next(Fault.rate_limit(), times=4)
        first = await lm(f"cached question {tmp_path}")
        second = await lm(f"cached question {tmp_path}")
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.text == "from secondary" and one.requests == 4 and two.requests == 1  # errors are not cached


async def test_an_anthropic_fallback(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    lm = FallbackLM([make_lm(one, "openai/gpt-fake"), make_lm(two, "anthropic/claude-fake")])
    one.fail_next(Fault.rate_limit(), times=2)
    resp = await lm(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert resp.text == "from secondary" and resp.model == "claude-fake"
    assert two.last_request.api == "anthropic" and two.last_request.json["system"] == "s"


# -- streaming ----------------------------------------------------------------------------------------------------


async def test_stream_falls_back_before_the_first_delta(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    two.set_responses(Reply("streamed from secondary", prompt_tokens=3, completion_tokens=4))
    lm, _, _ = pair(servers)
    one.fail_next(Fault.server_error(503), times=2)  # an HTTP error: no stream at all
    with track_usage() as usage:
        async with contextlib.aclosing(lm.stream("q")) as stream:
            text = "".join([d.text async for d in stream])
    assert text == "streamed from secondary" and list(usage.by_model()) == ["secondary-model"]
    entry = lm.history[-1]
    assert entry["model"] == "secondary-model" and entry["outputs"] == [text] and entry["usage"]["total_tokens"] == 7
    # an error event before any delta reached the caller (an Anthropic primary, overloaded mid-stream)
    anthropic = FallbackLM([make_lm(one, "anthropic/claude-fake"), make_lm(two, "openai/secondary-model")])
    one.fail_next(Fault.stream_error(after_chunks=1, error_type="overloaded_error"))
    text = "".join([d.text async for d in anthropic.stream("q")])
    assert text == "streamed from secondary"


async def test_stream_error_after_the_first_delta_propagates(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    one, two = servers
    lm, _, _ = pair(servers)
    one.fail_next(Fault.truncated(after_chunks=3))
    got: list[str] = []
    with pytest.raises(LMConnectionError):
        async with contextlib.aclosing(lm.stream("q")) as stream:
            async for delta in stream:
                got.append(delta.text)
    assert "".join(got) and two.requests == 0
    assert lm.history[-1]["error"].startswith("LMConnectionError")


async def test_stream_all_fail(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    lm, _, _ = pair(servers)
    one.fail_next(Fault.rate_limit(), times=2)
    two.fail_next(Fault.rate_limit(), times=2)
    with pytest.raises(RateLimitError) as info:
        async for _ in lm.stream("q"):
            pass
    assert isinstance(info.value.__cause__, RateLimitError)


def test_stream_sync(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, _ = servers
    lm, _, _ = pair(servers)
    one.fail_next(Fault.rate_limit(), times=2)
    assert "".join(d.text for d in lm.stream.sync("q")) == "from secondary"


# -- wherever an LM goes ---------------------------------------------------------------------------------------------


async def test_predict_with_context_and_per_call(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    one.set_responses(Fields(answer="primary answer"))
    two.set_responses(Fields(answer="secondary answer"))
    lm, _, _ = pair(servers)
    qa = asynclm.Predict("question -> answer")
    with asynclm.context(lm=lm):
        assert (await qa(question="q")).answer == "primary answer"
        one.fail_next(Fault.server_error(502), times=2)
        assert (await qa(question="q")).answer == "secondary answer"
    one.fail_next(Fault.rate_limit(), times=2)
    assert (await qa(question="q", lm=lm)).answer == "secondary answer"


def test_predict_sync_with_configure(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    two.set_responses(Fields(answer="secondary answer"))
    lm, _, _ = pair(servers)
    asynclm.configure(lm=lm)
    one.fail_next(Fault.rate_limit(), times=2)
    assert asynclm.Predict("question -> answer").sync(question="q").answer == "secondary answer"
    assert lm.sync("plain").text == "from primary"


async def test_streamify_through_a_fallback(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    two.set_responses(Fields(answer="streamed answer"))
    lm, _, _ = pair(servers)
    one.fail_next(Fault.rate_limit(), times=2)
    program = asynclm.streamify(asynclm.Predict("question -> answer", lm=lm))
    chunks: list[str] = []
    final = None
    async with contextlib.aclosing(program(question="q")) as stream:
        async for item in stream:
            if isinstance(item, asynclm.StreamChunk):
                chunks.append(item.text)
            else:
                final = item
    assert final is not None and final.answer == "streamed answer" and "".join(chunks) == "streamed answer"


def test_deepcopy_and_save_share_the_fallback(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer], tmp_path: Path
) -> None:
    lm, _, _ = pair(servers)
    program = asynclm.ChainOfThought("question -> answer", lm=lm)
    assert program.deepcopy().lm is lm and copy.deepcopy(lm) is lm
    program.save(tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert KEY not in json.dumps(saved)
    asynclm.ChainOfThought("question -> answer", lm=lm).load(tmp_path / "p.json")


def test_attributes_and_repr(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    lm, primary, secondary = pair(servers)
    assert lm.lms == (primary, secondary)
    assert lm.model == lm.model_name == "fallback:openai/primary-model,openai/secondary-model"
    assert repr(lm).startswith("FallbackLM([LM('openai/primary-model'")
    assert repr(lm).endswith("on=(RateLimitError, ServerError, LMConnectionError, LMTimeoutError))")
    assert KEY not in repr(lm)
    assert lm.preferred_adapter is None
    nested = FallbackLM([lm, "openai/third"])
    assert isinstance(nested.lms[1], LM) and nested.lms[1].model == "openai/third"


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("openai/a",), {}, TypeError, "takes a list of LMs"),
        ((["openai/a"],), {}, ValueError, "at least two LMs"),
        ((["openai/a", 3],), {}, TypeError, "item 1 is a int, not an LM"),
        ((["openai/a", "openai/b"],), {"on": "RateLimitError"}, TypeError, "exception class"),
        ((["openai/a", "openai/b"],), {"on": ()}, TypeError, "exception class"),
    ],
)
def test_bad_arguments_say_what_is_wrong(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        FallbackLM(*args, **kwargs)  # type: ignore[arg-type]


def test_configure_accepts_it() -> None:
    lm = FallbackLM(["openai/a", "openai/b"])
    asynclm.configure(lm=lm)
    assert asynclm.settings.lm is lm


async def test_each_lm_keeps_its_limits_in_a_batch(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    one, two = servers
    two.set_responses(Fields(answer="from the secondary"))
    two.latency = 0.02
    primary = make_lm(one, "openai/primary-model", max_retries=0)
    secondary = make_lm(two, "openai/secondary-model", max_concurrency=2)
    lm = FallbackLM([primary, secondary])
    one.fail_next(Fault.rate_limit(), times=12)
    qa = asynclm.Predict("question -> answer", lm=lm)
    preds = await qa.batch([{"question": f"q{i}"} for i in range(12)], concurrency=12)
    assert [p.answer for p in preds] == ["from the secondary"] * 12
    assert one.requests == 12 and two.requests == 12
    assert two.max_in_flight <= 2 and secondary.peak_concurrency == 2
