"""``Signature``: the typed input/output contract of one LM call, as an immutable value."""

from __future__ import annotations

import functools
import inspect
import keyword
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, Literal, ParamSpec, TypeVar, cast

from ._errors import SignatureError
from ._media_state import is_media_annotation
from ._types import annotation_name, is_round_trippable, parse_type, type_to_str

if TYPE_CHECKING:
    import pydantic

FieldKind = Literal["input", "output"]

# Pydantic constraints a field may carry; they are enforced when outputs are parsed and described
# to the LM with DSPy's wording (so prompts migrate unchanged).
_CONSTRAINT_TEXT: dict[str, str] = {
    "gt": "greater than: ",
    "ge": "greater than or equal to: ",
    "lt": "less than: ",
    "le": "less than or equal to: ",
    "min_length": "minimum length: ",
    "max_length": "maximum length: ",
    "multiple_of": "a multiple of the given number: ",
    "allow_inf_nan": "allow 'inf', '-inf', 'nan' values: ",
    "pattern": "matches the regular expression: ",
}


class _FieldMarker:
    """What ``InputField()``/``OutputField()`` return: a declaration read by the class form."""

    __slots__ = ("constraints", "desc", "kind", "prefix")

    def __init__(self, kind: FieldKind, desc: str | None, prefix: str | None, constraints: dict[str, Any]):
        unknown = sorted(set(constraints) - set(_CONSTRAINT_TEXT))
        if unknown:
            raise TypeError(
                f"{'InputField' if kind == 'input' else 'OutputField'}() got unexpected keyword argument(s) "
                f"{', '.join(unknown)}; accepted: desc, prefix, {', '.join(_CONSTRAINT_TEXT)}"
            )
        self.kind: FieldKind = kind
        self.desc = desc
        self.prefix = prefix
        self.constraints = {k: v for k, v in constraints.items() if v is not None}

    def __repr__(self) -> str:
        return f"{'InputField' if self.kind == 'input' else 'OutputField'}(desc={self.desc!r})"


def InputField(desc: str | None = None, *, prefix: str | None = None, **constraints: Any) -> Any:
    """Declare an input field in a class-form signature: ``question: str = InputField(desc="...")``.

    ``constraints`` are pydantic constraints (``gt``, ``ge``, ``lt``, ``le``, ``multiple_of``,
    ``min_length``, ``max_length``, ``pattern``, ``allow_inf_nan``). ``prefix`` is kept for DSPy
    compatibility and is not rendered by the built-in adapters.
    """
    return _FieldMarker("input", desc, prefix, constraints)


def OutputField(desc: str | None = None, *, prefix: str | None = None, **constraints: Any) -> Any:
    """Declare an output field in a class-form signature: ``answer: int = OutputField(ge=0)``.

    Constraints are enforced when the LM's answer is parsed (a violation is a ``ParseError``) and
    are listed to the LM in the field description.
    """
    return _FieldMarker("output", desc, prefix, constraints)


