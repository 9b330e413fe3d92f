"""``ReAct``: a tool-using agent over any signature, with DSPy's field protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from asynclm.adapters import Adapter, ChatAdapter, ParseError
from asynclm.runtime import current_settings
from asynclm.signatures import Prediction, Signature, SignatureField

from ._module import Module
from ._predict import ChainOfThought, Predict
from ._tool import Tool
from ._tool_calling import check_native_tools, run_tool

__all__ = ["ReAct"]

logger = logging.getLogger("asynclm.react")

# One step's keys in the trajectory, in order (DSPy's naming, so trajectories and demos migrate).
_STEP_KEYS = ("thought", "tool_name", "tool_args", "observation")


async def _finish(**_: Any) -> str:
    # LMs often pass their answer to finish: accept and ignore it rather than report an error
    return "Completed."


def _tool_name_type(names: Iterable[str]) -> Any:
    return Literal.__getitem__(tuple(names))  # Literal["search", ..., "finish"]


class ReAct(Module):
    """Reason and act: at each step the LM writes a thought and picks one tool with its arguments;
    the tool's result is appended to the trajectory; ``finish`` ends the loop; a last step reads
    the trajectory and produces the signature's outputs.

    The protocol is DSPy's, field for field and word for word, so prompts optimized with DSPy
    migrate: the step predictor ``react`` has the signature's inputs plus ``trajectory`` and
    outputs ``next_thought``, ``next_tool_name`` (a ``Literal`` of the tool names and
    ``"finish"``), ``next_tool_args`` (``dict[str, Any]``); the extract predictor ``extract`` is
    a ``ChainOfThought`` over the inputs plus ``trajectory`` producing the outputs.

    Args:
        signature: the task (``"question -> answer"``, a ``Signature``...).
        tools: functions, coroutine functions, callables or ``Tool`` objects (names must be
            distinct; ``finish`` is reserved).
        max_iters: the most LM turns (tool steps) before extracting the answer (per call:
            ``max_iters=``).
        native_tools: ``"auto"`` (default): use the LM's native function calling (the tools sent
            as the request's ``tools``, the calls read from its ``tool_calls``, results sent back
            as ``tool`` messages), falling back to the text protocol when the server rejects
            ``tools`` with a 400 (remembered for that LM) or the LM says ``supports_tools =
            False``; ``True``: native, no fallback; ``False``: DSPy's text protocol only.
        tool_timeout: seconds each tool call may take (``None``: no limit) for tools without a
            ``Tool(..., timeout=)`` of their own; a call that takes longer gives the observation
            ``"Execution error in <name>: TimeoutError: ..."``.

    ``await react(**inputs)`` returns a ``Prediction`` with the outputs (and the extract
    step's ``reasoning``) plus ``trajectory``: ``{"thought_0", "tool_name_0", "tool_args_0",
    "observation_0", "thought_1", ...}``. In the text protocol one tool runs per step; with
    native function calling the LM may ask for several tools in one turn: they all run at once
    (async tools as tasks, sync tools in worker threads, see ``Tool``), their results go back in
    the order the LM asked, and each call is a step of the trajectory (the turn's text is the
    first call's thought, the others' is ``""``). Many ReAct calls (``.batch``) run their tools
    concurrently too. A tool that raises gives the observation ``"Execution error in <name>:
    <ExceptionType>: <message>"`` (invalid arguments included) and the loop goes on. When the
    LM answers with a step that cannot be parsed even after the predictor's re-asks, the loop
    ends and the answer is extracted from the trajectory so far. When the prompt exceeds the
    model's context window (``asynclm.ContextWindowExceededError``), the oldest step is
    dropped from the trajectory and the call retried, until it fits or no step is left (then
    the error is raised; override ``truncate_trajectory`` to change the policy).
    """

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        tools: Iterable[Callable[..., Any] | Tool],
        max_iters: int = 20,
        native_tools: bool | str = "auto",
        *,
        tool_timeout: float | None = None,
        callbacks: Iterable[Any] | None = None,
    ) -> None:
        super().__init__(callbacks=callbacks)
        if not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"ReAct(max_iters={max_iters!r}): use an int >= 1")
        if tool_timeout is not None and (
            isinstance(tool_timeout, bool) or not isinstance(tool_timeout, int | float) or not tool_timeout > 0
        ):
            raise ValueError(f"ReAct(tool_timeout={tool_timeout!r}): use a number of seconds > 0, or None")
        self.signature = signature = Signature.ensure(signature)
        self.max_iters = max_iters
        self.native_tools = check_native_tools(native_tools, "ReAct")
        self.tool_timeout: float | None = tool_timeout

        by_name: dict[str, Tool] = {}
        for item in tools:
            tool = item if isinstance(item, Tool) else Tool(item)
            if tool.name == "finish":
                raise ValueError("ReAct: the tool name 'finish' is reserved for ending the loop; rename your tool")
            if tool.name in by_name:
                raise ValueError(
                    f"ReAct: two tools are named {tool.name!r}; give one another name with Tool(fn, name='...')"
                )
            by_name[tool.name] = tool

        inputs = ", ".join(f"`{k}`" for k in signature.input_fields)
        outputs = ", ".join(f"`{k}`" for k in signature.output_fields)
        instr = [f"{signature.instructions}\n"] if signature.instructions else []
        instr.extend(
            [
                f"You are an Agent. In each episode, you will be given the fields {inputs} as input. "
                "And you can see your past trajectory so far.",
                f"Your goal is to use one or more of the supplied tools to collect any necessary information "
                f"for producing {outputs}.\n",
                "To do this, you will interleave next_thought, next_tool_name, and next_tool_args in each turn, "
                "and also when finishing the task.",
                "After each tool call, you receive a resulting observation, which gets appended to your trajectory.\n",
                "When writing next_thought, you may reason about the current situation and plan for future steps.",
                "When selecting the next_tool_name and its next_tool_args, the tool must be one of:\n",
            ]
        )
        by_name["finish"] = Tool(
            _finish,
            name="finish",
            desc="Marks the task as complete. That is, signals that all information for producing the outputs, "
            f"i.e. {outputs}, are now available to be extracted.",
            args={},
        )
        instr.extend(f"({i + 1}) {tool}" for i, tool in enumerate(by_name.values()))
        instr.append("When providing `next_tool_args`, the value inside the field must be in JSON format")

        react_signature = Signature.from_fields(
            [
                *signature.input_fields.values(),
                SignatureField("trajectory", "input", str),
                SignatureField("next_thought", "output", str),
                SignatureField("next_tool_name", "output", _tool_name_type(by_name)),
                SignatureField("next_tool_args", "output", dict[str, Any]),
            ],
            "\n".join(instr),
        )
        # DSPy keeps the original (possibly default) instructions for the extract step.
        extract_signature = Signature.from_fields(
            [
                *signature.input_fields.values(),
                SignatureField("trajectory", "input", str),
                *signature.output_fields.values(),
            ],
            signature.instructions,
        )
        self.tools = by_name
        self.react = Predict(react_signature)
        self.extract = ChainOfThought(extract_signature)

    # -- state ----------------------------------------------------------------------------------

    def load_state(self, state: Mapping[str, Any], *, custom_types: Mapping[str, Any] | None = None) -> ReAct:
        super().load_state(state, custom_types=custom_types)
        # The saved instructions are kept (they may be optimized), but the tool names the LM may
        # pick are those of this program's tools, not of the program that was saved.
        self.react.signature = self.react.signature.with_updated_fields(
            "next_tool_name", type_=_tool_name_type(self.tools)
        )
        return self

    # -- the loop -------------------------------------------------------------------------------

    async def forward(self, **input_args: Any) -> Prediction:
        max_iters = input_args.pop("max_iters", self.max_iters)
        trajectory: dict[str, Any] = {}
        if self.native_tools is not False:
            from ._react_native import native_loop

            done = await native_loop(self, input_args, max_iters, trajectory)
            if done is not None:  # the steps (all native, or native then text after a fallback) are done
                extract = await self._call_with_truncation(self.extract, trajectory, input_args)
                return Prediction(trajectory=trajectory, **extract)
        await self._text_loop(input_args, trajectory, 0, max_iters)
        extract = await self._call_with_truncation(self.extract, trajectory, input_args)
        return Prediction(trajectory=trajectory, **extract)

    async def _text_loop(self, input_args: dict[str, Any], trajectory: dict[str, Any], start: int, iters: int) -> None:
        """DSPy's text protocol: one tool per step, steps ``start`` to ``start + iters - 1``."""
        for idx in range(start, start + iters):
            try:
                pred = await self._call_with_truncation(self.react, trajectory, input_args)
            except ParseError as err:
                logger.warning("ReAct: ending the trajectory, the LM's step could not be parsed: %s", err)
                break
            name = pred.next_tool_name
            args = pred.next_tool_args
            trajectory[f"thought_{idx}"] = pred.next_thought
            trajectory[f"tool_name_{idx}"] = name
            trajectory[f"tool_args_{idx}"] = args
            trajectory[f"observation_{idx}"] = await self._run_tool(name, args)
            if name == "finish":
                break

    async def _run_tool(self, name: str, args: Any) -> Any:
        if not isinstance(args, Mapping):
            return (
                f"Execution error in {name}: TypeError: next_tool_args must be a JSON object, got {type(args).__name__}"
            )
        return await run_tool(self.tools, name, args, self.tool_timeout)

    async def _call_with_truncation(
        self, module: Predict, trajectory: dict[str, Any], input_args: Mapping[str, Any]
    ) -> Prediction:
        from asynclm.lm import ContextWindowExceededError

        while True:
            try:
                result: Prediction = await module(**input_args, trajectory=self._format_trajectory(trajectory))
                return result
            except ContextWindowExceededError:
                if not trajectory:
                    raise
                logger.warning("ReAct: the trajectory exceeded the context window; dropping its oldest step")
                before = len(trajectory)
                trimmed = self.truncate_trajectory(trajectory)
                if trimmed is not trajectory:  # an override may return a new dict: keep the caller's object
                    trajectory.clear()
                    trajectory.update(trimmed)
                if len(trajectory) >= before:
                    raise RuntimeError(
                        f"{type(self).__name__}.truncate_trajectory() removed nothing from the trajectory; "
                        "it must drop at least one entry"
                    ) from None

    def truncate_trajectory(self, trajectory: dict[str, Any]) -> dict[str, Any]:
        """Drop the oldest step (its thought, tool name, tool args and observation) in place.

        Called when the prompt exceeds the context window; override it for another policy (it
        must remove something from a non-empty ``trajectory``)."""
        keys = list(trajectory)
        step = keys[0].rsplit("_", 1)[-1]
        for key in keys:
            if key.rsplit("_", 1)[-1] == step:
                del trajectory[key]
        return trajectory

    def _format_trajectory(self, trajectory: Mapping[str, Any]) -> str:
        adapter: Adapter = self.react.adapter or current_settings().adapter or ChatAdapter()
        fields = [SignatureField(key, "input", str) for key in trajectory]
        signature = Signature.from_fields([*fields, SignatureField("x", "output", str)])
        return adapter.format_user_message_content(signature, trajectory)
