"""``ReAct``'s loop over the LM's native function calling.

Each turn sends the conversation so far (a system message with the task, the user message with
the inputs, then for each earlier turn the assistant's ``tool_calls`` and one ``tool`` message per
call with its ``tool_call_id``) with every tool (``finish`` included) as the request's ``tools``.
All the calls of a turn run at once; their results go back in the order the LM asked. The
trajectory keeps DSPy's keys, one step per call; the conversation is rebuilt from it at each turn,
so truncating the trajectory (on a context-window overflow) truncates the conversation too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from asynclm.adapters import Adapter
from asynclm.lm import BadRequestError, ContextWindowExceededError
from asynclm.signatures import Signature, SignatureField

from ._callbacks import handlers_for, observe
from ._tool_calling import (
    logger,
    native_supported,
    observation_text,
    parse_call,
    remember_unsupported,
    run_tool_calls,
    tools_rejected,
)

if TYPE_CHECKING:
    from ._react import ReAct

__all__ = ["native_instructions", "native_loop"]


def native_instructions(react: ReAct) -> str:
    """The system message of native turns: the task's instructions and how to use the tools."""
    signature = react.signature
    inputs = ", ".join(f"`{k}`" for k in signature.input_fields)
    outputs = ", ".join(f"`{k}`" for k in signature.output_fields)
    lines = [f"{signature.instructions}\n"] if signature.instructions else []
    lines.extend(
        [
            f"You are an Agent. In each episode, you will be given the fields {inputs} as input.",
            f"Your goal is to use one or more of the supplied tools to collect any necessary information "
            f"for producing {outputs}.",
            "Call the tools with function calls. When several calls do not depend on each other's results, "
            "make them together in one turn: they run at the same time. Each result comes back in a tool message.",
            f"When all the information for producing {outputs} is available, call `finish`.",
        ]
    )
    return "\n".join(lines)


class _Turns:
    """What the trajectory does not keep: each step's turn and call id, each turn's text."""

    __slots__ = ("ids", "texts", "turn_of")

    def __init__(self) -> None:
        self.turn_of: dict[int, int] = {}
        self.ids: dict[int, str] = {}
        self.texts: dict[int, str] = {}


def _steps(trajectory: Mapping[str, Any]) -> list[int]:
    seen: dict[int, None] = {}
    for key in trajectory:
        suffix = key.rsplit("_", 1)[-1]
        if suffix.isdigit():
            seen[int(suffix)] = None
    return list(seen)


def _conversation(base: list[dict[str, Any]], trajectory: Mapping[str, Any], turns: _Turns) -> list[dict[str, Any]]:
    messages = list(base)
    groups: dict[int, list[int]] = {}
    for step in _steps(trajectory):
        if step in turns.turn_of and f"tool_name_{step}" in trajectory:
            groups.setdefault(turns.turn_of[step], []).append(step)
    for turn, steps in groups.items():
        calls = [
            {
                "id": turns.ids[step],
                "type": "function",
                "function": {
                    "name": trajectory[f"tool_name_{step}"],
                    "arguments": json.dumps(trajectory.get(f"tool_args_{step}") or {}, ensure_ascii=False),
                },
            }
            for step in steps
        ]
        messages.append({"role": "assistant", "content": turns.texts.get(turn) or None, "tool_calls": calls})
        for step in steps:
            content = observation_text(trajectory.get(f"observation_{step}", ""))
            messages.append({"role": "tool", "tool_call_id": turns.ids[step], "content": content})
    return messages


async def _ask(react: ReAct, call: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    lm = call.lm
    inputs = {"messages": messages, **params} if handlers_for(lm) else {}
    async with observe("lm", lm, inputs) as out:
        response = await lm(messages=messages, **params)
        out.value = list(response.texts)
    return response


async def _ask_with_truncation(
    react: ReAct, call: Any, base: list[dict[str, Any]], trajectory: dict[str, Any], turns: _Turns, params: Any
) -> Any:
    while True:
        try:
            return await _ask(react, call, _conversation(base, trajectory, turns), params)
        except ContextWindowExceededError:
            if not trajectory:
                raise
            logger.warning("ReAct: the conversation exceeded the context window; dropping its oldest step")
            before = len(trajectory)
            trimmed = react.truncate_trajectory(trajectory)
            if trimmed is not trajectory:
                trajectory.clear()
                trajectory.update(trimmed)
            if len(trajectory) >= before:
                raise RuntimeError(
                    f"{type(react).__name__}.truncate_trajectory() removed nothing from the trajectory; "
                    "it must drop at least one entry"
                ) from None


async def native_loop(
    react: ReAct, input_args: dict[str, Any], max_iters: int, trajectory: dict[str, Any]
) -> bool | None:
    """Run the tool turns natively, filling ``trajectory``; ``None`` (nothing done) when the LM is
    to be asked in the text protocol instead. After a fallback mid-way, the remaining turns run
    in the text protocol from where the trajectory is."""
    call = react.react._prepare((), {**input_args, "trajectory": ""})
    mode = react.native_tools
    if mode == "auto" and not native_supported(call.lm):
        return None
    adapter: Adapter = call.adapter
    # only its inputs are rendered (format_user_message_content without the output requirements)
    inputs_signature = react.signature.memo(
        "react-native-inputs",
        lambda: Signature.from_fields([*react.signature.input_fields.values(), SignatureField("x", "output", str)]),
    )
    inputs = {k: call.inputs[k] for k in react.signature.input_fields if k in call.inputs}
    base = [
        {"role": "system", "content": native_instructions(react)},
        {"role": "user", "content": adapter.format_user_message_content(inputs_signature, inputs)},
    ]
    params = {k: v for k, v in call.params.items() if k not in ("n", "response_format")}
    params["tools"] = [tool.function_schema() for tool in react.tools.values()]
    turns = _Turns()
    step = 0
    for turn in range(max_iters):
        try:
            response = await _ask_with_truncation(react, call, base, trajectory, turns, params)
        except BadRequestError as exc:
            if mode == "auto" and tools_rejected(exc):
                remember_unsupported(call.lm, exc)
                if not trajectory:
                    return None
                await react._text_loop(input_args, trajectory, step, max_iters - turn)
                return True
            raise
        text = (response.text or "").strip()
        calls = [parse_call(c) for c in response.tool_calls]
        if not calls:  # an answer without tool calls: the LM is done
            trajectory[f"thought_{step}"] = text
            trajectory[f"tool_name_{step}"] = "finish"
            trajectory[f"tool_args_{step}"] = {}
            trajectory[f"observation_{step}"] = "Completed."
            break
        observations = await run_tool_calls(react.tools, [(name, args) for _, name, args in calls], react.tool_timeout)
        turns.texts[turn] = text
        finished = False
        for j, ((call_id, name, args), observation) in enumerate(zip(calls, observations, strict=True)):
            trajectory[f"thought_{step}"] = text if j == 0 else ""
            trajectory[f"tool_name_{step}"] = name
            trajectory[f"tool_args_{step}"] = args if isinstance(args, dict) else {}
            trajectory[f"observation_{step}"] = observation
            turns.turn_of[step] = turn
            turns.ids[step] = call_id or f"call_{turn}_{j}"
            finished = finished or name == "finish"
            step += 1
        if finished:
            break
    return True
