"""``Module``: the base of every program — await it, ``.sync`` it, ``.batch`` it, save it."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from asynclm.runtime import (
    SyncCallable,
    asyncify,
    current_executor,
    is_async_callable,
    run_items,
    sync_twin,
)
from asynclm.signatures import Prediction

from ._callbacks import observe

__all__ = ["Module", "ProgramFileError"]

_FORMAT = "asynclm.program/1"


class ProgramFileError(ValueError):
    """A saved program file does not match the program loading it (or is not a program file)."""


class Module(SyncCallable):
    """Base class for programs: subclass it and write ``async def forward(self, **inputs)``.

    ``await program(**inputs)`` calls ``forward`` (notifying callbacks and summing the usage of
    every LM call made inside into ``prediction.usage``); ``program.sync(**inputs)`` does the same
    from synchronous code. A plain ``def forward`` also works: it runs in a worker thread, where
    sub-modules are called with ``.sync(...)``.

    Sub-modules are found through instance attributes (also inside lists, tuples and dicts), like
    DSPy's: ``named_predictors()`` lists every ``Predict`` with its dotted path.
    """

    callbacks: list[Any] = []  # noqa: RUF012 - read-only default for subclasses that skip __init__

    def __init__(self, *, callbacks: Iterable[Any] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    async def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define `async def forward(self, ...)`")

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from asynclm.lm._usage import start_tracking, stop_tracking

        async with observe("module", self, kwargs) as outcome:
            # track_usage() by hand: a generator-based manager costs memory per in-flight call
            usage, token = start_tracking()
            try:
                forward = self.forward
                running = forward(*args, **kwargs) if is_async_callable(forward) else asyncify(forward)(*args, **kwargs)
                # forward has its own copies: this frame need not hold them for the whole call
                del forward, args, kwargs
                result = await running
            finally:
                stop_tracking(token)
            if isinstance(result, Prediction):
                result.usage = usage.usage
            outcome.value = result
        return result

    # -- batch ----------------------------------------------------------------------------------

    @sync_twin
    async def batch(
        self,
        examples: Iterable[Any],
        concurrency: int | None = 32,
        max_errors: int | None = 0,
        return_exceptions: bool = False,
        timeout: float | None = None,
        progress: bool = False,
        executor: Any = None,
    ) -> list[Any]:
        """Run the program on many inputs concurrently; results in input order.

        ``examples`` are dicts of keyword inputs or ``Example`` objects (their ``inputs()``).
        The other arguments are those of ``asynclm.Parallel``: at most ``concurrency`` in
        flight; ``max_errors`` failures tolerated (``None`` in their slots), the next one raised
        with its original type after cancelling the rest; ``return_exceptions=True`` puts each
        failure in its slot instead; ``timeout`` is per item. ``concurrency=None``: no bound (every
        item at once; what a ``BatchLM`` needs to gather each step's calls into one provider batch).
        ``executor``: run the items there (``asynclm.ray.RayExecutor``; default: the
        ``context(executor=...)`` setting, else here).
        """
        from asynclm.runtime import Parallel

        # validates the arguments exactly as Parallel does
        Parallel(concurrency, max_errors, return_exceptions, timeout, progress)
        items = [(self, ex) for ex in examples]
        return await run_items(
            items,
            concurrency=concurrency,
            max_errors=max_errors,
            return_exceptions=return_exceptions,
            timeout=timeout,
            progress=progress,
            executor=current_executor(executor),
        )

    # -- structure ------------------------------------------------------------------------------

    def named_sub_modules(
        self, type_: type | None = None, *, include_self: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """Every module reachable from this one (depth first, each once) with its path, named as
        DSPy's ``named_sub_modules`` names them: ``"self"``, ``"self.answer"``, ``"self.steps[0]"``,
        ``"self.by_name[key]"``. ``type_``: only modules of that class (default: all)."""
        wanted = type_ or Module
        for path, module in self._walk("self", quote_keys=False):
            if (module is not self or include_self) and isinstance(module, wanted):
                yield path, module

    def named_predictors(self) -> list[tuple[str, Any]]:
        """``[(name, predictor)]`` for every ``Predict`` in the program, named as DSPy's
        ``named_predictors()`` names them (and as saved programs key them): ``"answer"``,
        ``"steps[0]"``, ``"by_name['key']"``; ``"self"`` for a program that is itself a ``Predict``."""
        from ._predict import Predict

        return [
            (path or "self", module) for path, module in self._walk("", quote_keys=True) if isinstance(module, Predict)
        ]

    def _walk(self, root: str, *, quote_keys: bool) -> Iterator[tuple[str, Module]]:
        """Depth first over attributes, lists, tuples and dicts; each module once."""
        seen: set[int] = set()

        def walk(value: Any, path: str) -> Iterator[tuple[str, Module]]:
            if isinstance(value, Module):
                if id(value) in seen:
                    return
                seen.add(id(value))
                yield path, value
                for name, attr in value.__dict__.items():
                    if name.startswith("_") or name in ("callbacks", "lm", "adapter"):
                        continue
                    yield from walk(attr, f"{path}.{name}" if path else name)
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    yield from walk(item, f"{path}[{i}]")
            elif isinstance(value, Mapping):
                for key, item in value.items():
                    yield from walk(item, f"{path}['{key}']" if quote_keys else f"{path}[{key}]")

        yield from walk(self, root)

    def predictors(self) -> list[Any]:
        return [p for _, p in self.named_predictors()]

    def set_lm(self, lm: Any) -> None:
        """Use ``lm`` for every predictor of the program (instead of the context's LM)."""
        for predictor in self.predictors():
            predictor.lm = lm

    def get_lm(self) -> Any:
        lms = {id(p.lm): p.lm for p in self.predictors()}
        if len(lms) != 1:
            raise ValueError("the predictors of this program use different LMs (or none): ask each predictor")
        return next(iter(lms.values()))

    def deepcopy(self) -> Module:
        """A deep copy whose predictors share this program's LM objects, adapters and callbacks
        (clients, caches and limits are not copied)."""
        memo: dict[int, Any] = {}
        for _, module in self.named_sub_modules(include_self=True):
            for name in ("lm", "adapter"):
                value = module.__dict__.get(name)
                if value is not None:
                    memo[id(value)] = value
            for callback in module.callbacks:
                memo[id(callback)] = callback
            signature = module.__dict__.get("signature")
            if signature is not None:  # immutable: share it
                memo[id(signature)] = signature
        return copy.deepcopy(self, memo)

    def __deepcopy__(self, memo: dict[int, Any]) -> Module:
        # Attribute by attribute, as DSPy does: what cannot be copied (a lock, an open client, a
        # file) is shared by the copy instead of failing the whole copy (and BestOfN/Refine with it).
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            try:
                copied = copy.deepcopy(value, memo)
            except Exception:
                copied = value
            object.__setattr__(new, name, copied)
        return new

    def reset_copy(self) -> Module:
        """A deep copy with every predictor reset (demos cleared)."""
        new = self.deepcopy()
        for predictor in new.predictors():
            predictor.reset()
        return new

    # -- state ----------------------------------------------------------------------------------

    def dump_state(self) -> dict[str, Any]:
        """The learnable state as JSON-able data: each predictor's signature, instructions and demos.
        Never LMs, API keys or base URLs."""
        return {
            "format": _FORMAT,
            "program": type(self).__qualname__,
            "predictors": {name: p.dump_predictor_state() for name, p in self.named_predictors()},
        }

    def load_state(self, state: Mapping[str, Any], *, custom_types: Mapping[str, Any] | None = None) -> Module:
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT or "predictors" not in state:
            raise ProgramFileError(
                f"not an asynclm program state (expected a dict with format {_FORMAT!r} and 'predictors')"
            )
        saved = state["predictors"]
        mine = dict(self.named_predictors())
        if set(saved) != set(mine):
            raise ProgramFileError(
                f"the saved program has predictors {sorted(saved)} but {type(self).__name__} has "
                f"{sorted(mine)}: load it into the same program class it was saved from"
            )
        # All or nothing: a bad value in one predictor leaves every predictor as it was.
        backup = {name: predictor.dump_predictor_state() for name, predictor in mine.items()}
        loaded: list[str] = []
        try:
            for name, predictor in mine.items():
                try:
                    predictor.load_predictor_state(saved[name], custom_types=custom_types)
                except ProgramFileError:
                    raise
                except Exception as exc:
                    raise ProgramFileError(f"predictor {name!r}: cannot load its saved state: {exc}") from exc
                loaded.append(name)
        except BaseException:
            for name in loaded:
                mine[name].load_predictor_state(backup[name], custom_types=custom_types)
            raise
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``dump_state`` to ``path`` as JSON (atomically: a temporary file, then rename)."""
        target = Path(path)
        data = json.dumps(self.dump_state(), indent=2, ensure_ascii=False, default=_json_default)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(data + "\n", encoding="utf-8")
        os.replace(tmp, target)

    def load(
        self, path: str | os.PathLike[str], *, custom_types: Mapping[str, Any] | None = None
    ) -> Module:
        """Load state saved by ``save`` into this program; returns ``self``.

        A program saved by DSPy 2.6/3.x (``program.save("p.json")``) loads too: instructions,
        field descriptions and demos go to the matching predictors (DSPy's ``<name>.predict`` is
        ``<name>`` here), all or nothing, with a ``ProgramFileError`` naming both sides on a
        mismatch. Its LM state is ignored."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProgramFileError(f"{path}: not valid JSON ({exc})") from None
        from ._dspy_state import from_dspy_state, is_dspy_state

        if is_dspy_state(state):
            state = from_dspy_state(self, state)
        return self.load_state(state, custom_types=custom_types)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={p!r}" for name, p in self.named_predictors() if name != "self")
        return f"{type(self).__name__}({inner})"


def _json_default(value: Any) -> Any:
    to_json = getattr(value, "model_dump", None)
    if callable(to_json):
        return to_json(mode="json")
    iso = getattr(value, "isoformat", None)
    if callable(iso):
        return iso()
    raise TypeError(f"cannot save a value of type {type(value).__name__} as JSON")
