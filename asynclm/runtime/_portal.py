"""Per-thread portals: the event loops that ``.sync()`` runs coroutines on.

A portal is a daemon thread running one event loop (asyncio or trio) with one task group. Each
plain thread that calls ``.sync()`` gets its own portal, created lazily and reused by its later
calls, so HTTP connections made by one call are reused by the next.

Lifetime (each rule has a test):

* the owner thread exits -> a watchdog task inside the portal notices (``owner.is_alive()``) and
  stops the portal. Nothing is cleaned up from the dying thread itself;
* interpreter exit -> an ``atexit`` hook stops every portal, cancelling in-flight calls so their
  ``finally`` blocks run, then closing per-loop resources;
* ``os.fork()`` -> the child forgets the parent's portals (their threads do not exist there) and
  creates new ones on demand.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import Any

import anyio

from ._backends import current_waker, import_backend, mark_async_library, native_spawner

__all__ = ["Portal", "PortalClosedError", "portal_for_current_thread", "shutdown_portals"]

_WATCHDOG_INTERVAL = 0.25
_INTERRUPT_POLL = 0.1


class PortalClosedError(RuntimeError):
    """The portal stopped (interpreter exit) before the call could run."""


class Call:
    """One coroutine call handed to a loop from another thread; the outcome is read back there."""

    __slots__ = (
        "_done",
        "args",
        "cancel_requested",
        "exc",
        "finished",
        "fn",
        "kwargs",
        "ran",
        "result",
        "scope",
        "spawned",
    )

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: Any, kwargs: Any) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.result: Any = None
        self.exc: BaseException | None = None
        self.ran = False
        self.scope: anyio.CancelScope | None = None
        self.cancel_requested = False
        self.spawned = False  # set on the loop thread when the task is started
        # Set before the lock is released; wait() trusts it, so a KeyboardInterrupt landing right
        # after a successful acquire() cannot make a later wait() block forever.
        self.finished = False
        # A held lock is the cheapest one-shot signal between two threads.
        self._done = threading.Lock()
        self._done.acquire()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._done.release()

    async def run(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self.cancel_requested:
                    scope.cancel()
                self.result = await self.fn(*self.args, **self.kwargs)
                self.ran = True
        except anyio.get_cancelled_exc_class():
            raise  # the portal itself is stopping; wait() reports PortalClosedError
        except BaseException as exc:
            self.exc = exc
            self.ran = True
        finally:
            self._finish()

    def cancel(self) -> None:
        """Runs on the loop thread."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()
        elif not self.spawned:
            # The caller was interrupted inside submit() before the spawn callback was queued
            # (callbacks run in FIFO order, so a queued spawn would have run before this): the
            # call will never start, so finish it here or the caller's wait() never returns.
            self._finish()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call finishes; ``False`` on timeout. Interruptible in the main thread."""
        if self.finished:
            return True
        if threading.current_thread() is not threading.main_thread():
            return self._done.acquire(timeout=-1 if timeout is None else timeout)
        # _thread.interrupt_main() and signals are only seen between bytecodes: poll.
        deadline = None if timeout is None else _now() + timeout
        while not self.finished:
            step = _INTERRUPT_POLL if deadline is None else min(_INTERRUPT_POLL, deadline - _now())
            if step <= 0:
                return False
            self._done.acquire(timeout=step)
        return True

    def outcome(self) -> Any:
        if self.exc is not None:
            exc, self.exc = self.exc, None  # break the frame <-> exception cycle
            raise exc
        if not self.ran:
            raise PortalClosedError("the asynclm portal stopped before the call finished (interpreter exit?)")
        return self.result


def _now() -> float:
    import time

    return time.monotonic()


class Portal:
    """A daemon thread running one event loop and one task group, owned by one thread."""

    def __init__(self, backend: str, owner: threading.Thread | None) -> None:
        import_backend(backend)  # here, under a lock: never concurrently in many new loop threads
        self.backend = backend
        self.owner = owner
        self.closed = False
        self._schedule: Callable[[Callable[[], object]], object] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._spawn_task: Callable[..., object] | None = None
        # Submitted and not finished -> its task (a strong reference: asyncio keeps only weak
        # references to tasks, and a bare task could otherwise be collected mid-flight).
        self._calls: dict[Call, object] = {}
        self._drained: anyio.Event | None = None  # set when the last call ends after stop
        self._stop: anyio.Event | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        owner_name = owner.name if owner is not None else "process"
        self.thread = threading.Thread(
            target=self._thread_main, name=f"asynclm-portal[{backend}] for {owner_name}", daemon=True
        )
        self.thread.start()
        self._started.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # -- loop thread ---------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main, backend=self.backend)
        except BaseException as exc:
            if not self._started.is_set():
                self._startup_error = exc
        finally:
            self.closed = True
            # A call whose spawn callback was still queued when the loop ended never ran: finish
            # it so that its caller gets PortalClosedError instead of waiting forever.
            for call in list(self._calls):
                if not call.finished:
                    call._finish()
            self._started.set()
            _forget(self)

    async def _main(self) -> None:
        self._schedule = current_waker()
        self._stop = anyio.Event()
        async with anyio.create_task_group() as tg, native_spawner() as spawn_task:
            self._tg = tg
            self._spawn_task = spawn_task
            if self.owner is not None and self.owner is not threading.main_thread():
                tg.start_soon(self._watch_owner)
            self._started.set()
            await self._stop.wait()
            self.closed = True
            # Cancel the calls (tasks of spawn_task, not of tg) and let their finally blocks run.
            # A call not spawned yet has its spawn callback queued: _spawn sees `closed`.
            for call in list(self._calls):
                if call.spawned:
                    call.cancel()
            if self._calls:
                self._drained = anyio.Event()
                await self._drained.wait()
            tg.cancel_scope.cancel()

    async def _watch_owner(self) -> None:
        owner = self.owner
        assert owner is not None
        # Polling on purpose: nothing signals a thread's death without running code in that thread.
        while owner.is_alive():  # noqa: ASYNC110
            await anyio.sleep(_WATCHDOG_INTERVAL)
        assert self._stop is not None
        self._stop.set()

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, ctx: Context, call: Call) -> None:
        """Start ``call`` as a task of the portal, running in a copy of ``ctx``."""
        tg, schedule = self._tg, self._schedule
        if self.closed or tg is None or schedule is None:
            raise PortalClosedError("this asynclm portal has stopped")
        self._calls[call] = None
        try:
            schedule(lambda: ctx.run(self._spawn, call))
        except Exception as exc:  # loop already closed (RuntimeError / trio.RunFinishedError)
            self._calls.pop(call, None)
            self.closed = True
            raise PortalClosedError("this asynclm portal has stopped") from exc

    def _spawn(self, call: Call) -> None:
        # Runs inside ctx.run(): the new task gets a copy of the *current* context (ctx).
        mark_async_library(self.backend)
        call.spawned = True
        if self.closed:  # stopping: run it only to report PortalClosedError
            call.cancel_requested = True
        assert self._spawn_task is not None
        # Natively, not with tg.start_soon: half the CPU per call (bench/bench_runtime.py).
        task = self._spawn_task(self._run_call, call)
        if call in self._calls:  # not already finished (an eager task factory)
            self._calls[call] = task

    async def _run_call(self, call: Call) -> None:
        try:
            await call.run()
        finally:
            self._forget_call(call)

    def _forget_call(self, call: Call) -> None:
        self._calls.pop(call, None)
        if self._drained is not None and not self._calls:
            self._drained.set()

    def _cancel_on_loop(self, call: Call) -> None:
        call.cancel()
        if call.finished:  # it was never spawned: cancel() finished it
            self._forget_call(call)

    def cancel(self, call: Call) -> None:
        schedule = self._schedule
        if schedule is not None and not self.closed:
            try:
                schedule(lambda: self._cancel_on_loop(call))
            except Exception:
                pass

    def cancel_and_wait(self, call: Call) -> None:
        """Cancel ``call`` and wait until its ``finally`` blocks have run (or the portal died)."""
        self.cancel(call)
        while not call.wait(_INTERRUPT_POLL):
            if not self.thread.is_alive():  # stopped meanwhile: nothing is left to wait for
                return

    def stop(self, timeout: float | None = 5.0) -> None:
        """Cancel in-flight calls (their ``finally`` blocks run) and end the loop thread."""
        schedule, stop = self._schedule, self._stop
        if schedule is not None and stop is not None and self.thread.is_alive():
            try:
                schedule(stop.set)
            except Exception:
                pass
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)


# -- registry ---------------------------------------------------------------------------------

_lock = threading.Lock()
_portals: set[Portal] = set()
_local = threading.local()
_generation = 0  # bumped in a forked child: every thread-local cache from the parent is stale


def portal_for_current_thread(backend: str) -> Portal:
    """The calling thread's portal for ``backend``, started on first use."""
    cache: dict[str, Portal] | None = getattr(_local, "portals", None)
    if cache is None or _local.generation != _generation:
        cache = _local.portals = {}
        _local.generation = _generation
    portal = cache.get(backend)
    if portal is None or portal.closed:
        portal = Portal(backend, threading.current_thread())
        with _lock:
            _portals.add(portal)
        cache[backend] = portal
    return portal


def _forget(portal: Portal) -> None:
    with _lock:
        _portals.discard(portal)


def shutdown_portals(timeout: float = 5.0) -> None:
    """Stop every portal of this process (runs at interpreter exit)."""
    with _lock:
        portals = list(_portals)
    for portal in portals:
        portal.stop(timeout=0)
    deadline = _now() + timeout
    for portal in portals:
        portal.thread.join(max(0.0, deadline - _now()))


def _after_fork_in_child() -> None:
    global _generation, _lock
    _generation += 1
    _lock = threading.Lock()
    _portals.clear()


atexit.register(shutdown_portals)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
