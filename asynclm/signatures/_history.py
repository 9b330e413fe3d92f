"""``History``: prior conversation turns given to a signature as an input field."""

from __future__ import annotations

from typing import Any

import pydantic


class History(pydantic.BaseModel):
    """Prior turns of a conversation, as an input field of a signature.

    Each message is either a dict of the signature's field values (inputs and outputs of one
    earlier turn, e.g. ``{"question": ..., "answer": ...}``), which adapters expand into a user
    turn and an assistant turn in their own format; or a raw chat message
    (``{"role": "user" | "assistant" | "system", "content": ...}``), passed through unchanged.
    The history field itself is not rendered in the final user message.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    messages: list[dict[str, Any]]
