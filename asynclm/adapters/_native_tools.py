"""Native function calling, the sans-I/O part: which fields of a signature hold the tools and the
tool calls, the ``tools`` request parameter, and the calls of a response as a ``ToolCalls`` value.

A signature with an input field of type ``list[Tool]`` (any class with a ``function_schema()``
method, such as ``asynclm.Tool``) and an output field of type ``ToolCalls`` is asked natively:
both fields leave the prompt, the tools go in the request's ``tools`` parameter (OpenAI's
function-calling format), and the response's ``tool_calls`` fill the ``ToolCalls`` field. The
I/O (the LM call, the fallback to the text protocol) is ``Predict``'s.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

from asynclm.signatures import Signature, ToolCalls

__all__ = ["NativeToolPlan", "native_tool_plan", "tool_calls_value", "tool_fields", "tool_specs"]


def _is_tool_class(tp: Any) -> bool:
    return isinstance(tp, type) and callable(getattr(tp, "function_schema", None))


def _is_tools_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, Sequence, tuple):
        args = typing.get_args(tp)
        return bool(args) and _is_tool_class(args[0])
    return _is_tool_class(tp)


def _is_tool_calls_type(tp: Any) -> bool:
    if tp is ToolCalls:
        return True
    return typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and any(
        a is ToolCalls for a in typing.get_args(tp)
    )


def tool_fields(signature: Signature) -> tuple[str | None, str | None]:
    """``(tools input field, ToolCalls output field)`` of ``signature`` (``None`` where absent)."""

    def find() -> tuple[str | None, str | None]:
        tools = next((n for n, f in signature.input_fields.items() if _is_tools_type(f.annotation)), None)
        calls = next((n for n, f in signature.output_fields.items() if _is_tool_calls_type(f.annotation)), None)
        return tools, calls

    result: tuple[str | None, str | None] = signature.memo("native-tool-fields", find)
    return result


def tool_specs(tools: Any) -> list[dict[str, Any]]:
    """The OpenAI ``tools`` parameter for a list of tools: each tool's ``function_schema()``; a
    dict is taken as an OpenAI tool spec already."""
    items = tools if isinstance(tools, list | tuple) else [tools]
    specs: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping):
            specs.append(dict(item))
        elif callable(getattr(item, "function_schema", None)):
            specs.append(item.function_schema())
        else:
            raise TypeError(
                f"a tools input must hold asynclm.Tool objects (or OpenAI tool dicts), got {type(item).__name__}; "
                "wrap functions with asynclm.Tool(fn)"
            )
    return specs


class NativeToolPlan:
    """How one call is asked natively: the ``signature`` and ``inputs`` rendered (without the
    tools and the tool calls), the ``tools`` request parameter, and the two field names."""

    __slots__ = ("calls_field", "inputs", "signature", "tools", "tools_field")

    def __init__(
        self,
        signature: Signature,
        inputs: dict[str, Any],
        tools: list[dict[str, Any]],
        tools_field: str,
        calls_field: str,
    ) -> None:
        self.signature = signature
        self.inputs = inputs
        self.tools = tools
        self.tools_field = tools_field
        self.calls_field = calls_field


def native_tool_plan(signature: Signature, inputs: Mapping[str, Any]) -> NativeToolPlan | None:
    """The plan for asking ``signature`` natively, or ``None`` when it has no ``ToolCalls`` output
    or no tools are given (then it is asked in text). Raises ``ValueError`` for a ``ToolCalls``
    output without a tools input."""
    tools_field, calls_field = tool_fields(signature)
    if calls_field is None:
        return None
    if tools_field is None:
        raise ValueError(
            f"the signature {signature.signature!r} has a ToolCalls output ({calls_field!r}) but no tools input: "
            "add an input field of type list[asynclm.Tool] holding the tools the LM may call"
        )
    tools = inputs.get(tools_field)
    if not tools:
        return None
    specs = tool_specs(tools)
    rendered = signature.memo(
        ("native-tool-signature", tools_field, calls_field), lambda: signature.delete(tools_field).delete(calls_field)
    )
    rest = {k: v for k, v in inputs.items() if k != tools_field}
    return NativeToolPlan(rendered, rest, specs, tools_field, calls_field)


def tool_calls_value(calls: Sequence[Mapping[str, Any]]) -> ToolCalls | None:
    """A response's ``tool_calls`` (OpenAI's shape) as ``ToolCalls`` (``None`` when empty)."""
    if not calls:
        return None
    return ToolCalls.from_dict_list([dict(c) for c in calls])
