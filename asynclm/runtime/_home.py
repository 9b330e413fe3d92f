"""A resource's home loop: run coroutines that touch it on the loop that owns it, from any loop.

Objects built on anyio streams and task groups (an MCP session, a connection) belong to the event
loop that created them; touching them from another loop (another thread's ``.sync()`` portal, a
FastAPI ``def`` route whose ``.sync()`` runs on the host loop) breaks them. ``home_loop()``, opened
on the owning loop, gives a ``HomeLoop`` whose ``run(fn, *args)`` awaits ``fn(*args)`` directly
when called on that loop, and otherwise starts it there as a task and waits for it without
blocking the caller's loop (asyncio or trio, either side). Cancelling the caller cancels the task.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import copy_context
from typing import Any, TypeVar

import anyio

from ._backends import current_loop_key, current_waker, mark_async_library, running_loop_name

__all__ = ["HomeLoop", "HomeLoopClosedError", "home_loop"]

R = TypeVar("R")


class HomeLoopClosedError(RuntimeError):
    """The ``home_loop()`` block has ended: nothing can run on that loop for it any more."""


@contextlib.asynccontextmanager
async def home_loop() -> AsyncIterator[HomeLoop]:
    """Open a ``HomeLoop`` on the running loop for the duration of the block; tasks it started
    for other loops are cancelled when the block exits."""
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        home = HomeLoop(tg)
        try:
            yield home
        except Exception as exc:  # the block's error: raised as it is, not in an ExceptionGroup
            failure = exc
        finally:
            home.closed = True
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


class _Remote:
    __slots__ = ("cancelled", "outcome", "scope")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False
        self.outcome: tuple[bool, Any] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


def _call_quietly(wake: Callable[[Callable[[], object]], object], fn: Callable[[], object]) -> None:
    try:
        wake(fn)
    except Exception:  # that loop has ended: nobody is waiting any more
        pass


class HomeLoop:
    """See ``home_loop()``."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._key = current_loop_key()
        self._wake = current_waker()
        self._library = running_loop_name() or "asyncio"
        self.closed = False

    def is_current(self) -> bool:
        """Whether the calling code runs on this home loop."""
        try:
            return current_loop_key() is self._key
        except RuntimeError:
            return False

    async def run(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """``await fn(*args)`` on the home loop, from any loop; in the caller's context."""
        if self.closed:
            raise HomeLoopClosedError("the home_loop() block has ended")
        if self.is_current():
            return await fn(*args)
        here = current_waker()
        done = anyio.Event()
        remote = _Remote()
        closed = HomeLoopClosedError("the home_loop() block ended before the call finished")

        async def run_there() -> None:
            try:
                with anyio.CancelScope() as scope:
                    remote.scope = scope
                    if remote.cancelled:
                        scope.cancel()
                    remote.outcome = (True, await fn(*args))
                if remote.outcome is None:
                    remote.outcome = (False, anyio.get_cancelled_exc_class()())
            except Exception as exc:
                remote.outcome = (False, exc)
            except BaseException:  # the home loop's block is ending
                remote.outcome = (False, closed)
                raise
            finally:
                _call_quietly(here, done.set)

        ctx = copy_context()

        def spawn() -> None:
            mark_async_library(self._library)  # the context came from the caller's loop
            self._tg.start_soon(run_there)

        def start() -> None:
            try:
                if self.closed:
                    raise closed
                ctx.run(spawn)
            except Exception:
                remote.outcome = (False, closed)
                _call_quietly(here, done.set)

        try:
            self._wake(start)
        except Exception as exc:
            raise closed from exc
        try:
            await done.wait()
        except BaseException:
            _call_quietly(self._wake, remote.cancel)
            raise
        assert remote.outcome is not None
        ok, value = remote.outcome
        if ok:
            return value  # type: ignore[no-any-return]
        raise value
