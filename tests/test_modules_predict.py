"""Module, Predict, ChainOfThought: behaviour with ScriptedLM (logic) and FakeOpenAIServer (end to end)."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import asynclm as alm
from asynclm.modules import Callback, ProgramFileError, trace_scope
from asynclm.testing import FakeOpenAIServer, ScriptedLM


class RAG(alm.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rewrite = alm.Predict("question -> query")
        self.answer = alm.ChainOfThought("context, question -> answer")
        self.extras = [alm.Predict("a -> b"), {"k": alm.Predict("c -> d")}]

    async def forward(self, question: str) -> alm.Prediction:
        query = (await self.rewrite(question=question)).query
        return await self.answer(context=f"ctx for {query}", question=question)


def echo_lm(**extra: Any) -> ScriptedLM:
    """Answers each question with 'A:<question>' (read back from the prompt)."""

    def answer(request: Any) -> dict[str, Any]:
        text = request.last_user_message
        question = text.split("[[ ## question ## ]]\n", 1)[1].split("\n", 1)[0] if "## question" in text else "?"
        return {"reasoning": "r", "answer": f"A:{question}", "query": f"Q:{question}"}

    return ScriptedLM(answer, **extra)


# -- structure --------------------------------------------------------------------------------


def test_named_predictors_walks_attributes_lists_and_dicts() -> None:
    names = [name for name, _ in RAG().named_predictors()]
    assert names == ["rewrite", "answer", "extras[0]", "extras[1]['k']"]  # as DSPy's named_predictors


def test_named_sub_modules_are_named_as_in_dspy() -> None:
    """``self``, ``self.sub``, ``self.items[key]``: code that walks DSPy programs by name works."""
    prog = RAG()
    names = [name for name, _ in prog.named_sub_modules()]
    assert names == ["self", "self.rewrite", "self.answer", "self.extras[0]", "self.extras[1][k]"]
    assert [n for n, _ in prog.named_sub_modules(alm.Predict)] == names[1:]
    assert [n for n, _ in prog.named_sub_modules(include_self=False)] == names[1:]


def test_predict_is_its_own_single_predictor() -> None:
    p = alm.Predict("q -> a")
    assert p.named_predictors() == [("self", p)]


def test_deepcopy_shares_lm_but_not_demos() -> None:
    lm = ScriptedLM({"answer": "x"})
    prog = RAG()
    prog.set_lm(lm)
    prog.answer.demos.append(alm.Example(question="q", context="c", answer="a"))
    copy = prog.deepcopy()
    assert copy.answer.lm is lm
    assert copy.answer is not prog.answer
    copy.answer.demos.clear()
    assert len(prog.answer.demos) == 1
    reset = prog.reset_copy()
    assert reset.answer.demos == [] and prog.answer.demos


# -- calling ----------------------------------------------------------------------------------


async def test_predict_returns_typed_outputs_and_usage() -> None:
    lm = ScriptedLM({"answer": 42}, usage=(7, 3))
    pred = await alm.Predict("question -> answer: int", lm=lm)(question="6*7?")
    assert pred.answer == 42 and isinstance(pred.answer, int)
    assert (pred.usage.prompt_tokens, pred.usage.completion_tokens) == (7, 3)


async def test_inputs_are_keyword_only_and_checked() -> None:
    qa = alm.Predict("question, context -> answer", lm=ScriptedLM({"answer": "x"}))
    with pytest.raises(TypeError, match=r"keywords: question=\.\.\., context=\.\.\."):
        await qa("positional")
    with pytest.raises(TypeError, match=r"missing input\(s\) 'context'"):
        await qa(question="q")
    with pytest.raises(TypeError, match=r"unexpected input\(s\) 'colour'"):
        await qa(question="q", context="c", colour="red")


async def test_no_lm_is_a_clear_error() -> None:
    with alm.context(lm=None), pytest.raises(alm.modules.NoLMError, match=r"asynclm.configure\(lm="):
        await alm.Predict("q -> a")(q="x")


async def test_demos_appear_in_the_prompt() -> None:
    lm = ScriptedLM({"answer": "x"})
    qa = alm.Predict("question -> answer", lm=lm, demos=[{"question": "Capital of Peru?", "answer": "Lima"}])
    await qa(question="Capital of Chile?")
    messages = lm.requests[0]["messages"]
    contents = [m["content"] for m in messages]
    assert any("Capital of Peru?" in c for c in contents if isinstance(c, str))
    assert any("Lima" in c for c in contents if isinstance(c, str))
    assert "Capital of Chile?" in contents[-1]


async def test_chain_of_thought_asks_reasoning_first() -> None:
    lm = ScriptedLM({"reasoning": "because", "answer": "yes"})
    cot = alm.ChainOfThought("question -> answer", lm=lm)
    pred = await cot(question="?")
    assert list(cot.signature.output_fields) == ["reasoning", "answer"]
    assert pred.reasoning == "because" and pred.answer == "yes"


async def test_program_forward_and_usage_sums_every_call() -> None:
    lm = echo_lm(usage=(2, 1))
    prog = RAG()
    prog.set_lm(lm)
    pred = await prog(question="why")
    assert pred.answer == "A:why"
    assert len(lm.requests) == 2
    assert pred.usage.total_tokens == 2 * 3  # two LM calls of 3 tokens


async def test_n_candidates_fill_completions() -> None:
    lm = ScriptedLM([{"answer": "a"}, {"answer": "b"}, {"answer": "c"}])
    pred = await alm.Predict("q -> answer", lm=lm, n=3)(q="x")
    assert [c["answer"] for c in pred.completions] == ["a", "b", "c"]
    assert pred.answer == "a"
    assert len(lm.requests) == 1 and lm.requests[0]["n"] == 3


async def test_n_candidates_asked_concurrently_when_server_ignores_n() -> None:
    answer = "[[ ## answer ## ]]\nz\n\n[[ ## completed ## ]]"
    with FakeOpenAIServer(responses=answer, latency=0.2, support_n=False) as server:
        lm = alm.LM("openai/m", base_url=server.base_url, api_key="k", cache=False)
        pred = await alm.Predict("q -> answer", lm=lm, n=3)(q="x")
        # the missing candidates were requested concurrently, not one by one (no wall-clock assertion)
        assert server.max_in_flight >= 2
    assert [c["answer"] for c in pred.completions] == ["z", "z", "z"]


async def test_parse_failure_reasks_with_the_error_then_succeeds() -> None:
    lm = ScriptedLM(["no markers at all", {"answer": "fixed"}])
    with alm.track_usage() as usage:
        pred = await alm.Predict("question -> answer", lm=lm)(question="q")
    assert pred.answer == "fixed"
    assert len(lm.requests) == 2
    reask = lm.requests[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": "no markers at all"}
    assert "could not be parsed" in reask[-1]["content"]
    assert usage.calls == 2  # every attempt counts


async def test_parse_failure_falls_back_to_json_adapter() -> None:
    lm = ScriptedLM(["garbage", "still garbage", {"answer": 5}])
    pred = await alm.Predict("question -> answer: int", lm=lm, max_parse_retries=1)(question="q")
    assert pred.answer == 5
    assert "response_format" in lm.requests[2]  # the JSON adapter asked for structured output


async def test_parse_failure_past_fallback_raises_parse_error() -> None:
    lm = ScriptedLM("never parsable")
    with pytest.raises(alm.ParseError) as info:
        await alm.Predict("question -> answer: int", lm=lm, max_parse_retries=0)(question="q")
    assert info.value.raw == "never parsable"
    assert len(lm.requests) == 2  # the first answer, then the JSON-adapter fallback


# -- context routing, batch, Parallel --------------------------------------------------------


async def test_context_override_routes_each_item_to_its_own_lm_in_batch_and_parallel() -> None:
    qa = alm.Predict("question -> answer")
    lms = [ScriptedLM({"answer": f"lm{i}"}) for i in range(4)]

    async def ask(i: int) -> str:
        with alm.context(lm=lms[i % 4]):
            await anyio.sleep(0.001 * (i % 3))
            return (await qa(question=str(i))).answer

    results = await alm.Parallel(concurrency=8)([(ask, (i,)) for i in range(40)])
    assert results == [f"lm{i % 4}" for i in range(40)]
    for i, lm in enumerate(lms):
        assert len(lm.requests) == 10, i

    with alm.context(lm=lms[1]):
        preds = await qa.batch([{"question": "x"}] * 5)
    assert [p.answer for p in preds] == ["lm1"] * 5


async def test_batch_keeps_order_accepts_examples_and_nests() -> None:
    lm = echo_lm()
    qa = alm.ChainOfThought("question -> answer", lm=lm)

    class Outer(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = qa

        async def forward(self, question: str) -> alm.Prediction:
            inner = await self.qa.batch([{"question": f"{question}.{j}"} for j in range(3)], concurrency=2)
            return alm.Prediction(answer="|".join(p.answer for p in inner))

    examples = [alm.Example(question=f"q{i}", answer="gold").with_inputs("question") for i in range(6)]
    preds = await Outer().batch(examples, concurrency=3)
    assert [p.answer for p in preds] == [f"A:q{i}.0|A:q{i}.1|A:q{i}.2" for i in range(6)]


async def test_batch_errors_keep_their_type_or_are_returned() -> None:
    def answer(request: Any) -> Any:
        if "boom" in request.last_user_message:
            raise ValueError("boom item")
        return {"answer": "ok"}

    qa = alm.Predict("question -> answer", lm=ScriptedLM(answer))
    items = [{"question": "fine"}, {"question": "boom"}, {"question": "fine"}]
    with pytest.raises(ValueError, match="boom item"):
        await qa.batch(items)
    results = await qa.batch(items, return_exceptions=True)
    assert results[0].answer == "ok" and isinstance(results[1], ValueError) and results[2].answer == "ok"
    tolerated = await qa.batch(items, max_errors=1)
    assert tolerated[1] is None and tolerated[2].answer == "ok"


async def test_usage_per_prediction_under_concurrency() -> None:
    def answer(request: Any) -> dict[str, Any]:
        return {"answer": "x"}

    lm_a = ScriptedLM(answer, usage=(1, 1), latency=0.01)
    lm_b = ScriptedLM(answer, usage=(100, 100), latency=0.01)
    qa = alm.Predict("question -> answer")

    async def run(i: int) -> alm.Prediction:
        with alm.context(lm=lm_a if i % 2 else lm_b):
            return await qa(question=str(i))

    preds = await alm.Parallel(concurrency=16)([(run, (i,)) for i in range(32)])
    for i, pred in enumerate(preds):
        assert pred.usage.total_tokens == (2 if i % 2 else 200)


def test_sync_twins_from_threads() -> None:
    qa = alm.Predict("question -> answer", lm=echo_lm())
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = qa.sync(question=f"t{i}").answer

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"A:t{i}" for i in range(8)}
    assert [p.answer for p in qa.batch.sync([{"question": "b"}] * 3)] == ["A:b"] * 3


async def test_sync_forward_runs_in_a_worker_thread_with_sync_calls() -> None:
    lm = echo_lm()

    class Blocking(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = alm.Predict("question -> answer", lm=lm)

        def forward(self, question: str) -> alm.Prediction:  # type: ignore[override]
            return self.qa.sync(question=question)

    pred = await Blocking()(question="legacy")
    assert pred.answer == "A:legacy"


# -- trace ------------------------------------------------------------------------------------


async def test_trace_is_task_local() -> None:
    qa = alm.Predict("question -> answer", lm=echo_lm())

    async def run(i: int) -> list[Any]:
        with trace_scope() as trace:
            await anyio.sleep(0.001 * (i % 3))
            await qa(question=f"q{i}")
            await qa(question=f"again{i}")
        return trace

    traces = await alm.Parallel(concurrency=8)([(run, (i,)) for i in range(16)])
    for i, trace in enumerate(traces):
        assert [entry[1]["question"] for entry in trace] == [f"q{i}", f"again{i}"]
        assert all(entry[0] is qa for entry in trace)


# -- save / load ------------------------------------------------------------------------------


async def test_save_load_round_trip(tmp_path: Any) -> None:
    prog = RAG()
    prog.answer.demos = [alm.Example(context="c", question="q", reasoning="r", answer="a")]
    prog.answer.signature = prog.answer.signature.with_instructions("Be brief.")
    key = "sk-secret-should-not-leak"
    prog.set_lm(alm.LM("openai/m", base_url="http://10.0.0.1:9/v1", api_key=key))
    path = tmp_path / "prog.json"
    prog.save(path)
    text = path.read_text()
    assert key not in text and "10.0.0.1" not in text
    fresh = RAG()
    fresh.load(path)
    assert fresh.answer.signature.instructions == "Be brief."
    assert fresh.answer.demos == prog.answer.demos
    assert fresh.dump_state() == prog.dump_state()


def test_load_mismatched_file_is_a_clear_error(tmp_path: Any) -> None:
    path = tmp_path / "p.json"
    alm.Predict("q -> a").save(path)
    with pytest.raises(ProgramFileError, match=r"has predictors \['self'\] but RAG has"):
        RAG().load(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ProgramFileError, match="not an asynclm program"):
        RAG().load(path)
    other = tmp_path / "o.json"
    alm.Predict("x -> y").save(other)
    with pytest.raises(ProgramFileError, match="does not match"):
        alm.Predict("q -> a").load(other)


def test_demos_may_be_plain_dicts_when_saving(tmp_path: Any) -> None:
    """As in DSPy (docs/modules.md says demos may be dicts): they are saved as Examples."""
    qa = alm.Predict("question -> answer")
    qa.demos = [{"question": "2+2?", "answer": "4"}]
    path = tmp_path / "qa.json"
    qa.save(path)
    fresh = alm.Predict("question -> answer").load(path)
    assert fresh.demos == [alm.Example(question="2+2?", answer="4")]


class TwoSteps(alm.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = alm.Predict("question -> draft")
        self.second = alm.Predict("draft -> answer")


def test_load_state_is_all_or_nothing() -> None:
    """A malformed second predictor leaves the first one as it was (it used to be half-loaded)."""
    source = TwoSteps()
    source.first.signature = source.first.signature.with_instructions("NEW")
    source.first.demos = [alm.Example(question="q", draft="d")]
    state = source.dump_state()
    state["predictors"]["second"]["demos"] = [{"not": "a demo"}]
    target = TwoSteps()
    before = target.dump_state()
    with pytest.raises(ProgramFileError, match="predictor 'second'"):
        target.load_state(state)
    assert target.dump_state() == before


# -- streaming --------------------------------------------------------------------------------


async def test_streamify_yields_field_chunks_in_order_then_prediction() -> None:
    lm = ScriptedLM({"reasoning": "step one then step two", "answer": "forty two"})
    cot = alm.ChainOfThought("question -> answer", lm=lm)
    items = [item async for item in alm.streamify(cot)(question="q")]
    chunks, final = items[:-1], items[-1]
    assert isinstance(final, alm.Prediction) and final.answer == "forty two"
    assert all(isinstance(c, alm.StreamChunk) for c in chunks)
    fields = [c.field for c in chunks]
    assert fields == sorted(fields, key=["reasoning", "answer"].index)  # reasoning first, then answer
    assert "".join(c.text for c in chunks if c.field == "reasoning") == "step one then step two"
    assert "".join(c.text for c in chunks if c.field == "answer") == "forty two"
    assert len(chunks) > 2  # really incremental


async def test_streamify_over_http_early_close_cancels_the_request() -> None:
    text = "[[ ## answer ## ]]\n" + "word " * 200 + "\n\n[[ ## completed ## ]]"
    with FakeOpenAIServer(responses=text, latency=0.01) as server:
        lm = alm.LM("openai/m", base_url=server.base_url, api_key="k", cache=False)
        qa = alm.Predict("question -> answer", lm=lm)
        got = []
        async with contextlib.aclosing(alm.streamify(qa)(question="q")) as stream:
            async for item in stream:
                got.append(item)
                if len(got) == 2:
                    break
        with anyio.fail_after(5):
            while server.client_disconnects < 1:
                await anyio.sleep(0.02)
    assert all(isinstance(c, alm.StreamChunk) for c in got)


async def test_two_streams_never_cross_talk() -> None:
    lm_a = ScriptedLM({"answer": "alpha " * 10}, latency=0.005)
    lm_b = ScriptedLM({"answer": "beta " * 10}, latency=0.005)
    qa = alm.Predict("question -> answer")
    out: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(key: str, lm: ScriptedLM) -> None:
        async for item in alm.streamify(qa)(question=key, lm=lm):
            if isinstance(item, alm.StreamChunk):
                out[key].append(item.text)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, "a", lm_a)
        tg.start_soon(consume, "b", lm_b)
    assert "".join(out["a"]) == ("alpha " * 10).strip()
    assert "".join(out["b"]) == ("beta " * 10).strip()


def test_streamify_sync_iteration_and_early_break() -> None:
    lm = ScriptedLM({"answer": "one two three four five six seven eight"})
    qa = alm.Predict("question -> answer", lm=lm)
    items = list(alm.streamify(qa).sync(question="q"))
    assert isinstance(items[-1], alm.Prediction)
    assert "".join(i.text for i in items[:-1]) == "one two three four five six seven eight"
    for n, _ in enumerate(alm.streamify(qa, buffer=1).sync(question="q")):
        if n == 1:
            break  # closing early must not hang or leak


async def test_streamify_raises_program_errors_with_their_type() -> None:
    class Broken(alm.Module):
        async def forward(self, **kw: Any) -> Any:
            raise KeyError("missing thing")

    with pytest.raises(KeyError, match="missing thing"):
        async for _ in alm.streamify(Broken())(x=1):
            pass


# -- callbacks --------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    def _add(self, kind: str, call_id: str, parent: str | None) -> None:
        with self.lock:
            self.events.append((kind, call_id, parent))

    def on_module_start(self, call_id: str, instance: Any, inputs: Any, parent_call_id: str | None = None) -> None:
        self._add(f"module_start:{type(instance).__name__}", call_id, parent_call_id)

    def on_module_end(
        self, call_id: str, outputs: Any, exception: Any = None, parent_call_id: str | None = None
    ) -> None:
        self._add("module_end", call_id, parent_call_id)

    async def on_lm_start(self, call_id: str, instance: Any, inputs: Any, parent_call_id: str | None = None) -> None:
        await anyio.lowlevel.checkpoint()
        self._add("lm_start", call_id, parent_call_id)

    def on_lm_end(self, call_id: str, outputs: Any, exception: Any = None, parent_call_id: str | None = None) -> None:
        self._add("lm_end", call_id, parent_call_id)

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: Any) -> None:
        self._add("format_start", call_id, None)

    def on_adapter_parse_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
        self._add("parse_end", call_id, None)


def _shape(events: list[tuple[str, str, str | None]]) -> list[str]:
    return [kind for kind, _, _ in events]


async def test_callbacks_order_and_parent_ids_and_sync_identical() -> None:
    rec = Recorder()
    prog = RAG()
    prog.set_lm(echo_lm())
    with alm.context(callbacks=[rec]):
        await prog(question="q")
    awaited = list(rec.events)
    expected = [
        "module_start:RAG",
        "module_start:Predict", "format_start", "lm_start", "lm_end", "parse_end", "module_end",
        "module_start:ChainOfThought", "format_start", "lm_start", "lm_end", "parse_end", "module_end",
        "module_end",
    ]
    assert _shape(awaited) == expected
    root_id = awaited[0][1]
    assert awaited[0][2] is None
    assert awaited[1][2] == root_id  # the Predict call's parent is the program call
    lm_start = awaited[3]
    assert lm_start[2] == awaited[1][1]  # the LM call's parent is the Predict call

    rec.events.clear()

    def in_thread() -> None:
        with alm.context(callbacks=[rec]):
            prog.sync(question="q")

    await anyio.to_thread.run_sync(in_thread)
    assert _shape(rec.events) == expected


async def test_failing_callback_is_logged_and_ignored(caplog: Any) -> None:
    class Bad(Callback):
        def on_module_start(self, call_id: str, instance: Any, inputs: Any) -> None:
            raise RuntimeError("handler bug")

    qa = alm.Predict("q -> a", lm=ScriptedLM({"a": "fine"}), callbacks=[Bad()])
    assert (await qa(q="x")).a == "fine"
    assert "handler bug" in caplog.text


async def test_parallel_accepts_module_with_example_or_dict() -> None:
    qa = alm.Predict("question -> answer", lm=echo_lm())
    example = alm.Example(question="from example", answer="gold").with_inputs("question")
    preds = await alm.Parallel(concurrency=2)([(qa, example), (qa, {"question": "from dict"})])
    assert [p.answer for p in preds] == ["A:from example", "A:from dict"]


def test_scripted_lm_takes_model_as_a_keyword() -> None:
    """Its docstring documents ``model=``; LM.__new__ took it twice."""
    lm = ScriptedLM({"answer": "x"}, model="m")
    assert lm.model_name == "m"
    assert alm.Predict("question -> answer", lm=lm).sync(question="q").answer == "x"


class WithALock(alm.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()  # cannot be deep-copied
        self.notes = ["a"]
        self.answer = alm.Predict("question -> answer")

    async def forward(self, question: str) -> alm.Prediction:
        with self.lock:
            pass
        return await self.answer(question=question)


def test_deepcopy_shares_what_cannot_be_copied_as_dspy_does() -> None:
    prog = WithALock()
    prog.answer.demos = [alm.Example(question="q", answer="a")]
    copied = prog.deepcopy()
    assert copied.lock is prog.lock  # shared, not an error
    assert copied.notes == ["a"] and copied.notes is not prog.notes  # the rest is copied
    assert copied.answer is not prog.answer and copied.answer.demos == prog.answer.demos
    assert copied.answer.demos is not prog.answer.demos


async def test_best_of_n_works_on_a_module_holding_a_lock() -> None:
    prog = WithALock()
    prog.set_lm(ScriptedLM({"answer": "ok"}))
    best = alm.BestOfN(prog, 2, lambda args, pred: 1.0, 1.0)
    assert (await best(question="q")).answer == "ok"


# -- programs saved by DSPy ---------------------------------------------------------------------

DATA = Path(__file__).parent / "data"


class GenerateAnswer(alm.Signature):
    """Answer questions with short factoid answers."""

    context: str = alm.InputField(desc="may contain relevant facts")
    question: str = alm.InputField()
    answer: str = alm.OutputField(desc="often between 1 and 5 words")


class DspyRAG(alm.Module):
    """The program tests/data/dspy-*-rag.json was saved from, written for asynclm."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrite = alm.Predict("question -> search_query")
        self.generate_answer = alm.ChainOfThought(GenerateAnswer)

    async def forward(self, question: str) -> alm.Prediction:
        query = (await self.rewrite(question=question)).search_query
        return await self.generate_answer(context=query, question=question)


