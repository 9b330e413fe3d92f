"""Optimizers: LabeledFewShot, BootstrapFewShot, BootstrapFewShotWithRandomSearch."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

import anyio
import pytest

import asynclm
from asynclm.evaluate import Evaluate, answer_exact_match
from asynclm.optimize import (
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    Candidate,
    LabeledFewShot,
    Teleprompter,
)
from asynclm.testing import FakeOpenAIServer, Reply, ScriptedLM

QUESTION = re.compile(r"What is (\d+) plus (\d+)\?")


def sums(pairs: list[tuple[int, int]]) -> list[asynclm.Example]:
    return [
        asynclm.Example(question=f"What is {a} plus {b}?", answer=str(a + b)).with_inputs("question") for a, b in pairs
    ]


TRAIN = sums([(1, 1), (2, 3), (4, 4), (5, 1), (6, 2), (7, 7), (8, 1), (9, 9), (3, 3), (2, 8)])


def numbers(text: str) -> tuple[int, int]:
    found = QUESTION.findall(text)
    a, b = found[-1]
    return int(a), int(b)


class Adder:
    """A scripted 'model' that adds, except on the questions whose first number is in ``wrong``;
    it records any prompt where the question being asked is also one of the demos."""

    def __init__(self, wrong: set[int] = frozenset(), only_when: Any = None) -> None:  # type: ignore[assignment]
        self.wrong = wrong
        self.only_when = only_when
        self.own_demo_seen: list[str] = []

    def __call__(self, request: Any) -> dict[str, str]:
        a, b = numbers(request.last_user_message)
        asked = f"What is {a} plus {b}?"
        demos = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
        if any(asked in d for d in demos):
            self.own_demo_seen.append(asked)
        correct = a not in self.wrong and (self.only_when is None or self.only_when(request))
        return {"answer": str(a + b) if correct else "I don't know"}


def qa_program(lm: Any = None) -> asynclm.Predict:
    return asynclm.Predict("question -> answer", lm=lm)


class TwoStep(asynclm.Module):
    def __init__(self, lm: Any = None, delay: bool = False) -> None:
        super().__init__()
        self.draft = asynclm.Predict("question -> draft", lm=lm)
        self.final = asynclm.Predict("question, draft -> answer", lm=lm)
        self.delay = delay

    async def forward(self, question: str) -> Any:
        if self.delay:  # finish in an order unrelated to the training-set order
            digest = hashlib.sha256(question.encode()).digest()
            await anyio.sleep(digest[0] / 255 * 0.03)
        draft = await self.draft(question=question)
        return await self.final(question=question, draft=draft.draft)


def two_step_lm(wrong: set[int] = frozenset()) -> ScriptedLM:  # type: ignore[assignment]
    def answer(request: Any) -> dict[str, str]:
        a, b = numbers(request.last_user_message)
        if "draft ## ]]\n" in request.last_user_message:  # the second step
            return {"answer": "I don't know" if a in wrong else str(a + b)}
        return {"draft": f"{a}+{b}"}

    return ScriptedLM(answer)


def demo_questions(predictor: asynclm.Predict) -> list[str]:
    return [d["question"] for d in predictor.demos]


# -- the base class ------------------------------------------------------------------------------


def test_every_optimizer_compile_has_a_sync_twin_including_subclasses() -> None:
    class Mine(Teleprompter):
        async def compile(self, student: Any, *, trainset: Any) -> Any:
            return student.reset_copy()

    program = qa_program()
    assert isinstance(Mine().compile.sync(program, trainset=[]), asynclm.Predict)
    for opt in (LabeledFewShot(), BootstrapFewShot(), BootstrapFewShotWithRandomSearch(metric=answer_exact_match)):
        assert callable(opt.compile.sync)

    with pytest.raises(TypeError, match="async def compile"):

        class Bad(Teleprompter):
            def compile(self, student: Any, *, trainset: Any) -> Any:  # type: ignore[override]
                return student


def test_compile_sync_twins_run_from_synchronous_code() -> None:
    labeled = LabeledFewShot(k=2).compile.sync(qa_program(), trainset=TRAIN, sample=False)
    assert labeled.demos == TRAIN[:2]  # type: ignore[attr-defined]
    lm = ScriptedLM(Adder())
    boot = BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=1, max_labeled_demos=1)
    assert boot.compile.sync(qa_program(lm), trainset=TRAIN).demos[0]["augmented"] is True  # type: ignore[attr-defined]
    search = BootstrapFewShotWithRandomSearch(metric=answer_exact_match, num_candidate_programs=1)
    best = search.compile.sync(qa_program(lm), trainset=TRAIN[:3])
    assert len(best.candidate_programs) == 4  # type: ignore[attr-defined]


# -- LabeledFewShot ------------------------------------------------------------------------------


async def test_labeled_few_shot_samples_as_dspy_and_never_mutates() -> None:
    program = TwoStep()
    before = program.dump_state()
    compiled = await LabeledFewShot(k=3).compile(program, trainset=TRAIN)
    rng = random.Random(0)
    assert compiled.draft.demos == rng.sample(TRAIN, 3)  # type: ignore[attr-defined]
    assert compiled.final.demos == rng.sample(TRAIN, 3)  # type: ignore[attr-defined]
    assert compiled.draft.demos[0] is not TRAIN[0] and all(  # type: ignore[attr-defined]
        d is not t for d in compiled.draft.demos for t in TRAIN  # type: ignore[attr-defined]
    )
    assert program.dump_state() == before and program.draft.demos == []

    first = await LabeledFewShot(k=2).compile(qa_program(), trainset=TRAIN, sample=False)
    assert first.demos == TRAIN[:2]  # type: ignore[attr-defined]
    everything = await LabeledFewShot(k=50).compile(qa_program(), trainset=TRAIN[:4])
    assert sorted(demo_questions(everything)) == sorted(e.question for e in TRAIN[:4])  # type: ignore[arg-type]
    assert (await LabeledFewShot().compile(qa_program(), trainset=[])).demos == []  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"trainset\[0\] has no input keys"):
        await LabeledFewShot().compile(qa_program(), trainset=[asynclm.Example(question="q")])


# -- BootstrapFewShot ----------------------------------------------------------------------------


async def test_bootstrap_keeps_only_demos_whose_traces_pass_the_metric() -> None:
    adder = Adder(wrong={2, 5})  # TRAIN[1] and TRAIN[3] get wrong answers
    lm = ScriptedLM(adder)
    traces: list[Any] = []

    def metric(example: Any, pred: Any, trace: Any = None) -> bool:
        if trace is not None:
            traces.append(trace)
        return bool(answer_exact_match(example, pred))

    program = qa_program(lm)
    opt = BootstrapFewShot(metric=metric, max_bootstrapped_demos=4, max_labeled_demos=6, concurrency=1)
    compiled = await opt.compile(program, trainset=TRAIN)

    demos = compiled.demos  # type: ignore[attr-defined]
    augmented = [d for d in demos if d.get("augmented")]
    # the first four examples that pass, in training-set order; the two wrong ones skipped
    assert [d["question"] for d in augmented] == [TRAIN[i].question for i in (0, 2, 4, 5)]
    assert all(d["answer"] == str(sum(numbers(d["question"]))) for d in augmented)
    assert set(augmented[0]) == {"augmented", "question", "answer"}
    # then labelled demos, drawn from the examples that were not bootstrapped, up to 6 in total
    labelled = demos[4:]
    assert len(demos) == 6 and not any(d.get("augmented") for d in labelled)
    assert {d["question"] for d in labelled} <= {TRAIN[i].question for i in (1, 3, 6, 7, 8, 9)}
    # the metric saw each trace: one (predictor, inputs, prediction) for the one Predict call
    assert len(traces) == 6 and all(len(t) == 1 for t in traces)
    predictor, inputs, prediction = traces[0][0]
    assert isinstance(predictor, asynclm.Predict) and inputs == {"question": TRAIN[0].question}
    assert prediction.answer == "2"
    # the teacher had labelled demos, but never the example it was asked about
    assert adder.own_demo_seen == []
    assert len(lm.requests[0]["messages"]) == 2 + 2 * 6 - 2  # system + 5 demo pairs + question
    assert program.demos == []  # the student is untouched


async def test_bootstrap_maps_traces_to_predictors_by_name() -> None:
    compiled = await BootstrapFewShot(
        metric=answer_exact_match, max_bootstrapped_demos=2, max_labeled_demos=2
    ).compile(TwoStep(two_step_lm(wrong={1})), trainset=TRAIN)
    draft, final = compiled.draft.demos, compiled.final.demos  # type: ignore[attr-defined]
    assert [d["question"] for d in draft] == [TRAIN[1].question, TRAIN[2].question]
    assert dict(draft[0]) == {"augmented": True, "question": "What is 2 plus 3?", "draft": "2+3"}
    assert dict(final[0]) == {"augmented": True, "question": "What is 2 plus 3?", "draft": "2+3", "answer": "5"}


async def test_bootstrap_is_deterministic_whatever_the_concurrency() -> None:
    trainset = sums([(i % 7, i) for i in range(30)])
    reference = await BootstrapFewShot(
        metric=answer_exact_match, max_bootstrapped_demos=5, max_labeled_demos=8, concurrency=1
    ).compile(TwoStep(two_step_lm(wrong={0, 3})), trainset=trainset)
    expected = [e.question for e in trainset if numbers(e.question)[0] not in (0, 3)][:5]
    for concurrency in (2, 5, 16, 16, 16):
        opt = BootstrapFewShot(
            metric=answer_exact_match, max_bootstrapped_demos=5, max_labeled_demos=8, concurrency=concurrency
        )
        compiled = await opt.compile(TwoStep(two_step_lm(wrong={0, 3}), delay=True), trainset=trainset)
        assert compiled.dump_state() == reference.dump_state()
        questions = [d["question"] for d in compiled.final.demos if d.get("augmented")]  # type: ignore[attr-defined]
        assert questions == expected


async def test_bootstrap_errors_tolerated_up_to_max_errors_then_raised() -> None:
    class Flaky(asynclm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = qa_program(ScriptedLM(Adder()))

        async def forward(self, question: str) -> Any:
            if numbers(question)[0] in (2, 6):
                raise LookupError(question)
            return await self.qa(question=question)

    compiled = await BootstrapFewShot(
        metric=answer_exact_match, max_bootstrapped_demos=4, max_labeled_demos=4, max_errors=2, concurrency=8
    ).compile(Flaky(), trainset=TRAIN)
    assert [d["question"] for d in compiled.qa.demos] == [TRAIN[i].question for i in (0, 2, 3, 5)]  # type: ignore[attr-defined]

    for concurrency in (1, 8):  # the error raised is the first one past the limit in training-set order
        with pytest.raises(LookupError, match="6 plus 2"):
            await BootstrapFewShot(
                metric=answer_exact_match, max_bootstrapped_demos=4, max_errors=1, concurrency=concurrency
            ).compile(Flaky(), trainset=TRAIN)


async def test_bootstrap_rounds_resample_with_temperature_and_rollout_id() -> None:
    adder = Adder(only_when=lambda request: request.params.get("temperature") == 1.0)
    lm = ScriptedLM(adder)
    one_round = await BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=2).compile(
        qa_program(lm), trainset=TRAIN[:4]
    )
    assert not any(d.get("augmented") for d in one_round.demos)  # type: ignore[attr-defined]
    lm.requests.clear()
    two_rounds = await BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=2, max_rounds=2).compile(
        qa_program(lm), trainset=TRAIN[:4]
    )
    assert [d["question"] for d in two_rounds.demos[:2]] == [TRAIN[0].question, TRAIN[1].question]  # type: ignore[attr-defined]
    assert all(d.get("augmented") for d in two_rounds.demos[:2])  # type: ignore[attr-defined]
    assert all("rollout_id" not in r for r in lm.requests)  # a cache key, never sent
    assert two_rounds.config == {}  # type: ignore[attr-defined]  # the sampling settings stay in the teacher


async def test_bootstrap_with_a_teacher_and_teacher_settings() -> None:
    good, bad = ScriptedLM(Adder()), ScriptedLM(Adder(wrong=set(range(10))))
    student = qa_program(bad)
    compiled = await BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=2).compile(
        student, trainset=TRAIN, teacher=qa_program(good)
    )
    assert all(d.get("augmented") for d in compiled.demos[:2])  # type: ignore[attr-defined]
    assert compiled.lm is bad  # type: ignore[attr-defined]

    with asynclm.context(lm=bad):
        compiled = await BootstrapFewShot(
            metric=answer_exact_match, max_bootstrapped_demos=2, teacher_settings={"lm": good}
        ).compile(qa_program(), trainset=TRAIN)
    assert all(d.get("augmented") for d in compiled.demos[:2])  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="same structure"):
        await BootstrapFewShot(metric=answer_exact_match).compile(qa_program(good), trainset=TRAIN, teacher=TwoStep())


async def test_bootstrap_does_not_mutate_the_student_and_compiles_again() -> None:
    program = qa_program(ScriptedLM(Adder()))
    program.demos = [TRAIN[9].copy()]
    before = program.dump_state()
    opt = BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=2, max_labeled_demos=3)
    first = await opt.compile(program, trainset=TRAIN)
    again = await opt.compile(program, trainset=TRAIN)
    assert program.dump_state() == before
    assert first.dump_state() == again.dump_state()
    recompiled = await opt.compile(first, trainset=TRAIN)  # a compiled program can be compiled again
    assert len(recompiled.demos) == 3  # type: ignore[attr-defined]


async def test_bootstrap_stops_early_and_reports_misuse_at_once() -> None:
    lm = ScriptedLM(Adder())
    trainset = sums([(i, i) for i in range(40)])
    compiled = await BootstrapFewShot(
        metric=answer_exact_match, max_bootstrapped_demos=2, max_labeled_demos=2, concurrency=4
    ).compile(qa_program(lm), trainset=trainset)
    assert [d["question"] for d in compiled.demos] == [trainset[0].question, trainset[1].question]  # type: ignore[attr-defined]
    assert len(lm.requests) <= 2 + 4  # the two it needed, plus at most the ones already in flight

    with pytest.raises(TypeError, match="must return a number"):
        await BootstrapFewShot(metric=lambda e, p, t: "fine", max_errors=None, concurrency=4).compile(
            qa_program(lm), trainset=trainset
        )
    with pytest.raises(TypeError, match=r"unknown setting.*'temprature'"):
        BootstrapFewShot(teacher_settings={"temprature": 0.5})


# -- save / load ---------------------------------------------------------------------------------


async def test_compiled_program_saves_and_loads_as_json_and_behaves_the_same(tmp_path: Any) -> None:
    compiled = await BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=2, max_labeled_demos=4).compile(
        TwoStep(two_step_lm()), trainset=TRAIN
    )
    path = tmp_path / "program.json"
    compiled.save(path)
    loaded = TwoStep(two_step_lm()).load(path)
    assert loaded.dump_state() == compiled.dump_state()

    dev = sums([(11, 2), (12, 5)])
    out_a, out_b = two_step_lm(), two_step_lm()
    compiled.set_lm(out_a)
    loaded.set_lm(out_b)
    await Evaluate(devset=dev, metric=answer_exact_match, progress=False)(compiled)
    await Evaluate(devset=dev, metric=answer_exact_match, progress=False)(loaded)
    assert len(out_a.requests) == 4  # two examples, two steps each
    assert sorted(map(str, out_a.requests)) == sorted(map(str, out_b.requests))  # the very same prompts


# -- random search -------------------------------------------------------------------------------


def residue_lm() -> ScriptedLM:
    """Train questions are always answered right. A validation question (first number >= 100) is
    answered right only when the first demo of the prompt has the same first number mod 3."""

    def only_when(request: Any) -> bool:
        a, _ = numbers(request.last_user_message)
        if a < 100:
            return True
        demos = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
        return bool(demos) and numbers(demos[0])[0] % 3 == a % 3

    return ScriptedLM(Adder(only_when=only_when))


VALSET = sums([(100, 1), (103, 1), (106, 1), (109, 1), (112, 1), (101, 1), (104, 1), (107, 1), (102, 1), (105, 1)])


async def test_random_search_returns_the_best_candidate_on_the_valset() -> None:
    opt = BootstrapFewShotWithRandomSearch(
        metric=answer_exact_match, max_bootstrapped_demos=3, max_labeled_demos=4, num_candidate_programs=6
    )
    best = await opt.compile(qa_program(residue_lm()), trainset=TRAIN, valset=VALSET)
    candidates = best.candidate_programs  # type: ignore[attr-defined]
    assert sorted(c.seed for c in candidates) == list(range(-3, 6))
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) >= 3  # the candidates really differ
    zero_shot = next(c for c in candidates if c.seed == -3)
    assert zero_shot.score == 0.0 and zero_shot.program.demos == []
    assert isinstance(candidates[0], Candidate) and candidates[0]["program"] is best
    assert candidates[0].score == max(scores)
    top = [c for c in candidates if c.score == max(scores)]
    assert best is min(top, key=lambda c: c.seed).program  # ties go to the earliest candidate
    # the score is the program's real score on the validation set
    again = await Evaluate(devset=VALSET, metric=answer_exact_match, progress=False)(best)
    assert again.score == candidates[0].score and again.scores == candidates[0].subscores
    # the candidates' predictors are not the best program's
    assert [name for name, _ in best.named_predictors()] == ["self"]


async def test_random_search_is_deterministic_whatever_the_concurrency() -> None:
    def run(num_threads: int) -> Any:
        return BootstrapFewShotWithRandomSearch(
            metric=answer_exact_match,
            max_bootstrapped_demos=3,
            max_labeled_demos=4,
            num_candidate_programs=4,
            num_threads=num_threads,
            seed=7,
        ).compile(qa_program(residue_lm()), trainset=TRAIN, valset=VALSET)

    one, many = await run(1), await run(12)
    assert [(c.seed, c.score) for c in one.candidate_programs] == [(c.seed, c.score) for c in many.candidate_programs]
    assert one.dump_state() == many.dump_state()
    seed0 = await BootstrapFewShotWithRandomSearch(
        metric=answer_exact_match, max_bootstrapped_demos=3, max_labeled_demos=4, num_candidate_programs=4
    ).compile(qa_program(residue_lm()), trainset=TRAIN, valset=VALSET)
    shuffled = [c.program.dump_state() for c in sorted(one.candidate_programs, key=lambda c: c.seed)][3:]
    assert shuffled != [c.program.dump_state() for c in sorted(seed0.candidate_programs, key=lambda c: c.seed)][3:]


async def test_random_search_stop_at_score_and_restrict() -> None:
    opt = BootstrapFewShotWithRandomSearch(
        metric=answer_exact_match, max_bootstrapped_demos=2, num_candidate_programs=5, stop_at_score=0.0
    )
    best = await opt.compile(qa_program(residue_lm()), trainset=TRAIN, valset=VALSET)
    assert [c.seed for c in best.candidate_programs] == [-3]  # type: ignore[attr-defined]
    opt = BootstrapFewShotWithRandomSearch(
        metric=answer_exact_match, max_bootstrapped_demos=2, num_candidate_programs=5
    )
    best = await opt.compile(qa_program(residue_lm()), trainset=TRAIN, valset=VALSET, restrict={-2, 3})
    assert sorted(c.seed for c in best.candidate_programs) == [-2, 3]  # type: ignore[attr-defined]


# -- end to end over HTTP ------------------------------------------------------------------------


def _chat(answer: str) -> str:
    return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


def _field(text: str, name: str) -> str:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n|\n?$)", text, re.S)
    return match.group(1).strip() if match else ""


def secret_code_server(request: Any) -> Reply:
    """A 'model' that can answer with a word's code (the word reversed) only after seeing at least
    two correct worked examples of it in the prompt; otherwise it guesses the word itself."""
    pairs = list(zip(request.messages[1:-1:2], request.messages[2:-1:2], strict=False))
    good = sum(
        1
        for user, assistant in pairs
        if _field(assistant["content"], "answer") == _field(user["content"], "word")[::-1]
    )
    word = _field(request.last_user_message, "word")
    return Reply(_chat(word[::-1] if good >= 2 else word))


async def test_end_to_end_compiled_program_scores_higher_over_http(tmp_path: Any) -> None:
    words = ["apple", "river", "stone", "cloud", "night", "green", "tiger", "piano", "ocean", "maple"]
    examples = [asynclm.Example(word=w, answer=w[::-1]).with_inputs("word") for w in words]
    trainset, devset = examples[:6], examples[6:]
    with FakeOpenAIServer(responses=secret_code_server, latency=0.005) as server:
        lm = asynclm.LM("openai/fake-model", base_url=server.base_url, api_key="sk-test", cache=False)
        program = asynclm.Predict("word -> answer", lm=lm)
        evaluate = Evaluate(devset=devset, metric=answer_exact_match, concurrency=8, progress=False)
        before = await evaluate(program)
        compiled = await BootstrapFewShot(
            metric=answer_exact_match, max_bootstrapped_demos=2, max_labeled_demos=3, concurrency=8
        ).compile(program, trainset=trainset)
        after = await evaluate(compiled)
        assert before.score == 0.0
        assert after.score == 100.0
        assert [d["word"] for d in compiled.demos[:2]] == ["apple", "river"]  # type: ignore[attr-defined]

        compiled.save(tmp_path / "coder.json")
        loaded = asynclm.Predict("word -> answer", lm=lm).load(tmp_path / "coder.json")
        server.reset_counters()
        reloaded = await evaluate(loaded)
        assert reloaded.score == 100.0
        assert [pred.answer for _, pred, _ in reloaded.results] == [pred.answer for _, pred, _ in after.results]
        assert server.requests == len(devset)
