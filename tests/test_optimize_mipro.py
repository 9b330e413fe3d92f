"""MIPROv2 end to end over real HTTP to a FakeOpenAIServer that plays both the task model and the
prompt model.

The task: spell a word backwards. The task model answers correctly only when its instructions
say "backwards" — which the prompt model can only learn from the data (the dataset summary) —
and, even then, only for half the words unless it is also shown demos. Only some proposals are
good (those written under some of the random tips), so the search has to find the right
(instruction, demo set) pair.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asynclm
from asynclm.optimize import MIPROv2, ScoredPrograms, TrialLogs
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, Reply

GOOD = "Spell the word backwards, last letter first."
BAD = "You are a helpful assistant. Answer the question."


def words(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(n)]


def dataset(seed: int, n: int = 20) -> list[asynclm.Example]:
    return [asynclm.Example(word=w, answer=w[::-1]).with_inputs("word") for w in words(seed, n)]


TRAIN, VAL, TEST = dataset(1), dataset(2), dataset(3)


def task_answer(request: FakeRequest) -> str:
    word = request.inputs["word"].strip()
    instructions = request.messages[0]["content"]
    demos = (len(request.messages) - 2) // 2  # a user and an assistant turn per demo
    if "backwards" in instructions and (demos > 0 or word[0] <= "m"):
        return word[::-1]
    return word


def prompt_answer(request: FakeRequest) -> dict[str, str]:
    inputs = request.inputs
    if "basic_instruction" in inputs:  # an instruction proposal
        knows = "backwards" in inputs.get("dataset_description", "")
        tip = inputs.get("tip", "")
        bad_tip = "persona" in tip or "high-stakes" in tip
        return {"proposed_instruction": GOOD if knows and not bad_tip else BAD}
    if "module" in inputs:
        return {"module_description": "It is the only step: it answers for the word."}
    if "program_code" in inputs:
        return {"program_description": "The program maps a word to an answer in one step."}
    if "examples" in inputs:  # a look at the data: are the answers the words reversed?
        text = inputs["examples"]
        pairs = [line.split(": ", 1)[1] for line in text.splitlines() if ": " in line]
        reversed_ = all(a == w[::-1] for w, a in zip(pairs[::2], pairs[1::2], strict=True))
        return {"observations": "Each answer is the word spelled backwards." if reversed_ else "Words."}
    if "observations" in inputs:
        return {"summary": inputs["observations"].splitlines()[0]}
    raise AssertionError(f"unexpected prompt-model request: {inputs}")


def is_task(request: FakeRequest) -> bool:
    # the program's own calls; the prompt model's have other inputs
    return "word" in request.inputs or set(request.inputs) == {"draft"}


def respond(request: FakeRequest) -> Reply:
    if set(request.inputs) == {"draft"}:  # TwoStep's second step copies the draft
        return Reply(text=Fields(final=request.inputs["draft"].strip()).render(request))
    if is_task(request):
        return Reply(text=Fields(answer=task_answer(request)).render(request))
    return Reply(text=Fields(prompt_answer(request)).render(request))


def models(server: FakeOpenAIServer) -> tuple[asynclm.LM, asynclm.LM]:
    task = asynclm.LM("openai/task", base_url=server.base_url, api_key="sk-test", cache=False)
    prompt = asynclm.LM("openai/prompt", base_url=server.base_url, api_key="sk-test", cache=False)
    return task, prompt


def exact(example: asynclm.Example, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


async def async_exact(example: asynclm.Example, prediction: Any, trace: Any = None) -> bool:
    await anyio.lowlevel.checkpoint()
    return bool(example.answer == prediction.answer)


async def held_out(program: asynclm.Module, task: asynclm.LM) -> float:
    with asynclm.context(lm=task):
        result = await asynclm.Evaluate(devset=TEST, metric=exact, progress=False)(program)
    return result.score


def chosen(program: asynclm.Module) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(p.signature.instructions, [d.to_dict() for d in p.demos]) for p in program.predictors()]


@pytest.mark.parametrize("metric", [exact, async_exact], ids=["sync-metric", "async-metric"])
async def test_light_finds_the_instruction_and_demos_that_work(metric: Any) -> None:
    with FakeOpenAIServer(respond) as server:
        task, prompt = models(server)
        student = asynclm.Predict("word -> answer")
        before = student.dump_state()
        assert await held_out(student, task) == 0.0

        mipro = MIPROv2(metric, prompt_model=prompt, task_model=task, auto="light", progress=True)
        with asynclm.track_usage() as usage:
            best = await mipro.compile(student, trainset=TRAIN, valset=VAL)

        assert await held_out(best, task) == 100.0
        assert best.signature.instructions == GOOD and best.demos
        assert student.dump_state() == before and student.demos == []  # the student is untouched
        assert usage.calls > 0 and usage.total_tokens > 0  # track_usage sees every call

        # DSPy's light preset on 20 val examples: 3 instructions (the original + 2), 6 demo sets,
        # 10 trials, no minibatches; only some proposals are good, so the search had to pick
        instructions = best.instruction_candidates[0]
        assert len(instructions) == 3 and instructions[0] == student.signature.instructions
        assert GOOD in instructions and BAD in instructions
        assert len(best.demo_candidates[0]) == 6 and best.demo_candidates[0][0] == ()
        assert isinstance(best.trial_logs, TrialLogs) and sorted(best.trial_logs) == list(range(1, 12))
        assert best.trial_logs[1]["full_eval_score"] == 0.0
        assert best.score == 100.0 and best.total_calls == 20 * 11
        assert isinstance(best.candidate_programs, ScoredPrograms)
        assert best.candidate_programs[0]["score"] == 100.0 and len(best.mb_candidate_programs) == 0
        assert best.prompt_model_total_calls == 3 + 1 + 1 + 2  # summary chain, program, module, 2 proposals
        # the candidates it carries are not counted as its predictors
        assert [name for name, _ in best.named_predictors()] == ["self"]


async def test_minibatches_with_periodic_full_evaluations() -> None:
    with FakeOpenAIServer(respond) as server:
        task, prompt = models(server)
        mipro = MIPROv2(
            exact,
            prompt_model=prompt,
            task_model=task,
            auto=None,
            num_candidates=5,
            minibatch_size=6,
            minibatch_full_eval_steps=3,
            seed=3,
        )
        best = await mipro.compile(asynclm.Predict("word -> answer"), trainset=TRAIN, valset=VAL, num_trials=8)
        assert await held_out(best, task) == 100.0
        logs = best.trial_logs
        # DSPy's schedule: trial 1 the default program, then full evaluations after minibatch
        # trials 3, 6 and 8 (the last): 1 + 8 + 3 entries
        full = [n for n in logs if "full_eval_score" in logs[n]]
        mini = [n for n in logs if "mb_score" in logs[n]]
        assert len(full) == 4 and len(mini) == 8 and full[0] == 1
        assert best.total_calls == 20 * 4 + 6 * 8
        assert len(best.mb_candidate_programs) == 8 and len(best.candidate_programs) == 4
        # each full evaluation is of a combination a minibatch trial tried, and says which
        tried = {(logs[n]["0_predictor_instruction"], logs[n]["0_predictor_demos"]) for n in mini}
        assert all((logs[n]["0_predictor_instruction"], logs[n]["0_predictor_demos"]) in tried for n in full[1:])
        assert logs[full[1]]["full_eval_score"] < 100.0 <= max(logs[n]["full_eval_score"] for n in full)


@pytest.mark.parametrize("trials_in_flight", [1, 4])
async def test_same_result_at_any_concurrency(trials_in_flight: int) -> None:
    with FakeOpenAIServer(respond, latency=0.005) as server:
        task, prompt = models(server)
        runs = []
        for concurrency in (1, 32):
            mipro = MIPROv2(
                exact,
                prompt_model=prompt,
                task_model=task,
                auto=None,
                num_candidates=5,
                minibatch_size=6,
                minibatch_full_eval_steps=3,
                trials_in_flight=trials_in_flight,
                concurrency=concurrency,
                seed=3,
            )
            best = await mipro.compile(asynclm.Predict("word -> answer"), trainset=TRAIN, valset=VAL, num_trials=8)
            logs = best.trial_logs
            runs.append(
                (
                    chosen(best),
                    best.instruction_candidates,
                    [(n, {k: v for k, v in logs[n].items() if "program" not in k}) for n in logs],
                )
            )
            if concurrency == 32:
                assert server.max_in_flight > 1
            server.reset_counters()
        assert runs[0] == runs[1]
        assert chosen(best)[0][0] == GOOD


async def test_trials_in_flight_run_at_once_within_the_limits() -> None:
    in_flight = peak = 0

    async def counting(request: FakeRequest) -> Reply:  # runs on the server's own asyncio loop
        nonlocal in_flight, peak
        if not is_task(request):
            return respond(request)
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
        finally:
            in_flight -= 1
        return respond(request)

    with FakeOpenAIServer(counting) as server:
        task, prompt = models(server)
        zero_shot: dict[str, Any] = {
            "auto": None,
            "num_candidates": 3,
            "max_bootstrapped_demos": 0,
            "max_labeled_demos": 0,
            "minibatch": False,
            "trials_in_flight": 4,
        }
        program = asynclm.Predict("word -> answer")
        await MIPROv2(exact, prompt_model=prompt, task_model=task, concurrency=30, **zero_shot).compile(
            program, trainset=TRAIN, valset=VAL, num_trials=4
        )
        # four trials of 20 examples each were in flight together, never more than `concurrency`
        assert 20 < peak <= 30

        peak = 0
        limited = asynclm.LM("openai/task", base_url=server.base_url, api_key="k", cache=False, max_concurrency=5)
        await MIPROv2(exact, prompt_model=prompt, task_model=limited, **zero_shot).compile(
            program, trainset=TRAIN, valset=VAL, num_trials=4
        )
        assert peak == 5  # the LM's own limit holds over all the trials in flight


async def test_cancel_mid_compile_aborts_the_requests_in_flight() -> None:
    def slow(request: FakeRequest) -> Reply:
        reply = respond(request)
        return Reply(text=reply.text, latency=30.0 if is_task(request) else 0.0)

    with FakeOpenAIServer(slow) as server:
        task, prompt = models(server)
        mipro = MIPROv2(exact, prompt_model=prompt, task_model=task, auto="light")
        with anyio.fail_after(10):  # a hang guard: cancelling must not wait for the 30 s replies
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(mipro.compile, asynclm.Predict("word -> answer"), trainset=TRAIN))
                await server.wait_until(lambda s: s.in_flight >= 4)
                tg.cancel_scope.cancel()
            await server.wait_until(lambda s: s.in_flight == 0 and s.client_disconnects >= 4)


class TwoStep(asynclm.Module):
    """A program of two predictors: the answer, then a copy of it."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asynclm.Predict("word -> answer")
        self.copy = asynclm.Predict("draft -> final")

    async def forward(self, word: str) -> Any:
        draft = await self.answer(word=word)
        return await self.copy(draft=draft.answer)


