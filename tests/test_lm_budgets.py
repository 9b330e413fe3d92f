"""Budgets (``usage_limits``) and cost (``Usage.cost``, ``LM(price=...)``, genai-prices), over real
HTTP on loopback, on asyncio and trio.

The overshoot bound asserted here is the one docs/lm.md ("Budgets") states: a block admits a
request only if ``used + reserved + estimate <= limit``, so its final figure is at most
``limit + sum(actual - estimate)`` over the requests in flight at its last admission, hence at
most ``limit + peak_in_flight * (actual - estimate)`` when every request is under-estimated by the
same amount, and at most ``limit`` when no request is under-estimated.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from typing import Any

import anyio
import pytest

import asynclm
from asynclm.lm import LM, LMResponse, ServerError, Usage, UsageLimitExceeded, UsageLimits, track_usage, usage_limits
from asynclm.runtime import CrossLoopEvent, Parallel, asyncify
from asynclm.testing import FakeOpenAIServer, Fault, Fields, Reply

KEY = "sk-budget-SECRET-7777"
# genai-prices needs Python >= 3.11; on 3.10 only LM(price={...}) prices calls
needs_genai_prices = pytest.mark.skipif(
    importlib.util.find_spec("genai_prices") is None, reason="genai-prices is not installed (Python >= 3.11)"
)
P, C = 40, 20  # the usage every scripted reply reports


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai_server.set_responses(Reply("fine", prompt_tokens=P, completion_tokens=C))
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, **kw: Any) -> LM:
    kw.setdefault("cache", False)
    lm = LM("openai/fake-model", base_url=server.base_url, api_key=KEY, **kw)
    lm.backoff_base = 0.001
    return lm


def genai_cost(model: str, provider: str, prompt: int, completion: int, cached: int = 0) -> float:
    from genai_prices import Usage as PriceUsage, calc_price

    usage = PriceUsage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached or None)
    return float(calc_price(usage, model, provider_id=provider).total_price)


def assert_idle(limits: UsageLimits) -> None:
    assert limits.in_flight == 0
    for figure in (limits.reserved_input_tokens, limits.reserved_output_tokens, limits.reserved_total_tokens):
        assert figure == pytest.approx(0.0, abs=1e-6)
    assert limits.reserved_cost == pytest.approx(0.0, abs=1e-12)


# -- the limits, one at a time --------------------------------------------------------------------


async def test_max_requests_is_exact_under_concurrency(server: FakeOpenAIServer) -> None:
    server_latency = Reply("fine", prompt_tokens=P, completion_tokens=C, latency=0.05)
    server.set_responses(server_latency)
    lm = make_lm(server)
    outcomes: list[object] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await lm(f"q{i:03d}"))
        except UsageLimitExceeded as exc:
            outcomes.append(exc)

    async with usage_limits(max_requests=10) as limits:
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
    ok = [o for o in outcomes if isinstance(o, LMResponse)]
    refused = [o for o in outcomes if isinstance(o, UsageLimitExceeded)]
    assert len(ok) == 10 == limits.requests == server.requests and len(refused) == 54
    assert limits.total_tokens == 10 * (P + C) and limits.exceeded is not None
    assert all(e.limit_name == "max_requests" and e.limit == 10 for e in refused)
    assert_idle(limits)


async def test_token_limits_reserve_the_estimate_and_name_the_figures(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_tokens=100)
    async with usage_limits(max_output_tokens=250) as limits:
        await lm("a")  # reserves 100 output tokens, uses 20
        await lm("b")
        assert (limits.output_tokens, limits.requests) == (40, 2)
        with pytest.raises(UsageLimitExceeded) as info:
            await lm("c", max_tokens=300)  # 40 used + 300 estimated > 250
    err = info.value
    assert isinstance(err, asynclm.LMError) and err.status is None
    assert (err.limit_name, err.limit, err.used, err.reserved, err.estimate) == ("max_output_tokens", 250, 40, 0, 300)
    assert "max_output_tokens=250" in str(err) and "used 40" in str(err) and "reserved 0" in str(err)
    assert "limit 250" in str(err) and "estimate 300" in str(err)
    assert server.requests == 2 and KEY not in str(err)


async def test_input_and_total_limits(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_tokens=10)
    async with usage_limits(max_input_tokens=P + 10) as limits:
        await lm("x")
        with pytest.raises(UsageLimitExceeded, match="max_input_tokens") as info:
            await lm("y")  # 40 used + len(body) / 4 estimated > 50
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "y"}], "max_tokens": 10}
    assert info.value.estimate == len(json.dumps(body, separators=(",", ":"))) / 4
    assert limits.input_tokens == P and info.value.used == P
    async with usage_limits(max_total_tokens=P + C + 5) as limits:
        await lm("x")
        with pytest.raises(UsageLimitExceeded, match="max_total_tokens"):
            await lm("y")
    assert limits.total_tokens == P + C


async def test_sticky_after_a_limit_is_reached(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_tokens=10)
    async with usage_limits(max_total_tokens=1000) as limits:
        await lm("fits")
        with pytest.raises(UsageLimitExceeded) as first:
            await lm("too big", max_tokens=5000)
        with pytest.raises(UsageLimitExceeded, match="was reached earlier in this block") as later:
            await lm("small, would fit")  # refused all the same: the block is closed
    assert limits.exceeded is first.value and later.value.limit_name == "max_total_tokens"
    assert later.value is not first.value and server.requests == 1
    async with usage_limits(max_total_tokens=1000):  # a new block starts open
        await lm("fits again")
    assert server.requests == 2


async def test_limits_are_validated() -> None:
    for bad in ({"max_requests": -1}, {"max_total_tokens": 1.5}, {"max_requests": True}, {"max_cost": -0.1}):
        with pytest.raises(ValueError, match="usage_limits"):
            usage_limits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cost=nan"):
        usage_limits(max_cost=float("nan"))
    block = usage_limits(max_requests=1)
    with block, pytest.raises(RuntimeError, match="already active"):
        with block:
            pass


# -- nesting, cache hits, retries ---------------------------------------------------------------


async def test_nested_inner_stricter(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    async with usage_limits(max_requests=10) as outer:
        with usage_limits(max_requests=3) as inner:
            for i in range(3):
                await lm(f"in {i}")
            with pytest.raises(UsageLimitExceeded) as info:
                await lm("in 4")
        assert info.value.limit == 3 and inner.exceeded is info.value and outer.exceeded is None
        for i in range(7):  # the outer block is still open
            await lm(f"out {i}")
        with pytest.raises(UsageLimitExceeded) as info:
            await lm("out 8")
    assert info.value.limit == 10 and outer.exceeded is info.value
    assert (inner.requests, outer.requests, server.requests) == (3, 10, 10)
    assert (inner.total_tokens, outer.total_tokens) == (3 * (P + C), 10 * (P + C))


async def test_nested_outer_stricter(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    with usage_limits(max_requests=2) as outer:
        async with usage_limits(max_requests=10) as inner:
            await lm("1")
            await lm("2")
            with pytest.raises(UsageLimitExceeded) as info:
                await lm("3")
            assert info.value.limit == 2 and outer.exceeded is info.value and inner.exceeded is None
            with pytest.raises(UsageLimitExceeded, match="reached earlier"):
                await lm("4")  # the outer block's limit holds inside the inner one
    assert (inner.requests, outer.requests, server.requests) == (2, 2, 2)


async def test_sibling_blocks_do_not_share(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    counts: list[int] = []

    async def sibling(n: int) -> None:
        with usage_limits(max_requests=n) as mine:
            for i in range(n):
                await lm(f"sibling {n} {i}")
        counts.append(mine.requests)

    async with anyio.create_task_group() as tg:
        for n in (2, 3, 4):
            tg.start_soon(sibling, n)
    assert sorted(counts) == [2, 3, 4]


async def test_cache_hits_are_free_and_never_refused(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, cache="memory", price={"input": 1.0, "output": 2.0})
    prompt = f"cached {uuid.uuid4()}"
    with track_usage() as usage, usage_limits(max_requests=1, max_cost=1.0) as limits:
        first = await lm(prompt)
        with pytest.raises(UsageLimitExceeded):
            await lm(f"another {uuid.uuid4()}")  # the block is closed now...
        hits = [await lm(prompt) for _ in range(3)]  # ...but cache hits still answer
    assert not first.cache_hit and all(h.cache_hit and h.usage.cost == 0.0 for h in hits)
    assert all(h.usage.total_tokens == 0 for h in hits)
    assert limits.requests == 1 and server.requests == 1
    assert usage.cost == pytest.approx((P * 1.0 + C * 2.0) / 1e6) and usage.cache_hits == 3


async def test_a_retry_is_checked_but_is_not_a_new_request(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_retries=2)
    server.fail_next(Fault.server_error(500), times=2)
    async with usage_limits(max_requests=1) as limits:
        await lm("retried twice")  # three attempts, one request
    assert limits.requests == 1 and server.requests == 3 and limits.total_tokens == P + C
    assert_idle(limits)
    server.fail_next(Fault.server_error(500), times=3)
    async with usage_limits(max_requests=5) as limits:
        with pytest.raises(ServerError):
            await lm("fails")
    assert limits.requests == 1 and limits.total_tokens == 0  # a failed request used nothing
    assert_idle(limits)


async def test_a_retry_does_not_start_once_the_block_is_closed(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_retries=3)
    lm.backoff_base = lm.backoff_max = 0.5
    server.fail_next(Fault.server_error(503))
    outcome: list[object] = []

    async def first() -> None:
        try:
            outcome.append(await lm("first, then a retry"))
        except UsageLimitExceeded as exc:
            outcome.append(exc)

    async with usage_limits(max_requests=1) as limits, anyio.create_task_group() as tg:
        tg.start_soon(first)
        await server.wait_until(lambda s: s.requests == 1)  # the first attempt failed; backing off
        with pytest.raises(UsageLimitExceeded, match="max_requests=1"):
            await lm("second")  # closes the block
    assert isinstance(outcome[0], UsageLimitExceeded) and "reached earlier" in str(outcome[0])
    assert server.requests == 1 and limits.requests == 1
    assert_idle(limits)


async def test_the_block_holds_across_sync_hops_asyncify_and_batch_items(server: FakeOpenAIServer) -> None:
    server.set_responses(Fields(answer="Paris"))
    lm = make_lm(server)
    qa = asynclm.Predict("question -> answer")

    def blocking_user_code() -> None:  # an asyncify worker thread calling .sync() on our loop
        lm.sync("from asyncify")

    with asynclm.context(lm=lm):
        async with usage_limits(max_requests=8) as limits:
            await asyncify(blocking_user_code)()
            await anyio.to_thread.run_sync(lambda: lm.sync("to_thread"))
            results = await qa.batch([{"question": f"q{i}"} for i in range(12)], return_exceptions=True)
            more = await Parallel(concurrency=4, return_exceptions=True)([(lm, (f"p{i}",)) for i in range(3)])
    answered = [r for r in results if isinstance(r, asynclm.Prediction)]
    refused = [r for r in results if isinstance(r, UsageLimitExceeded)]
    assert len(answered) == 6 and len(refused) == 6 and len(answered) + len(refused) == len(results)
    assert all(r.answer == "Paris" for r in answered)
    assert len({id(r) for r in refused}) == 6  # each item its own error object
    assert all(isinstance(r, UsageLimitExceeded) for r in more)
    assert limits.requests == 8 == server.requests


async def test_the_block_holds_in_evaluate_and_optimizers(server: FakeOpenAIServer) -> None:
    from asynclm.evaluate import answer_exact_match

    server.set_responses(Fields(answer="Paris"))
    lm = make_lm(server)
    qa = asynclm.Predict("question -> answer")
    qa.lm = lm  # type: ignore[attr-defined]
    examples = [asynclm.Example(question=f"q{i}", answer="Paris").with_inputs("question") for i in range(6)]
    evaluate = asynclm.Evaluate(devset=examples, metric=answer_exact_match, max_errors=None, progress=False)
    async with usage_limits(max_requests=4) as limits:
        await evaluate(qa)
    assert limits.requests == 4 == server.requests and isinstance(limits.exceeded, UsageLimitExceeded)
    boot = asynclm.BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=4, max_errors=None)
    async with usage_limits(max_requests=2) as limits:
        try:
            await boot.compile(qa, trainset=examples)
        except UsageLimitExceeded:
            pass
    assert limits.requests == 2 and server.requests == 4 + 2


def test_sync_calls_and_plain_threads_with_the_context(server: FakeOpenAIServer, portal_backend: str) -> None:
    lm = make_lm(server)
    with usage_limits(max_requests=3) as limits:
        lm.sync("main")
        ctx = contextvars.copy_context()  # how a plain thread joins the block
        thread = threading.Thread(target=ctx.run, args=(lambda: lm.sync("thread"),))
        thread.start()
        thread.join()
        Parallel(concurrency=2, return_exceptions=True).sync([(lm, (f"p{i}",)) for i in range(3)])
    assert limits.requests == 3 == server.requests
    assert isinstance(limits.exceeded, UsageLimitExceeded)


async def test_scripted_lm_keeps_budgets_too() -> None:
    from asynclm.testing import ScriptedLM

    lm = ScriptedLM({"answer": "Paris"}, usage=(30, 10), price={"input": 1.0, "output": 1.0})
    qa = asynclm.Predict("question -> answer", lm=lm)
    async with usage_limits(max_requests=3) as limits:
        results = await qa.batch([{"question": f"q{i}"} for i in range(5)], return_exceptions=True)
    assert [type(r).__name__ for r in results].count("UsageLimitExceeded") == 2
    assert limits.requests == 3 and len(lm.requests) == 3 and limits.total_tokens == 3 * 40
    assert limits.cost == pytest.approx(3 * 40 / 1e6)
    assert_idle(limits)
    async with usage_limits(max_total_tokens=1000) as limits:
        async with contextlib.aclosing(lm.stream("streamed")) as stream:
            async for _ in stream:
                assert limits.in_flight == 1
    assert limits.requests == 1 and limits.total_tokens == 40
    assert_idle(limits)


async def test_streams_count_and_settle(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_tokens=30, price={"input": 1.0, "output": 1.0})
    async with usage_limits(max_total_tokens=1000, max_cost=1.0) as limits:
        async for delta in lm.stream("tell me"):
            assert delta.text is not None
            assert limits.in_flight == 1
    assert (limits.requests, limits.total_tokens) == (1, P + C)
    assert limits.cost == pytest.approx((P + C) / 1e6)
    assert_idle(limits)


# -- waiting for requests in flight ------------------------------------------------------------


async def test_a_request_that_fits_once_others_end_waits_for_them(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("fine", prompt_tokens=P, completion_tokens=C, latency=0.2))
    lm = make_lm(server, max_tokens=400)  # estimated ~420 tokens a request, 60 used
    done: list[LMResponse] = []

    async def call(prompt: str) -> None:
        done.append(await lm(prompt))

    async with usage_limits(max_total_tokens=600) as limits:
        async with anyio.create_task_group() as tg:
            for prompt in ("first", "secnd", "third"):
                tg.start_soon(call, prompt)
    assert len(done) == 3 and limits.peak_in_flight == 1  # one at a time: each waited for the one before
    assert limits.total_tokens == 3 * (P + C) and limits.exceeded is None
    assert_idle(limits)


async def test_a_waiting_request_keeps_its_deadline(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("fine", prompt_tokens=P, completion_tokens=C, latency=0.5))
    lm = make_lm(server, max_tokens=400)
    async with usage_limits(max_total_tokens=600) as limits, anyio.create_task_group() as tg:
        tg.start_soon(lm, "slow")
        await server.wait_until(lambda s: s.in_flight == 1)
        with pytest.raises(asynclm.LMTimeoutError):
            await lm("waits, then times out", timeout=0.1)
        assert limits.requests == 1 and limits.in_flight == 1 and not limits._waiting
    assert limits.requests == 1 and limits.total_tokens == P + C
    assert_idle(limits)


async def test_no_wait_when_another_limit_refuses_anyway(server: FakeOpenAIServer) -> None:
    server.set_responses(Reply("fine", prompt_tokens=P, completion_tokens=C, latency=0.5))
    lm = make_lm(server, max_tokens=400)
    async with usage_limits(max_output_tokens=1000, max_total_tokens=800) as limits:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lm, "slow")  # reserves 400 output tokens, ~420 in all
            await server.wait_until(lambda s: s.in_flight == 1)
            # 800 more output tokens fit once "slow" ends, but ~820 tokens in all never fit in 800:
            # refused at once, without waiting for "slow"
            with anyio.fail_after(0.3), pytest.raises(UsageLimitExceeded, match="max_total_tokens=800"):
                await lm("big", max_tokens=800)
    assert limits.requests == 1


async def test_an_open_stream_is_not_waited_for(server: FakeOpenAIServer) -> None:
    """The caller may hold the stream it would wait for: refuse at once instead of hanging."""
    lm = make_lm(server, max_tokens=400)
    async with usage_limits(max_total_tokens=600) as limits:
        async with contextlib.aclosing(lm.stream("a story")) as stream:
            async for _ in stream:
                with pytest.raises(UsageLimitExceeded, match="max_total_tokens=600"):
                    await lm("while the stream is open")
                break
    assert limits.streams_in_flight == 0
    assert_idle(limits)


async def test_cross_loop_event_wakes_its_loop_from_another_thread() -> None:
    event = CrossLoopEvent()  # what a waiting request waits on
    setter = threading.Timer(0.05, event.set)
    setter.start()
    with anyio.fail_after(5):
        await event.wait()
    setter.join()
    same_thread = CrossLoopEvent()
    assert same_thread.set()  # from its own loop's thread: set at once
    await same_thread.wait()


# -- 256 concurrent calls over 8 threads --------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "limit"),
    [
        (5, 4000),  # every request under-estimated: estimate ~ 5 + len/4 tokens, actual 60
        (200, 6000),  # every request over-estimated: the limit itself is never crossed
    ],
)
def test_budget_holds_over_256_concurrent_calls_in_8_threads(
    fake_openai_server: FakeOpenAIServer, portal_backend: str, max_tokens: int, limit: int
) -> None:
    server = fake_openai_server
    server.set_responses(Reply("fine", prompt_tokens=P, completion_tokens=C, latency=0.02))
    lm = make_lm(server, max_tokens=max_tokens)
    outcomes: list[object] = []
    lock = threading.Lock()

    def portal_thread(t: int) -> None:  # .sync() batches on this thread's portal
        items = [(lm, (f"t{t} q{i:03d}",)) for i in range(32)]
        got = Parallel(concurrency=32, return_exceptions=True).sync(items)
        with lock:
            outcomes.extend(got)

    def own_loop_thread(t: int) -> None:  # a thread running its own event loop
        async def main() -> None:
            async def one(i: int) -> None:
                try:
                    got: object = await lm(f"t{t} q{i:03d}")
                except UsageLimitExceeded as exc:
                    got = exc
                with lock:
                    outcomes.append(got)

            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(one, i)

        anyio.run(main, backend=portal_backend)

    with usage_limits(max_total_tokens=limit) as limits:
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(portal_thread if t % 2 else own_loop_thread, t)
            )
            for t in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(outcomes) == 256
    ok = [o for o in outcomes if isinstance(o, LMResponse)]
    refused = [o for o in outcomes if isinstance(o, UsageLimitExceeded)]
    assert len(ok) + len(refused) == 256 and refused, outcomes[:3]
    assert len(ok) == limits.requests == server.requests
    assert limits.total_tokens == sum(r.usage.total_tokens for r in ok) == len(ok) * (P + C)
    assert_idle(limits)
    # every prompt has the same length, so every request has the same estimate
    estimate = refused[0].estimate
    assert all(e.estimate == estimate for e in refused)
    under = (P + C) - estimate  # by how much each request was under-estimated (< 0: over)
    if under > 0:
        assert limits.total_tokens <= limit + limits.peak_in_flight * under
    else:
        assert limits.total_tokens <= limit
    # and the budget gets used: a request is refused only when its estimate does not fit even
    # with nothing in flight (until then it waits for the requests in flight to end)
    assert limits.total_tokens > limit - estimate
    assert limits.peak_in_flight > 1  # the calls did run concurrently


# -- cost -----------------------------------------------------------------------------------------


def _usage_reply(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


@needs_genai_prices
async def test_cost_of_a_known_model_matches_genai_prices(server: FakeOpenAIServer) -> None:
    server.set_responses([_usage_reply(1200, 345, 0), _usage_reply(5000, 10, 3072)])
    lm = LM("openai/gpt-4o-mini", base_url=server.base_url, api_key=KEY, cache=False, price="openai")
    with track_usage() as usage:
        first = await lm("one")
        second = await lm("two")
    expected = [genai_cost("gpt-4o-mini", "openai", 1200, 345), genai_cost("gpt-4o-mini", "openai", 5000, 10, 3072)]
    assert first.usage.cost == pytest.approx(expected[0], rel=1e-12)
    assert second.usage.cost == pytest.approx(expected[1], rel=1e-12) and second.usage.cached_tokens == 3072
    assert expected[1] < genai_cost("gpt-4o-mini", "openai", 5000, 10)  # the cached tokens were cheaper
    assert usage.cost == pytest.approx(sum(expected), rel=1e-12) and usage.unknown_cost_calls == 0
    assert usage.by_model()["gpt-4o-mini"]["cost"] == pytest.approx(sum(expected), rel=1e-12)
    assert usage.usage.cost == pytest.approx(sum(expected), rel=1e-12)
    entry = lm.history[-1]
    assert entry["usage"]["cost"] == pytest.approx(expected[1], rel=1e-12)
    json.dumps(entry["usage"])


@needs_genai_prices
async def test_default_base_url_is_priced_as_openai(server: FakeOpenAIServer) -> None:
    """An LM at OpenAI's own URL (here redirected to the fake server by an httpx hook)."""
    httpx = pytest.importorskip("httpx")
    server.set_responses(_usage_reply(1000, 500, 0))

    async def to_fake_server(request: Any) -> None:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=server.port)

    lm = LM(
        "openai/gpt-4o-mini",
        api_key=KEY,
        cache=False,
        http_client_factory=lambda: httpx.AsyncClient(event_hooks={"request": [to_fake_server]}),
    )
    response = await lm("hi")
    assert response.usage.cost == pytest.approx(genai_cost("gpt-4o-mini", "openai", 1000, 500), rel=1e-12)
    assert server.requests == 1


