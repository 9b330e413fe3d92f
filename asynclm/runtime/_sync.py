"""The ``.sync`` twin: one way to run asynclm coroutines from synchronous code.

``run_sync`` is the single mechanism; ``sync_twin``, ``syncify`` and
``SyncCallable`` only attach it to functions, methods and callable objects.

Where the coroutine runs depends on the calling thread:

1. a thread whose own event loop is running (inside ``async def``, Jupyter): nothing runs;
   ``SyncInAsyncContextError`` says to ``await`` instead. Blocking there would freeze the loop
   (or deadlock, if the coroutine needs that loop).
2. an AnyIO or Trio worker thread (FastAPI/Starlette ``def`` routes, ``anyio.to_thread``,
   ``asyncify``): the coroutine runs on that thread's host loop, which is idle-waiting for it anyway.
3. any other thread (main thread, ``threading.Thread``, ``ThreadPoolExecutor``): the coroutine runs
   on the calling thread's own portal (see ``_portal.py``).

In every case the coroutine runs in a *copy* of the caller's context: it sees the caller's
``asynclm.context(...)`` overrides, and nothing it sets flows back.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from contextvars import Context, copy_context
from typing import Any, Generic, ParamSpec, TypeVar, overload

import anyio
import anyio.to_thread

from ._backends import mark_async_library, running_loop_name, trio_host_token
from ._portal import Call, PortalClosedError, portal_for_current_thread
from ._settings import current_settings

__all__ = [
    "BoundSyncTwin",
    "SyncCallable",
    "SyncInAsyncContextError",
    "SyncTwin",
    "asyncify",
    "is_async_callable",
    "run_sync",
    "sync_twin",
    "syncify",
]

P = ParamSpec("P")
R = TypeVar("R")

try:  # AnyIO marks its worker threads here; there is no public "am I a worker thread?" query.
    from anyio._core._eventloop import threadlocals as _anyio_threadlocals
except ImportError:  # pragma: no cover - a future anyio moved it
    _anyio_threadlocals = threading.local()

try:  # Python >= 3.12: lets inspect.iscoroutinefunction() recognise our wrappers
    _COROUTINE_MARK: Any = inspect._is_coroutine_mark  # type: ignore[attr-defined]
except AttributeError:
    _COROUTINE_MARK = None


class SyncInAsyncContextError(RuntimeError):
    """``.sync()`` was called in a thread whose event loop is running: ``await`` the coroutine instead."""


def _describe(fn: Any) -> str:
    """How the user spelled the call: ``Predict(Signature('question -> answer'))`` for a module's
    ``__call__``, ``<that>.batch`` for another bound method, the qualified name otherwise."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type):
        text = repr(owner)
        if len(text) > 80:
            text = type(owner).__name__ + "(...)"
        name = getattr(fn, "__name__", "")
        return text if name == "__call__" else f"{text}.{name}"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def run_sync(fn: Callable[..., Coroutine[Any, Any, R]], /, *args: Any, **kwargs: Any) -> R:
    """Run ``await fn(*args, **kwargs)`` to completion from synchronous code and return its result."""
    return _run_sync(fn, args, kwargs, None)


def _run_sync(
    fn: Callable[..., Coroutine[Any, Any, R]], args: Any, kwargs: Any, timeout: float | None
) -> R:
    loop = running_loop_name()
    if loop is not None:
        name = _describe(fn)
        raise SyncInAsyncContextError(
            f"{name}.sync() was called from a thread whose {loop} event loop is running; blocking "
            f"here would freeze that loop. Use `await {name}(...)` instead."
        )
    ctx = copy_context()

    host_token = getattr(_anyio_threadlocals, "current_token", None)
    if host_token is not None:  # AnyIO worker thread: run on the host loop
        hosted: R = anyio.from_thread.run(_call_in_context, ctx, fn, args, kwargs, timeout, token=host_token)
        return hosted
    trio_token = trio_host_token()
    if trio_token is not None:  # trio.to_thread worker thread
        import trio

        result: R = trio.from_thread.run(
            _call_in_context, ctx, fn, args, kwargs, timeout, trio_token=trio_token
        )
        return result

    portal = portal_for_current_thread(current_settings().backend)
    call = Call(fn, args, kwargs)
    try:
        # submit() is inside the try: a Ctrl-C can land in it after the task has already started.
        portal.submit(ctx, call)
        finished = call.wait(timeout)
    except PortalClosedError:
        raise  # nothing was started
    except BaseException:  # KeyboardInterrupt in the caller: cancel the coroutine, let finally run
        portal.cancel_and_wait(call)
        raise
    if not finished:
        portal.cancel_and_wait(call)
        raise TimeoutError(f"{_describe(fn)}.sync() did not finish within {timeout} s; it was cancelled")
    outcome: R = call.outcome()
    return outcome


async def _call_in_context(
    ctx: Context, fn: Callable[..., Coroutine[Any, Any, Any]], args: Any, kwargs: Any, timeout: float | None
) -> Any:
    call = Call(fn, args, kwargs)
    library = running_loop_name() or "asyncio"
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            ctx.run(_spawn_marked, tg, library, call)
    return call.outcome()


