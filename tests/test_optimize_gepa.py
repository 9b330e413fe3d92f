"""GEPA over real HTTP to a FakeOpenAIServer playing both the task model and the reflection model.

The task: a two-step program (``first``: question -> draft, ``second``: draft -> answer) whose
right answer is the word in capitals with an exclamation mark. The task model writes capitals
only when the first step's instructions contain CAPITALS, and adds "!" only when the second
step's contain EXCLAIM. Nothing in the data says so: only the metric's feedback names the
words, and the reflection model copies the words it finds in the feedback into the
instructions it proposes. So the program goes from 0% to 100% only if GEPA's loop works: traced
calls, per-predictor feedback, reflection, minibatch acceptance, the Pareto front.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asynclm
from asynclm.evaluate import Evaluate
from asynclm.optimize import GEPA, GEPAResult, ScoreWithFeedback
from asynclm.optimize._gepa._reflection import extract_instruction, render_prompt
from asynclm.optimize._gepa._state import MinibatchSampler, Pool, auto_budget, select_parent
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields

TRAIN_WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]
VAL_WORDS = ["ocean", "piano", "lemon", "eagle"]
TEST_WORDS = ["house", "grape", "storm", "candle", "violet", "bridge"]


def examples(words: list[str]) -> list[asynclm.Example]:
    return [asynclm.Example(question=w, word=w, answer=w.upper() + "!").with_inputs("question") for w in words]


TRAIN, VAL, TEST = examples(TRAIN_WORDS), examples(VAL_WORDS), examples(TEST_WORDS)


class Pipeline(asynclm.Module):
    def __init__(self, lm: asynclm.LM) -> None:
        super().__init__()
        self.first = asynclm.Predict("question -> draft", lm=lm)
        self.second = asynclm.Predict("draft -> answer", lm=lm)

    async def forward(self, question: str) -> asynclm.Prediction:
        draft = (await self.first(question=question)).draft
        return await self.second(draft=draft)


class World:
    """The server's response function: the task model (model "task") and the reflection model
    (model "reflect"). ``luck``: the reflection model gets the words right only for one prompt
    in ``luck`` (decided by a hash of the prompt, so runs are repeatable)."""

    def __init__(self, luck: int = 1) -> None:
        self.luck = luck
        self.reflection_prompts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: FakeRequest) -> Any:
        if request.model == "reflect":  # GEPA's ProposeInstruction, through the JSON adapter
            inputs = request.inputs
            assert "response_format" in request.json
            return Fields(new_instruction=self.propose(inputs["current_instruction"], request.last_user_message))
        system = str(request.messages[0]["content"])
        inputs = request.inputs
        if "question" in inputs:
            word = inputs["question"].strip()
            return Fields(draft=word.upper() if "CAPITALS" in system else word.lower())
        draft = inputs["draft"].strip()
        return Fields(answer=draft + "!" if "EXCLAIM" in system else draft)

    def propose(self, current: str, prompt: str) -> str:
        """Copy the words the feedback asks for into the instruction (if lucky)."""
        with self.lock:
            self.reflection_prompts.append(prompt)
        current = current.strip()
        words = sorted(set(re.findall(r"must contain the word (\w+)", prompt)))
        lucky = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % self.luck == 0
        if not lucky:
            words = ["PLEASE"]
        return current + "".join(f" Use {w}." for w in words if w not in current)

    def text_reflection(self, prompt: str) -> str:
        """The same, as a plain function of a text prompt answering in a fenced block."""
        current = prompt.split("```")[1]
        return f"Here is a better instruction:\n```\n{self.propose(current, prompt)}\n```\nGood luck."


def score_of(gold: asynclm.Example, pred: asynclm.Prediction) -> float:
    answer = str(pred.answer)
    return 0.5 * (answer.rstrip("!") == gold.word.upper()) + 0.5 * answer.endswith("!")


def feedback_of(gold: asynclm.Example, pred: asynclm.Prediction, pred_name: str | None) -> str:
    answer = str(pred.answer)
    if pred_name == "first" and answer.rstrip("!") != gold.word.upper():
        return (
            f"Expected {gold.answer!r}: the word must be in capital letters; "
            "the instructions must contain the word CAPITALS."
        )
    if pred_name == "second" and not answer.endswith("!"):
        return (
            f"Expected {gold.answer!r}: the answer must end with '!'; the instructions must contain the word EXCLAIM."
        )
    return "Correct for this step."


class CountingMetric:
    """The GEPA metric (sync or async), counting its calls."""

    def __init__(self, kind: str = "feedback") -> None:
        self.kind = kind
        self.calls = 0
        self.with_pred_name = 0
        self.lock = threading.Lock()
        self.__name__ = f"metric_{kind}"

    def _result(self, gold: Any, pred: Any, trace: Any, pred_name: Any, pred_trace: Any) -> Any:
        with self.lock:
            self.calls += 1
            self.with_pred_name += pred_name is not None
        score = score_of(gold, pred)
        if pred_name is not None:
            assert trace is not None and len(pred_trace) == 1, "the traced call of the predictor being improved"
            predictor, inputs, outputs = pred_trace[0]
            assert isinstance(predictor, asynclm.Predict) and inputs and outputs
        if self.kind == "bool":
            return score == 1.0
        if self.kind == "float" or pred_name is None:
            return score
        if self.kind == "keywords":
            return ScoreWithFeedback(score=score, feedback=feedback_of(gold, pred, pred_name))
        return ScoreWithFeedback(score, feedback_of(gold, pred, pred_name))

    def __call__(self, gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        return self._result(gold, pred, trace, pred_name, pred_trace)


class AsyncCountingMetric(CountingMetric):
    async def __call__(  # type: ignore[override]
        self, gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> Any:
        await anyio.lowlevel.checkpoint()
        return self._result(gold, pred, trace, pred_name, pred_trace)


def lms(server: FakeOpenAIServer) -> tuple[asynclm.LM, asynclm.LM]:
    task = asynclm.LM("openai/task", base_url=server.base_url, api_key="sk-test", cache=False)
    reflect = asynclm.LM("openai/reflect", base_url=server.base_url, api_key="sk-test", cache=False)
    return task, reflect


async def test_score(program: asynclm.Module) -> float:
    result = await Evaluate(devset=TEST, metric=lambda g, p: score_of(g, p), progress=False)(program)
    return result.score


test_score.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


# -- the end-to-end result -------------------------------------------------------------------------


async def test_gepa_learns_the_instructions_from_feedback() -> None:
    world = World()
    with FakeOpenAIServer(world) as server:
        task, reflect = lms(server)
        student = Pipeline(task)
        before_state = json.dumps(student.dump_state(), sort_keys=True)
        metric = CountingMetric()
        gepa = GEPA(metric, reflection_lm=reflect, max_metric_calls=80, seed=0, progress=False)

        assert await test_score(student) == 0.0
        best = await gepa.compile(student, trainset=TRAIN, valset=VAL)
        assert await test_score(best) == 100.0  # held-out words: 0% -> 100%

        instructions = {name: p.signature.instructions for name, p in best.named_predictors()}
        assert "CAPITALS" in instructions["first"] and "EXCLAIM" in instructions["second"]
        assert json.dumps(student.dump_state(), sort_keys=True) == before_state  # the student is untouched
        assert best is not student and best.first is not student.first

        results = best.detailed_results
        assert isinstance(results, GEPAResult)
        assert results.val_aggregate_scores[0] == 0.0 and results.val_aggregate_scores[results.best_idx] == 1.0
        assert results.parents[0] == [None] and results.origins[0] == "seed"
        assert all(p is not None and p < i for i, ps in enumerate(results.parents[1:], 1) for p in ps)
        assert len(results.per_val_instance_best_candidates) == len(VAL)
        assert results.highest_score_achieved_per_val_task == [1.0] * len(VAL)
        assert all(results.best_idx in cell for cell in results.pareto_front)
        assert [len(s) for s in results.val_subscores] == [len(VAL)] * len(results.candidates)
        assert results.total_metric_calls == metric.calls <= 80
        assert results.discovery_eval_counts[0] == 0 and results.discovery_eval_counts == sorted(
            results.discovery_eval_counts
        )
        assert results.best_candidate.dump_state() == best.dump_state()
        json.dumps(results.to_dict())  # JSON-able

        # the reflection model saw each predictor's traced inputs, outputs and the metric's feedback
        prompt = world.reflection_prompts[0]
        assert '"Inputs": {"' in prompt and '"Generated Outputs": {"' in prompt and '"Feedback": "' in prompt
        assert "must contain the word" in prompt


async def test_gepa_with_a_plain_function_as_reflection_lm() -> None:
    """A function of a text prompt works as the reflection LM (the gepa package's convention):
    it gets GEPA's markdown prompt and answers with the instruction in a fenced block."""
    world = World()
    with FakeOpenAIServer(world) as server:
        task, _ = lms(server)
        best = await GEPA(
            AsyncCountingMetric(), reflection_lm=world.text_reflection, max_metric_calls=80, progress=False
        ).compile(Pipeline(task), trainset=TRAIN, valset=VAL)
        assert await test_score(best) == 100.0
        prompt = world.reflection_prompts[0]
        assert "## Inputs" in prompt and "## Generated Outputs" in prompt and "## Feedback" in prompt
        assert all(r.model == "task" for r in server.request_log)


def test_gepa_compile_sync_and_save_load(tmp_path: Path) -> None:
    with FakeOpenAIServer(World()) as server:
        task, reflect = lms(server)
        student = Pipeline(task)
        best = GEPA(CountingMetric(), reflection_lm=reflect, max_metric_calls=80, progress=False).compile.sync(
            student, trainset=TRAIN, valset=VAL
        )
        path = tmp_path / "gepa.json"
        best.save(path)
        loaded = Pipeline(task).load(path)
        assert loaded.dump_state() == best.dump_state()
        assert Evaluate(devset=TEST, metric=lambda g, p: score_of(g, p), progress=False).sync(loaded).score == 100.0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-metric", "async-metric"])
@pytest.mark.parametrize("kind", ["feedback", "keywords", "float", "bool"])
async def test_gepa_metric_kinds(kind: str, is_async: bool) -> None:
    world = World()
    with FakeOpenAIServer(world) as server:
        task, reflect = lms(server)
        metric = AsyncCountingMetric(kind) if is_async else CountingMetric(kind)
        best = await GEPA(metric, reflection_lm=reflect, max_metric_calls=40, use_merge=False, progress=False).compile(
            Pipeline(task), trainset=TRAIN, valset=VAL
        )
        results = best.detailed_results
        assert results.total_metric_calls == metric.calls <= 40
        assert metric.with_pred_name > 0  # GEPA asked for per-predictor feedback
        if kind in ("feedback", "keywords"):
            assert await test_score(best) > 0.0
        else:  # no feedback text: the reflection model gets GEPA's default, the score
            assert any("This trajectory got a score of" in p for p in world.reflection_prompts)


async def test_gepa_plain_metric_without_pred_name() -> None:
    """An ordinary (gold, pred, trace=None) metric works too; it just gives no feedback text."""
    calls = 0

    def exact(gold: asynclm.Example, pred: asynclm.Prediction, trace: Any = None) -> bool:
        nonlocal calls
        calls += 1
        return bool(pred.answer == gold.answer)

    with FakeOpenAIServer(World()) as server:
        task, reflect = lms(server)
        best = await GEPA(exact, reflection_lm=reflect, max_metric_calls=30, progress=False).compile(
            Pipeline(task), trainset=TRAIN, valset=VAL
        )
        assert best.detailed_results.total_metric_calls == calls <= 30


# -- determinism, budget -------------------------------------------------------------------------


async def test_gepa_is_deterministic_at_any_concurrency() -> None:
    runs = []
    for concurrency in (1, 32, 1):
        with FakeOpenAIServer(World(luck=2), latency=0.005) as server:
            task, reflect = lms(server)
            best = await GEPA(
                CountingMetric(),
                reflection_lm=reflect,
                max_metric_calls=120,
                proposals_per_round=4,
                concurrency=concurrency,
                seed=3,
                progress=False,
            ).compile(Pipeline(task), trainset=TRAIN, valset=VAL)
            runs.append((best.dump_state(), best.detailed_results.to_dict()))
            if concurrency == 32:
                assert server.max_in_flight > 4, "the round's proposals did not run concurrently"
            else:
                assert server.max_in_flight <= 1 + 4  # one program run, plus reflections in flight
    assert runs[0] == runs[1] == runs[2]
    log = runs[0][1]["log"]
    assert {entry["slot"] for entry in log} == {0, 1, 2, 3}
    assert len(runs[0][1]["candidates"]) > 2


@pytest.mark.parametrize("budget", [4, 11, 23, 37, 61])
@pytest.mark.parametrize("k", [1, 3])
async def test_gepa_never_exceeds_max_metric_calls(budget: int, k: int) -> None:
    with FakeOpenAIServer(World(luck=2)) as server:
        task, reflect = lms(server)
        metric = CountingMetric()
        best = await GEPA(
            metric, reflection_lm=reflect, max_metric_calls=budget, proposals_per_round=k, progress=False
        ).compile(Pipeline(task), trainset=TRAIN, valset=VAL)
        assert metric.calls == best.detailed_results.total_metric_calls <= budget


async def test_gepa_proposals_per_round_reach_the_goal_in_fewer_rounds() -> None:
    """With a reflection model that is right only one time in five, four proposals per round
    find the best program in far fewer rounds than one per round. A round is a chain of
    dependent calls (minibatch, reflection, minibatch, validation), so with latency on every call
    the wall time to the goal follows the number of rounds."""
    found = {}
    for k in (1, 4):
        with FakeOpenAIServer(World(luck=5), latency=0.002) as server:
            task, reflect = lms(server)
            best = await GEPA(
                CountingMetric(), reflection_lm=reflect, max_metric_calls=200, proposals_per_round=k, progress=False
            ).compile(Pipeline(task), trainset=TRAIN, valset=VAL)
            results = best.detailed_results
            assert results.val_aggregate_scores[results.best_idx] == 1.0
            found[k] = results.rounds[results.best_idx]
    assert found[4] * 3 <= found[1], found


async def test_gepa_honours_lm_limits_and_track_usage() -> None:
    world = World()
    with FakeOpenAIServer(world, latency=0.005) as server:
        task = asynclm.LM("openai/task", base_url=server.base_url, api_key="sk-test", cache=False, max_concurrency=2)
        _, reflect = lms(server)
        with asynclm.track_usage() as usage:
            best = await GEPA(
                CountingMetric(), reflection_lm=reflect, max_metric_calls=60, proposals_per_round=4, progress=False
            ).compile(Pipeline(task), trainset=TRAIN, valset=VAL)
        task_calls = sum(1 for r in server.request_log if r.model == "task")
        assert usage.calls == server.requests == task_calls + len(world.reflection_prompts)  # reflections included
        assert usage.total_tokens > 0
        # two program calls per metric call (two predictors), never more than 2 task requests in flight
        assert task_calls == 2 * best.detailed_results.total_metric_calls
        assert server.max_in_flight <= 2 + 4  # the task LM's 2, plus at most one reflection per proposal


class SplitWorld:
    """A task where two candidates are each best on different examples: words that start with a
    vowel need VOWEL in ``first``'s instructions, the others need CONSON in ``second``'s. Two
    siblings that each learned one rule sit on the Pareto front together, and merging them
    gives a program that is right everywhere."""

    def __call__(self, request: FakeRequest) -> Any:
        inputs = request.inputs
        if request.model == "reflect":
            prompt = request.last_user_message
            current = inputs["current_instruction"].strip()
            words = sorted(set(re.findall(r"must contain the word (\w+)", prompt)))
            key = current + "|" + ",".join(sorted(re.findall(r'"(?:question|draft)": "(\w+)"', prompt)))
            if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2:
                words = []
            return Fields(new_instruction=current + "".join(f" Use {w}." for w in words if w not in current))
        system = str(request.messages[0]["content"])
        if "question" in inputs:
            word = inputs["question"].strip()
            return Fields(draft=word.upper() if word[0] in "aeiou" and "VOWEL" in system else word)
        draft = inputs["draft"].strip()
        return Fields(answer=draft.upper() if draft[0].lower() not in "aeiou" and "CONSON" in system else draft)


def split_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
    word, answer = gold.word, str(pred.answer)
    score = float(answer == word.upper())
    if pred_name is None or score:
        return score
    if pred_name == "first" and word[0] in "aeiou":
        return ScoreWithFeedback(0.0, "A vowel word must be capitalised: the instructions must contain the word VOWEL.")
    if pred_name == "second" and word[0] not in "aeiou":
        return ScoreWithFeedback(0.0, "Capitalise consonant words: the instructions must contain the word CONSON.")
    return ScoreWithFeedback(0.0, "Wrong, but not because of this step.")


async def test_gepa_merges_two_front_candidates() -> None:
    words = ["apple", "river", "eagle", "stone", "onion", "tiger", "umbra", "maple"]
    train = [asynclm.Example(question=w, word=w).with_inputs("question") for w in words]
    val = [asynclm.Example(question=w, word=w).with_inputs("question") for w in ["ocean", "piano", "igloo", "lemon"]]
    with FakeOpenAIServer(SplitWorld()) as server:
        task, reflect = lms(server)
        best = await GEPA(
            split_metric, reflection_lm=reflect, max_metric_calls=300, proposals_per_round=4, seed=0, progress=False
        ).compile(Pipeline(task), trainset=train, valset=val)
        results = best.detailed_results
        merged = [i for i, origin in enumerate(results.origins) if origin == "merge"]
        assert merged, results.log
        i = merged[0]
        a, b = results.parents[i]
        assert results.val_aggregate_scores[i] == 1.0
        assert results.val_aggregate_scores[a] == results.val_aggregate_scores[b] == 0.5
        # each parent is right where the other is wrong (vowel words vs the others)
        pairs = list(zip(results.val_subscores[a], results.val_subscores[b], strict=True))
        assert (1.0, 0.0) in pairs and (0.0, 1.0) in pairs
        # the child takes from each parent the predictor it changed
        taken = {results.instructions[a]["first"], results.instructions[b]["first"]}
        assert results.instructions[i]["first"] in taken and "VOWEL" in results.instructions[i]["first"]
        assert "CONSON" in results.instructions[i]["second"]
        assert (await Evaluate(devset=val, metric=split_metric, progress=False)(best)).score == 100.0


# -- cancellation ----------------------------------------------------------------------------------


async def test_gepa_cancellation_aborts_requests_in_flight() -> None:
    async with FakeOpenAIServer(World(), latency=30.0) as server:
        task, reflect = lms(server)
        gepa = GEPA(CountingMetric(), reflection_lm=reflect, max_metric_calls=80, progress=False)
        with anyio.fail_after(10):  # a hang guard: without the cancellation this would take minutes
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(gepa.compile, Pipeline(task), trainset=TRAIN, valset=VAL))
                await server.wait_until(lambda s: s.in_flight >= len(VAL))
                tg.cancel_scope.cancel()
        await server.wait_until(lambda s: s.in_flight == 0 and s.client_disconnects >= len(VAL))


