"""Ensemble (with majority) and KNNFewShot, over real HTTP to a FakeOpenAIServer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import asynclm
from asynclm.optimize import Ensemble, KNNFewShot, majority
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, Reply


def lm_for(server: FakeOpenAIServer) -> asynclm.LM:
    return asynclm.LM("openai/m", base_url=server.base_url, api_key="sk-test", cache=False)


# -- majority ------------------------------------------------------------------------------------


def test_majority_picks_the_most_common_normalized_answer() -> None:
    preds = [
        asynclm.Prediction(reasoning="r1", answer="Paris"),
        asynclm.Prediction(reasoning="r2", answer="London"),
        asynclm.Prediction(reasoning="r3", answer="paris."),
    ]
    winner = majority(preds)
    # the last field (answer) by default; compared after normalize_text; the first holder returned
    assert (winner.reasoning, winner.answer) == ("r1", "Paris")
    assert majority(preds, normalize=None).answer == "Paris"  # a tie without normalizing: first wins
    assert majority(preds, field="reasoning").reasoning == "r1"


def test_majority_ties_go_to_the_first_and_empty_answers_do_not_vote() -> None:
    assert majority([{"answer": "b"}, {"answer": "a"}, {"answer": "a"}, {"answer": "b"}]).answer == "b"
    # "the" normalizes to "" (an article): no vote, unless nothing else voted
    assert majority([{"answer": "The"}, {"answer": "x"}, {"answer": "the"}]).answer == "x"
    assert majority([{"answer": "The"}, {"answer": "the"}]).answer == "The"
    assert majority([{"answer": 3}, {"answer": 4}, {"answer": 4}]).answer == 4
    assert majority([{"answer": ["a"]}, {"answer": ["b"]}, {"answer": ["b"]}]).answer == ["b"]


def test_majority_over_the_completions_of_one_prediction() -> None:
    pred = asynclm.Prediction.from_completions([{"answer": "1"}, {"answer": "2"}, {"answer": "2"}])
    assert pred.answer == "1"
    assert majority(pred).answer == "2"


def test_majority_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        majority([])
    with pytest.raises(ValueError, match="no field 'answer'"):
        majority([{"answer": "a"}, {"other": "b"}])
    with pytest.raises(TypeError, match="Prediction or a list"):
        majority("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prediction 1 is a int"):
        majority([{"answer": "a"}, 3])


# -- Ensemble ------------------------------------------------------------------------------------


def by_persona(request: FakeRequest) -> Reply:
    """Each program's instructions name a persona; the personas disagree on one question."""
    system = request.messages[0]["content"]
    persona = re.search(r"You are (\w+)", system)
    assert persona, system
    answer = {"alice": "Paris", "bob": "Lyon", "carol": "paris"}[persona.group(1)]
    boom = any("boom" in str(m.get("content")) for m in request.messages)  # repair turns too
    if boom and persona.group(1) == "bob":
        return Reply(text="not in any format")  # a ParseError for this program only
    return Reply(text=Fields(answer=answer).render(request), latency=0.2)


def personas(lm: asynclm.LM) -> list[asynclm.Module]:
    programs: list[asynclm.Module] = []
    for name in ("alice", "bob", "carol"):
        sig = asynclm.Signature("question -> answer", instructions=f"You are {name}.")
        programs.append(asynclm.Predict(sig, lm=lm))
    return programs


async def test_ensemble_runs_the_programs_at_once_and_votes() -> None:
    with FakeOpenAIServer(by_persona) as server:
        programs = personas(lm_for(server))
        ensembled = await Ensemble(reduce_fn=majority).compile(programs)
        pred = await ensembled(question="Capital of France?")
        assert pred.answer == "Paris"  # alice and carol (normalized) against bob
        assert server.max_in_flight == 3, "the programs ran one after another"

        everything = await Ensemble().compile(programs)
        outputs = await everything(question="Capital of France?")
        assert [p.answer for p in outputs] == ["Paris", "Lyon", "paris"]  # the programs' order