@pytest.mark.parametrize("path", sorted(DATA.glob("dspy-*-rag.json")), ids=lambda p: p.name)
def test_a_program_saved_by_dspy_loads_into_the_matching_program(path: Path) -> None:
    """Files written by DSPy itself (tests/data, made with DSPy's own save()): instructions,
    descriptions and demos arrive; DSPy's 'generate_answer.predict' is 'generate_answer' here."""
    prog = DspyRAG().load(path)
    assert prog.rewrite.signature.instructions == "Rewrite the question as a web search query."
    assert prog.rewrite.demos == [alm.Example(question="Who wrote Hamlet?", search_query="Hamlet author")]
    gen = prog.generate_answer
    assert gen.signature.instructions == "Answer questions with short factoid answers."
    assert gen.signature.fields["context"].desc == "may contain relevant facts"
    assert gen.signature.fields["answer"].desc == "often between 1 and 5 words"
    assert gen.demos[0] == alm.Example(
        context="Paris is the capital of France.", question="Capital of France?", reasoning="The context says so.",
        answer="Paris",
    )  # "augmented" (DSPy's bookkeeping) is not a field
    assert len(gen.demos) == 2
    # and it runs: the demos are in the prompt
    lm = ScriptedLM({"reasoning": "r", "answer": "a", "search_query": "q"})
    prog.set_lm(lm)
    assert prog.sync(question="Capital of Italy?").answer == "a"
    assert "Capital of France?" in json.dumps(lm.requests[-1]["messages"])


@pytest.mark.parametrize("path", sorted(DATA.glob("dspy-*-predict.json")), ids=lambda p: p.name)
def test_a_dspy_predict_file_loads_into_a_predict(path: Path) -> None:
    qa = alm.Predict("question -> answer").load(path)
    assert qa.demos == [alm.Example(question="1+1?", answer="2")]


def test_a_dspy_file_for_another_program_is_a_clear_error_and_changes_nothing() -> None:
    path = next(DATA.glob("dspy-*-rag.json"))
    qa = alm.Predict("question -> answer")
    with pytest.raises(ProgramFileError, match=r"DSPy file has predictors \['generate_answer\.predict', 'rewrite'\]"):
        qa.load(path)
    other = DspyRAG()
    other.generate_answer = alm.ChainOfThought("question -> answer")  # fewer fields than saved
    with pytest.raises(ProgramFileError, match="the DSPy file has 4 fields"):
        other.load(path)
    assert other.rewrite.demos == []  # nothing was loaded
    assert other.rewrite.signature.instructions != "Rewrite the question as a web search query."
