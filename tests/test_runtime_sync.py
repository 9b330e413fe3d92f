"""The ``.sync`` twin: where the coroutine runs for each kind of calling thread, and what it sees."""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio

import asynclm
from asynclm.runtime import (
    SyncCallable,
    SyncInAsyncContextError,
    asyncify,
    configure,
    context,
    is_async_callable,
    run_sync,
    settings,
    sync_twin,
    syncify,
)

from .helpers import StubLM


@dataclasses.dataclass
class Where:
    thread: int
    thread_name: str
    library: str
    lm: Any
    value: Any = None


@sync_twin
async def where(value: Any = None, delay: float = 0.0) -> Where:
    """Report where and with which settings the coroutine ran."""
    if delay:
        await anyio.sleep(delay)
    else:
        await anyio.lowlevel.checkpoint()
    thread = threading.current_thread()
    return Where(thread.ident or 0, thread.name, sniffio.current_async_library(), settings.lm, value)


class Boom(Exception):
    pass


@sync_twin
async def fail() -> None:
    await anyio.lowlevel.checkpoint()
    raise Boom("original")


# -- routing: plain threads get their own portal ------------------------------------------------


def test_sync_from_main_thread_runs_on_a_reused_portal(portal_backend: str) -> None:
    first = where.sync(1)
    second = where.sync(2)
    assert first.thread != threading.get_ident()
    assert first.thread_name.startswith(f"asynclm-portal[{portal_backend}]")
    assert first.library == portal_backend
    assert (first.value, second.value) == (1, 2)
    assert second.thread == first.thread  # reused: one portal per calling thread


