"""The reflection step: show the reflection LM a predictor's instruction and what it did on a
minibatch (inputs, outputs, feedback), and read back the new instruction it proposes.

The prompt follows GEPA's: the current instruction in a fenced block, then each example as
markdown (``# Example n``, ``## Inputs``, ``## Generated Outputs``, ``## Feedback``), then the
request to infer the task, keep every niche or domain fact the feedback reveals, keep any
strategy that worked, and answer with the new instruction in a fenced block."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from asynclm.runtime import asyncify, is_async_callable

__all__ = ["extract_instruction", "reflect", "render_prompt"]

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
