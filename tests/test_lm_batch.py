"""``BatchLM``: provider Batch APIs (OpenAI files + batches) over real HTTP against FakeOpenAIServer,
for whole programs: one provider batch per program step, per-line errors, cancellation, crash and
re-attach, budgets, streaming refused. Both backends."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import asynclm as alm
from asynclm.lm import BatchLM, LMError, LMTimeoutError, RateLimitError, UsageLimitExceeded, track_usage, usage_limits
from asynclm.lm._batch_journal import FILE_NAME, journal_for
from asynclm.testing import FakeOpenAIServer, Fault, Fields

from .helpers import run_threads_interleaved

KEY = "sk-test-batch"


def _fields(inputs: dict[str, str]) -> dict[str, str]:
    if "question" in inputs:
        return {"draft": inputs["question"] + "!"}
    return {"answer": inputs["draft"].upper()}


class TwoStep(alm.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = alm.Predict("question -> draft")
        self.answer = alm.Predict("draft -> answer")

    async def forward(self, question: str) -> alm.Prediction:
        draft = (await self.draft(question=question)).draft
        return await self.answer(draft=draft)


def make(server: FakeOpenAIServer, provider: str = "openai", **kw: Any) -> BatchLM:
    model = "openai/gpt-4o-mini" if provider == "openai" else "anthropic/claude-haiku-4-5"
    lm = alm.LM(model, base_url=server.base_url, api_key=KEY, price={"input": 1.0, "output": 2.0})
    lm.backoff_base = 0.001
    kw.setdefault("window", 0.2)
    kw.setdefault("poll_interval", 0.05)
    return BatchLM(lm, **kw)


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(Fields(_fields), batch_delay=0.1) as s:
        yield s


async def test_a_two_step_program_over_1000_items_takes_two_provider_batches(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    blm = make(server)
    items = [{"question": f"q{i}"} for i in range(1000)]
    with alm.context(lm=blm, cache_dir=str(tmp_path)), track_usage() as usage:
        preds = await TwoStep().batch(items, concurrency=None)
    assert [p.answer for p in preds] == [f"Q{i}!" for i in range(1000)]
    assert [h["requests"] for h in blm.history if h["status"] == "completed"] == [1000, 1000]
    assert server.batches_created == 2
    assert server.requests == 2000  # each line answered once, through the normal response logic
    assert not (tmp_path / FILE_NAME).exists() or journal_for(str(tmp_path)).batch_ids() == []
    # usage and cost with the batch discount: half the price of the same tokens
    total = usage.usage
    assert total.prompt_tokens > 0
    expected = (total.prompt_tokens * 1.0 + total.completion_tokens * 2.0) / 1e6 * 0.5
    assert usage.cost == pytest.approx(expected)
    # a rerun is served from the cache: no new batch
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        again = await TwoStep().batch(items[:10], concurrency=None)
    assert [p.answer for p in again] == [f"Q{i}!" for i in range(10)]
    assert server.batches_created == 2


async def test_the_requests_and_files_on_the_wire(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.set_responses("fine")
    blm = make(server)
    with alm.context(cache_dir=str(tmp_path)):
        response = await blm("hello", temperature=0.5)
    assert response.text == "fine" and not response.cache_hit
    request = server.last_request
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}],
                            "temperature": 0.5}  # fmt: skip
    assert request.headers["authorization"] == f"Bearer {KEY}"  # the upload's headers
    assert blm.history[-1]["status"] == "completed"


async def test_per_line_failures_are_per_item_typed_errors(server: FakeOpenAIServer, tmp_path: Path) -> None:
    def script(request: Any) -> Any:
        text = request.messages[-1]["content"]
        if "q3" in text or "q7" in text:
            return Fault.error(429, message="slow down")
        return Fields(_fields).render(request)

    server.set_responses(script)
    blm = make(server)
    qa = alm.Predict("question -> draft")
    items = [{"question": f"q{i}"} for i in range(10)]
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await qa.batch(items, concurrency=None, return_exceptions=True)
        assert isinstance(preds[3], RateLimitError) and "slow down" in str(preds[3])
        assert isinstance(preds[7], RateLimitError)
        assert [p.draft for i, p in enumerate(preds) if i not in (3, 7)] == [
            f"q{i}!" for i in range(10) if i not in (3, 7)
        ]
        assert server.batches_created == 1
        # max_errors: one failure tolerated (None in its slot), the second raised with its type
        server.set_responses(script)
        with pytest.raises(RateLimitError):
            await qa.batch([{"question": f"q{i}"} for i in range(3, 8)], concurrency=None, max_errors=1)
        preds = await qa.batch([{"question": "q3"}, {"question": "q1"}], concurrency=None, max_errors=1)
        assert preds[0] is None and preds[1].draft == "q1!"


async def test_cancelling_the_calls_cancels_the_provider_batch(tmp_path: Path) -> None:
    with FakeOpenAIServer(Fields(_fields), batch_delay=60) as server:
        blm = make(server)
        qa = alm.Predict("question -> draft")
        with alm.context(lm=blm, cache_dir=str(tmp_path)):
            with anyio.move_on_after(1.0):
                await qa.batch([{"question": f"q{i}"} for i in range(20)], concurrency=None)
        assert server.batches_created == 1
        assert server.batches_cancelled == 1
        assert journal_for(str(tmp_path)).batch_ids() == []  # forgotten: nothing to re-attach to


async def test_a_budget_stops_submission(server: FakeOpenAIServer, tmp_path: Path) -> None:
    blm = make(server)
    qa = alm.Predict("question -> draft")
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        with usage_limits(max_requests=5):
            preds = await qa.batch(
                [{"question": f"q{i}"} for i in range(8)], concurrency=None, return_exceptions=True
            )
    failed = [p for p in preds if isinstance(p, UsageLimitExceeded)]
    assert len(failed) == 3
    assert server.batches_created == 1
    assert server.requests == 5  # only the admitted requests were submitted


async def test_streaming_through_a_batch_lm_raises(server: FakeOpenAIServer) -> None:
    blm = make(server)
    with pytest.raises(TypeError, match="cannot stream"):
        blm.stream("hi")
    with pytest.raises(TypeError, match="cannot stream"):
        await blm("hi", stream=True)


def test_bad_arguments_are_refused(server: FakeOpenAIServer) -> None:
    lm = alm.LM("openai/gpt-4o-mini", base_url=server.base_url, api_key=KEY)
    with pytest.raises(ValueError, match="window"):
        BatchLM(lm, window=-1)
    with pytest.raises(ValueError, match="max_requests"):
        BatchLM(lm, max_requests=0)
    with pytest.raises(TypeError, match=r"asynclm\.LM"):
        BatchLM("openai/gpt-4o-mini")  # type: ignore[arg-type]


async def test_concurrency_none_means_no_bound() -> None:
    started = 0
    release = anyio.Event()

    async def item(i: int) -> int:
        nonlocal started
        started += 1
        if started == 300:
            release.set()
        await release.wait()
        return i

    results = await alm.Parallel(concurrency=None)([(item, (i,)) for i in range(300)])
    assert results == list(range(300))


_CHILD = textwrap.dedent(
    """
    import sys
    import asynclm as alm
    from asynclm.lm import BatchLM

    base_url, cache_dir, model, backend = sys.argv[1:5]
    lm = alm.LM(model, base_url=base_url, api_key="sk-test-batch")
    blm = BatchLM(lm, window=1.0, poll_interval=0.05)
    qa = alm.Predict("question -> draft")
    with alm.context(lm=blm, cache_dir=cache_dir, backend=backend):
        qa.batch.sync([{"question": f"q{i}"} for i in range(50)], concurrency=None)
    """
)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_crashed_run_is_resumed_by_re_attaching(tmp_path: Path, provider: str, backend: str) -> None:
    # both runs call .sync(): the portal runs `backend`; the first run is killed once it has submitted
    with FakeOpenAIServer(Fields(_fields), batch_delay=3.0, api_key=KEY) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        model = make(server, provider).model
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, server.base_url, str(tmp_path), model, backend], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not journal_for(str(tmp_path)).batch_ids():  # submitted and journaled
                assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            child.kill()
            child.wait()
        assert server.batches_created == 1
        (_batch_id,) = journal_for(str(tmp_path)).batch_ids()
        assert server.requests == 0  # the provider has not answered yet
        blm = make(server, provider)
        qa = alm.Predict("question -> draft")
        with alm.context(lm=blm, cache_dir=str(tmp_path), backend=backend):
            preds = qa.batch.sync([{"question": f"q{i}"} for i in range(50)], concurrency=None)
        assert [p.draft for p in preds] == [f"q{i}!" for i in range(50)]
        assert server.batches_created == 1  # re-attached: nothing submitted (or paid) twice
        assert server.requests == 50
        assert journal_for(str(tmp_path)).batch_ids() == []


async def test_an_error_of_the_batch_api_is_every_item_s_typed_error(tmp_path: Path) -> None:
    with FakeOpenAIServer(Fields(_fields), batch_delay=0.05, api_key="other") as server:
        blm = make(server)
        with alm.context(cache_dir=str(tmp_path)):
            with pytest.raises(LMError) as info:
                await blm("hello")
        assert info.value.status == 401
        assert KEY not in str(info.value)


async def test_an_expired_batch_gives_the_unanswered_items_a_timeout_error(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.batch_expire_after = 4
    blm = make(server, progress=True, window=1.0)  # a long window: the 6 calls surely make one batch
    qa = alm.Predict("question -> draft")
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await qa.batch([{"question": f"q{i}"} for i in range(6)], concurrency=None, return_exceptions=True)
    ok = [i for i, p in enumerate(preds) if not isinstance(p, Exception)]
    assert len(ok) == 4 and all(preds[i].draft == f"q{i}!" for i in ok)  # the lines answered in time
    expired = [p for p in preds if isinstance(p, Exception)]
    assert len(expired) == 2 and all(isinstance(p, LMTimeoutError) and "expired" in str(p) for p in expired)
    assert blm.history[-1]["status"] == "expired"
    # the answered ones are in the cache; the expired ones are asked again in a new batch
    server.batch_expire_after = None
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await qa.batch([{"question": f"q{i}"} for i in range(6)], concurrency=None)
    assert [p.draft for p in preds] == [f"q{i}!" for i in range(6)]
    assert server.batches_created == 2 and blm.history[-1]["requests"] == 2


# -- Anthropic Message Batches ----------------------------------------------------------------------


async def test_anthropic_a_two_step_program_takes_two_message_batches(server: FakeOpenAIServer, tmp_path: Path) -> None:
    blm = make(server, "anthropic")
    items = [{"question": f"q{i}"} for i in range(300)]
    with alm.context(lm=blm, cache_dir=str(tmp_path)), track_usage() as usage:
        preds = await TwoStep().batch(items, concurrency=None)
    assert [p.answer for p in preds] == [f"Q{i}!" for i in range(300)]
    assert server.batches_created == 2 and server.requests == 600
    assert all(r.api == "anthropic" and r.json["model"] == "claude-haiku-4-5" for r in server.request_log)
    total = usage.usage
    assert usage.cost == pytest.approx((total.prompt_tokens * 1.0 + total.completion_tokens * 2.0) / 1e6 * 0.5)
    assert journal_for(str(tmp_path)).batch_ids() == []


async def test_anthropic_errored_and_expired_lines_are_per_item_typed_errors(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    def script(request: Any) -> Any:
        if "q1" in str(request.messages[-1]["content"]):
            return Fault.error(429)
        return Fields(_fields).render(request)

    server.set_responses(script)
    server.batch_expire_after = 5
    blm = make(server, "anthropic", window=1.0)  # a long window: the 6 calls surely make one batch
    qa = alm.Predict("question -> draft")
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await qa.batch([{"question": f"q{i}"} for i in range(6)], concurrency=None, return_exceptions=True)
    # the lines' order is the order the calls arrived in, so which one expires varies
    errors = {i: p for i, p in enumerate(preds) if isinstance(p, Exception)}
    expired = [i for i, p in errors.items() if isinstance(p, LMTimeoutError) and "expired" in str(p)]
    assert len(expired) == 1
    if expired != [1]:
        assert isinstance(preds[1], RateLimitError) and len(errors) == 2
    assert all(p.draft == f"q{i}!" for i, p in enumerate(preds) if not isinstance(p, Exception))


async def test_anthropic_cancelling_the_calls_cancels_the_message_batch(tmp_path: Path) -> None:
    with FakeOpenAIServer(Fields(_fields), batch_delay=60) as server:
        blm = make(server, "anthropic")
        qa = alm.Predict("question -> draft")
        with alm.context(lm=blm, cache_dir=str(tmp_path)):
            with anyio.move_on_after(1.0):
                await qa.batch([{"question": f"q{i}"} for i in range(20)], concurrency=None)
        assert server.batches_created == 1 and server.batches_cancelled == 1
        assert journal_for(str(tmp_path)).batch_ids() == []


async def test_a_react_agent_through_batch_lm_takes_one_batch_per_step(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    from asynclm.modules import ReAct
    from asynclm.testing._render import render_chat

    def respond(request: Any) -> Any:
        system = str(request.messages[0]["content"])
        text = str(request.messages[-1]["content"])
        if "next_tool_name" not in system:
            return render_chat({"reasoning": "read it", "answer": "sunny"})
        if "thought_0" in text:
            return render_chat({"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}})
        return render_chat({"next_thought": "check", "next_tool_name": "weather", "next_tool_args": {"city": "Oslo"}})

    async def weather(city: str) -> str:
        return f"sunny in {city}"

    server.set_responses(respond)
    blm = make(server, window=1.0)  # a loaded machine can pause a process for a good part of 0.2 s
    react = ReAct("question -> answer", tools=[weather], native_tools=False)  # the text protocol scripted above
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await react.batch([{"question": f"Weather {i}?"} for i in range(40)], concurrency=None)
    assert all(p.answer == "sunny" and p.trajectory["observation_0"] == "sunny in Oslo" for p in preds)
    assert server.batches_created == 3  # step 0 (tool), step 1 (finish), extract
    assert server.requests == 120


async def test_a_react_agent_with_native_tool_calls_through_batch_lm(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """Native tool calling through BatchLM: the batch lines carry `tools`, the answers' tool calls
    reach ReAct, each turn is one provider batch."""
    from asynclm.modules import ReAct
    from asynclm.testing import Reply
    from asynclm.testing._render import render_chat

    def respond(request: Any) -> Any:
        if "tools" not in request.json:  # the extract step
            return render_chat({"reasoning": "read it", "answer": "sunny"})
        if any(m.get("role") == "tool" for m in request.messages):
            return Reply(text="done")  # no tool call: the agent is finished
        return Reply(tool_calls=[{"name": "weather", "args": {"city": "Oslo"}}])

    async def weather(city: str) -> str:
        return f"sunny in {city}"

    server.set_responses(respond)
    react = ReAct("question -> answer", tools=[weather])
    blm = make(server, window=1.0)  # (as above)
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await react.batch([{"question": f"Weather {i}?"} for i in range(20)], concurrency=None)
    assert all(p.answer == "sunny" and p.trajectory["observation_0"] == "sunny in Oslo" for p in preds)
    # the tool turn, the finishing turn, extract
    assert server.batches_created == 3, [(h["requests"], h["status"]) for h in blm.history]


async def test_evaluate_with_no_bound_makes_one_batch_per_step(server: FakeOpenAIServer, tmp_path: Path) -> None:
    dev = [alm.Example(question=f"q{i}", answer=f"Q{i}!").with_inputs("question") for i in range(30)]
    evaluate = alm.Evaluate(devset=dev, metric=lambda ex, pred, trace=None: ex.answer == pred.answer,
                            concurrency=None)  # fmt: skip
    with alm.context(lm=make(server), cache_dir=str(tmp_path)):
        result = await evaluate(TwoStep())
    assert result.score == 100.0
    assert server.batches_created == 2


async def test_an_optimizer_bootstraps_through_provider_batches(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """BootstrapFewShot's teacher runs its examples in flight at once: each of the program's steps
    is one provider batch, and the demos are those of a run without batching."""
    trainset = [alm.Example(question=f"q{i}", answer=f"Q{i}!").with_inputs("question") for i in range(12)]
    optimizer = alm.BootstrapFewShot(metric=lambda ex, pred, trace=None: ex.answer == pred.answer,
                                     max_bootstrapped_demos=4, max_labeled_demos=4, concurrency=12)  # fmt: skip
    with alm.context(lm=make(server), cache_dir=str(tmp_path)):
        compiled = await optimizer.compile(TwoStep(), trainset=trainset)
    assert server.batches_created == 2  # draft, then answer, for the 12 examples together
    assert [d.question for d in compiled.draft.demos] == ["q0", "q1", "q2", "q3"]  # in training-set order
    assert [(d.draft, d.answer) for d in compiled.answer.demos] == [(f"q{i}!", f"Q{i}!") for i in range(4)]
    assert all(d.augmented for d in compiled.draft.demos + compiled.answer.demos)


class _CountingAnyio:
    """``anyio`` as ``asynclm.lm._batch`` sees it, counting the driver's waits."""

    def __init__(self) -> None:
        self.waits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    def move_on_after(self, delay: float) -> Any:
        self.waits += 1
        return anyio.move_on_after(delay)


