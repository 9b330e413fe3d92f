"""Evaluate and the metrics: scores and order, failures, cancellation, table/CSV/JSON, SemanticF1."""

from __future__ import annotations

import csv
import json
import re
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asynclm
from asynclm.evaluate import (
    Evaluate,
    EvaluationResult,
    SemanticF1,
    answer_exact_match,
    answer_passage_match,
    em_score,
    exact_match,
    f1_score,
    normalize_text,
    precision_score,
    token_f1,
)
from asynclm.testing import FakeOpenAIServer, Fault, ScriptedLM

CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Peru": "Lima", "Chile": "Santiago"}


def capital_lm(wrong: set[str] = frozenset(), **kwargs: Any) -> ScriptedLM:  # type: ignore[assignment]
    """Answers the capital of the country in the question, except for the countries in ``wrong``."""

    def answer(request: Any) -> dict[str, str]:
        country = re.search(r"capital of (\w+)", request.last_user_message).group(1)  # type: ignore[union-attr]
        return {"answer": "nowhere" if country in wrong else CAPITALS[country]}

    return ScriptedLM(answer, **kwargs)


def devset(countries: list[str] | None = None) -> list[asynclm.Example]:
    return [
        asynclm.Example(question=f"What is the capital of {c}?", answer=CAPITALS[c]).with_inputs("question")
        for c in (countries or list(CAPITALS))
    ]