def final_exact(example: asynclm.Example, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.final)


async def test_a_program_of_two_predictors() -> None:
    with FakeOpenAIServer(respond) as server:
        task, prompt = models(server)
        student = TwoStep()
        mipro = MIPROv2(final_exact, prompt_model=prompt, task_model=task, seed=1)
        best = await mipro.compile(student, trainset=TRAIN, valset=VAL)
        with asynclm.context(lm=task):
            result = await asynclm.Evaluate(devset=TEST, metric=final_exact, progress=False)(best)
        assert result.score == 100.0
        assert best.answer.signature.instructions == GOOD and student.answer.demos == []
        # one instruction and one demo set per predictor in each trial (DSPy's parameter names)
        assert {"0_predictor_instruction", "0_predictor_demos", "1_predictor_instruction", "1_predictor_demos"} <= set(
            best.trial_logs[2]
        )
        assert len(best.instruction_candidates) == 2
        # the prompt model was shown the program's structure and the user's own code
        described = [r.inputs["program_code"] for r in server.request_log if "program_code" in r.inputs]
        assert described and all("class TwoStep" in code and "draft -> final" in code for code in described)
        # light with two predictors: DSPy's formula gives max(2 * 4 * log2(6), 9) = 20 trials
        assert max(best.trial_logs) == 21


