"""enter_sync (the .sync twin of `async with`, on the thread's portal) and home_loop (a coroutine
hops to the loop that owns a resource), on both backends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio

from asynclm.runtime import (
    HomeLoopClosedError,
    SyncInAsyncContextError,
    configure,
    enter_sync,
    home_loop,
    syncify,
)


@contextlib.asynccontextmanager
async def resource(log: list[Any], *, suppress: bool = False) -> AsyncIterator[str]:
    """Holds a task group across the block (so it must be exited by the task that entered it)."""
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep_forever)
        log.append(("enter", sniffio.current_async_library(), threading.current_thread().name))
        try:
            yield "value"
        except Exception as exc:
            log.append(("error", type(exc).__name__))
            failure = None if suppress else exc
        finally:
            log.append("exit")
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure  # as it is, not in the task group's ExceptionGroup


def test_enter_sync_enters_and_exits_on_the_threads_portal(portal_backend: str) -> None:
    log: list[Any] = []
    with enter_sync(lambda: resource(log)) as value:
        assert value == "value"
        assert log == [("enter", portal_backend, f"asynclm-portal[{portal_backend}] for MainThread")]
    assert log[-1] == "exit"


def test_enter_sync_hands_the_blocks_error_to_aexit(portal_backend: str) -> None:
    log: list[Any] = []
    with pytest.raises(KeyError):
        with enter_sync(lambda: resource(log)):
            raise KeyError("in the block")
    assert log[1:] == [("error", "KeyError"), "exit"]
    log.clear()
    with enter_sync(lambda: resource(log, suppress=True)):
        raise KeyError("suppressed by __aexit__")
    assert log[1:] == [("error", "KeyError"), "exit"]


def test_enter_sync_raises_the_error_of_aenter(portal_backend: str) -> None:
    @contextlib.asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        raise ValueError("cannot enter")
        yield

    with pytest.raises(ValueError, match="cannot enter"):
        with enter_sync(broken):
            pass


def test_enter_sync_exits_when_the_owner_thread_dies_inside_the_block(portal_backend: str) -> None:
    log: list[Any] = []
    exited = threading.Event()

    @contextlib.asynccontextmanager
    async def watched() -> AsyncIterator[None]:
        async with resource(log):
            try:
                yield
            finally:
                exited.set()

    thread = threading.Thread(target=lambda: enter_sync(watched).__enter__())  # never exits the block
    thread.start()
    thread.join(10)
    assert exited.wait(10), "the portal's watchdog did not run __aexit__ after the owner thread died"


async def test_enter_sync_in_a_running_loop_says_to_use_async_with() -> None:
    with pytest.raises(SyncInAsyncContextError, match="async with"):
        with enter_sync(lambda: resource([])):
            pass


async def test_home_loop_runs_calls_from_other_threads_on_its_loop(anyio_backend: str) -> None:
    # the calling threads' portals run the *other* library: the hop crosses asyncio <-> trio
    configure(backend="trio" if anyio_backend == "asyncio" else "asyncio")
    home_thread = threading.current_thread().name

    async def where(tag: str) -> tuple[str, str, str]:
        await anyio.lowlevel.checkpoint()
        return tag, sniffio.current_async_library(), threading.current_thread().name

    async with home_loop() as home:
        assert home.is_current() and await home.run(where, "here") == ("here", anyio_backend, home_thread)

        def from_plain_threads() -> list[Any]:
            results: list[Any] = []
            threads = [
                threading.Thread(target=lambda i=i: results.append(syncify(home.run)(where, f"t{i}")))
                for i in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return sorted(results)

        assert await anyio.to_thread.run_sync(from_plain_threads) == [
            (f"t{i}", anyio_backend, home_thread) for i in range(4)
        ]
    with pytest.raises(HomeLoopClosedError):
        await home.run(where, "after")


async def test_home_loop_cancelling_the_caller_cancels_the_call_on_the_home_loop() -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async with home_loop() as home:

        def call_with_a_timeout() -> None:
            with pytest.raises(TimeoutError):
                syncify(home.run, timeout=0.2)(slow)

        thread = threading.Thread(target=call_with_a_timeout)
        await anyio.to_thread.run_sync(thread.start)
        await anyio.to_thread.run_sync(thread.join, 30)
        assert started.is_set()
        with anyio.fail_after(10):
            while not cancelled.is_set():
                await anyio.sleep(0.01)