async def test_ensemble_size_and_deterministic_draws() -> None:
    with FakeOpenAIServer(by_persona) as server:
        programs = personas(lm_for(server))
        two = await Ensemble(size=2, deterministic=True).compile(programs)
        first = [p.answer for p in await two(question="q1")]
        assert len(first) == 2
        for _ in range(3):  # the same inputs always use the same two programs
            assert [p.answer for p in await two(question="q1")] == first
        seeded = [await Ensemble(size=1, seed=7).compile(programs) for _ in range(2)]
        draws: list[list[str]] = []
        for ensembled in seeded:  # (no nested async comprehension: Python 3.10 refuses it)
            draws.append([(await ensembled(question=f"q{i}"))[0].answer for i in range(6)])
        assert draws[0] == draws[1]  # one seed, one sequence of draws


async def test_ensemble_error_keeps_its_type() -> None:
    with FakeOpenAIServer(by_persona) as server:
        ensembled = await Ensemble(reduce_fn=majority).compile(personas(lm_for(server)))
        with pytest.raises(asynclm.ParseError):
            await ensembled(question="boom")


def test_ensemble_sync_compile_and_save_load(tmp_path: Path) -> None:
    with FakeOpenAIServer(by_persona) as server:
        programs = personas(lm_for(server))
        programs[0].demos = [asynclm.Example(question="Q", answer="A").with_inputs("question")]
        ensembled = Ensemble(reduce_fn=majority).compile.sync(programs)
        assert ensembled.sync(question="Capital?").answer == "Paris"
        ensembled.save(tmp_path / "ens.json")
        fresh = Ensemble(reduce_fn=majority).compile.sync(personas(lm_for(server)))
        fresh.load(tmp_path / "ens.json")
        assert [len(p.demos) for p in fresh.predictors()] == [1, 0, 0]