async def test_a_full_provider_queue_gets_the_requests_again_in_smaller_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI fails a batch that would take the organisation over its enqueued-token limit, before
    running any line: its requests are queued again, in smaller batches, each sent when there is room."""
    from asynclm.lm import _batch

    counting = _CountingAnyio()
    monkeypatch.setattr(_batch, "anyio", counting)
    with FakeOpenAIServer(Fields(_fields), batch_delay=0.2) as server:
        server.batch_queue_limit = 30
        blm = make(server)
        items = [{"question": f"q{i}"} for i in range(100)]
        with alm.context(lm=blm, cache_dir=str(tmp_path)), track_usage() as usage:
            preds = await alm.Predict("question -> draft").batch(items, concurrency=None)
        assert [p.draft for p in preds] == [f"q{i}!" for i in range(100)]
        assert server.requests == 100 and usage.calls == 100  # a refused batch ran nothing
        refused = [h for h in blm.history if h.get("requeued")]
        done = [h["requests"] for h in blm.history if h["status"] == "completed"]
        assert refused and refused[0]["requests"] == 100 and server.batches_refused == len(refused)
        # 100 refused, 50 refused, then 25 at a time, one after another
        assert sum(done) == 100 and max(done) <= 30 and len(done) <= 6, blm.history
        assert blm.submitted == blm.completed == 100  # what the progress bar shows
        # while requests wait for the batch in flight, the driver sleeps until its next poll (it
        # spun before: tens of thousands of zero-length waits)
        assert counting.waits < 300, counting.waits
    assert journal_for(str(tmp_path)).batch_ids() == []


async def test_a_queue_that_never_has_room_gives_each_call_a_rate_limit_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asynclm.lm import _batch

    monkeypatch.setattr(_batch, "QUEUE_FULL_GIVE_UP", 0.5)  # the providers' window is 24 h
    with FakeOpenAIServer(Fields(_fields), batch_delay=0.05) as server:
        server.batch_queue_limit = 0
        with alm.context(lm=make(server), cache_dir=str(tmp_path)):
            results = await alm.Predict("question -> draft").batch(
                [{"question": "a"}, {"question": "b"}, {"question": "c"}], concurrency=None, return_exceptions=True
            )
        assert all(isinstance(r, RateLimitError) for r in results), results
        assert "Enqueued token limit reached" in str(results[0]) and "has had no room" in str(results[0])
        assert server.requests == 0 and server.batches_refused >= 2


async def test_a_journaled_batch_the_provider_does_not_know_is_submitted_again(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    blm = make(server)
    qa = alm.Predict("question -> draft")
    from asynclm.lm._cache import cache_key

    # a journal entry left by an earlier run, for a batch this provider has never seen
    lm = blm.lm
    body = lm._body(None, alm.ChatAdapter().format(qa.signature, [], {"question": "q0"}), {})
    key = cache_key(lm._cache_endpoint, lm._encode(body, canonical=True), None)
    journal_for(str(tmp_path)).add("batch_gone", {"provider": "openai", "keys": [key]})
    with alm.context(lm=blm, cache_dir=str(tmp_path)):
        pred = await qa(question="q0")
    assert pred.draft == "q0!"
    assert server.batches_created == 1
    assert journal_for(str(tmp_path)).batch_ids() == []


_JOURNAL_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from asynclm.lm._batch_journal import journal_for

    directory, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    go = os.path.join(directory, "go")
    while not os.path.exists(go):
        time.sleep(0.001)
    journal = journal_for(directory)
    for i in range(n):  # add n batches, then forget the even ones, as fast as it can
        journal.add(f"{name}-{i}", {"provider": "openai", "keys": [f"{name}-key-{i}"]})
    for i in range(0, n, 2):
        journal.remove(f"{name}-{i}")
    """
)


