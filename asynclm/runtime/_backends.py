"""The one seam where asyncio and trio differ: which loop runs in this thread, how to wake it.

Everything else in asynclm goes through anyio; only these primitives need the native loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from asyncio import _get_running_loop
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

__all__ = [
    "check_backend_installed",
    "current_loop_key",
    "current_waker",
    "import_backend",
    "mark_async_library",
    "native_spawner",
    "running_loop_name",
    "trio_host_token",
]

try:
    import sniffio as _sniffio
except ImportError:  # pragma: no cover - anyio then assumes asyncio
    _sniffio = None  # type: ignore[assignment]


_TRIO_MISSING = "the trio backend needs trio: pip install 'asynclm[trio]'"
_import_lock = threading.Lock()
_trio_imported = False


def check_backend_installed(name: str) -> None:
    """Raise ``ImportError`` naming the extra if ``name``'s library is not installed (cheap: no import)."""
    if name == "trio" and not _trio_imported and importlib.util.find_spec("trio") is None:
        raise ImportError(_TRIO_MISSING)


def import_backend(name: str) -> None:
    """Import ``name``'s event-loop library, and anyio's backend for it, once, under a lock.

    Call before starting a loop in a new thread: when many threads each start their first trio
    loop at once, their concurrent first imports of trio's and anyio's modules can meet a
    partially initialised module (``cannot import name ... from partially initialized module``,
    or importlib's ``_DeadlockError``). Raises ``ImportError`` naming the extra when missing.
    """
    global _trio_imported
    if name != "trio" or _trio_imported:
        return
    with _import_lock:
        if _trio_imported:
            return
        try:
            import trio
        except ImportError as exc:
            raise ImportError(_TRIO_MISSING) from exc
        import anyio._backends._trio  # noqa: F401
        import trio.from_thread
        import trio.lowlevel  # noqa: F401

        _trio_imported = True


def mark_async_library(name: str) -> None:
    """Record in the *current* context which async library runs it.

    A task spawned from a context copied in a plain thread (``.sync()``) lacks the marker that
    AnyIO's backend detection reads; set it before spawning there.
    """
    if _sniffio is not None:
        _sniffio.current_async_library_cvar.set(name)


def _running_trio() -> Any:
    """The trio module if a trio loop runs in this thread, else ``None``.

    Never imports trio. Another thread may be importing it right now (``trio`` is in
    ``sys.modules`` without ``lowlevel`` yet): then no trio loop can be running in *this* thread.
    """
    trio = sys.modules.get("trio")
    lowlevel = getattr(trio, "lowlevel", None)
    if lowlevel is not None and lowlevel.in_trio_run():
        return trio
    return None


def running_loop_name() -> str | None:
    """``"asyncio"`` or ``"trio"`` when an event loop is running in *this* thread, else ``None``."""
    if _get_running_loop() is not None:
        return "asyncio"
    if _running_trio() is not None:
        return "trio"
    return None


def current_loop_key() -> Any:
    """A hashable, weak-referenceable object identifying the running event loop (its run)."""
    loop = _get_running_loop()
    if loop is not None:
        return loop
    return _trio_token("asynclm.runtime.loop_resource()")


@contextlib.asynccontextmanager
async def native_spawner() -> AsyncIterator[Callable[..., object]]:
    """Yield ``spawn(async_fn, *args)``: start a task of the running loop, natively.

    The task runs in a copy of the *current* context (call ``spawn`` inside ``ctx.run``). It
    returns the task object (asyncio) or ``None`` (trio). Per ``.sync()`` call this costs about
    half the CPU of anyio's ``TaskGroup.start_soon`` (bench/bench_runtime.py). On asyncio the
    tasks are bare: the caller must keep a reference to them and wait for them itself; on trio
    they belong to a nursery that this context manager opens and closes.
    """
    loop = _get_running_loop()
    if loop is not None:
        create_task = loop.create_task

        def spawn_asyncio(async_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> object:
            return create_task(async_fn(*args))

        yield spawn_asyncio
        return
    import trio

    async with trio.open_nursery() as nursery:
        yield nursery.start_soon


def current_waker() -> Callable[[Callable[[], object]], object]:
    """A function that schedules a callback on the running loop, callable from any thread.

    Raises ``RuntimeError`` (asyncio) or ``trio.RunFinishedError`` once the loop has ended.
    """
    loop = _get_running_loop()
    if loop is not None:
        return loop.call_soon_threadsafe
    schedule: Callable[[Callable[[], object]], object] = _trio_token("this asynclm call").run_sync_soon
    return schedule


def _trio_token(what: str) -> Any:
    trio = _running_trio()
    if trio is None:
        # Without this check the caller gets trio's "must be called from async context", or an
        # ImportError when trio is not installed.
        raise RuntimeError(
            f"{what} needs a running event loop (asyncio or trio) in this thread; call it from "
            "async code, or from sync code through .sync()"
        )
    return trio.lowlevel.current_trio_token()


def trio_host_token() -> Any:
    """In a thread started by ``trio.to_thread`` (not through anyio): its host's token, else None."""
    # Never imports: another thread may be importing trio right now, and importing one of its
    # modules concurrently can meet it half-initialised. A to_thread worker exists only once
    # trio._threads is fully imported.
    threads = sys.modules.get("trio._threads")
    try:
        return threads.PARENT_TASK_DATA.token  # type: ignore[union-attr]
    except AttributeError:
        return None