def test_ensemble_bad_input() -> None:
    with pytest.raises(ValueError, match="size"):
        Ensemble(size=0)
    with pytest.raises(TypeError, match="callable"):
        Ensemble(reduce_fn="majority")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty list"):
        Ensemble().compile.sync([])
    with pytest.raises(TypeError, match="not an asynclm Module"):
        Ensemble().compile.sync([lambda **kw: kw])  # type: ignore[list-item]
    lm = asynclm.LM("openai/m", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(ValueError, match="more than the 3 programs"):
        Ensemble(size=4).compile.sync(personas(lm))


# -- KNNFewShot ------------------------------------------------------------------------------------

WORDS = ["capital", "france", "germany", "sum", "plus", "two", "color", "sky", "grass", "city", "number", "three"]


def bag_of_words(texts: list[str]) -> list[list[float]]:
    """A small real embedder: word counts over a fixed vocabulary."""
    out = []
    for text in texts:
        tokens = re.findall(r"[a-z]+", text.lower())
        out.append([float(tokens.count(w)) for w in WORDS])
    return out


async def async_bag_of_words(texts: list[str]) -> list[list[float]]:
    return bag_of_words(texts)


TRAIN = [
    asynclm.Example(question=q, answer=a).with_inputs("question")
    for q, a in [
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is two plus two? A sum.", "4"),
        ("What is the sum of three plus three?", "6"),
        ("What color is the sky?", "blue"),
        ("What color is grass?", "green"),
    ]
]


def demo_questions(request: FakeRequest) -> list[str]:
    """The questions of the demos a request carries (user turns before the last)."""
    return [re.sub(r"\s+", " ", m["content"]) for m in request.messages[1:-1] if m["role"] == "user"]


@pytest.mark.parametrize("embedder", [bag_of_words, async_bag_of_words], ids=["sync-embedder", "async-embedder"])
async def test_knn_fewshot_gives_each_call_its_nearest_demos(embedder: Any) -> None:
    with FakeOpenAIServer(Fields(lambda inputs: {"answer": "A:" + inputs["question"]})) as server:
        student = asynclm.Predict("question -> answer", lm=lm_for(server))
        knn = KNNFewShot(k=2, trainset=TRAIN, embedder=embedder, max_bootstrapped_demos=0, max_labeled_demos=2)
        compiled = await knn.compile(student)
        assert student.demos == [] and compiled is not student

        pred = await compiled(question="Which city is the capital of France?")
        assert pred.answer == "A:Which city is the capital of France?"
        shown = " ".join(demo_questions(server.request_log[-1]))
        assert "capital of France" in shown and "capital of Germany" in shown
        assert "color" not in shown and "plus" not in shown

        await compiled(question="What color is the sky at night?")
        shown = " ".join(demo_questions(server.request_log[-1]))
        assert "sky" in shown and "grass" in shown and "capital" not in shown
        assert student.demos == []


async def test_knn_fewshot_bootstraps_from_the_neighbours_with_the_metric() -> None:
    # the "model" knows the answers of the training set; bootstrapped demos are its own traces
    answers = {ex.question: ex.answer for ex in TRAIN}
    with FakeOpenAIServer(Fields(lambda inputs: {"answer": answers.get(inputs["question"], "?")})) as server:
        knn = KNNFewShot(
            k=2,
            trainset=TRAIN,
            vectorizer=bag_of_words,  # DSPy's name
            metric=lambda ex, pred, trace=None: ex.answer == pred.answer,
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
        )
        compiled = await knn.compile(asynclm.Predict("question -> answer", lm=lm_for(server)))
        await compiled(question="Capital of Germany, the city?")
        last = server.request_log[-1]
        shown = demo_questions(last)
        assert any("Germany" in q for q in shown) and any("France" in q for q in shown)


def test_knn_fewshot_sync_and_save_load(tmp_path: Path) -> None:
    with FakeOpenAIServer(Fields(answer="ok")) as server:
        student = asynclm.Predict("question -> answer", lm=lm_for(server))
        knn = KNNFewShot(k=1, trainset=TRAIN, embedder=bag_of_words, max_bootstrapped_demos=0, max_labeled_demos=1)
        compiled = knn.compile.sync(student)
        assert compiled.sync(question="sky color?").answer == "ok"
        compiled.save(tmp_path / "knn.json")
        asynclm.Predict("question -> answer").load(tmp_path / "knn.json")  # the student's structure


def test_knn_fewshot_bad_input() -> None:
    with pytest.raises(ValueError, match="k=0"):
        KNNFewShot(k=0, trainset=TRAIN, embedder=bag_of_words)
    with pytest.raises(TypeError, match="needs embedder="):
        KNNFewShot(k=1, trainset=TRAIN)
    with pytest.raises(TypeError, match="not both"):
        KNNFewShot(k=1, trainset=TRAIN, embedder=bag_of_words, vectorizer=bag_of_words)
    with pytest.raises(ValueError, match="at least one"):
        KNNFewShot(k=1, trainset=[], embedder=bag_of_words)
    with pytest.raises(ValueError, match="max_bootstrapped_demos"):
        KNNFewShot(k=1, trainset=TRAIN, embedder=bag_of_words, max_bootstrapped_demos=-1)


async def test_knn_fewshot_embedder_errors_are_clear() -> None:
    def wrong_count(texts: list[str]) -> list[list[float]]:
        return [[1.0]]

    knn = KNNFewShot(k=1, trainset=TRAIN, embedder=wrong_count)
    with pytest.raises(ValueError, match="1 vectors for 6 texts"):
        await knn.compile(asynclm.Predict("question -> answer"))

    def not_vectors(texts: list[str]) -> list[Any]:
        return ["x" for _ in texts]

    with pytest.raises(TypeError, match="not a vector"):
        await KNNFewShot(k=1, trainset=TRAIN, embedder=not_vectors).compile(asynclm.Predict("question -> answer"))


def test_knn_fewshot_from_many_threads_embeds_the_training_set_once() -> None:
    """Compiling and calling from several threads (each on its own portal loop) at once: the
    training set is embedded once, and each thread gets its own neighbours."""
    import threading

    calls: list[int] = []

    def counting(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        return bag_of_words(texts)

    knn = KNNFewShot(k=1, trainset=TRAIN, embedder=counting, max_bootstrapped_demos=0, max_labeled_demos=1)
    with FakeOpenAIServer(Fields(lambda inputs: {"answer": inputs["question"]}), latency=0.05) as server:
        student = asynclm.Predict("question -> answer", lm=lm_for(server))
        answers: dict[int, str] = {}

        def work(i: int) -> None:
            compiled = knn.compile.sync(student)
            answers[i] = compiled.sync(question=f"sky color {i}?").answer

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answers == {i: f"sky color {i}?" for i in range(4)}
    assert calls.count(len(TRAIN)) == 1  # the training set once; then one query each
    assert sorted(calls) == [1, 1, 1, 1, len(TRAIN)]
