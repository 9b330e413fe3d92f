"""Field values to prompt text and back, shared by the adapters.

Rendering follows DSPy (strings as-is, lists/dicts/models as JSON, other scalars with ``str``) so
prompts migrate. Where DSPy's rendering would not read back to the same value (a string with
surrounding whitespace or a line that looks like a ``[[ ## field ## ]]`` marker, the string
``"None"`` in an ``Optional[str]`` field, …) the value is written as a JSON string literal instead,
and ``parse_text`` decodes a field whose whole text is one JSON string literal.
"""

from __future__ import annotations

import ast
import enum
import json
import re
import warnings
from typing import Any

import pydantic
from pydantic_core import to_jsonable_python

from asynclm.signatures import SignatureField
from asynclm.signatures._media_state import MEDIA_CLASSES

from ._media import as_media, media_text

# A line that ChatAdapter.parse would take as a field marker (DSPy: the stripped line starts with it).
HEADER_LINE = re.compile(r"^[^\S\n]*\[\[ ## (\w+) ## \]\]", re.MULTILINE)
_FENCE = re.compile(r"\A```[\w+-]*[^\S\n]*\n?(.*?)\n?[^\S\n]*```\Z", re.DOTALL)
_LITERAL_EVAL_LIMIT = 100_000
_SIMPLE_SCALARS = (int, float, bool)
_SEQUENCES = (list, tuple)
_PY_CONSTANTS: dict[str, Any] = {"True": True, "False": False, "None": None}


