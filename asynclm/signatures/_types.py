"""Field types: a safe parser for type expressions in string signatures, and the two ways a type
is written back as text (the canonical serialisation that the parser reads back, and DSPy's
display name used inside prompts)."""

from __future__ import annotations

import ast
import datetime
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from ._errors import SignatureError

NoneType = type(None)

# Names a string signature may use without `custom_types`. Generic aliases from `typing`
# (List, Dict, ...) are accepted so that DSPy signatures migrate unchanged.
_BUILTIN_NAMES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "bytes": bytes,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "None": None,
    "NoneType": None,
    "Any": Any,
    "Optional": typing.Optional,
    "Union": Union,
    "Literal": Literal,
    "List": list,
    "Dict": dict,
    "Tuple": tuple,
    "Set": set,
    "FrozenSet": frozenset,
    "datetime": datetime.datetime,
    "date": datetime.date,
    "time": datetime.time,
    "timedelta": datetime.timedelta,
}

_GENERIC_CONTAINERS = (list, dict, tuple, set, frozenset)


# Names of asynclm's own field types, imported on first use (they need pydantic).
_ASYNCLM_NAMES = ("Audio", "File", "History", "Image", "ToolCalls")


def _asynclm_type(name: str) -> Any:
    if name == "History":
        from ._history import History

        return History
    if name == "ToolCalls":
        from ._tool_calls import ToolCalls

        return ToolCalls
    from . import _media

    return getattr(_media, name)


def known_type_names() -> list[str]:
    return [*sorted(n for n in _BUILTIN_NAMES if n != "NoneType"), *_ASYNCLM_NAMES]


def parse_type(text: str, *, field: str, signature_text: str, custom_types: Mapping[str, Any] | None) -> Any:
    """Evaluate a type expression such as ``list[str]`` or ``Literal['a', 'b']`` without ``eval``:
    only subscripts, ``|`` unions, constants inside ``Literal[...]`` and known names are allowed."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise SignatureError(
            f"Invalid signature {signature_text!r}: could not parse the type {text.strip()!r} of field "
            f"{field!r} (write a Python type such as 'list[str]' or \"Literal['yes', 'no']\")."
        ) from None
    return _TypeEvaluator(text.strip(), field, signature_text, custom_types or {}).eval(node)


class _TypeEvaluator:
    def __init__(self, text: str, field: str, signature_text: str, custom: Mapping[str, Any]) -> None:
        self.text = text
        self.field = field
        self.signature_text = signature_text
        self.custom = custom

    def fail(self, what: str) -> SignatureError:
        return SignatureError(
            f"Invalid signature {self.signature_text!r}: {what} in the type {self.text!r} of field {self.field!r}."
        )

    def name(self, name: str) -> Any:
        if name in self.custom:
            return self.custom[name]
        if name in _BUILTIN_NAMES:
            return _BUILTIN_NAMES[name]
        if name in _ASYNCLM_NAMES:
            return _asynclm_type(name)
        return self.unknown(name)

    def unknown(self, name: str) -> Any:
        raise SignatureError(
            f"Invalid signature {self.signature_text!r}: unknown type name {name!r} in the type "
            f"{self.text!r} of field {self.field!r}. Known names: {', '.join(known_type_names())}. "
            f"To use your own class, pass custom_types={{{name!r}: {name}}} "
            "(or use the class form of Signature)."
        )

    def eval(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Attribute):
            # `typing.List`, `datetime.date`, `mymodule.Model`: the dotted name, or the last part.
            dotted = ast.unparse(node)
            if dotted in self.custom:
                return self.custom[dotted]
            if isinstance(node.value, ast.Name) and node.value.id in {"typing", "datetime", "dt"}:
                return self.name(node.attr)
            return self.unknown(dotted)
        if isinstance(node, ast.Constant) and node.value is None:
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return Union[self.eval(node.left), self.eval(node.right)]  # one canonical form for `|` and Union[]
        if isinstance(node, ast.Subscript):
            origin = self.eval(node.value)
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if origin is Literal:
                return Literal.__getitem__(tuple(self.literal_value(e) for e in elts))
            args = tuple(self.eval_arg(e) for e in elts)
            try:
                if origin in (Union, typing.Optional):
                    return origin[args if len(args) > 1 else args[0]]
                if origin in _GENERIC_CONTAINERS:
                    return types.GenericAlias(origin, args)
                return origin[args if len(args) > 1 else args[0]]
            except TypeError as exc:
                raise self.fail(f"invalid type arguments ({exc})") from None
        raise self.fail(f"unsupported syntax {ast.unparse(node)!r}")

    def eval_arg(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            return Ellipsis
        return self.eval(node)

    def literal_value(self, node: ast.expr) -> Any:
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise self.fail(f"Literal[...] accepts only constants, got {ast.unparse(node)!r}") from None
        if not isinstance(value, str | int | bool | bytes) and value is not None:
            raise self.fail(f"Literal[...] accepts str, int, bool, bytes or None, got {value!r}")
        return value


def _unwrap_annotated(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is typing.Annotated else tp


def is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def type_to_str(tp: Any) -> str:
    """Canonical text of a type, read back by ``parse_type`` (given the same ``custom_types``
    for user classes). ``Optional[X]`` and ``X | None`` are both written ``Optional[X]``."""
    tp = _unwrap_annotated(tp)
    if tp is None or tp is NoneType:
        return "None"
    if tp is Any:
        return "Any"
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (Union, types.UnionType):
        if len(args) == 2 and NoneType in args:
            other = args[0] if args[1] is NoneType else args[1]
            return f"Optional[{type_to_str(other)}]"
        return f"Union[{', '.join(type_to_str(a) for a in args)}]"
    if origin is not None:
        base = origin.__name__ if origin in _GENERIC_CONTAINERS else type_to_str(origin)
        if not args:
            return base
        return f"{base}[{', '.join('...' if a is Ellipsis else type_to_str(a) for a in args)}]"
    return str(getattr(tp, "__name__", repr(tp)))


def is_round_trippable(tp: Any) -> bool:
    """True when ``parse_type(type_to_str(tp))`` rebuilds ``tp`` without ``custom_types``."""
    if get_origin(tp) is typing.Annotated:
        return False
    if tp is None or tp is NoneType or tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return True
    if origin is not None:
        if origin not in (*_GENERIC_CONTAINERS, Union, types.UnionType):
            return False
        return all(a is Ellipsis or is_round_trippable(a) for a in get_args(tp))
    if tp in _BUILTIN_NAMES.values():
        return True
    return isinstance(tp, type) and tp.__name__ in _ASYNCLM_NAMES and tp is _asynclm_type(tp.__name__)


def annotation_name(tp: Any) -> str:
    """The type's name as DSPy's ChatAdapter prints it in prompts (``list[str]``,
    ``Union[int, NoneType]``, ``Literal['a', 'b']``), so prompts migrate byte for byte."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is None:
        return str(getattr(tp, "__name__", tp))
    if origin is Literal:
        shown = (_quote_literal(a) if isinstance(a, str) else annotation_name(a) for a in args)
        return f"Literal[{', '.join(shown)}]"
    return f"{annotation_name(origin)}[{', '.join(annotation_name(a) for a in args)}]"


def _quote_literal(s: str) -> str:
    if "'" in s and '"' not in s:
        return f'"{s}"'
    if "'" in s:
        return "'" + s.replace("'", "\\'") + "'"
    return f"'{s}'"


def is_enum_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)