@dataclass(frozen=True, eq=False)
class SignatureField:
    """One field of a signature. Immutable; equality and hashing are structural."""

    name: str
    kind: FieldKind
    annotation: Any = str
    desc: str | None = None
    prefix: str | None = None
    constraints: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def is_input(self) -> bool:
        return self.kind == "input"

    @functools.cached_property
    def type_str(self) -> str:
        """Canonical type text (``list[str]``, ``Optional[int]``, ``Literal['a', 'b']``)."""
        return type_to_str(self.annotation)

    @functools.cached_property
    def type_name(self) -> str:
        """The type as printed in prompts (DSPy's spelling)."""
        return annotation_name(self.annotation)

    @functools.cached_property
    def round_trippable(self) -> bool:
        return is_round_trippable(self.annotation)

    @functools.cached_property
    def has_media(self) -> bool:
        """Whether the type is or holds ``Image``, ``Audio`` or ``File`` (``list[Image]``, ...)."""
        return is_media_annotation(self.annotation)

    @functools.cached_property
    def constraints_text(self) -> str:
        return ", ".join(f"{_CONSTRAINT_TEXT[k]}{v}" for k, v in self.constraints)

    @functools.cached_property
    def validation_type(self) -> Any:
        """``annotation`` with the field's constraints attached (what outputs are validated against)."""
        if not self.constraints:
            return self.annotation
        import pydantic

        return typing.Annotated[self.annotation, pydantic.Field(**dict(self.constraints))]

    @functools.cached_property
    def type_adapter(self) -> pydantic.TypeAdapter[Any]:
        import pydantic

        return pydantic.TypeAdapter(self.validation_type)

    @functools.cached_property
    def _key(self) -> tuple[Any, ...]:
        ann: Any = self.type_str
        if not self.round_trippable:
            try:
                hash(self.annotation)
                ann = (self.type_str, self.annotation)
            except TypeError:
                ann = (self.type_str, id(self.annotation))
        return (self.name, self.kind, ann, self.desc, self.prefix, self.constraints)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignatureField):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __copy__(self) -> SignatureField:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SignatureField:
        return self

    def __reduce__(self) -> Any:
        return (SignatureField, (self.name, self.kind, self.annotation, self.desc, self.prefix, self.constraints))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "type": self.type_str}
        if self.desc is not None:
            out["desc"] = self.desc
        if self.prefix is not None:
            out["prefix"] = self.prefix
        if self.constraints:
            out["constraints"] = dict(self.constraints)
        if not self.round_trippable:
            # Not rebuildable from "type" alone: record the JSON schema for readers of the file;
            # from_dict needs custom_types={name: cls} to rebuild the class itself.
            out["round_trippable"] = False
            try:
                out["json_schema"] = self.type_adapter.json_schema()
            except Exception:  # a type pydantic cannot describe; the name is still recorded
                pass
        return out


def _marker_to_field(name: str, spec: Any, type_: Any, *, what: str) -> SignatureField:
    if isinstance(spec, SignatureField):
        return replace(spec, name=name, annotation=spec.annotation if type_ is None else type_)
    if isinstance(spec, _FieldMarker):
        return SignatureField(
            name=name,
            kind=spec.kind,
            annotation=str if type_ is None else type_,
            desc=spec.desc,
            prefix=spec.prefix,
            constraints=tuple(sorted(spec.constraints.items())),
        )
    raise TypeError(f"{what}: expected InputField(...), OutputField(...) or a SignatureField, got {spec!r}")


_R = TypeVar("_R")
_KEEP = object()
_P = ParamSpec("_P")


class _sigproperty(Generic[_R]):
    """A property that also works on a class-form signature (``QA.output_fields``)."""

    def __init__(self, fget: Callable[[Any], _R]) -> None:
        self.fget = fget
        self.__doc__ = fget.__doc__

    def __get__(self, obj: object, owner: type | None = None) -> _R:
        if obj is None:
            obj = cast("type[Signature]", owner)._canonical()
        return self.fget(obj)


class _sigmethod(Generic[_P, _R]):
    """A method that also works on a class-form signature (``QA.with_instructions(...)``)."""

    def __init__(self, func: Callable[Concatenate[Any, _P], _R]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: object, owner: type | None = None) -> Callable[_P, _R]:
        if obj is None:
            obj = cast("type[Signature]", owner)._canonical()
        return cast("Callable[_P, _R]", types.MethodType(self.func, obj))


