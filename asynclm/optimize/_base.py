"""The optimizer base class and helpers shared by the optimizers."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from asynclm.evaluate._evaluate import check_examples
from asynclm.modules import Module
from asynclm.runtime import SyncTwin, sync_twin
from asynclm.signatures import Example

__all__ = ["Optimizer", "Teleprompter", "check_trainset", "is_compiled", "mark_compiled", "match_predictors"]


class Teleprompter:
    """Base class of optimizers (DSPy's name; ``Optimizer`` is the same class).

    An optimizer's ``compile`` is a coroutine that returns a *new* program and never changes the
    one it is given: ``compiled = await opt.compile(program, trainset=...)``, or
    ``opt.compile.sync(program, trainset=...)`` from synchronous code. A subclass writes
    ``async def compile(self, student, *, trainset, ...)``; the ``.sync`` twin is added for it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compile_fn = cls.__dict__.get("compile")
        if compile_fn is not None and not isinstance(compile_fn, SyncTwin):
            if not inspect.iscoroutinefunction(compile_fn):
                raise TypeError(f"{cls.__name__}.compile must be a coroutine method (async def compile(...))")
            cls.compile = sync_twin(compile_fn)  # type: ignore[method-assign]

    @sync_twin
    async def compile(self, student: Module, *, trainset: Iterable[Example], **kwargs: Any) -> Module:
        raise NotImplementedError(f"{type(self).__name__} must define `async def compile(self, student, *, trainset)`")

    def get_params(self) -> dict[str, Any]:
        """The optimizer's configuration (its public attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


Optimizer = Teleprompter


def check_trainset(trainset: Iterable[Any], who: str, what: str = "trainset") -> list[Example]:
    """The examples as a list, each checked to be an ``Example`` with input keys."""
    return check_examples(trainset, who, what)


def match_predictors(student: Module, teacher: Module, who: str) -> None:
    """Check that student and teacher have the same predictors (by path) with the same fields."""
    mine = student.named_predictors()
    theirs = teacher.named_predictors()
    if [n for n, _ in mine] != [n for n, _ in theirs]:
        raise ValueError(
            f"{who}: the student and the teacher must have the same structure; the student's predictors are "
            f"{[n for n, _ in mine]}, the teacher's {[n for n, _ in theirs]}"
        )
    for (name, s), (_, t) in zip(mine, theirs, strict=True):
        if s is t:
            raise ValueError(f"{who}: predictor {name!r} is the same object in the student and the teacher")
        same_fields = list(s.signature.input_fields) == list(t.signature.input_fields) and list(
            s.signature.output_fields
        ) == list(t.signature.output_fields)
        if not same_fields:
            raise ValueError(
                f"{who}: predictor {name!r} has signature {s.signature.signature!r} in the student but "
                f"{t.signature.signature!r} in the teacher; their fields must match"
            )


def mark_compiled(program: Module, compiled: bool = True) -> None:
    """Flag a program as an optimizer's output (DSPy's ``_compiled``): ``BootstrapFewShot`` then
    uses such a teacher as it is, without giving it labelled demos first."""
    vars(program)["_compiled"] = compiled


def is_compiled(program: Module) -> bool:
    return bool(vars(program).get("_compiled", False))
