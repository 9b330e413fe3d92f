"""``LabeledFewShot``: demos sampled from the labelled training set, no LM call."""

from __future__ import annotations

import random
from collections.abc import Iterable

from asynclm.modules import Module
from asynclm.runtime import sync_twin
from asynclm.signatures import Example

from ._base import Teleprompter, check_trainset, mark_compiled

__all__ = ["LabeledFewShot"]


class LabeledFewShot(Teleprompter):
    """Give every predictor ``k`` training examples as demos.

    ``compiled = await LabeledFewShot(k=16).compile(program, trainset=train)``: a reset copy of
    ``program`` whose predictors each get ``min(k, len(trainset))`` examples, drawn with
    ``random.Random(0)`` (one draw per predictor, in ``named_predictors()`` order) — the same
    draws as DSPy — or the first ``k`` when ``sample=False``. Demos are copies of the examples.
    """

    def __init__(self, k: int = 16) -> None:
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"LabeledFewShot(k={k!r}): k must be an int >= 0")
        self.k = k

    @sync_twin
    async def compile(self, student: Module, *, trainset: Iterable[Example], sample: bool = True) -> Module:
        examples = check_trainset(trainset, "LabeledFewShot")
        compiled = student.reset_copy()
        if examples:
            rng = random.Random(0)
            size = min(self.k, len(examples))
            for predictor in compiled.predictors():
                chosen = rng.sample(examples, size) if sample else examples[:size]
                predictor.demos = [ex.copy() for ex in chosen]
        mark_compiled(compiled)
        return compiled
