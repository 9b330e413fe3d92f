"""Enter an async context manager from synchronous code: the ``.sync`` twin of ``async with``.

The context manager is entered and exited by ONE task on the calling thread's portal (an async
context manager holding a task group or a cancel scope must be exited by the task that entered
it), which waits in between. ``__enter__`` returns what ``__aenter__`` gave; ``__exit__`` hands
the block's exception (or none) to ``__aexit__`` in that task and returns whether it was
suppressed. Whatever the entered resource runs lives on the portal's loop meanwhile, so the
thread's later ``.sync()`` calls (which run on the same portal) can use it.

If the owner thread dies inside the block, or the interpreter exits, the portal stops: the task
is cancelled and ``__aexit__`` runs with the cancellation, so the resource is still released.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import copy_context
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

from ._backends import current_waker, running_loop_name
from ._iterate import _get
from ._portal import Call, Portal, PortalClosedError, portal_for_current_thread
from ._settings import current_settings
from ._sync import SyncInAsyncContextError

__all__ = ["enter_sync"]

T = TypeVar("T")

_ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


def enter_sync(make: Callable[[], AbstractAsyncContextManager[T]]) -> AbstractContextManager[T]:
    """A context manager for plain ``with`` that enters and exits ``make()`` on the calling
    thread's portal (see the module docstring). Single use.

    Raises:
        SyncInAsyncContextError: on ``__enter__`` in a thread whose event loop is running.
    """
    return _SyncContext(make)


class _SyncContext(AbstractContextManager[T], Generic[T]):
    def __init__(self, make: Callable[[], AbstractAsyncContextManager[T]]) -> None:
        self._make = make
        self._entered = False
        self._portal: Portal | None = None
        self._call: Call | None = None
        self._exit_info: _ExcInfo = (None, None, None)
        self._request_exit: Callable[[], object] | None = None

    def __enter__(self) -> T:
        loop = running_loop_name()
        if loop is not None:
            raise SyncInAsyncContextError(
                f"a sync `with` block was entered in a thread whose {loop} event loop is running; "
                "use `async with` instead"
            )
        if self._entered:
            raise RuntimeError("this context manager was already entered; make a new one for each `with` block")
        self._entered = True
        handoff: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

        async def drive() -> bool:
            exit_now = anyio.Event()
            wake = current_waker()
            self._request_exit = lambda: wake(exit_now.set)
            try:
                cm = self._make()
                value = await type(cm).__aenter__(cm)
            except BaseException as exc:
                handoff.put((False, exc))
                if isinstance(exc, Exception):
                    return False  # raised in the caller's thread
                raise
            handoff.put((True, value))
            try:
                await exit_now.wait()
            except BaseException as exc:  # cancelled: the portal stops, or the caller was interrupted
                if not await type(cm).__aexit__(cm, type(exc), exc, exc.__traceback__):
                    raise
                return False
            return bool(await type(cm).__aexit__(cm, *self._exit_info))

        portal = self._portal = portal_for_current_thread(current_settings().backend)
        call = self._call = Call(drive, (), {})
        try:
            portal.submit(copy_context(), call)  # inside the try: a Ctrl-C may land after the task started
            ok, value = _get(handoff)
        except BaseException:
            portal.cancel_and_wait(call)
            raise
        if not ok:
            call.wait()
            if isinstance(value, Exception):
                raise value
            raise PortalClosedError("the asynclm portal stopped while entering the `with` block (interpreter exit?)")
        return value  # type: ignore[no-any-return]

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        call, portal, request_exit = self._call, self._portal, self._request_exit
        assert call is not None and portal is not None and request_exit is not None, "__exit__ before __enter__"
        self._exit_info = (typ, exc, tb)
        try:
            try:
                request_exit()
            except Exception:  # the portal's loop has ended: the task was cancelled, __aexit__ has run
                pass
            call.wait()
        except BaseException:  # Ctrl-C while exiting: cancel the exit; its cleanup still runs
            portal.cancel_and_wait(call)
            raise
        try:
            suppress: bool = call.outcome()
        except BaseException as error:
            if error is exc:
                return False  # the block's own exception, not suppressed: let `with` re-raise it
            raise
        finally:
            self._exit_info = (None, None, None)
        return suppress