class Signature:
    """The typed contract of one LM call: named input fields, named output fields, instructions.

    Two forms, interchangeable wherever a signature is accepted (and a plain string works too)::

        qa = Signature("question, context: list[str] -> answer: int", instructions="...")

        class QA(Signature):
            '''Answer questions with short factoid answers.'''   # the docstring is the instructions
            question: str = InputField(desc="...")
            answer: int = OutputField(desc="...", ge=0)

    ``Signature.ensure(x)`` turns any of the three into a ``Signature`` instance. Instances are
    immutable, hashable and compare structurally (instructions and fields; the ``name`` is a label
    and does not take part). Derivation helpers return new signatures. Untyped fields are ``str``.
    Attributes and helpers also work on the class form (``QA.output_fields``).
    """

    # Set by __init_subclass__ on class-form signatures.
    _asynclm_class_error: ClassVar[SignatureError | None] = None
    _asynclm_localns: ClassVar[dict[str, Any]]
    _asynclm_frame: ClassVar[types.FrameType | None]
    _asynclm_canonical: ClassVar[Signature]

    _fields: tuple[SignatureField, ...]
    _instructions: str | None
    _name: str | None
    _inputs: types.MappingProxyType[str, SignatureField]
    _outputs: types.MappingProxyType[str, SignatureField]
    _all: types.MappingProxyType[str, SignatureField]
    _memo: dict[Any, Any]

    def __init__(
        self,
        signature: str,
        instructions: str | None = None,
        *,
        custom_types: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(signature, str):
            raise TypeError(
                f"Signature() takes a string such as 'question -> answer', got {type(signature).__name__}; "
                "use Signature.ensure() to accept any signature form"
            )
        if custom_types:
            fields = _parse_fields(signature, custom_types)
        else:
            fields = _parse_fields_cached(signature)
        self._init(fields, instructions, name, signature_text=signature)

    # -- construction ---------------------------------------------------------------------------

    def _init(
        self,
        fields: Iterable[SignatureField],
        instructions: str | None,
        name: str | None,
        *,
        signature_text: str | None = None,
    ) -> None:
        fields = tuple(fields)
        where = (
            f"Invalid signature {signature_text!r}" if signature_text else f"Invalid signature {name or ''}".rstrip()
        )
        seen: dict[str, FieldKind] = {}
        for f in fields:
            if not isinstance(f, SignatureField):
                raise TypeError(f"signature fields must be SignatureField objects, got {f!r}")
            if not f.name.isidentifier() or keyword.iskeyword(f.name):
                raise SignatureError(
                    f"{where}: {f.name!r} is not a valid field name (field names must be Python identifiers, "
                    "such as 'question' or 'answer_2')."
                )
            if f.name in seen:
                if seen[f.name] != f.kind:
                    raise SignatureError(
                        f"{where}: field {f.name!r} is used both as an input and as an output; "
                        "rename one of them (for example 'draft' -> 'revised_draft')."
                    )
                raise SignatureError(f"{where}: field {f.name!r} is declared twice.")
            seen[f.name] = f.kind
        inputs = [f for f in fields if f.kind == "input"]
        outputs = [f for f in fields if f.kind == "output"]
        if not outputs:
            raise SignatureError(
                f"{where}: no output fields; a signature needs at least one output after '->' "
                "(for example 'question -> answer')."
            )
        if instructions is not None and not isinstance(instructions, str):
            raise TypeError(f"instructions must be a string or None, got {type(instructions).__name__}")
        self._fields = (*inputs, *outputs)
        self._instructions = instructions
        self._name = name
        self._inputs = types.MappingProxyType({f.name: f for f in inputs})
        self._outputs = types.MappingProxyType({f.name: f for f in outputs})
        self._all = types.MappingProxyType({f.name: f for f in self._fields})
        self._memo = {}

    @classmethod
    def _make(cls, fields: Iterable[SignatureField], instructions: str | None, name: str | None) -> Signature:
        sig = object.__new__(Signature)
        sig._init(fields, instructions, name)
        return sig

    @classmethod
    def from_fields(
        cls, fields: Iterable[SignatureField], instructions: str | None = None, *, name: str | None = None
    ) -> Signature:
        """Build a signature from ``SignatureField`` objects (inputs are ordered before outputs)."""
        return cls._make(fields, instructions, name)

    @staticmethod
    def ensure(signature: str | Signature | type[Signature]) -> Signature:
        """Return ``signature`` as a ``Signature`` instance: strings are parsed (and cached),
        class-form signatures give their (cached) instance, instances are returned unchanged."""
        if isinstance(signature, Signature):
            return signature
        if isinstance(signature, str):
            return _from_string_cached(signature)
        if isinstance(signature, type) and issubclass(signature, Signature):
            return signature._canonical()
        raise TypeError(
            "expected a signature: a string such as 'question -> answer', a Signature, or a Signature "
            f"subclass; got {signature!r}"
        )

    # -- class form -----------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The frame running the class statement: lets annotations name classes local to a function.
        frame = sys._getframe(1)
        cls._asynclm_localns = dict(frame.f_locals) if frame.f_code.co_name != "<module>" else {}
        cls._asynclm_class_error = None
        try:
            canonical = cls._build_canonical()
        except NameError:
            # A forward reference to a class defined later: keep the defining frame (its locals
            # then include that class) until the first use builds the signature.
            cls._asynclm_frame = frame
            return
        except SignatureError as exc:
            if "no output fields" not in str(exc):
                raise
            # A base class with inputs only (or no fields) is fine until it is used as a signature.
            cls._asynclm_class_error = exc
            return
        cls._asynclm_canonical = canonical

    @classmethod
    def _canonical(cls) -> Signature:
        canonical = cls.__dict__.get("_asynclm_canonical")
        if canonical is None:
            if cls is Signature:
                raise SignatureError(
                    "Signature itself has no fields; subclass it or call Signature('question -> answer')."
                )
            frame = cls.__dict__.get("_asynclm_frame")
            if frame is not None:
                cls._asynclm_localns = {**cls._asynclm_localns, **frame.f_locals}
            canonical = cls._build_canonical()
            cls._asynclm_canonical = canonical
            cls._asynclm_frame = None
        return cast(Signature, canonical)

    @classmethod
    def _build_canonical(cls) -> Signature:
        localns = cls.__dict__.get("_asynclm_localns") or {}
        hints = typing.get_type_hints(cls, localns=localns, include_extras=True)
        reserved = {n for n in dir(Signature) if not n.startswith("_")}
        ordered: dict[str, SignatureField] = {}
        for klass in reversed(cls.__mro__):
            if klass is Signature or not issubclass(klass, Signature):
                continue
            # declaration order, annotated or not (the class body's order, as DSPy keeps it);
            # annotations without a field marker come after, to be reported below
            names = [n for n, v in klass.__dict__.items() if isinstance(v, _FieldMarker)]
            names += [n for n in inspect.get_annotations(klass) if n not in names]
            for name in names:
                if name.startswith("_"):
                    continue
                hint = hints.get(name, str)
                if typing.get_origin(hint) is ClassVar:
                    continue
                marker = klass.__dict__.get(name)
                if not isinstance(marker, _FieldMarker):
                    raise SignatureError(
                        f"Invalid signature {cls.__name__}: field {name!r} has a type annotation but no "
                        f"InputField()/OutputField(); write `{name}: ... = InputField()` or OutputField()."
                    )
                if name in reserved:
                    raise SignatureError(
                        f"Invalid signature {cls.__name__}: field name {name!r} clashes with "
                        f"Signature.{name}; rename the field."
                    )
                ordered.pop(name, None)
                ordered[name] = _marker_to_field(name, marker, hint, what=f"{cls.__name__}.{name}")
        doc = cls.__dict__.get("__doc__")
        instructions = inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None
        sig = object.__new__(cls)
        sig._init(ordered.values(), instructions, cls.__name__)
        return sig

    # -- introspection --------------------------------------------------------------------------

    @_sigproperty
    def name(self) -> str | None:
        """A label (class name for the class form); not part of equality."""
        return self._name

    @_sigproperty
    def instructions(self) -> str:
        """The task description; defaults to ``Given the fields `a`, produce the fields `b`.``"""
        if self._instructions is not None:
            return self._instructions
        inputs = ", ".join(f"`{n}`" for n in self._inputs)
        outputs = ", ".join(f"`{n}`" for n in self._outputs)
        return f"Given the fields {inputs}, produce the fields {outputs}."

    @_sigproperty
    def has_custom_instructions(self) -> bool:
        return self._instructions is not None

    @_sigproperty
    def fields(self) -> Mapping[str, SignatureField]:
        """All fields, inputs first, in declaration order."""
        return self._all

    @_sigproperty
    def input_fields(self) -> Mapping[str, SignatureField]:
        return self._inputs

    @_sigproperty
    def output_fields(self) -> Mapping[str, SignatureField]:
        return self._outputs

    @_sigproperty
    def signature(self) -> str:
        """The string form, e.g. ``question, context: list[str] -> answer: int``."""

        def side(fs: Iterable[SignatureField]) -> str:
            return ", ".join(f.name if f.annotation is str else f"{f.name}: {f.type_str}" for f in fs)

        return f"{side(self._inputs.values())} -> {side(self._outputs.values())}"

    # -- derivation -----------------------------------------------------------------------------

    def _derive(self, fields: Iterable[SignatureField], instructions: object = _KEEP) -> Signature:
        kept = self._instructions if instructions is _KEEP else cast("str | None", instructions)
        return Signature._make(fields, kept, self._name)

    @_sigmethod
    def with_instructions(self, instructions: str) -> Signature:
        """A copy with new instructions."""
        return self._derive(self._fields, instructions)

    @_sigmethod
    def insert(self, index: int, name: str, field: Any, type_: Any = None) -> Signature:
        """A copy with ``field`` (``InputField()``, ``OutputField()`` or a ``SignatureField``)
        inserted at ``index`` among the fields of its kind; negative indexes count from the end,
        ``-1`` appending (as in DSPy). Instructions that were never set stay the default."""
        new = _marker_to_field(name, field, type_, what="Signature.insert")
        same = [f for f in self._fields if f.kind == new.kind]
        other = [f for f in self._fields if f.kind != new.kind]
        if index < 0:
            index += len(same) + 1
        if not 0 <= index <= len(same):
            raise IndexError(f"insert index {index} out of range for {len(same)} {new.kind} field(s)")
        same.insert(index, new)
        return self._derive([*same, *other])

    @_sigmethod
    def append(self, name: str, field: Any, type_: Any = None) -> Signature:
        """A copy with ``field`` added after the last field of its kind."""
        return self.insert(-1, name, field, type_)

    @_sigmethod
    def prepend(self, name: str, field: Any, type_: Any = None) -> Signature:
        """A copy with ``field`` added before the first field of its kind."""
        return self.insert(0, name, field, type_)

    @_sigmethod
    def delete(self, name: str) -> Signature:
        """A copy without field ``name`` (``SignatureError`` if there is no such field)."""
        if name not in self._all:
            raise SignatureError(f"cannot delete field {name!r}: the signature has {list(self._all)}")
        return self._derive(f for f in self._fields if f.name != name)

    @_sigmethod
    def with_updated_fields(self, name: str, /, type_: Any = None, **changes: Any) -> Signature:
        """A copy where field ``name`` gets a new type and/or ``desc``/``prefix``/constraints."""
        if name not in self._all:
            raise SignatureError(f"cannot update field {name!r}: the signature has {list(self._all)}")
        old = self._all[name]
        kw: dict[str, Any] = {}
        if type_ is not None:
            kw["annotation"] = type_
        for key in ("desc", "prefix"):
            if key in changes:
                kw[key] = changes.pop(key)
        if changes:
            constraints = dict(old.constraints)
            _FieldMarker(old.kind, None, None, changes)  # validates the keyword names
            constraints.update(changes)
            kw["constraints"] = tuple(sorted((k, v) for k, v in constraints.items() if v is not None))
        new = replace(old, **kw)
        return self._derive(new if f.name == name else f for f in self._fields)

    # -- value semantics ------------------------------------------------------------------------

    @functools.cached_property
    def _key(self) -> tuple[Any, ...]:
        return (self.instructions, self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return self is other or self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        label = self._name or "Signature"
        extra = f", instructions={self._instructions!r}" if self._instructions is not None else ""
        return f"{label}({self.signature!r}{extra})"

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(
            f"Signature objects are immutable (cannot set {name!r}); derive a new one with "
            "with_instructions(), append(), insert(), delete() or with_updated_fields()"
        )

    # Immutable: copies are the object itself (modules deep-copy their predictors freely).
    def __copy__(self) -> Signature:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return self

    def __reduce__(self) -> Any:
        # Copy/pickle protocol for multiprocessing users: rebuilt from its fields (not the memo).
        return (_rebuild_signature, (self._fields, self._instructions, self._name))

    def memo(self, key: Any, factory: Callable[[], _R]) -> _R:
        """Per-signature cache for derived data (adapters keep compiled templates here).
        Safe because signatures are immutable; a race at worst computes the value twice."""
        try:
            return cast(_R, self._memo[key])
        except KeyError:
            value = self._memo[key] = factory()
            return value

    # -- JSON -----------------------------------------------------------------------------------

    @_sigmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description. Types are written as text that ``from_dict`` reads back;
        fields whose type is a user class (pydantic model, Enum) or carries ``Annotated``
        metadata are marked ``"round_trippable": false`` and include their JSON schema."""
        return {
            "name": self._name,
            "instructions": self._instructions,
            "fields": [f.to_dict() for f in self._fields],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, custom_types: Mapping[str, Any] | None = None) -> Signature:
        """Rebuild a signature written by ``to_dict``. User classes named in field types must
        be supplied through ``custom_types`` (``{"Address": Address}``)."""
        try:
            raw_fields = data["fields"]
        except (KeyError, TypeError):
            raise SignatureError(f"Signature.from_dict: expected a dict with a 'fields' list, got {data!r}") from None
        fields = []
        for i, fd in enumerate(raw_fields):
            if not isinstance(fd, Mapping) or "name" not in fd or fd.get("kind") not in ("input", "output"):
                raise SignatureError(
                    f"Signature.from_dict: field entry {i} must have 'name' and 'kind' ('input' or "
                    f"'output'), got {fd!r}"
                )
            annotation = parse_type(
                fd.get("type", "str"),
                field=fd["name"],
                signature_text=f"<from_dict {data.get('name')}>",
                custom_types=custom_types,
            )
            fields.append(
                SignatureField(
                    name=fd["name"],
                    kind=fd["kind"],
                    annotation=annotation,
                    desc=fd.get("desc"),
                    prefix=fd.get("prefix"),
                    constraints=tuple(sorted((fd.get("constraints") or {}).items())),
                )
            )
        return cls._make(fields, data.get("instructions"), data.get("name"))


# -- string form parsing ---------------------------------------------------------------------------


def _scan_top_level(text: str, targets: tuple[str, ...]) -> list[tuple[int, str]]:
    """Positions of ``targets`` outside brackets and string quotes."""
    found: list[tuple[int, str]] = []
    depth = 0
    quote = ""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[({":
            depth += 1
        elif c in "])}":
            depth -= 1
        elif depth == 0:
            for t in targets:
                if text.startswith(t, i):
                    found.append((i, t))
                    i += len(t) - 1
                    break
        i += 1
    return found


def _split_side(text: str, start: int, end: int) -> list[str]:
    part = text[start:end]
    if not part.strip():
        return []
    pieces = []
    last = 0
    for pos, _ in _scan_top_level(part, (",",)):
        pieces.append(part[last:pos])
        last = pos + 1
    pieces.append(part[last:])
    return pieces


def _parse_fields(text: str, custom_types: Mapping[str, Any] | None) -> tuple[SignatureField, ...]:
    arrows = [pos for pos, _ in _scan_top_level(text, ("->",))]
    if not arrows:
        raise SignatureError(
            f"Invalid signature {text!r}: missing '->' between inputs and outputs (expected e.g. 'question -> answer')."
        )
    if len(arrows) > 1:
        raise SignatureError(
            f"Invalid signature {text!r}: found {len(arrows)} '->' separators; a signature has exactly one "
            "(inputs -> outputs)."
        )
    arrow = arrows[0]
    fields: list[SignatureField] = []
    for kind, (start, end) in (("input", (0, arrow)), ("output", (arrow + 2, len(text)))):
        for piece in _split_side(text, start, end):
            name, colon, type_text = piece.partition(":")
            name = name.strip()
            if not name:
                raise SignatureError(
                    f"Invalid signature {text!r}: empty field name in {piece.strip()!r} "
                    "(check for a doubled or trailing comma)."
                )
            if not name.isidentifier() or keyword.iskeyword(name):
                raise SignatureError(
                    f"Invalid signature {text!r}: {name!r} is not a valid field name (field names must be "
                    "Python identifiers, such as 'question' or 'answer_2')."
                )
            annotation: Any = str
            if colon:
                if not type_text.strip():
                    raise SignatureError(f"Invalid signature {text!r}: field {name!r} has ':' but no type after it.")
                annotation = parse_type(type_text, field=name, signature_text=text, custom_types=custom_types)
            fields.append(SignatureField(name=name, kind=cast(FieldKind, kind), annotation=annotation))
    # Name clashes are reported by _init with the same wording for every form.
    return tuple(fields)


def _rebuild_signature(fields: tuple[SignatureField, ...], instructions: str | None, name: str | None) -> Signature:
    return Signature._make(fields, instructions, name)


@functools.lru_cache(maxsize=1024)
def _parse_fields_cached(text: str) -> tuple[SignatureField, ...]:
    return _parse_fields(text, None)


@functools.lru_cache(maxsize=1024)
def _from_string_cached(text: str) -> Signature:
    return Signature(text)
