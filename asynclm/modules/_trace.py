"""The task-local trace: which predictors ran, with what inputs and outputs.

Optimizers run each training example inside its own ``trace_scope``; every ``Predict`` call
made while running it (in child tasks too, since the list object is shared through the copied
context) appends ``(predictor, inputs, prediction)``. Concurrent examples never share a list, so
their demos can never mix — unlike a process-global trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from asynclm.runtime import current_settings

__all__ = ["TraceEntry", "record", "trace_scope"]

TraceEntry = tuple[Any, dict[str, Any], Any]

_trace: ContextVar[list[TraceEntry] | None] = ContextVar("asynclm.trace", default=None)


@contextlib.contextmanager
def trace_scope() -> Iterator[list[TraceEntry]]:
    """Collect the predictor calls made inside the block (and its child tasks) into a new list."""
    entries: list[TraceEntry] = []
    token = _trace.set(entries)
    try:
        yield entries
    finally:
        _trace.reset(token)


def record(predictor: Any, inputs: dict[str, Any], prediction: Any) -> None:
    """Append to the enclosing trace, unless ``asynclm.context(trace=False)`` turned recording off."""
    entries = _trace.get()
    if entries is not None and current_settings().trace:
        entries.append((predictor, inputs, prediction))