def to_jsonable(value: Any) -> Any:
    """JSON-compatible data for any value pydantic understands; ``str(value)`` otherwise."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return to_jsonable_python(value, fallback=str)


def dumps_container(value: list[Any] | dict[Any, Any]) -> str:
    """JSON text of a list or dict (DSPy's ``json.dumps(..., ensure_ascii=False)``); plain data
    takes the C encoder directly, anything else (models, dates, …) goes through pydantic first."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(to_jsonable(value), ensure_ascii=False)


def _format_blob(blob: str) -> str:
    if "\n" not in blob and "«" not in blob and "»" not in blob:
        return f"«{blob}»"
    modified = blob.replace("\n", "\n    ")
    return f"«««\n    {modified}\n»»»"


def format_input_value(field: SignatureField, value: Any) -> str:
    """An input value as prompt text (DSPy's ``format_field_value``): a list given to a ``str``
    field becomes a numbered «list»; lists, dicts and models become JSON; scalars use ``str``.
    Media values (and lists of them) become placeholders that ``Adapter.format`` turns into
    content parts."""
    if field.has_media and value is not None:
        # a URL, a data URI or a saved dict given to a media field (demos read from JSON, say)
        value = as_media(field, value)
    if isinstance(value, str):
        return value
    if type(value) in MEDIA_CLASSES or (type(value) in _SEQUENCES and value and type(value[0]) in MEDIA_CLASSES):
        return media_text(field, value)
    if isinstance(value, list) and field.annotation is str:
        if not value:
            return "N/A"
        if len(value) == 1:
            return _format_blob(str(value[0]))
        return "\n".join(f"[{i + 1}] {_format_blob(str(v))}" for i, v in enumerate(value))
    if isinstance(value, list | dict):
        return dumps_container(value)
    jsonable = to_jsonable(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


def _is_json_string_literal(text: str) -> bool:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return False
    try:
        return isinstance(json.loads(text), str)
    except ValueError:
        return False


def is_raw_safe(text: str) -> bool:
    """True when ``text`` written raw after a marker reads back unchanged as a ``str`` field."""
    return text == text.strip() and HEADER_LINE.search(text) is None and not _is_json_string_literal(text)


def format_output_value(field: SignatureField, value: Any) -> str:
    """An output value as the text that ``parse_text`` reads back to an equal value."""
    if field.annotation is str and isinstance(value, str):
        return value if is_raw_safe(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and field.annotation is str:
        return format_input_value(field, value)
    if isinstance(value, list | dict):
        return dumps_container(value)
    jsonable = to_jsonable(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    text = str(jsonable)
    if field.annotation in _SIMPLE_SCALARS and type(value) is field.annotation:
        return text
    # Enums, literals, dates, unions with str, Any, ...: keep DSPy's plain rendering only when it
    # provably reads back to the same value.
    if is_raw_safe(text):
        try:
            if parse_text(field, text) == value:
                return text
        except (ValueError, pydantic.ValidationError):
            pass
    return json.dumps(jsonable, ensure_ascii=False)


def strip_fence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _candidates(text: str) -> list[Any]:
    """Python values ``text`` may denote, most specific first; the raw text is always last."""
    out: list[Any] = []
    try:
        out.append(json.loads(text))
    except ValueError:
        if text in _PY_CONSTANTS:
            out.append(_PY_CONSTANTS[text])
        elif text[:1] in "[({'" and len(text) <= _LITERAL_EVAL_LIMIT:
            # Python reprs an LM may write when told "a valid Python list[str]": ['a', 'b'].
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SyntaxWarning)  # e.g. "invalid decimal literal"
                    out.append(ast.literal_eval(text))
            except Exception:  # literal_eval raises many types (SyntaxError, ValueError, RecursionError…)
                pass
        if not out and text[:1] in "[{":
            import json_repair

            repaired = json_repair.loads(text)
            if repaired != "":
                out.append(repaired)
    out.append(text)
    return out


def parse_text(field: SignatureField, text: str) -> Any:
    """Turn one field's text into a value of the field's type (constraints enforced).

    ``str`` fields take the text as-is (stripped), or decoded when it is exactly one JSON string
    literal. Other types try, in order: JSON, a Python literal, repaired JSON (for text that opens
    with ``[`` or ``{``), then the raw text, validating each with pydantic (lax mode, so ``"5"``
    is accepted for an ``int``); enums also accept a member's name. Raises ``ValueError`` (a
    ``pydantic.ValidationError`` for type and constraint failures).
    """
    text = text.strip()
    annotation = field.annotation
    if annotation is str:
        if text[:1] == '"' and _is_json_string_literal(text):
            text = json.loads(text)
        if field.constraints:
            return field.type_adapter.validate_python(text)
        return text
    body = strip_fence(text)
    adapter = field.type_adapter
    first_error: pydantic.ValidationError | None = None
    for candidate in _candidates(body):
        try:
            return adapter.validate_python(candidate)
        except pydantic.ValidationError as exc:
            first_error = first_error or exc
    if _is_enum(annotation):
        member = _enum_by_name(annotation, body)
        if member is not None:
            return member
    assert first_error is not None
    raise first_error


def _enum_by_name(cls: type[enum.Enum], text: str) -> enum.Enum | None:
    name = text.strip().strip("'\"")
    if name.startswith(cls.__name__ + "."):
        name = name[len(cls.__name__) + 1 :]
    return cls.__members__.get(name)


def validate_json_value(field: SignatureField, value: Any) -> Any:
    """A value taken from a JSON object (JSONAdapter) converted to the field's type."""
    if field.annotation is str and not field.constraints:
        if isinstance(value, str):
            return value
        if value is None:
            raise ValueError("expected a string, got null")
        return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    try:
        return field.type_adapter.validate_python(value)
    except pydantic.ValidationError:
        if isinstance(value, str):
            # The LM wrote the value as a string ("5", "[1, 2]", an enum name): read it as text.
            return parse_text(field, value)
        raise


def describe_error(exc: Exception) -> str:
    """A short, LM-readable reason for a validation failure."""
    if isinstance(exc, pydantic.ValidationError):
        parts = []
        for err in exc.errors(include_url=False)[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc + ': ' if loc else ''}{err.get('msg')}")
        return "; ".join(parts)
    return str(exc)


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)
