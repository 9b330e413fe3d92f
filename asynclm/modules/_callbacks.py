"""Callbacks: observe module, LM, adapter and tool calls.

Handlers come from three places, called in this order: ``configure(callbacks=[...])`` /
``context(callbacks=[...])`` (the effective setting), then the module's own ``callbacks``. A handler
may be a plain method or a coroutine method (awaited in place, so events keep their order). A
handler that raises is logged with its traceback and never breaks the program.

Every event carries a ``call_id``; handlers that accept a ``parent_call_id`` keyword also get the
id of the enclosing call. The current call id lives in a context variable, so the parent/child
relation follows child tasks, ``Parallel`` items, ``asyncify`` threads and ``.sync()`` hops.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from asynclm.runtime import current_settings

__all__ = ["Callback", "current_call_id", "observe"]

logger = logging.getLogger("asynclm.callbacks")

_current_call: ContextVar[str | None] = ContextVar("asynclm.call_id", default=None)
_ids = itertools.count(1)  # next() on a count is atomic under the GIL: ids are unique process-wide


def current_call_id() -> str | None:
    """The id of the innermost module/LM/tool call running in this context, if any."""
    return _current_call.get()


class Callback:
    """Base class for callbacks; override the events you need (each may be ``async def``).

    ``instance`` is the module, LM, adapter or tool; ``inputs`` the keyword inputs; ``outputs``
    the result (``None`` when ``exception`` is set).
    """

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> Any: ...
    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> Any: ...
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> Any: ...
    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> Any: ...
    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> Any: ...
    def on_adapter_format_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> Any: ...
    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> Any: ...
    def on_adapter_parse_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> Any: ...
    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> Any: ...
    def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> Any: ...


_accepts_parent: dict[Any, bool] = {}


def _wants_parent(method: Any) -> bool:
    key = getattr(method, "__func__", method)
    known = _accepts_parent.get(key)
    if known is None:
        try:
            params = inspect.signature(method).parameters
            known = "parent_call_id" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            known = False
        _accepts_parent[key] = known
    return known


async def _notify(handlers: Sequence[Any], event: str, *args: Any, parent: str | None) -> None:
    for handler in handlers:
        method = getattr(handler, event, None)
        if method is None:
            continue
        try:
            if _wants_parent(method):
                result = method(*args, parent_call_id=parent)
            else:
                result = method(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("asynclm callback %r failed in %s; the program continues", handler, event)


def handlers_for(instance: Any) -> tuple[Any, ...]:
    own = getattr(instance, "callbacks", None) or ()
    configured = current_settings().callbacks
    if not own:
        return configured
    return (*configured, *own)


class observe:
    """``async with observe("module", self, inputs) as outcome: ...; outcome.value = result``.

    Sends ``on_<kind>_start`` / ``on_<kind>_end`` (with the exception, if one escapes) and makes
    this call the parent of the calls made inside. Costs one context-variable set when no
    callbacks are registered. (A class rather than an ``asynccontextmanager``: this runs four
    times per ``Predict`` call, and a generator-based manager costs several times more. For the
    same reason the manager is its own outcome object: one allocation fewer per use.)
    """

    __slots__ = ("_call_id", "_handlers", "_inputs", "_instance", "_kind", "_parent", "_token", "value")

    def __init__(self, kind: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._kind = kind
        self._instance = instance
        self._inputs: dict[str, Any] | None = inputs
        self.value: Any = None

    async def __aenter__(self) -> observe:
        handlers = self._handlers = handlers_for(self._instance)
        parent = self._parent = _current_call.get()
        call_id = self._call_id = f"c{next(_ids)}"
        token = self._token = _current_call.set(call_id)
        if handlers:
            try:
                await _notify(handlers, f"on_{self._kind}_start", call_id, self._instance, self._inputs, parent=parent)
            except BaseException:
                _current_call.reset(token)
                raise
        self._inputs = None  # only the start event needs them: don't hold them for the whole call
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        handlers, token = self._handlers, self._token
        # The caller's frame may keep this object (the ``as`` name) for the rest of its call:
        # from here on it keeps only the outcome.
        del self._handlers, self._token, self._instance
        try:
            if handlers:
                event = f"on_{self._kind}_end"
                if exc_type is None:
                    await _notify(handlers, event, self._call_id, self.value, None, parent=self._parent)
                else:
                    await _notify(handlers, event, self._call_id, None, exc, parent=self._parent)
        finally:
            _current_call.reset(token)
            del self._parent, self._call_id
