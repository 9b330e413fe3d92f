"""Iterate an async generator from synchronous code: the ``.sync`` twin of ``async for``.

The generator runs as ONE task on the calling thread's portal (an async generator must stay in
the task that started it, or its cancel scopes break). Items cross to the calling thread through a
queue; the driver takes a credit before producing each item and the caller returns one after
consuming it, so at most ``buffer`` items wait (backpressure). Closing the iterator early (``break``,
an exception, garbage collection) cancels the generator on its loop and waits for its ``finally``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import copy_context
from typing import Any, TypeVar

import anyio

from ._backends import current_waker, running_loop_name
from ._portal import Call, portal_for_current_thread
from ._settings import current_settings
from ._sync import SyncInAsyncContextError

__all__ = ["iterate_sync"]

T = TypeVar("T")

_END = object()


def iterate_sync(make: Callable[[], AsyncIterator[T]], *, buffer: int = 16) -> Iterator[T]:
    """Iterate ``make()`` (an async iterator) from a plain thread, item by item.

    Raises:
        SyncInAsyncContextError: when called in a thread whose event loop is running.
    """
    loop = running_loop_name()
    if loop is not None:
        raise SyncInAsyncContextError(
            f"sync iteration was started in a thread whose {loop} event loop is running; "
            "use `async for` instead"
        )
    return _iterate(make, buffer)


def _iterate(make: Callable[[], AsyncIterator[T]], buffer: int) -> Iterator[T]:
    items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
    credit: list[Callable[[], object]] = []
    started = threading.Event()

    async def drive() -> None:
        credits = anyio.Semaphore(buffer)
        wake = current_waker()
        credit.append(lambda: wake(credits.release))
        started.set()
        try:
            iterator = make()
            try:
                async for item in iterator:
                    await credits.acquire()
                    items.put((True, item))
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
        except Exception as exc:
            items.put((False, exc))
        else:
            items.put((False, _END))

    portal = portal_for_current_thread(current_settings().backend)
    call = Call(drive, (), {})
    finished = False
    try:
        # Inside the try: a Ctrl-C can land in submit() after the generator's task has started.
        portal.submit(copy_context(), call)
        while True:
            ok, value = _get(items)
            if ok:
                started.wait()
                credit[0]()
                yield value
                continue
            finished = True
            if value is _END:
                return
            raise value
    finally:
        if finished:
            call.wait()
        else:  # gives up if the portal died (e.g. submit() found it closed)
            portal.cancel_and_wait(call)
        with contextlib.suppress(BaseException):
            call.outcome()


def _get(items: queue.SimpleQueue[tuple[bool, Any]]) -> tuple[bool, Any]:
    if threading.current_thread() is not threading.main_thread():
        return items.get()
    while True:  # poll so that Ctrl-C (and _thread.interrupt_main) reach the caller
        try:
            return items.get(timeout=0.1)
        except queue.Empty:
            continue
