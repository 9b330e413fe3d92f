"""BestOfN (concurrent, distinct samples, early exit, failures, re-entrancy, trace) and Refine
(sequential attempts with LM-written advice given as a ``hint_`` input)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import anyio
import pytest

import asynclm as alm
from asynclm.modules import trace_scope
from asynclm.modules._best_of_n import BestOfN, Refine, rollout_copy
from asynclm.testing import FakeOpenAIServer, Reply, ScriptedLM
from asynclm.testing._scripted import ScriptedRequest, render_chat


def length(args: dict[str, Any], pred: Any) -> float:
    return float(len(pred.answer))


def unique_question() -> str:
    # the memory cache is process-wide: keep each test's prompts its own
    return f"question {uuid.uuid4().hex}"


# -- BestOfN --------------------------------------------------------------------------------------


async def test_candidates_run_concurrently_and_the_best_wins() -> None:
    replies = [Reply(render_chat({"answer": a}), prompt_tokens=10, completion_tokens=5) for a in ("a", "bbb", "cc")]
    with FakeOpenAIServer(replies, latency=0.3) as server:
        lm = alm.LM("openai/m", base_url=server.base_url, api_key="sk-test", cache=False)
        best = BestOfN(alm.Predict("question -> answer", lm=lm), n=3, reward_fn=length, threshold=10)
        pred = await best(question="q")
        assert pred.answer == "bbb"
        assert server.requests == 3
        assert all(r.json["temperature"] == 1.0 for r in server.request_log)
        # all three in flight at once (one after another, the peak would be 1): no wall-clock assertion
        assert server.max_in_flight == 3, f"peak {server.max_in_flight}: the candidates did not run concurrently"
        assert pred.usage.total_tokens == 3 * 15  # every attempt's tokens


async def test_rollout_ids_make_distinct_cacheable_samples() -> None:
    lm = ScriptedLM([{"answer": "x" * i} for i in range(1, 7)], cache="memory")
    question = unique_question()
    qa = alm.Predict("question -> answer", lm=lm)
    best = BestOfN(qa, n=3, reward_fn=length, threshold=None)
    first = await best(question=question)
    # three distinct requests, where identical requests would have been one (single flight)
    assert len(lm.requests) == 3 and first.answer == "xxx"
    again = await best(question=question)
    assert len(lm.requests) == 3  # the same rollouts again: all three from the cache
    assert again.answer == first.answer
    await qa(question=question)
    assert len(lm.requests) == 4  # the plain call is not one of the rollouts


def test_rollout_ids_compose_with_a_predictor_rollout_id() -> None:
    program = alm.ChainOfThought("question -> answer", rollout_id=7, temperature=0.3)
    ids = []
    for i in range(3):
        copy, mapping = rollout_copy(program, i)
        ids.append(copy.config["rollout_id"])
        assert copy.config["temperature"] == 0.3  # an explicit temperature is kept
        assert mapping[id(copy)] is program
    assert ids == [7, 8, 9]
    named = alm.Predict("q -> a", rollout_id="run")
    assert rollout_copy(named, 2)[0].config == {"rollout_id": "run/2", "temperature": 1.0}
    assert program.config == {"rollout_id": 7, "temperature": 0.3}  # the original is untouched


async def test_first_to_reach_the_threshold_wins_and_the_rest_are_cancelled() -> None:
    lm = ScriptedLM([{"answer": "slow"}, {"answer": "fast"}, {"answer": "slow"}])
    cancelled: list[str] = []
    finished: list[str] = []

    async def reward(args: dict[str, Any], pred: Any) -> float:
        if pred.answer == "fast":
            return 1.0
        try:
            await anyio.sleep(10)
        finally:
            cancelled.append(pred.answer)
        finished.append(pred.answer)
        return 0.5

    best = BestOfN(alm.Predict("question -> answer", lm=lm), 3, reward, threshold=1.0)
    with anyio.fail_after(5):
        pred = await best(question="q")
    assert pred.answer == "fast"
    assert cancelled and set(cancelled) == {"slow"}  # slow ones were stopped while scoring (or earlier)
    assert finished == []


async def test_failed_attempts_are_skipped_up_to_fail_count() -> None:
    def picky(args: dict[str, Any], pred: Any) -> float:
        if pred.answer == "bad":
            raise ValueError("cannot score 'bad'")
        return 1.0 if pred.answer == "good" else 0.0

    lm = ScriptedLM([{"answer": "bad"}, {"answer": "good"}, {"answer": "meh"}], cycle=True)
    best = BestOfN(alm.Predict("question -> answer", lm=lm), n=3, reward_fn=picky, threshold=2.0)
    assert (await best(question="q")).answer == "good"

    strict = BestOfN(alm.Predict("question -> answer", lm=lm), n=3, reward_fn=picky, threshold=2.0, fail_count=0)
    with pytest.raises(ValueError, match="cannot score 'bad'"):  # the original type, not a group
        await strict(question="q")
    assert strict.fail_count == 0  # nothing counted on the instance


async def test_when_every_attempt_fails_the_last_error_is_raised() -> None:
    def broken(args: dict[str, Any], pred: Any) -> float:
        raise KeyError("no score")

    best = BestOfN(alm.Predict("question -> answer", lm=ScriptedLM({"answer": "a"})), 2, broken, 1.0)
    with pytest.raises(KeyError, match="no score"):
        await best(question="q")


async def test_concurrent_calls_of_one_instance_are_independent() -> None:
    def respond(req: ScriptedRequest) -> dict[str, Any]:
        text = req.last_user_message
        word = text.split("[[ ## question ## ]]\n", 1)[1].split("\n", 1)[0]
        return {"answer": f"{word}-{req.index}"}

    def reward(args: dict[str, Any], pred: Any) -> float:
        assert pred.answer.startswith(args["question"])  # each call sees only its own candidates
        return float(pred.answer.rsplit("-", 1)[1])

    best = BestOfN(alm.Predict("question -> answer", lm=ScriptedLM(respond, latency=0.01)), 3, reward, None)
    preds = await best.batch([{"question": f"w{i}"} for i in range(8)], concurrency=8)
    assert [p.answer.split("-")[0] for p in preds] == [f"w{i}" for i in range(8)]
    assert vars(best).keys() == {"callbacks", "n", "fail_count", "module", "reward_fn", "threshold"}


async def test_only_the_winner_is_traced_and_with_the_original_predictor() -> None:
    qa = alm.Predict("question -> answer", lm=ScriptedLM([{"answer": "a"}, {"answer": "bbb"}]))
    best = BestOfN(qa, 2, length, None)
    with trace_scope() as trace:
        pred = await best(question="q")
    assert len(trace) == 1
    predictor, inputs, traced = trace[0]
    assert predictor is qa
    assert inputs == {"question": "q"} and traced.answer == "bbb" == pred.answer


async def test_async_reward_and_sync_reward_calling_a_judge_with_sync() -> None:
    judge_lm = ScriptedLM({"score": 0.9})
    judge = alm.Predict("answer -> score: float", lm=judge_lm)
    threads: list[int] = []

    def judged(args: dict[str, Any], pred: Any) -> float:
        threads.append(threading.get_ident())
        return float(judge.sync(answer=pred.answer).score)  # blocking LM judge: runs in a worker thread

    best = BestOfN(alm.Predict("question -> answer", lm=ScriptedLM({"answer": "a"})), 2, judged, 0.95)
    pred = await best(question="q")
    assert pred.answer == "a" and len(judge_lm.requests) == 2
    assert threading.get_ident() not in threads

    async def async_reward(args: dict[str, Any], pred: Any) -> bool:
        return True

    best = BestOfN(alm.Predict("question -> answer", lm=ScriptedLM({"answer": "b"})), 2, async_reward, 1.0)
    assert (await best(question="q")).answer == "b"

    bad = BestOfN(alm.Predict("question -> answer", lm=ScriptedLM({"answer": "b"})), 1, lambda a, p: None, 1.0)
    with pytest.raises(TypeError, match="must return a number"):
        await bad(question="q")


def test_best_of_n_arguments() -> None:
    qa = alm.Predict("question -> answer")
    assert BestOfN(module=qa, N=3, reward_fn=length, threshold=1.0).n == 3  # DSPy's spelling works
    with pytest.raises(TypeError, match="number of attempts"):
        BestOfN(qa, reward_fn=length, threshold=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        BestOfN(qa, 0, length, 1.0)
    with pytest.raises(TypeError, match="reward_fn"):
        BestOfN(qa, 2, None, 1.0)
    with pytest.raises(TypeError, match="Module"):
        BestOfN(length, 2, length, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fail_count"):
        BestOfN(qa, 2, length, 1.0, fail_count=-1)


def test_best_of_n_sync_batch_and_save_load(tmp_path: Any) -> None:
    lm = ScriptedLM([{"reasoning": "r", "answer": "a"}, {"reasoning": "r", "answer": "abc"}], cycle=True)
    best = BestOfN(alm.ChainOfThought("question -> answer", lm=lm), 2, length, None)
    assert best.sync(question="q").answer == "abc"
    assert [p.answer for p in best.batch.sync([{"question": "x"}, {"question": "y"}])] == ["abc", "abc"]
    assert [name for name, _ in best.named_predictors()] == ["module"]
    best.module.demos = [alm.Example(question="d", reasoning="r", answer="e")]
    best.save(tmp_path / "best.json")
    fresh = BestOfN(alm.ChainOfThought("question -> answer"), 2, length, None).load(tmp_path / "best.json")
    assert fresh.module.demos[0].answer == "e"


async def test_best_of_n_end_to_end_over_http() -> None:
    answers = iter(["short", "the longest one", "medium one"])

    def respond(request: Any) -> str:
        return render_chat({"answer": next(answers)})

    async with FakeOpenAIServer(respond, latency=0.05) as server:
        lm = alm.LM("openai/fake-model", base_url=server.base_url, api_key="sk-test", cache="memory")
        best = BestOfN(alm.Predict("question -> answer", lm=lm), 3, length, None)
        pred = await best(question=unique_question())
        assert pred.answer == "the longest one"
        assert server.requests == 3 and server.max_in_flight == 3
        assert [r.json["temperature"] for r in server.request_log] == [1.0, 1.0, 1.0]
        assert all("rollout_id" not in r.json for r in server.request_log)


# -- Refine ---------------------------------------------------------------------------------------


def is_advice(req: ScriptedRequest) -> bool:
    return "assign blame" in str(req.messages[0]["content"])


async def test_refine_retries_with_advice_as_a_hint() -> None:
    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if is_advice(req):
            return {"discussion": "too long", "advice": {"self": "Answer with one word."}}
        if "[[ ## hint_ ## ]]" in req.last_user_message:
            return {"answer": "Brussels"}
        return {"answer": "The capital of Belgium is Brussels"}

    lm = ScriptedLM(respond)
    qa = alm.Predict("question -> answer", lm=lm)

    def one_word(args: dict[str, Any], pred: Any) -> float:
        return 1.0 if len(pred.answer.split()) == 1 else 0.0

    refine = Refine(qa, n=3, reward_fn=one_word, threshold=1.0)
    with trace_scope() as trace:
        pred = await refine(question="Capital of Belgium?")
    assert pred.answer == "Brussels"
    assert len(lm.requests) == 3  # attempt, advice, attempt (threshold met: no third attempt)
    first, advice, second = (r["messages"] for r in lm.requests)
    assert "hint_" not in json.dumps(first)
    # the advice step saw the attempt, the reward and the module names
    advice_text = advice[-1]["content"]
    assert '"question": "Capital of Belgium?"' in advice_text
    assert "The capital of Belgium is Brussels" in advice_text
    assert "[[ ## reward_value ## ]]\n0.0" in advice_text and "[[ ## target_threshold ## ]]\n1.0" in advice_text
    assert '[[ ## module_names ## ]]\n["self"]' in advice_text
    assert "def one_word" in advice_text  # the reward function's code
    # the second attempt got its advice as a hint_ input, described in the system message
    assert "[[ ## hint_ ## ]]\nAnswer with one word." in second[-1]["content"]
    assert "`hint_` (str): A hint to the module from an earlier run" in second[0]["content"]
    assert all(r["temperature"] == 1.0 for i, r in enumerate(lm.requests) if i != 1)
    # the trace holds the returned attempt, without the hint, as a call of the original predictor
    assert [(p, i) for p, i, _ in trace] == [(qa, {"question": "Capital of Belgium?"})]
    assert qa.adapter is None  # the module itself never got the hint adapter


async def test_refine_gives_each_predictor_its_own_advice_and_keeps_demos_hint_free() -> None:
    class TwoStep(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.draft = alm.Predict("question -> draft")
            self.polish = alm.Predict("draft -> answer")
            self.polish.demos = [alm.Example(draft="d", answer="D")]

        async def forward(self, question: str) -> Any:
            draft = await self.draft(question=question)
            return await self.polish(draft=draft.draft)

    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if is_advice(req):
            return {"discussion": "x", "advice": {"draft": "Be brief.", "polish": "Capitalize."}}
        if "Your output fields are:\n1. `draft`" in req.messages[0]["content"]:
            return {"draft": "d"}
        return {"answer": "fine" if "hint_" in req.last_user_message else "bad"}

    lm = ScriptedLM(respond)
    with alm.context(lm=lm):
        pred = await Refine(TwoStep(), 2, lambda a, p: p.answer == "fine", 1.0)(question="q")
    assert pred.answer == "fine"
    hinted = [r["messages"] for r in lm.requests[3:]]
    assert "[[ ## hint_ ## ]]\nBe brief." in hinted[0][-1]["content"]
    assert "[[ ## hint_ ## ]]\nCapitalize." in hinted[1][-1]["content"]
    demo_user = hinted[1][1]["content"]
    assert demo_user.startswith("[[ ## draft ## ]]\nd") and "hint_" not in demo_user


async def test_refine_without_success_returns_the_best_attempt() -> None:
    attempt_answers = iter(["a", "abc", "ab"])

    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if is_advice(req):
            return {"discussion": "x", "advice": {"self": "Longer."}}
        return {"answer": next(attempt_answers)}

    lm = ScriptedLM(respond)
    pred = await Refine(alm.Predict("question -> answer", lm=lm), 3, length, threshold=10)(question="q")
    assert pred.answer == "abc"
    assert [is_advice(ScriptedRequest(r, 0)) for r in lm.requests] == [False, True, False, True, False]


async def test_refine_failures_and_fail_count() -> None:
    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if is_advice(req):
            return {"discussion": "x", "advice": {"self": "Do better."}}
        return {"answer": "ok" if "hint_" in req.last_user_message else "boom"}

    def reward(args: dict[str, Any], pred: Any) -> float:
        if pred.answer == "boom":
            raise RuntimeError("reward exploded")
        return 1.0

    lm = ScriptedLM(respond)
    qa = alm.Predict("question -> answer", lm=lm)
    # a failed attempt gets no advice (there is no reward to explain); the next one runs as is
    with pytest.raises(RuntimeError, match="reward exploded"):
        await Refine(qa, 3, reward, 1.0)(question="q")
    with pytest.raises(RuntimeError, match="reward exploded"):
        await Refine(qa, 3, reward, 1.0, fail_count=0)(question="q")
    assert len(lm.requests) == 4


async def test_refine_concurrent_calls_are_independent() -> None:
    def respond(req: ScriptedRequest) -> dict[str, Any]:
        if is_advice(req):
            word = req.last_user_message.split('"question": "', 1)[1].split('"', 1)[0]
            return {"discussion": "x", "advice": {"self": f"hint for {word}"}}
        text = req.last_user_message
        word = text.split("[[ ## question ## ]]\n", 1)[1].split("\n", 1)[0]
        if "[[ ## hint_ ## ]]" in text:
            hint = text.split("[[ ## hint_ ## ]]\n", 1)[1].split("\n", 1)[0]
            return {"answer": f"{word} with {hint}"}
        return {"answer": "first try"}

    refine = Refine(
        alm.Predict("question -> answer", lm=ScriptedLM(respond, latency=0.005)),
        2,
        lambda a, p: p.answer != "first try",
        1.0,
    )
    preds = await refine.batch([{"question": f"w{i}"} for i in range(6)], concurrency=6)
    assert [p.answer for p in preds] == [f"w{i} with hint for w{i}" for i in range(6)]


async def test_attempts_do_not_stream_only_the_final_prediction_is_yielded() -> None:
    from asynclm.modules._streaming import StreamChunk, streamify

    qa = alm.Predict("question -> answer", lm=ScriptedLM([{"answer": "a"}, {"answer": "a longer answer"}]))
    items = [item async for item in streamify(BestOfN(qa, 2, length, None))(question="q")]
    assert not any(isinstance(item, StreamChunk) for item in items)
    assert items[-1].answer == "a longer answer"

    # the bare predictor does stream: the test above is not vacuous
    qa = alm.Predict("question -> answer", lm=ScriptedLM({"answer": "a fairly long answer to stream"}))
    items = [item async for item in streamify(qa)(question="q")]
    assert any(isinstance(item, StreamChunk) for item in items)
