"""``ToolCalls``: the tool calls an LM asked for, as an output-field type (DSPy 3's ``dspy.ToolCalls``)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pydantic

__all__ = ["ToolCall", "ToolCalls"]


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            import json_repair

            value = json_repair.loads(value)
    return dict(value) if isinstance(value, dict) else {}


def _normalize(item: Any) -> dict[str, Any]:
    """``{"id", "name", "args"}`` from asynclm's / DSPy's ``{"name", "args"}`` or a provider's
    ``{"id", "type": "function", "function": {"name", "arguments": "<json>"}}``."""
    if not isinstance(item, dict):
        raise ValueError(f"a tool call must be a dict with 'name' and 'args', got {item!r:.100}")
    if "function" in item:
        function = item.get("function") or {}
        if not isinstance(function, dict):
            raise ValueError(f"a tool call's 'function' must be an object, got {function!r:.100}")
        name, arguments = function.get("name") or item.get("name"), function.get("arguments", {})
    else:
        name, arguments = item.get("name"), item.get("args", item.get("arguments", {}))
    return {"id": item.get("id") or item.get("call_id"), "name": name, "args": _arguments(arguments)}


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and (
        ("name" in item and ("args" in item or "arguments" in item)) or "function" in item
    )


class ToolCall(pydantic.BaseModel):
    """One tool call: the tool's ``name``, its ``args`` (a dict) and the provider's call ``id``
    (``None`` when the calls were read from text)."""

    model_config = pydantic.ConfigDict(frozen=True)

    name: str
    args: dict[str, Any] = pydantic.Field(default_factory=dict, json_schema_extra={"additionalProperties": True})
    id: str | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _accept_provider_shape(cls, data: Any) -> Any:
        return _normalize(data) if isinstance(data, dict) and ("function" in data or "arguments" in data) else data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # the schema an LM reads (text protocol): name and args; the id is the provider's business
        schema: dict[str, Any] = handler.resolve_ref_schema(handler(core_schema))
        properties = schema.get("properties")
        if isinstance(properties, dict):
            properties.pop("id", None)
        schema.pop("description", None)  # the docstring is for people
        return schema

    def format(self) -> dict[str, Any]:
        """``{"name": ..., "args": ...}`` (DSPy's shape)."""
        return {"name": self.name, "args": dict(self.args)}

    def to_openai(self, default_id: str | None = None) -> dict[str, Any]:
        """The call in OpenAI's ``tool_calls`` shape (``arguments`` as a JSON string)."""
        return {
            "id": self.id or default_id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.args, ensure_ascii=False)},
        }


_ToolCall = ToolCall


class ToolCalls(pydantic.BaseModel):
    """The tool calls an LM asked for: an output-field type (DSPy 3's ``dspy.ToolCalls``).

    A signature with an input field of type ``list[asynclm.Tool]`` and an output field of type
    ``ToolCalls`` makes ``Predict`` send the tools as the request's ``tools`` parameter (native
    function calling) and fill the output with the calls in the response; with a server that does
    not support function calling, the tools are described in the prompt and the calls are read
    from the text instead. ``tool_calls`` is the list of ``ToolCall`` (``name``, ``args``, ``id``).

    Built from a list of ``{"name", "args"}`` dicts (``ToolCalls.from_dict_list``, or
    validation of such a list, a single dict, or ``{"tool_calls": [...]}``); provider-shaped calls
    (``{"id", "type": "function", "function": {"name", "arguments": "<json>"}}``) are accepted too.
    """

    model_config = pydantic.ConfigDict(frozen=True)

    ToolCall: ClassVar[type[ToolCall]] = ToolCall  # DSPy's spelling: ToolCalls.ToolCall

    tool_calls: list[_ToolCall]

    @pydantic.model_validator(mode="before")
    @classmethod
    def _accept_lists(cls, data: Any) -> Any:
        if isinstance(data, cls):
            return data
        if isinstance(data, list):
            return {"tool_calls": [_normalize(item) if isinstance(item, dict) else item for item in data]}
        if isinstance(data, dict):
            if "tool_calls" in data:
                calls = data["tool_calls"]
                if isinstance(calls, list):
                    return {"tool_calls": [_normalize(item) if isinstance(item, dict) else item for item in calls]}
                return data
            if _is_call(data):
                return {"tool_calls": [_normalize(data)]}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler.resolve_ref_schema(handler(core_schema))
        schema.pop("description", None)  # the docstring is for people; the prompt shows the schema
        return schema

    @classmethod
    def from_dict_list(cls, tool_calls: list[dict[str, Any]]) -> ToolCalls:
        """``ToolCalls`` from ``[{"name": "search", "args": {"query": "cats"}}, ...]`` (or
        provider-shaped calls)."""
        return cls(tool_calls=[ToolCall(**_normalize(item)) for item in tool_calls])

    @classmethod
    def description(cls) -> str:
        return (
            "Tool calls must be a JSON object with `tool_calls`, a list of calls. "
            "Each call must include `name` and `args`. "
            'Example: {"tool_calls": [{"name": "search", "args": {"query": "cats"}}]}'
        )

    def format(self) -> dict[str, Any]:
        """``{"tool_calls": [{"name": ..., "args": ...}, ...]}`` (DSPy's shape)."""
        return {"tool_calls": [call.format() for call in self.tool_calls]}

    def to_openai(self) -> list[dict[str, Any]]:
        """The calls in OpenAI's ``tool_calls`` shape (ids ``call_0``, ``call_1``... where none)."""
        return [call.to_openai(f"call_{i}") for i, call in enumerate(self.tool_calls)]

    @pydantic.model_serializer(mode="plain")
    def _serialize(self) -> dict[str, Any]:
        return self.format()

    def __len__(self) -> int:
        return len(self.tool_calls)
