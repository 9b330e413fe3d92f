"""``Example`` (a training/eval record) and ``Prediction`` (a module's output): plain data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._media_state import revive_media

_MISSING = object()


class Example:
    """A record of named fields plus the set of keys that are inputs.

    ``Example(question="...", answer="...").with_inputs("question")``; ``inputs()`` and
    ``labels()`` split it. Fields are reachable as items (``ex["question"]``) and attributes
    (``ex.question``; use item access for names that clash with methods, such as ``items``).
    ``**ex.inputs()`` unpacks as keyword arguments. Equality compares the fields only (as in DSPy),
    not the input keys. Mutable, hence unhashable.

    As in DSPy: ``Example(other, c=3)`` and ``Example(base=other, c=3)`` copy ``other``'s fields
    (an ``Example`` or a mapping; any other ``base=`` value is a field named ``base``), and fields
    whose names start with ``dspy_`` (the bookkeeping DSPy's data loaders add, such as
    ``dspy_uuid``) are reachable by name but left out of ``len()``, ``keys()``, ``values()`` and
    ``items()`` unless ``include_dspy=True``.
    """

    __slots__ = ("_input_keys", "_store")

    _store: dict[str, Any]
    _input_keys: frozenset[str] | None

    def __init__(self, base: Example | Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        store: dict[str, Any] = {}
        input_keys: frozenset[str] | None = None
        if base is None and isinstance(fields.get("base"), (Example, Mapping)):  # DSPy's Example(base=...)
            base = fields.pop("base")
        if isinstance(base, Example):
            store.update(base._store)
            input_keys = base._input_keys
        elif base is not None:
            store.update(base)
        store.update(fields)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_input_keys", input_keys)

    # -- input/label split ----------------------------------------------------------------------

    def with_inputs(self, *keys: str) -> Example:
        """A copy whose input keys are ``keys`` (they need not all be present)."""
        new = self.copy()
        object.__setattr__(new, "_input_keys", frozenset(keys))
        return new

    @property
    def input_keys(self) -> frozenset[str] | None:
        return self._input_keys

    def inputs(self) -> Example:
        """The input fields, as an ``Example`` with the same input keys."""
        if self._input_keys is None:
            raise ValueError("this Example has no input keys; call example.with_inputs('question', ...) first")
        new = type(self).__new__(type(self))
        object.__setattr__(new, "_store", {k: v for k, v in self._store.items() if k in self._input_keys})
        object.__setattr__(new, "_input_keys", self._input_keys)
        new._copy_extra_from(self)
        return new

    def labels(self) -> Example:
        """The non-input fields (everything when no input keys are set)."""
        keys = self._input_keys or frozenset()
        new = type(self).__new__(type(self))
        object.__setattr__(new, "_store", {k: v for k, v in self._store.items() if k not in keys})
        object.__setattr__(new, "_input_keys", self._input_keys)
        new._copy_extra_from(self)
        return new

    def _copy_extra_from(self, other: Example) -> None:
        """Hook for subclasses with extra state."""

    # -- copying ----------------------------------------------------------------------------------

    def copy(self, **changes: Any) -> Example:
        """A shallow copy with ``changes`` applied; input keys are kept."""
        new = type(self).__new__(type(self))
        object.__setattr__(new, "_store", {**self._store, **changes})
        object.__setattr__(new, "_input_keys", self._input_keys)
        new._copy_extra_from(self)
        return new

    def without(self, *keys: str) -> Example:
        """A copy without ``keys``."""
        new = self.copy()
        for k in keys:
            new._store.pop(k, None)
        return new

    # -- mapping protocol -------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return sum(1 for k in self._store if not k.startswith("dspy_"))

    def keys(self, include_dspy: bool = False) -> Iterable[str]:
        if include_dspy:
            return self._store.keys()
        return [k for k in self._store if not k.startswith("dspy_")]

    def values(self, include_dspy: bool = False) -> Iterable[Any]:
        if include_dspy:
            return self._store.values()
        return [v for k, v in self._store.items() if not k.startswith("dspy_")]

    def items(self, include_dspy: bool = False) -> Iterable[tuple[str, Any]]:
        if include_dspy:
            return self._store.items()
        return [(k, v) for k, v in self._store.items() if not k.startswith("dspy_")]

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    # -- attribute access -------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fields never shadow methods.
        if name.startswith("_"):  # private/dunder names are never fields (and _store may be unset)
            raise AttributeError(name)
        try:
            return self._store[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; it has {list(self._store)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            self._store[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._store[name]
        except KeyError:
            raise AttributeError(name) from None

    # -- value semantics --------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return self._store == other._store

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        keys = f", input_keys={sorted(self._input_keys)}" if self._input_keys is not None else ""
        return f"{type(self).__name__}({self._store!r}{keys})"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able Python data (pydantic models, dates, enums … converted)."""
        from pydantic_core import to_jsonable_python

        return {k: to_jsonable_python(v, fallback=str) for k, v in self._store.items()}

    toDict = to_dict  # DSPy's spelling

    def to_json_dict(self) -> dict[str, Any]:
        """Fields and input keys, for saving; read back with ``from_json_dict``."""
        return {
            "fields": self.to_dict(),
            "input_keys": None if self._input_keys is None else sorted(self._input_keys),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Example:
        """Read back what ``to_json_dict`` wrote (media values saved by ``to_dict`` become
        ``Image``/``Audio``/``File`` again)."""
        ex = cls(revive_media(data["fields"]))
        if data.get("input_keys") is not None:
            ex = ex.with_inputs(*data["input_keys"])
        return ex


class Prediction(Example):
    """The output of a module: output fields as items/attributes, plus

    * ``completions``: one dict per candidate when the LM returned several (``n > 1``); the
      prediction's own fields are the first candidate's. Always a list; a single-candidate
      prediction returns ``[dict(prediction)]``.
    * ``usage``: token usage recorded by the module that produced it (``None`` if unknown).
    """

    __slots__ = ("_completions", "_usage")

    _completions: list[dict[str, Any]] | None
    _usage: Any

    def __init__(self, base: Example | Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        super().__init__(base, **fields)
        object.__setattr__(self, "_completions", None)
        object.__setattr__(self, "_usage", None)

    @classmethod
    def from_completions(cls, completions: Iterable[Mapping[str, Any]], *, usage: Any = None) -> Prediction:
        """A prediction whose fields are the first candidate's, keeping all of them."""
        cands = [dict(c) for c in completions]
        if not cands:
            raise ValueError("Prediction.from_completions needs at least one completion")
        pred = cls(cands[0])
        object.__setattr__(pred, "_completions", cands)
        object.__setattr__(pred, "_usage", usage)
        return pred

    def _copy_extra_from(self, other: Example) -> None:
        object.__setattr__(self, "_completions", getattr(other, "_completions", None))
        object.__setattr__(self, "_usage", getattr(other, "_usage", None))

    @property
    def completions(self) -> list[dict[str, Any]]:
        if self._completions is None:
            return [dict(self._store)]
        return self._completions

    @property
    def usage(self) -> Any:
        return self._usage

    @usage.setter
    def usage(self, value: Any) -> None:
        object.__setattr__(self, "_usage", value)

    def to_json_dict(self) -> dict[str, Any]:
        out = super().to_json_dict()
        if self._completions is not None and len(self._completions) > 1:
            from pydantic_core import to_jsonable_python

            out["completions"] = to_jsonable_python(self._completions, fallback=str)
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Prediction:
        if data.get("completions"):
            pred = cls.from_completions(revive_media(data["completions"]))
            pred._store.update(revive_media(data["fields"]))
        else:
            pred = cls(revive_media(data["fields"]))
        if data.get("input_keys") is not None:
            object.__setattr__(pred, "_input_keys", frozenset(data["input_keys"]))
        return pred