async def test_a_metric_that_returns_no_score_raises() -> None:
    with FakeOpenAIServer(respond) as server:
        task, prompt = models(server)
        mipro = MIPROv2(lambda ex, pred, trace=None: "yes", prompt_model=prompt, task_model=task)
        with pytest.raises(TypeError, match="a metric must return a number"):
            await mipro.compile(asynclm.Predict("word -> answer"), trainset=TRAIN, valset=VAL)


def test_sync_compile_and_save_load_round_trip(tmp_path: Path) -> None:
    with FakeOpenAIServer(respond) as server:
        task, prompt = models(server)
        student = asynclm.Predict("word -> answer")
        best = MIPROv2(exact, prompt_model=prompt, task_model=task).compile.sync(student, trainset=TRAIN, valset=VAL)
        best.save(tmp_path / "best.json")
        loaded = asynclm.Predict("word -> answer").load(tmp_path / "best.json")
        assert chosen(loaded) == chosen(best) and loaded.signature.instructions == GOOD
        with asynclm.context(lm=task):
            result = asynclm.Evaluate(devset=TEST, metric=exact, progress=False).sync(loaded)
        assert result.score == 100.0


async def test_the_context_lm_is_the_default_for_both_models() -> None:
    with FakeOpenAIServer(respond) as server:
        lm = asynclm.LM("openai/any", base_url=server.base_url, api_key="sk-test", cache=False)
        with asynclm.context(lm=lm):
            best = await MIPROv2(exact).compile(asynclm.Predict("word -> answer"), trainset=TRAIN, valset=VAL)
            assert (await asynclm.Evaluate(devset=TEST, metric=exact, progress=False)(best)).score == 100.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="auto='fast'"):
        MIPROv2(exact, auto="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass auto=None"):
        MIPROv2(exact, num_candidates=5)
    with pytest.raises(ValueError, match="give num_candidates"):
        MIPROv2(exact, auto=None)
    with pytest.raises(ValueError, match="trials_in_flight=0"):
        MIPROv2(exact, trials_in_flight=0)
    with pytest.raises(ValueError, match="concurrency=-1"):
        MIPROv2(exact, concurrency=-1)
    with pytest.raises(ValueError, match="not both"):
        MIPROv2(exact, concurrency=8, num_threads=16)
    assert MIPROv2(exact, num_threads=16).concurrency == 16  # DSPy's name
    with pytest.raises(TypeError, match="metric"):
        MIPROv2("exact")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown setting"):
        MIPROv2(exact, teacher_settings={"lmm": None})
    program = asynclm.Predict("word -> answer")
    with pytest.raises(ValueError, match="sets the number of trials itself"):
        MIPROv2(exact).compile.sync(program, trainset=TRAIN, num_trials=5)
    with pytest.raises(ValueError, match="suggests num_trials=9"):
        MIPROv2(exact, auto=None, num_candidates=5).compile.sync(program, trainset=TRAIN)
    with pytest.raises(ValueError, match="no confirmation prompt"):
        MIPROv2(exact).compile.sync(program, trainset=TRAIN, requires_permission_to_run=True)
    with pytest.raises(ValueError, match="trainset is empty"):
        MIPROv2(exact).compile.sync(program, trainset=[])
    with pytest.raises(ValueError, match="valset is empty"):
        MIPROv2(exact).compile.sync(program, trainset=TRAIN, valset=[])
    with pytest.raises(ValueError, match="minibatch_size=35 is larger than the valset"):
        MIPROv2(exact, auto=None, num_candidates=3).compile.sync(program, trainset=TRAIN, valset=VAL, num_trials=3)
    with pytest.raises(TypeError, match="Example"):
        MIPROv2(exact).compile.sync(program, trainset=[{"word": "x"}])
    with pytest.raises(ValueError, match="needs a prompt model"):
        MIPROv2(exact).compile.sync(program, trainset=TRAIN, valset=VAL)


def test_missing_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    mipro = MIPROv2(exact)
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` sees when it is not installed
    with pytest.raises(ImportError, match=r"asynclm\[optuna\]"):
        MIPROv2(exact)
    with pytest.raises(ImportError, match=r"asynclm\[optuna\]"):
        mipro.compile.sync(asynclm.Predict("word -> answer"), trainset=TRAIN, valset=VAL)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "bench" / "bench_mipro.py").exists(), reason="needs the source tree")
def test_the_benchmark_harness_runs(tmp_path: Path) -> None:
    # tiny data, 5 ms latency, no DSPy: the harness works end to end (no timing asserted)
    out = tmp_path / "mipro.json"
    cmd = [sys.executable, "-m", "bench.bench_mipro", "--smoke", "--skip-dspy", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == [f"asynclm trials_in_flight={k}, concurrency=32" for k in (1, 4)]
    assert all(row["test_score"] == 100.0 for row in rows.values())
