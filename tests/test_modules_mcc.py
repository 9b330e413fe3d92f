"""MultiChainComparison: DSPy's signature and attempt format, completions from ChainOfThought(n=m),
argument errors, .sync/.batch, save/load, end to end over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

import asynclm as alm
from asynclm.modules._multi_chain import MultiChainComparison
from asynclm.testing import FakeOpenAIServer, ScriptedLM
from asynclm.testing._scripted import render_chat

ATTEMPTS = [
    {"reasoning": "add 2 and 2\nthen check", "answer": "4"},
    {"reasoning": "multiply 2 by 2", "answer": "4"},
    {"reasoning": "guess", "answer": "5\nmaybe"},
]


def test_signature_matches_dspy() -> None:
    mcc = MultiChainComparison("question -> answer")
    sig = mcc.predict.signature
    assert list(sig.input_fields) == ["question", "reasoning_attempt_1", "reasoning_attempt_2", "reasoning_attempt_3"]
    assert list(sig.output_fields) == ["rationale", "answer"]
    assert sig.input_fields["reasoning_attempt_2"].prefix == "Student Attempt #2:"
    assert sig.input_fields["reasoning_attempt_2"].desc == "${reasoning attempt}"
    assert sig.output_fields["rationale"].desc == "${corrected reasoning}"
    # the original task's instructions, as DSPy keeps them
    assert sig.instructions == "Given the fields `question`, produce the fields `answer`."
    assert mcc.predict.config == {"temperature": 0.7}
    assert MultiChainComparison("question -> answer", M=2).m == 2  # DSPy's spelling
    assert [n for n, _ in mcc.named_predictors()] == ["predict"]


async def test_compares_the_attempts_and_answers() -> None:
    lm = ScriptedLM({"rationale": "both careful attempts say 4", "answer": "4"})
    mcc = MultiChainComparison("question -> answer", lm=lm)
    pred = await mcc(ATTEMPTS, question="2+2?")
    assert (pred.rationale, pred.answer) == ("both careful attempts say 4", "4")
    user = lm.requests[0]["messages"][-1]["content"]
    assert "[[ ## reasoning_attempt_1 ## ]]\n«I'm trying to add 2 and 2 I'm not sure but my prediction is 4»" in user
    assert "[[ ## reasoning_attempt_3 ## ]]\n«I'm trying to guess I'm not sure but my prediction is 5»" in user
    assert lm.requests[0]["temperature"] == 0.7


async def test_takes_the_completions_of_a_chain_of_thought() -> None:
    lm = ScriptedLM([*ATTEMPTS, {"rationale": "r", "answer": "4"}, {"rationale": "r", "answer": "4"}])
    cot = alm.ChainOfThought("question -> answer", lm=lm, n=3)
    mcc = MultiChainComparison("question -> answer", lm=lm)
    attempts = await cot(question="2+2?")
    assert len(attempts.completions) == 3
    pred = await mcc(attempts, question="2+2?")  # a Prediction: its completions are compared
    assert pred.answer == "4"
    assert "prediction is 5»" in lm.requests[-1]["messages"][-1]["content"]
    # DSPy's older "rationale" key works too
    legacy = [{"rationale": "old style", "answer": "4"}] * 3
    assert (await mcc(completions=legacy, question="2+2?")).answer == "4"


async def test_wrong_attempts_raise_clear_errors() -> None:
    mcc = MultiChainComparison("question -> answer", m=3, lm=ScriptedLM({"rationale": "r", "answer": "a"}))
    with pytest.raises(ValueError, match="got 2 attempts but was built for m=3"):
        await mcc(ATTEMPTS[:2], question="q")
    with pytest.raises(ValueError, match="needs a 'reasoning'"):
        await mcc([{"answer": "4"}] * 3, question="q")
    with pytest.raises(ValueError, match=">= 1"):
        MultiChainComparison("question -> answer", m=0)


def test_sync_batch_and_save_load(tmp_path: Any) -> None:
    lm = ScriptedLM({"rationale": "r", "answer": "4"})
    mcc = MultiChainComparison("question -> answer", lm=lm)
    assert mcc.sync(ATTEMPTS, question="q").answer == "4"
    preds = mcc.batch.sync([{"completions": ATTEMPTS, "question": f"q{i}"} for i in range(3)])
    assert [p.answer for p in preds] == ["4", "4", "4"]
    mcc.predict.demos = [alm.Example(question="d", answer="e")]
    mcc.save(tmp_path / "mcc.json")
    fresh = MultiChainComparison("question -> answer").load(tmp_path / "mcc.json")
    assert fresh.predict.demos[0].answer == "e"
    with pytest.raises(alm.modules.ProgramFileError):
        MultiChainComparison("question -> answer", m=2).load(tmp_path / "mcc.json")


async def test_chain_of_thought_then_comparison_end_to_end() -> None:
    def respond(request: Any) -> Any:
        if "reasoning_attempt_1" in request.last_user_message:
            return render_chat({"rationale": "two of three say 4", "answer": "4"})
        return {
            "id": "x",
            "object": "chat.completion",
            "model": "fake-model",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": render_chat(a)}, "finish_reason": "stop"}
                for i, a in enumerate(ATTEMPTS)
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40},
        }

    class Compare(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attempt = alm.ChainOfThought("question -> answer", n=3)
            self.compare = MultiChainComparison("question -> answer")

        async def forward(self, question: str) -> Any:
            return await self.compare(await self.attempt(question=question), question=question)

    async with FakeOpenAIServer(respond) as server:
        lm = alm.LM("openai/fake-model", base_url=server.base_url, api_key="sk-test", cache=False)
        program = Compare()
        program.set_lm(lm)
        pred = await program(question="2+2?")
    assert pred.answer == "4" and pred.rationale == "two of three say 4"
    assert server.requests == 2
    assert [n for n, _ in program.named_predictors()] == ["attempt", "compare.predict"]
