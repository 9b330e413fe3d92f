"""The streaming sink of the enclosing ``streamify`` call, if any (a context variable).

``Predict`` asks ``current_sink`` whether its LM call should stream; ``streamify`` installs a
sink for the program it runs. Kept apart from ``_streaming.py`` so ``Predict`` stays importable
without it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["Sink", "current_sink", "sink_var"]


class Sink(Protocol):
    async def stream(
        self,
        predictor: Any,
        lm: Any,
        adapter: Any,
        signature: Any,
        messages: list[dict[str, Any]],
        request: dict[str, Any],
    ) -> str:
        """Stream one completion, forwarding field chunks; return the whole completion text."""
        ...


sink_var: ContextVar[Sink | None] = ContextVar("asynclm.stream_sink", default=None)


def current_sink() -> Sink | None:
    return sink_var.get()
