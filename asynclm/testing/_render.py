"""Output-field values rendered as an adapter expects to read them, and a request's input fields
read back from its prompt: what lets ``ScriptedLM`` and ``FakeOpenAIServer`` answer "in format".
Plain data and text only (the fake server's child process imports this)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["input_fields", "render_chat", "render_json"]

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]\n")


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    iso = getattr(value, "isoformat", None)
    if callable(iso):
        return iso()
    enum_value = getattr(value, "value", None)
    if enum_value is not None and type(value).__module__ != "builtins":
        return enum_value
    return value


def render_chat(outputs: Mapping[str, Any]) -> str:
    """Output values in the ChatAdapter's format: ``[[ ## name ## ]]`` sections, then completed."""
    parts = [f"[[ ## {name} ## ]]\n{_value_text(value)}" for name, value in outputs.items()]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


def render_json(outputs: Mapping[str, Any]) -> str:
    """Output values as the JSON object the JSONAdapter reads."""
    return json.dumps(_jsonable(dict(outputs)), ensure_ascii=False)


def input_fields(messages: Sequence[Any]) -> dict[str, str]:
    """The input fields of a request made by ChatAdapter or JSONAdapter: the ``[[ ## name ## ]]``
    sections of its last user message, each value as the text the adapter rendered (a non-string
    value is its JSON text)."""
    text = ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            break
    parts = _MARKER.split(text)
    fields: dict[str, str] = {}
    for i in range(1, len(parts) - 1, 2):
        value = parts[i + 1]
        if i + 2 >= len(parts):  # the last section ends with the adapter's closing request
            head, sep, _ = value.rpartition("\n\nRespond with ")
            if sep:
                value = head
        fields[parts[i]] = value.rstrip("\n")
    return fields