# -- bad input, units --------------------------------------------------------------------------------


def test_gepa_bad_arguments() -> None:
    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return 1.0

    lm = asynclm.LM("openai/x", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(TypeError, match="reflection LM"):
        GEPA(metric, max_metric_calls=10)
    with pytest.raises(ValueError, match="exactly one budget"):
        GEPA(metric, reflection_lm=lm)
    with pytest.raises(ValueError, match="exactly one budget"):
        GEPA(metric, reflection_lm=lm, auto="light", max_metric_calls=5)
    with pytest.raises(ValueError, match="auto='huge'"):
        GEPA(metric, reflection_lm=lm, auto="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proposals_per_round=0"):
        GEPA(metric, reflection_lm=lm, auto="light", proposals_per_round=0)
    with pytest.raises(TypeError, match="must accept"):
        GEPA(lambda: 1.0, reflection_lm=lm, auto="light")
    with pytest.raises(TypeError, match="not both"):
        GEPA(metric, reflection_lm=lm, auto="light", minibatch_size=4, reflection_minibatch_size=5)
    assert GEPA(metric, reflection_lm=lm, auto="light", reflection_minibatch_size=5).minibatch_size == 5
    gepa = GEPA(metric, reflection_lm=lm, max_metric_calls=3, progress=False)
    with pytest.raises(ValueError, match="cannot even score"):
        gepa.compile.sync(Pipeline(lm), trainset=TRAIN, valset=VAL)
    with pytest.raises(ValueError, match="trainset is empty"):
        gepa.compile.sync(Pipeline(lm), trainset=[], valset=VAL)
    with pytest.raises(TypeError, match="trainset\\[0\\]"):
        gepa.compile.sync(Pipeline(lm), trainset=[{"question": "q"}], valset=VAL)  # type: ignore[list-item]


def test_gepa_metric_returning_nonsense_is_a_clear_error() -> None:
    with FakeOpenAIServer(World()) as server:
        task, reflect = lms(server)
        gepa = GEPA(lambda g, p, t=None, n=None, pt=None: "great", reflection_lm=reflect, max_metric_calls=20)
        with pytest.raises(TypeError, match="ScoreWithFeedback"):
            gepa.compile.sync(Pipeline(task), trainset=TRAIN, valset=VAL)


def test_auto_budget_matches_dspy() -> None:
    # DSPy 3's GEPA.auto_budget(num_preds, num_candidates, valset_size) for its presets
    # light, one predictor: 10 trials (max(4 * log2(6), 9)), 3 full evaluations ((10 + 1) // 5 + 1)
    assert auto_budget(1, 6, 10) == 10 + 6 * 5 + 10 * 35 + 3 * 10
    assert auto_budget(2, 12, 50) > auto_budget(2, 6, 50)
    assert GEPA(CountingMetric(), reflection_lm=lambda p: p, auto="light").budget(2, 6, 4) == auto_budget(2, 6, 4)
    assert GEPA(CountingMetric(), reflection_lm=lambda p: p, max_full_evals=3).budget(2, 6, 4) == 30


def test_score_with_feedback_and_extraction() -> None:
    s = ScoreWithFeedback(0.5, "why")
    assert (s.score, s.feedback, s["feedback"]) == (0.5, "why", "why")
    assert ScoreWithFeedback(score=1, feedback=None).score == 1
    with pytest.raises(TypeError, match="needs a score"):
        ScoreWithFeedback()
    assert extract_instruction("x\n```\nDo it.\n```\ny") == "Do it."
    assert extract_instruction("```text\nDo it.\n```") == "Do it."
    assert extract_instruction("Just do it.") == "Just do it."
    assert extract_instruction("```\nDo it.") == "Do it."
    prompt = render_prompt("Old.", [{"Inputs": {"q": "a"}, "Generated Outputs": {"answer": "b"}, "Feedback": "c"}])
    assert "```\nOld.\n```" in prompt and "# Example 1\n## Inputs\n### q\na" in prompt


def test_pareto_selection_and_minibatches_follow_gepa() -> None:
    import random

    pool = Pool(names=["p"])
    pool.add({"p": "a"}, [None], [0.0, 0.0, 1.0], discovered_at=0, origin="seed", round_found=0)
    pool.add({"p": "b"}, [0], [1.0, 1.0, 0.0], discovered_at=3, origin="reflection", round_found=1)
    pool.add({"p": "c"}, [0], [1.0, 0.0, 0.0], discovered_at=6, origin="reflection", round_found=1)
    assert pool.front == [{1, 2}, {1}, {0}]
    rng = random.Random(0)
    draws = {select_parent(pool, "pareto", rng) for _ in range(50)}
    assert draws == {0, 1}  # 2 is dominated by 1
    assert select_parent(pool, "current_best", rng) == 1
    sampler = MinibatchSampler(3, random.Random(0))
    batches = [sampler.ids(7, i) for i in range(6)]
    assert all(len(b) == 3 for b in batches)
    assert sorted(set(batches[0] + batches[1] + batches[2])) == list(range(7))  # an epoch covers everything
