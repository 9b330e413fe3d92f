"""``SemanticF1``: an LM judge that scores a response against the ground truth by meaning."""

from __future__ import annotations

from typing import Any

from asynclm.modules import ChainOfThought, Module
from asynclm.signatures import InputField, OutputField, Prediction, Signature

__all__ = ["DecompositionalSemanticRecallPrecision", "SemanticF1", "SemanticRecallPrecision", "semantic_f1"]


class SemanticRecallPrecision(Signature):
    """Compare a system's response to the ground truth to compute its recall and precision.
    If asked to reason, enumerate key ideas in each response, and whether they are present in the other response."""

    question: str = InputField()
    ground_truth: str = InputField()
    system_response: str = InputField()
    recall: float = OutputField(desc="fraction (out of 1.0) of ground truth covered by the system response")
    precision: float = OutputField(desc="fraction (out of 1.0) of system response covered by the ground truth")


class DecompositionalSemanticRecallPrecision(Signature):
    """Compare a system's response to the ground truth to compute recall and precision of key ideas.
    You will first enumerate key ideas in each response, discuss their overlap, and then report recall and precision."""

    question: str = InputField()
    ground_truth: str = InputField()
    system_response: str = InputField()
    ground_truth_key_ideas: str = OutputField(desc="enumeration of key ideas in the ground truth")
    system_response_key_ideas: str = OutputField(desc="enumeration of key ideas in the system response")
    discussion: str = OutputField(desc="discussion of the overlap between ground truth and system response")
    recall: float = OutputField(desc="fraction (out of 1.0) of ground truth covered by the system response")
    precision: float = OutputField(desc="fraction (out of 1.0) of system response covered by the ground truth")


def semantic_f1(precision: float, recall: float) -> float:
    """The harmonic mean of precision and recall, each clamped to [0, 1] first."""
    p = max(0.0, min(1.0, float(precision)))
    r = max(0.0, min(1.0, float(recall)))
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _field(record: Any, name: str, what: str, option: str) -> Any:
    try:
        return record[name]
    except (KeyError, TypeError):
        keys = list(record) if hasattr(record, "__iter__") else []
        raise KeyError(
            f"SemanticF1 reads the {what}'s field {name!r}, but it has {keys}; set SemanticF1({option}=...)"
        ) from None


class SemanticF1(Module):
    """Metric: an LM judges how much of the ground truth the response covers (recall) and how
    much of the response the ground truth supports (precision); the score is their F1.

    ``await SemanticF1()(example, pred)`` returns ``Prediction(score=...)``: the F1 in [0, 1]
    when ``trace`` is ``None`` (evaluation), ``score >= threshold`` (a bool) when a trace is given
    (bootstrapping), as in DSPy. ``asynclm.Evaluate`` and the optimizers read ``.score``.
    It uses the LM in the context unless one is set with ``set_lm``.

    Args:
        threshold: the F1 at which a bootstrapped trace is accepted.
        decompositional: list the key ideas of each side and discuss them before scoring.
        question_field: the example's field holding the question.
        answer_field: the field holding the response, on the example (ground truth) and on
            the prediction (system response).
    """

    def __init__(
        self,
        threshold: float = 0.66,
        decompositional: bool = False,
        *,
        question_field: str = "question",
        answer_field: str = "response",
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.question_field = question_field
        self.answer_field = answer_field
        signature = DecompositionalSemanticRecallPrecision if decompositional else SemanticRecallPrecision
        self.module = ChainOfThought(signature)

    async def forward(self, example: Any, pred: Any, trace: Any = None) -> Prediction:
        scores = await self.module(
            question=_field(example, self.question_field, "example", "question_field"),
            ground_truth=_field(example, self.answer_field, "example", "answer_field"),
            system_response=_field(pred, self.answer_field, "prediction", "answer_field"),
        )
        score = semantic_f1(scores.precision, scores.recall)
        return Prediction(score=score if trace is None else score >= self.threshold)