def test_processes_writing_the_journal_at_once_lose_no_entry(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    names, n = [f"p{k}" for k in range(4)], 20
    children = [
        subprocess.Popen([sys.executable, "-c", _JOURNAL_WRITER, str(tmp_path), name, str(n)], env=env)
        for name in names
    ]
    time.sleep(0.5)  # (each child waits for the go file: they all start writing together)
    (tmp_path / "go").touch()
    for child in children:
        assert child.wait(timeout=120) == 0
    expected = {f"{name}-{i}" for name in names for i in range(1, n, 2)}
    journal = journal_for(str(tmp_path))
    assert set(journal.batch_ids()) == expected  # every add and every remove took effect
    assert journal.lookup("p3-key-19") == ("p3-19", {"provider": "openai", "keys": ["p3-key-19"]})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:  # tqdm draws only on a terminal
        return True


async def test_the_progress_bar_shows_queued_submitted_and_completed(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    blm = make(server, progress=True, window=0.5)
    qa = alm.Predict("question -> draft")
    with caplog.at_level(logging.INFO, logger="asynclm.lm.batch"), alm.context(lm=blm, cache_dir=str(tmp_path)):
        preds = await qa.batch([{"question": f"q{i}"} for i in range(7)], concurrency=None)
    assert [p.draft for p in preds] == [f"q{i}!" for i in range(7)]
    (batch,) = [h["batch"] for h in blm.history if h["status"] == "completed"]
    # the same counts, logged and drawn: submitted with 0 of 7 done, then 7 of 7 done
    assert [r.getMessage() for r in caplog.records] == [
        f"submitted batch {batch} (7 requests): queued 0, submitted 7, completed 0",
        f"batch {batch} completed: queued 0, submitted 7, completed 7",
    ]
    frames = [f for f in terminal.getvalue().replace("\n", "\r").split("\r") if f.strip()]
    assert all(f.startswith("provider batches:") for f in frames)
    submitted = [f for f in frames if "batches=1" in f]  # one batch in flight, none done yet
    assert submitted and all(" 0/7 " in f and "queued=0" in f for f in submitted)
    assert " 7/7 " in frames[-1] and "100%" in frames[-1] and "batches=0, queued=0" in frames[-1]


async def test_the_driver_and_its_heir_cancelled_together_leave_the_others_answered(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # the first parked call drives (submits, polls); when it leaves, the next parked call takes
    # over. Cancel both at once: the others must still get their answers.
    blm = make(server, window=0.3)
    qa = alm.Predict("question -> draft")
    scopes = [anyio.CancelScope() for _ in range(6)]
    answers: dict[int, str] = {}

    async def item(i: int) -> None:
        with scopes[i]:
            answers[i] = (await qa(question=f"q{i}")).draft

    with alm.context(lm=blm, cache_dir=str(tmp_path)), anyio.fail_after(30):  # (a hang before the fix)
        async with anyio.create_task_group() as tg:
            for i in range(6):  # parked one by one: 0 drives, 1 is next in line
                tg.start_soon(item, i)
                while len(blm._pending) <= i:
                    await anyio.sleep(0.001)
            scopes[0].cancel()
            scopes[1].cancel()
    assert answers == {i: f"q{i}!" for i in range(2, 6)}
    assert server.batches_created == 1


def test_calls_from_many_loops_at_once_leave_the_batch_lm_to_one_of_them(tmp_path: Path) -> None:
    # First calls of one BatchLM made at once from 8 threads' loops (asyncio and trio): one loop
    # gets it, every other call is refused with the RuntimeError. (The check was not atomic with
    # the claim: two or three loops went on, sharing its loop-bound state: their calls hung,
    # failed an internal assertion, or all went through.) The winner's request is held at the
    # server until every other thread has its outcome, so no call can end before another checks.
    # A short switch interval lets threads interleave between any two bytecodes, as they do on a
    # loaded machine.
    threads, rounds = 8, 20
    lock = threading.Lock()
    outcomes: list[list[str]] = [[] for _ in range(rounds)]
    parked = [0] * rounds

    async def held(request: Any) -> str:  # on the server's loop
        round_ = int(request.messages[-1]["content"].split()[0][1:])
        with lock:
            parked[round_] += 1
        while True:
            with lock:
                if len(outcomes[round_]) + parked[round_] >= threads:
                    return "ok"
            await asyncio.sleep(0.002)

    start = threading.Barrier(threads)
    with FakeOpenAIServer(held) as server:
        blms = [make(server, window=0.01, poll_interval=0.01) for _ in range(rounds)]

        def calls(index: int) -> None:
            with alm.context(backend=("asyncio", "trio")[index % 2], cache_dir=str(tmp_path)):
                for round_, blm in enumerate(blms):
                    start.wait()
                    try:
                        # bounded only so that a hung call fails the test instead of stalling it
                        alm.syncify(blm.__call__, timeout=30)(f"q{round_} {index}")
                        outcome = "ok"
                    except RuntimeError as exc:
                        outcome = "refused" if "one event loop at a time" in str(exc) else repr(exc)
                    except BaseException as exc:
                        outcome = repr(exc)
                    with lock:
                        outcomes[round_].append(outcome)

        run_threads_interleaved(calls, [(i,) for i in range(threads)])
    wrong = [(r, sorted(got)) for r, got in enumerate(outcomes) if sorted(got) != ["ok"] + ["refused"] * (threads - 1)]
    assert wrong == []


async def test_the_control_plane_trusts_what_every_other_request_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BatchLM's uploads and polls verify TLS against the process's default context (the system
    trust store) like the LM's own calls, not against httpx's bundled CA list."""
    import ssl

    from asynclm.lm import BadRequestError, LMConnectionError
    from asynclm.lm._transports import _ssl

    from .rawhttp import RawServer, reply, static

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    system = ssl.create_default_context()
    ca.configure_trust(system)
    monkeypatch.setattr(_ssl, "_default", system)  # as if the system store held the test CA
    refusal = b'{"error": {"message": "no uploads today", "type": "invalid_request_error"}}'
    with RawServer(ssl_context=server_ctx) as raw:
        raw.routes["/v1/files"] = static(reply(refusal, status="400 Bad Request"))
        lm = alm.LM("openai/gpt-4o-mini", base_url=raw.url + "/v1", api_key=KEY, max_retries=0)
        with alm.context(cache_dir=str(tmp_path)), pytest.raises(BadRequestError, match="no uploads today"):
            await BatchLM(lm, window=0)("hi")  # a TLS failure would be an LMConnectionError
        assert [r.path for r in raw.requests] == ["/v1/files"]
        # and a store that does not know the CA refuses it, saying so
        monkeypatch.setattr(_ssl, "_default", ssl.create_default_context())
        with alm.context(cache_dir=str(tmp_path)), pytest.raises(LMConnectionError) as refused:
            await BatchLM(lm, window=0)("hi again")
        assert "/v1/files failed: ConnectError: certificate verification failed" in str(refused.value)
        assert len(raw.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_output_lines_in_any_json_shape_reach_their_calls(provider: str, tmp_path: Path) -> None:
    """Lines written as the providers write them are cut out without decoding the whole line;
    lines in another shape (keys reordered, spaces, an extra key) are decoded whole: every call
    still gets its own answer."""
    import json

    from .rawhttp import RawServer, reply

    anthropic = provider == "anthropic"
    asked: dict[str, str] = {}  # custom_id -> the prompt

    def answer(text: str) -> dict[str, Any]:
        if anthropic:
            return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "usage": {"input_tokens": 3, "output_tokens": 1}}  # fmt: skip
        return {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip

    def shaped(n: int, cid: str, body: dict[str, Any]) -> bytes:
        compact = {"separators": (",", ":")}
        if anthropic:
            return [
                json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": body}}, **compact),  # as sent
                json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": body}}),  # spaces
                json.dumps({"result": {"type": "succeeded", "message": body}, "custom_id": cid}),  # reordered
                json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": body, "x": 1}}, **compact),
            ][n % 4].encode()
        record = {"id": f"r{n}", "custom_id": cid,
                  "response": {"status_code": 200, "request_id": f"q{n}", "body": body}, "error": None}  # fmt: skip
        return [
            json.dumps(record, **compact),  # as sent
            json.dumps(record),  # spaces
            json.dumps({"custom_id": cid, **record}, **compact),  # reordered
            json.dumps({**record, "response": {**record["response"], "x": 1}}, **compact),  # an extra key
        ][n % 4].encode()

    def prompt_of(params: dict[str, Any]) -> str:
        content = params["messages"][-1]["content"]
        return content if isinstance(content, str) else content[0]["text"]

    async def upload(server: Any, req: Any, r: Any, w: asyncio.StreamWriter) -> bool:
        for line in req.body.split(b"\n"):
            if line.startswith(b'{"custom_id"'):
                item = json.loads(line)
                asked[item["custom_id"]] = prompt_of(item["body"])
        w.write(reply(b'{"id": "file-in", "object": "file"}'))
        return True

    async def create(server: Any, req: Any, r: Any, w: asyncio.StreamWriter) -> bool:
        if anthropic:
            for item in json.loads(req.body)["requests"]:
                asked[item["custom_id"]] = prompt_of(item["params"])
            w.write(reply(b'{"id": "b1", "type": "message_batch", "processing_status": "in_progress"}'))
        else:
            w.write(reply(b'{"id": "b1", "object": "batch", "status": "validating"}'))
        return True

    async def results(server: Any, req: Any, r: Any, w: asyncio.StreamWriter) -> bool:
        lines = [shaped(n, cid, answer(text.upper())) for n, (cid, text) in enumerate(asked.items())]
        w.write(reply(b"\n".join(lines) + b"\n"))
        return True

    ended = (b'{"id": "b1", "processing_status": "ended", "results_url": "/v1/messages/batches/b1/results"}'
             if anthropic else b'{"id": "b1", "status": "completed", "output_file_id": "file-out"}')  # fmt: skip
    prompts = [f"question {i}" for i in range(8)]
    with RawServer() as raw:
        raw.routes.update({
            "/v1/files": upload,
            "/v1/batches": create,
            "/v1/messages/batches": create,
            "/v1/batches/b1": static_reply(ended),
            "/v1/messages/batches/b1": static_reply(ended),
            "/v1/files/file-out/content": results,
            "/v1/messages/batches/b1/results": results,
        })  # fmt: skip
        model = "anthropic/claude-haiku-4-5" if anthropic else "openai/gpt-4o-mini"
        blm = BatchLM(alm.LM(model, base_url=raw.url + "/v1", api_key=KEY), window=0.1, poll_interval=0.05)
        got: dict[str, str] = {}

        async def ask(prompt: str) -> None:
            got[prompt] = (await blm(prompt)).text

        with alm.context(cache_dir=str(tmp_path)):
            async with anyio.create_task_group() as tg:
                for prompt in prompts:
                    tg.start_soon(ask, prompt)
    assert len(asked) == 8  # one provider batch of all eight
    assert got == {p: p.upper() for p in prompts}


def static_reply(body: bytes) -> Any:
    from .rawhttp import reply, static

    return static(reply(body))
