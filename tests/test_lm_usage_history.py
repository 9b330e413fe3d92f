"""Usage roll-up (child tasks, Parallel items, asyncify threads, .sync() portal calls, nesting)
and call history (per LM, bounded, JSON-able, secret-free; inspect_history)."""

from __future__ import annotations

import contextvars
import io
import json
import threading

import anyio
import pytest

import asynclm
from asynclm.lm import LM, ServerError, Usage, inspect_history, track_usage
from asynclm.runtime import Parallel, asyncify
from asynclm.testing import FakeOpenAIServer, Fault, Reply

KEY = "sk-usage-SECRET-5555"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai_server.set_responses(Reply("fine", prompt_tokens=10, completion_tokens=3))
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    lm = LM("openai/fake-model", base_url=server.base_url, api_key=KEY, cache=False, **kw)  # type: ignore[arg-type]
    lm.backoff_base = 0.001
    return lm


async def test_usage_rolls_up_over_tasks_parallel_threads_and_sync_calls(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)

    def blocking_user_code() -> None:  # an asyncify worker thread calling .sync(): runs on our loop
        lm.sync("from asyncify")

    def plain_thread() -> None:  # a plain thread: its own portal loop
        lm.sync("from a thread")
        lm.sync("from a thread, again")

    with track_usage() as usage:
        await lm("direct")
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(lm, f"child {i}")
        await Parallel(concurrency=4)([(lm, (f"item {i}",)) for i in range(5)])
        await asyncify(blocking_user_code)()
        ctx = contextvars.copy_context()  # how a user hands the block's context to a thread
        thread = threading.Thread(target=ctx.run, args=(plain_thread,))
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
    calls = 1 + 3 + 5 + 1 + 2
    assert usage.calls == calls == server.requests
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        10 * calls,
        3 * calls,
        13 * calls,
    )
    assert usage.usage == Usage(10 * calls, 3 * calls)
    assert usage.by_model() == {
        "fake-model": {
            "prompt_tokens": 10 * calls,
            "completion_tokens": 3 * calls,
            "total_tokens": 13 * calls,
            "calls": calls,
            "cost": None,  # a local test server: no known price
        }
    }
    await lm("after the block")
    assert usage.calls == calls  # not counted: outside the block


def test_usage_rolls_up_through_sync_and_parallel_sync(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    with track_usage() as usage:
        lm.sync("one")
        Parallel(concurrency=3).sync([(lm, (f"p{i}",)) for i in range(6)])
    assert usage.calls == 7 and usage.total_tokens == 13 * 7


async def test_nested_blocks_and_sibling_isolation(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    sibling_usage: list[int] = []

    async def sibling() -> None:
        with track_usage() as own:
            await lm("sibling")
        sibling_usage.append(own.calls)

    with track_usage() as outer:
        await lm("outer")
        with track_usage() as inner:
            await lm("inner")
        async with anyio.create_task_group() as tg:
            tg.start_soon(sibling)
    assert (outer.calls, inner.calls, sibling_usage) == (3, 1, [1])
    assert inner.total_tokens == 13 and outer.total_tokens == 39


async def test_failed_calls_cost_nothing_and_retries_are_not_double_counted(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, max_retries=1)
    server.fail_next(Fault.server_error(500))  # retried, then succeeds
    with track_usage() as usage:
        await lm("retried")
        server.fail_next(Fault.server_error(500), times=2)
        with pytest.raises(ServerError):
            await lm("failed")
    assert usage.calls == 1 and usage.total_tokens == 13


async def test_history_entries(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, temperature=0.1)
    await lm(messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "question"}], n=1)
    entry = lm.history[-1]
    assert entry["model"] == "fake-model"
    assert entry["messages"][-1] == {"role": "user", "content": "question"}
    assert entry["params"] == {"temperature": 0.1, "n": 1}
    assert entry["outputs"] == ["fine"]
    assert entry["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "cached_tokens": 0,
        "cost": None,
    }
    assert entry["cache_hit"] is False and entry["duration"] > 0 and entry["timestamp"] > 0
    server.fail_next(Fault.error(400))
    with pytest.raises(asynclm.BadRequestError):
        await lm("bad")
    assert "BadRequestError" in lm.history[-1]["error"]
    text = json.dumps(list(lm.history))  # JSON-able
    assert KEY not in text and "SECRET" not in text


async def test_history_is_bounded_per_lm(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    other = make_lm(server)
    await other("the other lm")
    async with anyio.create_task_group() as tg:
        for i in range(130):
            tg.start_soon(lm, f"call {i}")
    assert len(lm.history) == 100
    assert len(other.history) == 1


async def test_inspect_history_prints_the_last_calls(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    await lm("first question")
    await lm(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "second question"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            }
        ]
    )
    out = io.StringIO()
    inspect_history(2, file=out)
    text = out.getvalue()
    assert "first question" in text and "second question" in text and "<image_url>" in text
    assert text.count("--- response ---") == 2 and "fine" in text
    assert text.index("first question") < text.index("second question")
    assert KEY not in text
    out = io.StringIO()
    inspect_history(1, file=out)
    assert "first question" not in out.getvalue()