def _spawn_marked(tg: anyio.abc.TaskGroup, library: str, call: Call) -> None:
    mark_async_library(library)
    tg.start_soon(call.run)


class SyncTwin(Generic[P, R]):
    """A coroutine function with a ``.sync`` twin; see ``sync_twin``."""

    _is_coroutine_marker = _COROUTINE_MARK

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> None:
        self.__wrapped__ = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self.__wrapped__(*args, **kwargs)

    def sync(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the coroutine to completion from synchronous code (see ``asynclm.syncify``)."""
        return _run_sync(self.__wrapped__, args, kwargs, None)

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> SyncTwin[P, R]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> BoundSyncTwin: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return BoundSyncTwin(self.__wrapped__, obj)

    def __repr__(self) -> str:
        return f"<async function {_describe(self.__wrapped__)} (with .sync)>"


class BoundSyncTwin:
    """A coroutine method bound to its instance, with ``.sync``: ``await obj.m(...)``, ``obj.m.sync(...)``."""

    __slots__ = ("__func__", "__self__")
    _is_coroutine_marker = _COROUTINE_MARK

    def __init__(self, func: Callable[..., Coroutine[Any, Any, Any]], instance: object) -> None:
        self.__func__ = func
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self.__func__(self.__self__, *args, **kwargs)

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        """Run the coroutine method to completion from synchronous code."""
        return _run_sync(self, args, kwargs, None)  # (self: errors then name obj.method as the user wrote it)

    @property
    def __name__(self) -> str:
        return str(getattr(self.__func__, "__name__", "method"))

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.__func__.__doc__

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundSyncTwin)
            and other.__func__ is self.__func__
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((self.__func__, id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound async method {_describe(self.__func__)} of {self.__self__!r} (with .sync)>"


def sync_twin(fn: Callable[P, Coroutine[Any, Any, R]]) -> SyncTwin[P, R]:
    """Decorate a coroutine function (or method) so that it also has a ``.sync`` twin.

    ``await f(...)`` is unchanged; ``f.sync(...)`` (or ``obj.method.sync(...)``) takes the same
    parameters and runs it to completion from synchronous code, routed as described in
    ``asynclm.runtime._sync``.
    """
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"sync_twin() needs a coroutine function (async def); got {fn!r}")
    return SyncTwin(fn)


def syncify(
    fn: Callable[P, Coroutine[Any, Any, R]], *, timeout: float | None = None
) -> Callable[P, R]:
    """Return a plain function that runs ``await fn(...)`` to completion from synchronous code.

    Args:
        fn: a coroutine function (or any callable returning a coroutine).
        timeout: if given, the call is cancelled after this many seconds and ``TimeoutError`` is
            raised; the coroutine's ``finally`` blocks have run by then.

    Raises:
        SyncInAsyncContextError: when called in a thread whose event loop is running.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return _run_sync(fn, args, kwargs, timeout)

    return wrapper


def asyncify(
    fn: Callable[P, R], *, limiter: anyio.CapacityLimiter | None = None, abandon_on_cancel: bool = False
) -> SyncTwin[P, R]:
    """Return a coroutine function that runs the blocking ``fn`` in a worker thread.

    The worker thread runs in a copy of the caller's context (``asynclm.context`` overrides are
    visible; nothing flows back). ``.sync()`` called from inside ``fn`` runs on the caller's loop.
    Works on asyncio and trio, from any thread's loop, including inside ``.sync()``.

    Args:
        limiter: the AnyIO capacity limiter bounding the worker threads (default: AnyIO's, 40).
            Give sync code that itself calls ``.sync()`` a limiter of its own so that it cannot
            exhaust the threads the inner calls need.
        abandon_on_cancel: on cancellation, stop waiting for the thread instead of waiting for
            ``fn`` to return (the thread keeps running in the background).
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = copy_context()
        return await anyio.to_thread.run_sync(
            functools.partial(ctx.run, fn, *args, **kwargs),
            limiter=limiter,
            abandon_on_cancel=abandon_on_cancel,
        )

    return SyncTwin(wrapper)


class SyncCallable:
    """Base for objects awaited when called: ``await obj(...)`` gets the twin ``obj.sync(...)``."""

    __slots__ = ()
    _is_coroutine_marker = _COROUTINE_MARK

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``await self(*args, **kwargs)`` to completion from synchronous code."""
        return _run_sync(self.__call__, args, kwargs, None)  # type: ignore[operator]


def is_async_callable(obj: Any) -> bool:
    """True when calling ``obj`` returns an awaitable (coroutine functions, twins, async ``__call__``)."""
    if isinstance(obj, (SyncTwin, BoundSyncTwin, SyncCallable)):
        return True
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    return inspect.iscoroutinefunction(type(obj).__dict__.get("__call__")) or any(
        inspect.iscoroutinefunction(klass.__dict__.get("__call__")) for klass in type(obj).__mro__[1:-1]
    )