def test_sync_from_plain_threads_each_get_their_own_portal(portal_backend: str) -> None:
    results: dict[int, list[Where]] = {}

    def worker(k: int) -> None:
        results[k] = [where.sync(k), where.sync(k)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    portal_threads = set()
    for k, (a, b) in results.items():
        assert (a.value, b.value) == (k, k)
        assert a.thread == b.thread
        assert a.library == portal_backend
        portal_threads.add(a.thread)
    assert len(portal_threads) == 4
    assert where.sync().thread not in portal_threads  # the main thread has another


def test_sync_from_thread_pool_executor_32(portal_backend: str) -> None:
    configure(lm=StubLM("default"))

    def job(i: int) -> tuple[int, Any, str]:
        with context(lm=StubLM(f"lm-{i}")):
            got = where.sync(i, delay=0.001)
        return got.value, got.lm, got.library

    with ThreadPoolExecutor(32) as pool:
        out = list(pool.map(job, range(256)))
    assert out == [(i, f"lm-{i}", portal_backend) for i in range(256)]


def test_sync_propagates_the_original_exception_type(portal_backend: str) -> None:
    with pytest.raises(Boom, match="original"):
        fail.sync()
    assert where.sync(7).value == 7  # the portal survives a failing call


def test_context_is_visible_inside_and_nothing_flows_back(portal_backend: str) -> None:
    configure(lm=StubLM("default"))
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @sync_twin
    async def writes() -> tuple[Any, str]:
        seen = (settings.lm, var.get())
        var.set("written inside")
        context(lm=StubLM("entered inside")).__enter__()  # never exited: must stay inside the call
        return seen

    token = var.set("caller")
    try:
        with context(lm=StubLM("caller-lm")):
            assert writes.sync() == ("caller-lm", "caller")
            assert settings.lm == "caller-lm"
        assert writes.sync() == ("default", "caller")
        assert var.get() == "caller"
    finally:
        var.reset(token)
    assert settings.lm == "default"


# -- routing: inside a running loop -> clear error ----------------------------------------------


async def test_sync_inside_a_running_loop_raises_a_clear_error() -> None:
    with pytest.raises(SyncInAsyncContextError) as info:
        where.sync()
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "await where(...)" in message
    assert sniffio.current_async_library() in message
    # The loop was not blocked and still works.
    assert (await where(3)).value == 3


async def test_sync_variants_inside_a_running_loop_all_raise() -> None:
    class Thing:
        @sync_twin
        async def method(self) -> int:
            return 1

    with pytest.raises(SyncInAsyncContextError):
        Thing().method.sync()
    with pytest.raises(SyncInAsyncContextError):
        syncify(where)()
    with pytest.raises(SyncInAsyncContextError):
        run_sync(where)
    with pytest.raises(SyncInAsyncContextError):
        asynclm.Parallel().sync([])


async def test_the_error_names_the_object_the_user_called() -> None:
    """Not ``Module.__call__.sync()``: the module as it prints, then ``.sync()`` / ``.batch.sync()``."""
    qa = asynclm.Predict("question -> answer")
    with pytest.raises(SyncInAsyncContextError) as info:
        qa.sync(question="q")
    spelled = "Predict(Signature('question -> answer'))"
    assert f"{spelled}.sync() was called" in str(info.value)
    assert f"Use `await {spelled}(...)`" in str(info.value)
    with pytest.raises(SyncInAsyncContextError) as info:
        qa.batch.sync([])
    assert f"Use `await {spelled}.batch(...)`" in str(info.value)


# -- routing: AnyIO / trio worker threads run on their host loop -------------------------------


async def test_sync_from_anyio_worker_thread_runs_on_the_host_loop(anyio_backend: str) -> None:
    host = threading.get_ident()
    with context(lm=StubLM("host-ctx")):
        got = await anyio.to_thread.run_sync(where.sync, 5)
    assert got.thread == host
    assert got.library == anyio_backend
    assert (got.value, got.lm) == (5, "host-ctx")
    with pytest.raises(Boom):
        await anyio.to_thread.run_sync(fail.sync)


async def test_sync_from_many_anyio_worker_threads_concurrently() -> None:
    host = threading.get_ident()
    results: list[Where] = []

    async def one(i: int) -> None:
        with context(lm=StubLM(str(i))):
            results.append(await anyio.to_thread.run_sync(where.sync, i, 0.01))

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(one, i)
    assert sorted((r.value, r.lm) for r in results) == [(i, str(i)) for i in range(32)]
    assert {r.thread for r in results} == {host}


def test_sync_from_a_trio_to_thread_worker_runs_on_the_trio_host() -> None:
    import trio

    async def main() -> Where:
        with context(lm=StubLM("trio-host")):
            return await trio.to_thread.run_sync(where.sync, 9)

    host_thread = threading.get_ident()
    got = trio.run(main)
    assert (got.thread, got.library, got.value, got.lm) == (host_thread, "trio", 9, "trio-host")


# -- timeouts ------------------------------------------------------------------------------------


def test_syncify_timeout_cancels_the_coroutine_and_its_finally_runs(portal_backend: str) -> None:
    state: dict[str, Any] = {}

    async def slow() -> None:
        try:
            state["started"] = True
            await anyio.sleep(30)
        finally:
            state["finally"] = sniffio.current_async_library()

    with pytest.raises(TimeoutError, match="cancelled"):
        syncify(slow, timeout=0.2)()
    assert state == {"started": True, "finally": portal_backend}
    assert where.sync(1).value == 1  # the portal is still usable


def test_syncify_timeout_not_hit_returns_the_value(portal_backend: str) -> None:
    assert syncify(where, timeout=5)(4).value == 4


async def test_syncify_timeout_in_an_anyio_worker_thread(anyio_backend: str) -> None:
    state: dict[str, bool] = {}

    async def slow() -> None:
        try:
            await anyio.sleep(30)
        finally:
            state["finally"] = True

    with pytest.raises(TimeoutError):
        await anyio.to_thread.run_sync(syncify(slow, timeout=0.1))
    assert state == {"finally": True}


# -- the twin on functions, methods, callables ---------------------------------------------------


def test_sync_twin_on_methods_and_callables() -> None:
    class Model:
        def __init__(self, k: int) -> None:
            self.k = k

        @sync_twin
        async def scaled(self, x: int, *, by: int = 1) -> int:
            await anyio.lowlevel.checkpoint()
            return self.k * x * by

    class Doubler(SyncCallable):
        async def __call__(self, x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return 2 * x

    model = Model(3)
    assert model.scaled.sync(2, by=5) == 30
    assert Model.scaled.sync(model, 2) == 6
    assert model.scaled == model.scaled
    assert model.scaled != Model(3).scaled
    assert model.scaled.__name__ == "scaled"
    assert "with .sync" in repr(model.scaled)
    assert Doubler().sync(21) == 42
    assert run_sync(where, 8).value == 8
    assert where.__name__ == "where"
    assert "Report where" in (where.__doc__ or "")


def test_sync_twin_rejects_a_plain_function() -> None:
    with pytest.raises(TypeError, match="coroutine function"):
        sync_twin(lambda: None)  # type: ignore[arg-type, return-value]


async def test_twins_are_awaitable_like_the_original() -> None:
    class Model:
        @sync_twin
        async def method(self, x: int) -> int:
            return x + 1

    assert (await where(1)).value == 1
    assert await Model().method(1) == 2


def test_is_async_callable() -> None:
    import functools

    async def coro() -> None:
        pass

    class AsyncCall:
        async def __call__(self) -> None:
            pass

    class Doubler(SyncCallable):
        async def __call__(self) -> None:
            pass

    assert is_async_callable(coro)
    assert is_async_callable(functools.partial(coro))
    assert is_async_callable(where)
    assert is_async_callable(AsyncCall())
    assert is_async_callable(Doubler())
    assert is_async_callable(asyncify(print))
    assert not is_async_callable(print)
    assert not is_async_callable(lambda: None)


# -- asyncify --------------------------------------------------------------------------------------


async def test_asyncify_runs_in_a_worker_thread_with_the_callers_context(anyio_backend: str) -> None:
    host = threading.get_ident()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def blocking(x: int) -> tuple[int, Any, str, int]:
        seen = (x, settings.lm, var.get(), threading.get_ident())
        var.set("worker wrote")
        return seen

    token = var.set("caller")
    try:
        with context(lm=StubLM("ctx-lm")):
            x, lm, value, thread = await asyncify(blocking)(7)
        assert (x, lm, value) == (7, "ctx-lm", "caller")
        assert thread != host
        assert var.get() == "caller"
    finally:
        var.reset(token)


async def test_sync_inside_asyncified_function_runs_on_the_host_loop(anyio_backend: str) -> None:
    host = threading.get_ident()

    def blocking() -> Where:
        return where.sync(1)

    with context(lm=StubLM("outer")):
        got = await asyncify(blocking)()
    assert (got.thread, got.library, got.lm) == (host, anyio_backend, "outer")


def test_asyncify_inside_sync_runs_nested_sync_on_the_portal(portal_backend: str) -> None:
    # main thread -> .sync() -> portal loop -> asyncify worker -> .sync() -> same portal loop
    def blocking() -> Where:
        with context(lm=StubLM("inner")):
            return where.sync(2)

    @sync_twin
    async def outer() -> tuple[int, Where]:
        return threading.get_ident(), await asyncify(blocking)()

    portal_thread, inner = outer.sync()
    assert portal_thread != threading.get_ident()
    assert (inner.thread, inner.library, inner.lm) == (portal_thread, portal_backend, "inner")


def test_asyncify_sync_twin_runs_the_blocking_function() -> None:
    assert asyncify(lambda x: x * 2).sync(21) == 42


async def test_asyncify_propagates_exceptions(anyio_backend: str) -> None:
    def bad() -> None:
        raise Boom("from thread")

    with pytest.raises(Boom, match="from thread"):
        await asyncify(bad)()


# -- iterate_sync: the .sync twin of `async for` ---------------------------------------------------


def test_iterate_sync_yields_in_order_and_runs_finally(portal_backend: str) -> None:
    from asynclm.runtime import iterate_sync

    state: list[str] = []

    async def numbers(n: int) -> Any:
        try:
            for i in range(n):
                await anyio.lowlevel.checkpoint()
                yield i, sniffio.current_async_library(), settings.lm
        finally:
            state.append("finally")

    with context(lm=StubLM("iter-ctx")):
        out = list(iterate_sync(lambda: numbers(5), buffer=2))
    assert out == [(i, portal_backend, "iter-ctx") for i in range(5)]
    assert state == ["finally"]


def test_iterate_sync_early_break_cancels_the_generator(portal_backend: str) -> None:
    from asynclm.runtime import iterate_sync

    state: list[str] = []

    async def endless() -> Any:
        try:
            i = 0
            while True:
                await anyio.sleep(0.001)
                yield i
                i += 1
        finally:
            state.append("finally")

    for i in iterate_sync(endless):
        if i == 3:
            break
    assert state == ["finally"]  # the generator was closed on its loop before the break returned


def test_iterate_sync_propagates_errors_and_refuses_a_running_loop(portal_backend: str) -> None:
    from asynclm.runtime import iterate_sync

    async def broken() -> Any:
        yield 1
        raise Boom("mid-stream")

    it = iterate_sync(broken)
    assert next(it) == 1
    with pytest.raises(Boom, match="mid-stream"):
        next(it)

    async def inside() -> None:
        with pytest.raises(SyncInAsyncContextError, match="async for"):
            iterate_sync(broken)

    anyio.run(inside, backend=portal_backend)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_iterate_sync_keyboard_interrupt_closes_the_generator(portal_backend: str) -> None:
    import _thread

    from asynclm.runtime import iterate_sync

    state: list[str] = []
    started = threading.Event()

    async def slow() -> Any:
        try:
            started.set()
            await anyio.sleep(30)
            yield 1
        finally:
            state.append("finally")

    interrupter = threading.Thread(target=lambda: started.wait(10) and _thread.interrupt_main())
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in iterate_sync(slow):
            pass
    interrupter.join()
    assert state == ["finally"]