@needs_genai_prices
@pytest.mark.parametrize(
    ("model", "provider", "prompt", "completion", "cached"),
    [
        ("gpt-3.5-turbo", "openai", 1000, 500, 200),  # no cache price: cached tokens at the input price
        ("gemini-2.5-pro", "google", 250_000, 1000, 10_000),  # tiered (above 200k input tokens)
        ("gemini-2.5-pro", "google", 1000, 1000, 0),
        ("claude-sonnet-4-5", "anthropic", 3000, 700, 1000),  # tiered, with a cache read price
        ("deepseek-chat", "deepseek", 3000, 700, 0),  # time-of-day prices
    ],
)
async def test_linear_tiered_and_conditional_prices_match_genai_prices(
    server: FakeOpenAIServer, model: str, provider: str, prompt: int, completion: int, cached: int
) -> None:
    server.set_responses(_usage_reply(prompt, completion, cached))
    lm = LM(f"openai/{model}", base_url=server.base_url, api_key=KEY, cache=False, price=provider)
    response = await lm("hi")
    assert response.usage.cost == pytest.approx(genai_cost(model, provider, prompt, completion, cached), rel=1e-12)


@needs_genai_prices
async def test_public_calc_price_is_the_fallback(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """If genai-prices' model data changes shape, every call goes through its public calc_price."""
    from asynclm.lm import _cost

    def changed(*args: object) -> None:
        raise AttributeError("no such internal")

    monkeypatch.setattr(_cost, "_resolve_fast", changed)
    monkeypatch.setattr(_cost, "_LOOKUPS", {})
    server.set_responses(_usage_reply(1234, 56, 200))
    lm = LM("openai/gpt-4o-mini", base_url=server.base_url, api_key=KEY, cache=False, price="openai")
    response = await lm("hi")
    assert response.usage.cost == pytest.approx(genai_cost("gpt-4o-mini", "openai", 1234, 56, 200), rel=1e-12)
    unknown = LM("openai/no-such-model-xyz", base_url=server.base_url, api_key=KEY, cache=False, price="openai")
    assert (await unknown("hi")).usage.cost is None


@needs_genai_prices
async def test_genai_prices_recognises_a_providers_base_url() -> None:
    lm = LM("openai/llama-3.1-8b-instant", base_url="https://api.groq.com/openai/v1", api_key=KEY)
    await lm._pricer.load()  # what the first request does
    assert lm._pricer.known
    expected = genai_cost("llama-3.1-8b-instant", "groq", 1000, 100)
    assert lm._pricer.cost(Usage(1000, 100)) == pytest.approx(expected, rel=1e-12)
    unknown = LM("openai/no-such-model-xyz", base_url="https://api.groq.com/openai/v1", api_key=KEY)
    await unknown._pricer.load()
    assert not unknown._pricer.known and unknown._pricer.cost(Usage(1, 1)) is None


async def test_price_override_wins(server: FakeOpenAIServer) -> None:
    server.set_responses(_usage_reply(2000, 300, 1000))
    price = {"input": 2.0, "output": 8.0, "cached_input": 0.5}
    lm = LM("openai/gpt-4o-mini", api_key=KEY, base_url=server.base_url, cache=False, price=price)
    response = await lm("hi")
    assert response.usage.cost == pytest.approx((1000 * 2.0 + 1000 * 0.5 + 300 * 8.0) / 1e6, rel=1e-12)
    rates = {"input": 1, "output": 3}
    plain = LM("openai/gpt-4o-mini", api_key=KEY, base_url=server.base_url, cache=False, price=rates)
    response = await plain("hi")
    assert response.usage.cost == pytest.approx((2000 * 1 + 300 * 3) / 1e6, rel=1e-12)  # cached: the input price
    assert plain.price == {"input": 1, "output": 3}


async def test_a_response_without_usage_has_an_unknown_cost(server: FakeOpenAIServer) -> None:
    reply = _usage_reply(1, 1, 0)
    del reply["usage"]
    server.set_responses(reply)
    lm = make_lm(server, price={"input": 1.0, "output": 1.0})
    with track_usage() as usage:
        response = await lm("hi")
    assert response.usage.total_tokens == 0 and response.usage.cost is None
    assert usage.cost is None and usage.unknown_cost_calls == 1


def test_price_is_validated() -> None:
    cases: list[tuple[Any, type[Exception], str]] = [
        ({"input": 1.0}, ValueError, "missing 'output'"),
        ({"input": 1.0, "output": 2.0, "cache": 1.0}, ValueError, "unknown key"),
        ({"input": -1.0, "output": 2.0}, ValueError, ">= 0"),
        ({"input": float("nan"), "output": 2.0}, ValueError, "finite"),
        ({"input": True, "output": 2.0}, ValueError, "finite number"),
        ({"input": "1", "output": 2.0}, ValueError, "finite number"),
        (0.15, TypeError, "dict of USD per 1M tokens"),
        ("", ValueError, "provider id"),
    ]
    if importlib.util.find_spec("genai_prices") is None:
        cases.append(("openai", ImportError, "pip install genai-prices"))
    else:
        cases.append(("no-such-provider", ValueError, "knows no provider 'no-such-provider'"))
    for price, error, match in cases:
        with pytest.raises(error, match=match):
            LM("openai/m", api_key=KEY, price=price)


async def test_unknown_price_is_none_and_max_cost_fails_before_any_request(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)  # a local server, no price given: unknown
    priced = make_lm(server, price={"input": 1.0, "output": 1.0})
    with track_usage() as usage:
        response = await lm("hi")
        await priced("hi")
    assert response.usage.cost is None and lm.history[-1]["usage"]["cost"] is None
    assert usage.cost is None and usage.unknown_cost_calls == 1  # one unknown part: an unknown sum
    assert usage.known_cost == pytest.approx((P + C) / 1e6)
    assert usage.by_model()["fake-model"]["cost"] is None
    before = server.requests
    async with usage_limits(max_cost=0.01) as limits:
        with pytest.raises(ValueError, match=r"price of 'openai/fake-model'.*LM\(\.\.\., price="):
            await lm("refused up front")
        await priced("priced: fine")
    assert server.requests == before + 1 and limits.requests == 1
    assert limits.cost == pytest.approx((P + C) / 1e6)


async def test_max_cost(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_tokens=20, price={"input": 1000.0, "output": 1000.0})  # $0.001 per token
    async with usage_limits(max_cost=0.5) as limits:
        with pytest.raises(UsageLimitExceeded) as info:
            for i in range(100):
                await lm(f"q{i:02d}")
    used = limits.requests
    assert used == server.requests and limits.cost == pytest.approx(used * (P + C) * 0.001)
    assert limits.cost is not None and limits.cost <= 0.5  # every estimate was above the actual cost
    err = info.value
    assert err.limit_name == "max_cost" and "$" in str(err) and err.used == pytest.approx(limits.cost)


def test_importing_asynclm_does_not_import_genai_prices() -> None:
    code = (
        "import sys, asynclm\n"
        "lm = asynclm.LM('openai/m', base_url='http://127.0.0.1:9/v1')\n"
        "priced = asynclm.LM('openai/m', base_url='http://127.0.0.1:9/v1', price={'input': 1, 'output': 2})\n"
        "with asynclm.usage_limits(max_cost=1.0), asynclm.track_usage():\n"
        "    pass\n"
        "assert 'genai_prices' not in sys.modules, 'genai-prices was imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_genai_prices
def test_decimal_reference_is_exact() -> None:  # a sanity check of the reference itself
    from genai_prices import Usage as PriceUsage, calc_price

    price = calc_price(PriceUsage(input_tokens=1_000_000, output_tokens=1_000_000), "gpt-4o-mini", provider_id="openai")
    assert price.total_price == Decimal("0.15") + Decimal("0.6")
