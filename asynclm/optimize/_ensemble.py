"""``Ensemble`` (several programs behind one, their outputs reduced) and ``majority`` (the most
common answer among predictions or completions)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asynclm.evaluate import normalize_text
from asynclm.modules import Module
from asynclm.runtime import run_items, sync_twin
from asynclm.signatures import Example, Prediction

from ._base import Teleprompter

__all__ = ["Ensemble", "EnsembledProgram", "majority"]


def _default_normalize(value: Any) -> Any:
    # DSPy's: normalized text, and an empty result counts as no answer (None)
    if isinstance(value, str):
        return normalize_text(value) or None
    return value


def majority(
    predictions: Prediction | Sequence[Any],
    normalize: Callable[[Any], Any] | None = _default_normalize,
    field: str | None = None,
) -> Prediction:
    """The prediction whose ``field`` value is the most common, as DSPy's ``dspy.majority``.

    ``predictions`` is a list of ``Prediction``s (or dicts), e.g. an ``Ensemble``'s outputs, or
    one ``Prediction`` whose ``completions`` are the candidates (a call with ``n > 1``). ``field``
    defaults to the last field of the first candidate (the answer of a ``ChainOfThought``).
    Values are compared after ``normalize`` (default: ``normalize_text`` for strings, where an
    empty result is no vote; ``None``: compared as they are). A tie goes to the value seen first;
    when every value normalizes to no vote, all of them count. Returns a new ``Prediction`` holding
    the first candidate with the winning value.

    Raises:
        ValueError: no candidates, or a candidate without ``field``.
        TypeError: ``predictions`` is neither a ``Prediction`` nor a list.
    """
    if isinstance(predictions, Prediction):
        candidates: list[Any] = list(predictions.completions)
    elif isinstance(predictions, Sequence) and not isinstance(predictions, (str, bytes)):
        candidates = list(predictions)
    else:
        raise TypeError(f"majority() takes a Prediction or a list of predictions, got {type(predictions).__name__}")
    if not candidates:
        raise ValueError("majority() needs at least one prediction")
    rows = [_as_mapping(c, i) for i, c in enumerate(candidates)]
    if field is None:
        if not rows[0]:
            raise ValueError("majority(): the first prediction has no fields; pass field=...")
        field = list(rows[0])[-1]
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"majority(): prediction {i} has no field {field!r} (it has {sorted(row)})")
    norm = normalize if normalize is not None else (lambda v: v)
    keys = [_hashable(norm(row[field])) for row in rows]
    votes = [k for k in keys if k is not None] or keys
    counts: dict[Any, int] = {}
    for key in votes:
        counts[key] = counts.get(key, 0) + 1
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts
    chosen = rows[keys.index(winner)]
    return Prediction.from_completions([chosen])


def _as_mapping(candidate: Any, index: int) -> dict[str, Any]:
    if isinstance(candidate, Example):
        return dict(candidate.items())
    if isinstance(candidate, Mapping):
        return dict(candidate)
    raise TypeError(f"majority(): prediction {index} is a {type(candidate).__name__}, not a Prediction or a dict")


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)
    return value


class EnsembledProgram(Module):
    """The program ``Ensemble.compile`` returns: calls its programs (all, or ``size`` of them) at
    once and gives their outputs, in the programs' order, to ``reduce_fn`` (or returns the list)."""

    def __init__(
        self,
        programs: Sequence[Module],
        reduce_fn: Callable[[list[Any]], Any] | None = None,
        size: int | None = None,
        deterministic: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.programs = list(programs)
        self.reduce_fn = reduce_fn
        self.size = size
        self.deterministic = deterministic
        self._rng = random.Random(seed)

    def _chosen(self, kwargs: dict[str, Any]) -> list[Module]:
        if not self.size or self.size >= len(self.programs):
            return self.programs
        if self.deterministic:
            # the same inputs always get the same programs, whatever ran before
            data = json.dumps(kwargs, sort_keys=True, default=str, ensure_ascii=False).encode()
            rng = random.Random(int.from_bytes(hashlib.sha256(data).digest()[:8], "big"))
            indices = sorted(rng.sample(range(len(self.programs)), self.size))
        else:
            indices = sorted(self._rng.sample(range(len(self.programs)), self.size))
        return [self.programs[i] for i in indices]

    async def forward(self, **kwargs: Any) -> Any:
        programs = self._chosen(kwargs)
        outputs = await run_items([(p, kwargs) for p in programs], concurrency=len(programs))
        return self.reduce_fn(outputs) if self.reduce_fn is not None else outputs


class Ensemble(Teleprompter):
    """Several programs as one: ``await Ensemble(reduce_fn=asynclm.majority).compile([p1, p2, p3])``.

    The result, an ``EnsembledProgram``, calls the programs **concurrently** for each input (DSPy
    calls them one after another) and reduces their outputs with ``reduce_fn`` — typically
    ``asynclm.majority`` — or returns them as a list when ``reduce_fn`` is ``None``. If a program
    raises, the others are cancelled and the error propagates with its type.

    Args:
        reduce_fn: ``reduce_fn(outputs) -> Prediction`` (outputs in the programs' order).
        size: call only this many programs per input, drawn at random (all when ``None``).
        deterministic: draw the ``size`` programs from a hash of the inputs, so the same inputs
            always use the same programs (DSPy has this flag but does not implement it).
        seed: the seed of the random draws when not ``deterministic``.
    """

    def __init__(
        self,
        *,
        reduce_fn: Callable[[list[Any]], Any] | None = None,
        size: int | None = None,
        deterministic: bool = False,
        seed: int | None = None,
    ) -> None:
        if reduce_fn is not None and not callable(reduce_fn):
            raise TypeError(f"Ensemble(reduce_fn=...) must be callable (e.g. asynclm.majority), got {reduce_fn!r}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"Ensemble(size={size!r}): use an int >= 1, or None for all programs")
        self.reduce_fn = reduce_fn
        self.size = size
        self.deterministic = deterministic
        self.seed = seed

    @sync_twin
    async def compile(self, programs: Sequence[Module]) -> Module:
        if isinstance(programs, Module) or not isinstance(programs, Sequence) or not programs:
            raise TypeError("Ensemble.compile(programs) takes a non-empty list of programs")
        for i, program in enumerate(programs):
            if not isinstance(program, Module):
                raise TypeError(f"Ensemble.compile: programs[{i}] is a {type(program).__name__}, not an asynclm Module")
        if self.size is not None and self.size > len(programs):
            raise ValueError(f"Ensemble(size={self.size}) is more than the {len(programs)} programs given")
        return EnsembledProgram(programs, self.reduce_fn, self.size, self.deterministic, self.seed)