class Staggered(asynclm.Module):
    """Finishes its examples in reverse order of the dev set (later ones sleep less)."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.qa = asynclm.Predict("question -> answer", lm=lm)
        self.finished: list[str] = []

    async def forward(self, question: str) -> Any:
        country = question.split()[-1].rstrip("?")
        await anyio.sleep(0.01 * (len(CAPITALS) - list(CAPITALS).index(country)))
        pred = await self.qa(question=question)
        self.finished.append(country)
        return pred


# -- metrics -------------------------------------------------------------------------------------


def test_normalize_text_as_dspy() -> None:
    assert normalize_text("The,  Eiffel  Tower!") == "eiffel tower"
    assert normalize_text("  A cat; an owl\tand THE dog. ") == "cat owl and dog"
    assert normalize_text("theatre") == "theatre"  # articles only as whole words
    assert normalize_text("Café") == normalize_text("Cafe\u0301")  # NFD


def test_exact_match_and_f1() -> None:
    assert em_score("The Eiffel Tower", "eiffel tower")
    assert not em_score("Eiffel", "Eiffel Tower")
    assert exact_match("paris", ["Lyon", "Paris"])
    assert f1_score("Eiffel Tower", "the eiffel tower") == 1.0
    assert f1_score("the Eiffel Tower is in Paris", "Eiffel Tower") == pytest.approx(2 * 0.4 * 1 / 1.4)
    assert f1_score("a", "the") == 0.0  # both empty after normalisation: 0, as in DSPy
    assert f1_score("red red blue", "red blue blue") == pytest.approx(2 / 3)  # multiset overlap
    assert precision_score("eiffel tower in paris", "eiffel tower") == 0.5
    assert token_f1("Paris France", ["Lyon", "Paris"]) == pytest.approx(2 / 3)


def test_answer_exact_match_and_passage_match() -> None:
    ex = asynclm.Example(question="q", answer=["Eiffel Tower", "Louvre"])
    assert answer_exact_match(ex, asynclm.Prediction(answer="The Eiffel Tower!"))
    assert not answer_exact_match(ex, asynclm.Prediction(answer="Tower"))
    assert answer_exact_match(ex, asynclm.Prediction(answer="Tower"), frac=0.5)
    assert answer_passage_match(
        asynclm.Example(answer="Eiffel Tower"), asynclm.Prediction(context=["x", "The Eiffel Tower is in Paris."])
    )
    # whole tokens only: "Tower" is not found inside "Towers"
    assert not answer_passage_match(asynclm.Example(answer="Tower"), asynclm.Prediction(context="Twin Towers"))
    with pytest.raises(ValueError, match="string or a non-empty list"):
        answer_exact_match(asynclm.Example(answer=3), asynclm.Prediction(answer="3"))


# -- scores and order ----------------------------------------------------------------------------


async def test_score_and_devset_order_whatever_the_completion_order() -> None:
    program = Staggered(capital_lm(wrong={"Peru"}))
    result = await Evaluate(devset=devset(), metric=answer_exact_match, progress=False)(program)
    assert isinstance(result, EvaluationResult)
    assert program.finished == list(reversed(CAPITALS))  # they really finished in reverse order
    assert [ex.question.split()[-1] for ex, _, _ in result.results] == [f"{c}?" for c in CAPITALS]
    assert [pred.answer for _, pred, _ in result.results] == ["Paris", "Madrid", "Rome", "nowhere", "Santiago"]
    assert result.scores == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert result.score == 80.0
    assert result.errors == {}


async def test_fractional_async_metric_and_score_objects() -> None:
    qa = asynclm.Predict("question -> answer", lm=capital_lm())

    async def half(example: Any, pred: Any, trace: Any = None) -> float:
        await anyio.lowlevel.checkpoint()
        return 0.5 if example.answer == "Paris" else 1.0

    result = await Evaluate(devset=devset(["France", "Spain", "Italy"]), metric=half, progress=False)(qa)
    assert result.score == round(100 * 2.5 / 3, 2) == 83.33

    def as_prediction(example: Any, pred: Any) -> Any:
        return asynclm.Prediction(score=pred.answer == "Paris")

    result = await Evaluate(devset=devset(["France", "Spain"]), metric=as_prediction, progress=False)(qa)
    assert result.scores == [1.0, 0.0]

    with pytest.raises(TypeError, match="must return a number"):
        await Evaluate(devset=devset(["France"]), metric=lambda e, p: "yes", progress=False)(qa)


def test_sync_twin_from_a_plain_thread_and_from_the_main_thread() -> None:
    qa = asynclm.Predict("question -> answer", lm=capital_lm(wrong={"Spain"}))
    ev = Evaluate(devset=devset(["France", "Spain"]), metric=answer_exact_match, progress=False)
    assert ev.sync(qa).score == 50.0
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(ev.sync(qa).score))
    thread.start()
    thread.join()
    assert out == [50.0]


def test_invalid_configuration_is_reported_clearly() -> None:
    with pytest.raises(ValueError, match="empty"):
        Evaluate(devset=[], metric=answer_exact_match)
    with pytest.raises(ValueError, match=r"devset\[0\] has no input keys"):
        Evaluate(devset=[asynclm.Example(question="q", answer="a")], metric=answer_exact_match)
    with pytest.raises(TypeError, match=r"devset\[0\] is a dict"):
        Evaluate(devset=[{"question": "q"}], metric=answer_exact_match)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="concurrency"):
        Evaluate(devset=devset(["France"]), metric=answer_exact_match, concurrency=0)


# -- failures ------------------------------------------------------------------------------------


class Boom(Exception):
    pass


class FailsOn(asynclm.Module):
    def __init__(self, lm: Any, failing: set[str], slow: float = 0.0) -> None:
        super().__init__()
        self.qa = asynclm.Predict("question -> answer", lm=lm)
        self.failing = failing
        self.slow = slow
        self.cancelled = 0
        self.started = 0

    async def forward(self, question: str) -> Any:
        if any(c in question for c in self.failing):
            raise Boom(question)
        self.started += 1
        try:
            await anyio.sleep(self.slow)
        except BaseException:
            self.cancelled += 1
            raise
        return await self.qa(question=question)


async def test_failures_score_failure_score_within_max_errors() -> None:
    program = FailsOn(capital_lm(), failing={"Spain", "Peru"})
    ev = Evaluate(devset=devset(), metric=answer_exact_match, max_errors=2, failure_score=0.25, progress=False)
    result = await ev(program)
    assert result.scores == [1.0, 0.25, 1.0, 0.25, 1.0]
    assert result.score == 70.0
    assert sorted(result.errors) == [1, 3]
    assert all(isinstance(e, Boom) for e in result.errors.values())
    assert result.results[1][1] == asynclm.Prediction()  # a failed example has an empty prediction

    unlimited = await Evaluate(devset=devset(), metric=answer_exact_match, progress=False)(program)
    assert unlimited.score == 60.0  # max_errors=None: any number of failures, each scoring 0


async def test_metric_failures_count_as_failures() -> None:
    def picky(example: Any, pred: Any) -> bool:
        if pred.answer == "Rome":
            raise KeyError("no Rome")
        return True

    qa = asynclm.Predict("question -> answer", lm=capital_lm())
    result = await Evaluate(devset=devset(), metric=picky, progress=False)(qa)
    assert result.scores == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert isinstance(result.errors[2], KeyError)


async def test_past_max_errors_raises_the_original_error_and_cancels_in_flight() -> None:
    program = FailsOn(capital_lm(), failing={"Spain", "Peru"}, slow=30)
    ev = Evaluate(devset=devset(), metric=answer_exact_match, max_errors=1, concurrency=5, progress=False)
    with anyio.fail_after(10):
        with pytest.raises(Boom, match="Peru"):
            await ev(program)
    # every example that had started (France, Italy, maybe Chile) was sleeping and got cancelled
    assert program.started >= 2
    assert program.cancelled == program.started


# -- cancellation stops in-flight HTTP requests --------------------------------------------------


async def test_cancelling_an_evaluation_aborts_its_in_flight_requests() -> None:
    with FakeOpenAIServer(responses=Fault.hang()) as server:
        lm = asynclm.LM("openai/fake-model", base_url=server.base_url, api_key="sk-test", max_retries=0)
        qa = asynclm.Predict("question -> answer", lm=lm)
        dev = devset() * 4  # 20 examples, 4 at a time
        ev = Evaluate(devset=dev, metric=answer_exact_match, concurrency=4, progress=False)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ev, qa)
                while server.in_flight < 4:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            while server.in_flight:
                await anyio.sleep(0.01)
        assert server.requests == 4  # nothing was started after the first four
        assert server.client_disconnects == 4


async def test_evaluate_timeout_per_example() -> None:
    program = FailsOn(capital_lm(), failing=set(), slow=30)
    ev = Evaluate(devset=devset(["France", "Spain"]), metric=answer_exact_match, timeout=0.05, progress=False)
    with anyio.fail_after(10):
        result = await ev(program)
    assert result.score == 0.0
    assert all(isinstance(e, TimeoutError) for e in result.errors.values()) and len(result.errors) == 2


# -- progress, table, files ----------------------------------------------------------------------


async def test_progress_bar_shows_the_running_score(monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, total: int, desc: str | None = None) -> None:
            assert total == 5 and desc == "Evaluate"

        def update(self, failed: bool = False, **postfix: Any) -> None:
            updates.append({"failed": failed, **postfix})

        def close(self) -> None:
            updates.append({"closed": True})

    monkeypatch.setattr("asynclm.evaluate._evaluate.Progress", Recorder)
    program = Staggered(capital_lm(wrong={"Peru", "Chile"}))  # finishes Chile, Peru, Italy, Spain, France
    await Evaluate(devset=devset(), metric=answer_exact_match, concurrency=5)(program)
    assert [u["score"] for u in updates[:-1]] == [
        "0.00/1 (0.0%)",
        "0.00/2 (0.0%)",
        "1.00/3 (33.3%)",
        "2.00/4 (50.0%)",
        "3.00/5 (60.0%)",
    ]
    assert updates[-1] == {"closed": True}


async def test_display_table_prints_the_first_rows() -> None:
    import io

    out = io.StringIO()
    qa = asynclm.Predict("question -> answer", lm=capital_lm(wrong={"Spain"}))
    await Evaluate(devset=devset(), metric=answer_exact_match, display_table=2, progress=False, file=out)(qa)
    lines = out.getvalue().splitlines()
    width = len("What is the capital of France?")
    assert lines[0].split(" | ") == ["question".ljust(width), "example_answer", "pred_answer", "answer_exact_match"]
    assert set(lines[1]) <= {"-", "+"}
    assert "What is the capital of France?" in lines[2] and "Paris" in lines[2] and lines[2].endswith("1.000")
    assert "Madrid" in lines[3] and "nowhere" in lines[3] and lines[3].endswith("0.000")
    assert lines[4] == "... 3 more rows not displayed ..."
    assert len(lines) == 5


async def test_save_as_csv_and_json(tmp_path: Any) -> None:
    qa = FailsOn(capital_lm(wrong={"Italy"}), failing={"Peru"})
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    ev = Evaluate(
        devset=devset(), metric=answer_exact_match, progress=False, save_as_csv=csv_path, save_as_json=json_path
    )
    await ev(qa)
    rows = json.loads(json_path.read_text(encoding="utf-8"))
    assert rows[0] == {
        "question": "What is the capital of France?",
        "example_answer": "Paris",
        "pred_answer": "Paris",
        "answer_exact_match": 1.0,
    }
    assert rows[2]["pred_answer"] == "nowhere" and rows[2]["answer_exact_match"] == 0.0
    assert "pred_answer" not in rows[3] and rows[3]["answer"] == "Lima"  # failed: no prediction fields
    with csv_path.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["answer_exact_match"] for r in table] == ["1.0", "1.0", "0.0", "0.0", "1.0"]
    assert table[0]["pred_answer"] == "Paris"


# -- SemanticF1 ----------------------------------------------------------------------------------


async def test_semantic_f1_judge() -> None:
    def judge(request: Any) -> dict[str, Any]:
        message = request.last_user_message
        full = "blue and round" in message.split("system_response ## ]]")[1]
        return {"reasoning": "compare", "recall": 1.0 if full else 0.5, "precision": 1.0}

    judge_lm = ScriptedLM(judge)
    metric = SemanticF1(threshold=0.7)
    metric.set_lm(judge_lm)
    ex = asynclm.Example(question="Describe it", response="blue and round").with_inputs("question")

    good = await metric(ex, asynclm.Prediction(response="It is blue and round"))
    partial = await metric(ex, asynclm.Prediction(response="It is blue"))
    assert good.score == 1.0
    assert partial.score == pytest.approx(2 * 0.5 / 1.5)
    # with a trace (bootstrapping), the score is score >= threshold
    assert (await metric(ex, asynclm.Prediction(response="It is blue"), trace=[])).score is False
    assert "ground_truth ## ]]\nblue and round" in judge_lm.requests[0]["messages"][-1]["content"]

    class Echo(asynclm.Module):
        async def forward(self, question: str) -> Any:
            return asynclm.Prediction(response="It is blue" if "short" in question else "blue and round")

    dev = [
        asynclm.Example(question=q, response="blue and round").with_inputs("question")
        for q in ("Describe it", "Describe it, short")
    ]
    result = await Evaluate(devset=dev, metric=metric, progress=False)(Echo())
    assert result.scores == pytest.approx([1.0, 2 / 3])

    with pytest.raises(KeyError, match="answer_field"):
        await metric(ex, asynclm.Prediction(answer="blue"))
