"""Native function calling, the I/O part: asking an LM with ``tools``, falling back to the text
protocol when the server does not support them, and running a turn's tool calls concurrently.

Whether an LM supports ``tools`` is learned: an LM object whose server answered a request that
carried ``tools`` with a 400 naming them is asked in text from then on (for the rest of the
process). An LM may also say so up front with a ``supports_tools = False`` attribute
(``ScriptedLM`` does: it answers text only).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from asynclm.adapters import ParseError
from asynclm.adapters._native_tools import native_tool_plan, tool_calls_value
from asynclm.adapters._values import to_jsonable
from asynclm.lm import BadRequestError, ContextWindowExceededError
from asynclm.signatures import Prediction

from ._callbacks import handlers_for, observe
from ._trace import record

if TYPE_CHECKING:
    from ._predict import Predict, _PredictCall
    from ._tool import Tool

__all__ = [
    "check_native_tools",
    "native_supported",
    "observation_text",
    "parse_call",
    "predict_native",
    "remember_unsupported",
    "run_tool_calls",
    "tools_rejected",
]

logger = logging.getLogger("asynclm.tools")

_UNSUPPORTED: weakref.WeakSet[Any] = weakref.WeakSet()
_LOCK = threading.Lock()
# "tools", "tool_choice"/"tool choice", "tool calling"/"tool use", "function calling" — not
# "tool_call_id" (a message the server could not match is not a server without tools)
_NAMES_TOOLS = re.compile(r"\btools\b|tool[ _]choice|\btool[ _-]?(?:calling|use)\b|function[ _-]?call", re.IGNORECASE)


def check_native_tools(value: Any, where: str) -> bool | str:
    if value not in ("auto", True, False):
        raise ValueError(f"{where}(native_tools={value!r}): use 'auto' (try, fall back to text), True or False")
    return value  # type: ignore[no-any-return]


def native_supported(lm: Any) -> bool:
    """Whether ``lm`` may be asked with ``tools`` (not known to reject them)."""
    if getattr(lm, "supports_tools", None) is False:
        return False
    try:
        return lm not in _UNSUPPORTED
    except TypeError:  # not weak-referenceable / hashable: assume it may
        return True


def remember_unsupported(lm: Any, error: BaseException) -> None:
    """Ask ``lm`` in text from now on (its server rejected ``tools``)."""
    with _LOCK:
        try:
            known = lm in _UNSUPPORTED
            _UNSUPPORTED.add(lm)
        except TypeError:
            known = False
    if not known:
        logger.warning("%r does not support native tool calling (%s); using the text protocol instead", lm, error)


def tools_rejected(error: BaseException) -> bool:
    """Whether ``error`` is a server's 400 that names tools (``tools``, ``tool_choice``, function
    calling): a server without function calling, so the call is asked again in text."""
    return (
        isinstance(error, BadRequestError)
        and not isinstance(error, ContextWindowExceededError)
        and _NAMES_TOOLS.search(str(error)) is not None
    )


def observation_text(value: Any) -> str:
    """A tool's result as the text of a ``tool`` message."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(to_jsonable(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def parse_call(call: Mapping[str, Any]) -> tuple[str, str, Any]:
    """``(id, name, args)`` of an OpenAI-shaped tool call; ``args`` is a dict, or the
    ``ValueError`` saying why the arguments are not a JSON object."""
    function = call.get("function") or {}
    name = str(function.get("name") or call.get("name") or "")
    raw = function.get("arguments", call.get("args", {}))
    args: Any = raw
    if isinstance(raw, str):
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            args = ValueError(f"the arguments are not valid JSON: {raw[:200]!r}")
    if not isinstance(args, dict | ValueError):
        args = ValueError(f"the arguments must be a JSON object, got {type(args).__name__}")
    return str(call.get("id") or ""), name, args


