"""Per-event-loop resources: created inside their loop, closed when that loop's run ends.

HTTP clients, locks and events are bound to the loop (and backend) that made them; sharing one
across loops gives "attached to a different loop" errors or hangs on keep-alive connections. So
each loop gets its own, looked up by ``loop_resource``.

Closing: the first resource made on a loop also starts a tiny async generator parked at its
``yield``. Both asyncio (``shutdown_asyncgens`` in ``asyncio.run``/``anyio.run``) and trio (at the
end of ``trio.run``) close unfinished async generators when a run ends, so its ``finally`` closes
the loop's resources, inside that loop, in reverse order of creation.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ._backends import current_loop_key

__all__ = ["loop_resource"]

T = TypeVar("T")


class _LoopResources:
    __slots__ = ("closer", "closers", "values")

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}
        self.closers: list[tuple[Any, Callable[[Any], Awaitable[object]]]] = []
        self.closer: AsyncGenerator[None, None] | None = None


_by_loop: weakref.WeakKeyDictionary[Any, _LoopResources] = weakref.WeakKeyDictionary()


async def _close_at_loop_end(resources: _LoopResources) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            while resources.closers:
                value, aclose = resources.closers.pop()
                try:
                    await aclose(value)
                except Exception:  # a failing close must not stop the others
                    pass
        resources.values.clear()


def _park(agen: AsyncGenerator[None, None]) -> None:
    # Run the generator up to its yield *synchronously*: calling __anext__ registers it with the
    # running loop's async-generator hooks, and nothing in it awaits before the yield.
    step = agen.__anext__()
    try:
        step.send(None)
    except StopIteration:
        pass
    else:  # pragma: no cover - the generator never suspends before its yield
        raise RuntimeError("loop resource closer suspended unexpectedly")


def loop_resource(
    key: Any, factory: Callable[[], T], aclose: Callable[[T], Awaitable[object]] | None = None
) -> T:
    """The running loop's resource for ``key``, made by ``factory()`` on first use in this loop.

    Must be called from inside a running loop (asyncio or trio). ``factory`` is synchronous so two
    tasks of one loop can never race to create two. ``aclose(value)``, if given, is awaited in
    that loop when its run ends.
    """
    loop = current_loop_key()
    resources = _by_loop.get(loop)
    if resources is None:
        resources = _by_loop[loop] = _LoopResources()
    try:
        return resources.values[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    value = factory()
    resources.values[key] = value
    if aclose is not None:
        resources.closers.append((value, aclose))
        if resources.closer is None:
            resources.closer = _close_at_loop_end(resources)
            _park(resources.closer)
    return value
