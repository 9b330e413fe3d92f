"""The reflection step: show the reflection LM a predictor's instruction and what it did on a
minibatch (inputs, outputs, feedback), and read back the new instruction it proposes.

An LM is asked through a ``Predict`` with the ``ProposeInstruction`` signature and the
``JSONAdapter`` (as DSPy 3.4 does): inputs ``current_instruction`` and
``examples_with_feedback`` (the records as a JSON list), output ``new_instruction``. A plain
function ``prompt -> text`` gets one text prompt instead (the ``gepa`` package's convention): the
current instruction in a fenced block, each example as markdown (``# Example n``, ``## Inputs``,
``## Generated Outputs``, ``## Feedback``), and the answer expected in a fenced block. Both ask
the same thing: infer the task, write down every niche or domain fact the feedback reveals, keep
any strategy that worked."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from asynclm.adapters import JSONAdapter
from asynclm.modules import Predict, trace_scope
from asynclm.runtime import asyncify, is_async_callable
from asynclm.signatures import InputField, OutputField, Signature

__all__ = ["ProposeInstruction", "extract_instruction", "propose_instruction", "reflect", "render_prompt"]


class ProposeInstruction(Signature):
    """An assistant was given instructions for a task I need done. Below are those instructions, some of the task inputs it received, what it answered to each, and feedback on how each answer could have been better.

    Write new instructions for the assistant.

    Study the inputs to work out their format and what the task really asks for, and describe the task in detail.

    Study every answer together with its feedback. Write into the instructions all the specific facts, conventions and domain knowledge the feedback reveals: the assistant will not see this feedback again, so whatever it teaches must be in the instructions. If the assistant used a strategy that works in general, describe that strategy too."""  # noqa: E501

    current_instruction: str = InputField(desc="The instructions the assistant was given.")
    examples_with_feedback: list[dict[str, Any]] = InputField(
        desc="Task inputs the assistant received, its answer to each, and feedback on how the answer could be better."
    )
    new_instruction: str = OutputField(desc="The new instructions for the assistant.")


_PROMPT = "\n".join(
    [
        "An assistant was given these instructions for a task I need done:",
        "```",
        "{instruction}",
        "```",
        "",
        "Below are some of the task inputs it received, what it answered to each, and feedback on how each "
        "answer could have been better:",
        "```",
        "{examples}",
        "```",
        "",
        "Write new instructions for the assistant.",
        "",
        "Study the inputs to work out their format and what the task really asks for, and describe the task in detail.",
        "",
        "Study every answer together with its feedback. Write into the instructions all the specific facts, "
        "conventions and domain knowledge the feedback reveals: the assistant will not see this feedback again, "
        "so whatever it teaches must be in the instructions. If the assistant used a strategy that works in "
        "general, describe that strategy too.",
        "",
        "Give the new instructions inside a ``` block.",
    ]
)


def _render_value(value: Any, level: int) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "\n"
        return "".join(f"{'#' * level} {k}\n" + _render_value(v, min(level + 1, 6)) for k, v in value.items())
    if isinstance(value, list | tuple):
        if not value:
            return "\n"
        return "".join(
            f"{'#' * level} Item {i + 1}\n" + _render_value(v, min(level + 1, 6)) for i, v in enumerate(value)
        )
    return f"{str(value).strip()}\n\n"


def render_prompt(instruction: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The reflection prompt for one predictor."""
    examples = "\n\n".join(
        f"# Example {n}\n" + "".join(f"## {key}\n" + _render_value(value, 3) for key, value in record.items())
        for n, record in enumerate(records, 1)
    )
    return _PROMPT.replace("{instruction}", instruction, 1).replace("{examples}", examples, 1)


_LANGUAGE_TAG = re.compile(r"^\S*\n")


def extract_instruction(text: str) -> str:
    """The text between the first and the last ``` fence (without a language tag after the
    opening fence); a reply with a single fence or none is taken whole, minus the fence."""
    start = text.find("```") + 3
    end = text.rfind("```")
    if start - 3 == -1 or start >= end:
        stripped = text.strip()
        if stripped.startswith("```"):
            return _LANGUAGE_TAG.sub("", stripped[3:], count=1).strip()
        if stripped.endswith("```"):
            return stripped[:-3].strip()
        return stripped
    inner = text[start:end]
    return _LANGUAGE_TAG.sub("", inner, count=1).strip()


def _is_plain_function(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj)


async def propose_instruction(reflection_lm: Any, instruction: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The new instruction the reflection LM proposes for one predictor. Raises ``ValueError`` if
    it is empty."""
    if _is_plain_function(reflection_lm):
        text = extract_instruction(await reflect(reflection_lm, render_prompt(instruction, records)))
    else:
        proposer = Predict(ProposeInstruction, lm=reflection_lm, adapter=JSONAdapter())
        with trace_scope():  # not part of any trace the caller collects
            prediction = await proposer(
                current_instruction=instruction, examples_with_feedback=[dict(r) for r in records]
            )
        text = str(prediction.new_instruction).strip()
    if not text:
        raise ValueError("the reflection LM proposed an empty instruction")
    return text


async def reflect(reflection_lm: Any, prompt: str) -> str:
    """Ask the reflection LM (an ``asynclm.LM``, or any function of the prompt, sync or async,
    returning a string, a list of strings, or an object with ``.texts``) and return its text."""
    call = reflection_lm if is_async_callable(reflection_lm) else asyncify(reflection_lm)
    reply = await call(prompt)
    if hasattr(reply, "__await__"):
        reply = await reply
    texts = getattr(reply, "texts", None)
    if texts is not None:
        reply = texts
    if isinstance(reply, list | tuple):
        if not reply:
            raise ValueError("the reflection LM returned no text")
        reply = reply[0]
    if isinstance(reply, Mapping) and "text" in reply:
        reply = reply["text"]
    if not isinstance(reply, str):
        raise TypeError(f"the reflection LM returned {type(reply).__name__}; expected text")
    return reply
