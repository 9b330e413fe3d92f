"""One asyncio loop in a thread of its own, for asyncio-only clients called from other loops.

Some clients (``redis.asyncio``; anything built on asyncio's streams or futures) run only on
asyncio. ``run_on_asyncio(fn, *args)`` awaits ``fn(*args)`` directly when the caller is on asyncio;
from any other loop (trio) it runs it on one asyncio loop thread shared by the process (started on
first use, a daemon, stopped at exit, forgotten in a forked child) and waits for it without
holding a worker thread: the caller parks on an event that the asyncio side sets through the
caller's thread-safe waker. Cancelling the caller cancels the coroutine there.

Objects the coroutine makes belong to that loop; per-loop resources (``loop_resource``) made
there are closed when the thread stops.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

from ._backends import current_waker, running_loop_name

__all__ = ["run_on_asyncio"]

T = TypeVar("T")


async def run_on_asyncio(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """``await fn(*args)`` on an asyncio loop: this one if the caller runs on asyncio, else the
    process's asyncio loop thread (see the module docstring). Its exceptions are raised here as
    they are."""
    if running_loop_name() == "asyncio":
        return await fn(*args)
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), _loop_thread().loop)
    event = anyio.Event()
    wake = current_waker()

    def done(_: object) -> None:
        try:
            wake(event.set)
        except Exception:  # the caller's loop has ended
            pass

    future.add_done_callback(done)
    try:
        await event.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


def loop_thread_alive() -> bool:
    """Whether the asyncio loop thread is running (it starts on the first call that needs it)."""
    return _thread is not None and _thread.thread.is_alive()


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="asynclm-asyncio-loop", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:  # closes the per-loop resources made there (the registry's closers)
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            return
        self.thread.join(timeout=5)


_thread: _LoopThread | None = None
_thread_lock = threading.Lock()


def _loop_thread() -> _LoopThread:
    global _thread
    thread = _thread
    if thread is None or not thread.thread.is_alive():
        with _thread_lock:
            if _thread is thread:
                _thread = _LoopThread()
            thread = _thread
    assert thread is not None
    return thread


@atexit.register
def _stop_loop_thread() -> None:
    if _thread is not None:
        _thread.stop()


def _forget_in_child() -> None:
    global _thread, _thread_lock
    _thread = None
    _thread_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
