"""``ScoreWithFeedback`` and reading what a GEPA metric returned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asynclm.evaluate._evaluate import metric_name
from asynclm.signatures import Prediction

__all__ = ["ScoreWithFeedback", "read_result"]


class ScoreWithFeedback(Prediction):
    """What a GEPA metric may return: a score and the text that explains it.

    ``ScoreWithFeedback(0.0, "The answer must be in kilometres")`` or
    ``ScoreWithFeedback(score=0.0, feedback="...")``. The feedback goes to the reflection LM,
    which reads it to write a better instruction; ``None`` means "This trajectory got a score of
    <score>." (DSPy's default). It is a ``Prediction``, so ``result.score`` and
    ``result["feedback"]`` both work, and a ``Prediction(score=..., feedback=...)`` or a dict
    with those keys is read the same way.
    """

    __slots__ = ()

    def __init__(self, score: Any = None, feedback: str | None = None, **fields: Any) -> None:
        if isinstance(score, Mapping):  # ScoreWithFeedback({"score": ..., "feedback": ...})
            super().__init__(score, **fields)
            return
        if score is None:
            raise TypeError("ScoreWithFeedback needs a score: ScoreWithFeedback(score, feedback)")
        super().__init__(score=score, feedback=feedback, **fields)


def read_result(value: Any, metric: Any) -> tuple[float, str | None]:
    """``(score, feedback)`` from a metric's result: a number or bool (no feedback), a
    ``ScoreWithFeedback``/``Prediction``/object with ``.score`` and maybe ``.feedback``, or a dict
    with ``"score"`` and maybe ``"feedback"``. Anything else is a bug in the metric: ``TypeError``."""
    feedback: Any = None
    score: Any
    if isinstance(value, bool | int | float):
        score = value
    elif isinstance(value, Mapping):
        score = value.get("score")
        feedback = value.get("feedback")
    else:
        score = getattr(value, "score", None) if not isinstance(value, str) else None
        feedback = getattr(value, "feedback", None)
        if score is None:
            try:
                score = float(value)  # numpy scalars, Decimal ...
            except (TypeError, ValueError):
                score = None
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise TypeError(
            f"{metric_name(metric)} returned {value!r} ({type(value).__name__}); a GEPA metric must return a "
            "number, a bool, or asynclm.ScoreWithFeedback(score, feedback)"
        ) from None
    if feedback is not None and not isinstance(feedback, str):
        feedback = str(feedback)
    return number, feedback