async def run_tool_calls(
    tools: Mapping[str, Tool], calls: Sequence[tuple[str, Any]], timeout: float | None
) -> list[Any]:
    """Run ``calls`` (``(name, args)`` pairs) concurrently, each with its timeout (the tool's own,
    else ``timeout``); return each result, or its error as an observation string, in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int, name: str, args: Any) -> None:
        results[i] = await run_tool(tools, name, args, timeout)

    if len(calls) == 1:
        await one(0, *calls[0])
        return results
    async with anyio.create_task_group() as tg:
        for i, (name, args) in enumerate(calls):
            tg.start_soon(one, i, name, args)
    return results


async def run_tool(tools: Mapping[str, Tool], name: str, args: Any, timeout: float | None) -> Any:
    """The result of one tool call, or ``"Execution error in <name>: <Type>: <message>"``."""
    try:
        if isinstance(args, Exception):
            raise args
        tool = tools.get(name)
        if tool is None:
            raise KeyError(f"no tool named {name!r}; the tools are {list(tools)}")
        if not isinstance(args, Mapping):
            raise TypeError(f"the tool arguments must be a JSON object, got {type(args).__name__}")
        return await tool._call(dict(args), tool.timeout if tool.timeout is not None else timeout)
    except Exception as err:  # the LM reads what went wrong and may try again
        return f"Execution error in {name}: {type(err).__name__}: {err}"


# -- Predict with a ToolCalls output ----------------------------------------------------------------


async def _ask_response(predictor: Predict, call: _PredictCall, messages: list[dict[str, Any]]) -> Any:
    lm = call.lm
    request = dict(call.params)
    inputs = {"messages": messages, **request} if handlers_for(lm) else {}
    async with observe("lm", lm, inputs) as out:
        response = await lm(messages=messages, **request)
        out.value = list(response.texts)
    return response


def _choice_tool_calls(response: Any, index: int) -> list[dict[str, Any]]:
    if index == 0:
        return list(response.tool_calls)
    try:
        calls = response.raw["choices"][index]["message"].get("tool_calls")
    except (KeyError, IndexError, TypeError, AttributeError):
        return []
    return calls if isinstance(calls, list) else []


async def predict_native(predictor: Predict, call: _PredictCall) -> Prediction | None:
    """``Predict``'s call for a signature with a ``ToolCalls`` output, asked natively; ``None``
    when it is to be asked in text instead (native tools off or unsupported, no tools given)."""
    from ._predict import _PredictCall

    plan = native_tool_plan(call.signature, call.inputs)
    mode = predictor.native_tools
    if plan is None or mode is False or (mode == "auto" and not native_supported(call.lm)):
        return None
    adapter = call.adapter
    params = {k: v for k, v in call.params.items() if k != "tools"}
    params["tools"] = plan.tools
    if plan.signature.output_fields and "response_format" not in params:
        response_format = adapter.response_format(plan.signature)
        if response_format is not None:
            params["response_format"] = response_format
    native = _PredictCall(call.lm, adapter, plan.signature, call.demos, plan.inputs, params, call.retries)
    messages = adapter.format(plan.signature, call.demos, plan.inputs)
    try:
        response = await _ask_response(predictor, native, messages)
    except BadRequestError as exc:
        if mode == "auto" and tools_rejected(exc):
            remember_unsupported(call.lm, exc)
            return None
        raise
    completions: list[dict[str, Any]] = []
    for i, text in enumerate(response.texts):
        calls = _choice_tool_calls(response, i)
        values: dict[str, Any]
        if calls:
            try:
                has_text = bool(text.strip()) and bool(plan.signature.output_fields)
                values = await predictor._parse(adapter, plan.signature, text) if has_text else {}
            except ParseError:
                values = {}
        else:
            values = await predictor._parse_or_reask(native, messages, text)
        values[plan.calls_field] = tool_calls_value(calls)
        completions.append({name: values.get(name) for name in call.signature.output_fields})
    prediction = Prediction.from_completions(completions)
    record(predictor, call.inputs, prediction)
    return prediction
