"""``MultiChainComparison``: compare ``m`` reasoning attempts and write the final answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from asynclm.signatures import InputField, OutputField, Prediction, Signature

from ._module import Module
from ._predict import Predict

__all__ = ["MultiChainComparison"]


class MultiChainComparison(Module):
    """Read ``m`` attempts at a task (e.g. the ``completions`` of a ``ChainOfThought(..., n=m)``)
    and produce a corrected answer, as DSPy's ``MultiChainComparison`` does, prompt for prompt.

    The predictor ``predict`` has the signature's inputs plus ``reasoning_attempt_1`` ..
    ``reasoning_attempt_m`` (each "Student Attempt #i"), and outputs ``rationale`` (the corrected
    reasoning) then the signature's outputs; its instructions are the signature's own.

    ``await mcc(completions, **inputs)``: ``completions`` is a list of dicts (or a
    ``Prediction``, whose ``completions`` are used), each with a ``reasoning`` (or
    ``rationale``) and the signature's last output field. Each attempt is shown as
    ``«I'm trying to <first line of the reasoning> I'm not sure but my prediction is <first line
    of the answer>»``. Giving other than ``m`` attempts raises ``ValueError``.

    Args:
        signature: the task.
        m: the number of attempts compared (``M=`` accepted for DSPy code).
        temperature: the predictor's temperature (DSPy's default, 0.7).
        **config: other request parameters for the predictor.
    """

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        m: int | None = None,
        temperature: float = 0.7,
        *,
        M: int | None = None,  # DSPy spelling
        **config: Any,
    ) -> None:
        callbacks = config.pop("callbacks", None)
        super().__init__(callbacks=callbacks)
        if m is not None and M is not None and m != M:
            raise TypeError("MultiChainComparison: give the number of attempts once, as m= (M= is DSPy's spelling)")
        count = m if m is not None else (M if M is not None else 3)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"MultiChainComparison(m={count!r}): the number of attempts must be an int >= 1")
        self.m = count
        sig = Signature.ensure(signature)
        self.last_key = list(sig.output_fields)[-1]
        # DSPy fixes the instructions before adding fields: the default text names the original fields.
        sig = sig.with_instructions(sig.instructions)
        for idx in range(count):
            sig = sig.append(
                f"reasoning_attempt_{idx + 1}",
                InputField(prefix=f"Student Attempt #{idx + 1}:", desc="${reasoning attempt}"),
            )
        sig = sig.prepend(
            "rationale",
            OutputField(
                prefix="Accurate Reasoning: Thank you everyone. Let's now holistically",
                desc="${corrected reasoning}",
            ),
        )
        self.predict = Predict(sig, temperature=temperature, **config)

    def _attempt(self, completion: Mapping[str, Any]) -> str:
        reasoning = completion.get("rationale", completion.get("reasoning"))
        if reasoning is None or self.last_key not in completion:
            raise ValueError(
                f"MultiChainComparison: each completion needs a 'reasoning' (or 'rationale') and "
                f"{self.last_key!r}; got keys {sorted(completion)}"
            )
        rationale = str(reasoning).strip().split("\n")[0].strip()
        answer = str(completion[self.last_key]).strip().split("\n")[0].strip()
        return f"«I'm trying to {rationale} I'm not sure but my prediction is {answer}»"

    async def forward(self, completions: Iterable[Mapping[str, Any]] | Prediction, **kwargs: Any) -> Prediction:
        items = completions.completions if isinstance(completions, Prediction) else list(completions)
        attempts = [self._attempt(c) for c in items]
        if len(attempts) != self.m:
            raise ValueError(
                f"MultiChainComparison got {len(attempts)} attempts but was built for m={self.m}; "
                f"pass exactly {self.m} completions or build it with m={len(attempts)}"
            )
        inputs = {f"reasoning_attempt_{i + 1}": attempt for i, attempt in enumerate(attempts)}
        result: Prediction = await self.predict(**{**inputs, **kwargs})
        return result
