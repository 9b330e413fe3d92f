"""The Ray actor that runs a batch's items: one asyncio event loop with asynclm inside.

Ray runs an actor whose methods are coroutines on its own asyncio loop; each ``run_chunk`` call
runs its items concurrently there (``Parallel``'s rules: dict/tuple/``Example`` arguments, plain
functions in worker threads, the per-item deadline) and returns one ``(ok, value or exception)``
per item, in order. The items' callables and the driver's settings arrive once per batch (one Ray
object) and are kept while the batch runs.

The items run on an event loop of the worker's own (``asyncio.run`` in a thread it starts), not
on the loop Ray runs actor methods on: that one has no root task, so anyio would look for one
among all the loop's tasks on every call to a worker thread and tie the threads to the chunk's
task (stopping them when each chunk ends). ``run_chunk`` hands its chunk over to the own loop;
cancelling it there cancels the chunk.

A chunk may hold more items than the worker may run at once for that batch (its ``share`` of the
batch's ``concurrency``): the rest wait for a place in this process, so that the driver can send
large chunks (fewer round trips) while the batch's bound holds across the workers together.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any

import anyio
import anyio.to_thread

from asynclm.lm import UsageLimits, track_usage
from asynclm.runtime import context, is_async_callable
from asynclm.runtime._parallel import call_item

from ._limits import RemoteBudget

__all__ = ["Worker", "portable_error"]

_JOBS_KEPT = 8


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it can travel back to the driver (its class importable by name there, and
    rebuilt from what it reduces to, which is what Ray's serializer does with it), else a
    ``RemoteItemError`` naming it."""
    from ._executor import RemoteItemError

    cls = type(exc)
    try:
        found: Any = importlib.import_module(cls.__module__)
        for part in cls.__qualname__.split("."):
            found = getattr(found, part)
        if found is not cls:
            raise LookupError(cls.__qualname__)
        reduced: Any = exc.__reduce_ex__(2)
        reduced[0](*reduced[1])
    except Exception:
        return RemoteItemError(f"{cls.__module__}.{cls.__qualname__}: {exc}", cls.__qualname__)
    return exc


class _Job:
    """A batch as a worker keeps it: its callables, the driver's settings and budgets, the wrappers
    of its plain functions, and the places its items may take on this worker."""

    __slots__ = ("budget", "callers", "fns", "settings", "slots")

    def __init__(self, fns: tuple[Any, ...], settings: dict[str, Any], budget: Any, slots: anyio.Semaphore) -> None:
        self.fns = fns
        self.settings = settings
        self.budget = budget
        self.callers: dict[Any, Any] = {}
        self.slots = slots


class _Inline:
    """A plain function called on the worker's event loop itself (``RayExecutor(sync_inline=True)``)."""

    __slots__ = ("__name__", "fn")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.fn(*args, **kwargs)
        if hasattr(result, "__await__"):  # a plain function that returned an awaitable
            return await result
        return result


def run_inline(fn: Any) -> Any:
    """``fn`` with its plain (sync) parts called on the loop instead of in a worker thread: a plain
    item callable, and ``Evaluate``'s plain metric."""
    from asynclm.evaluate._evaluate import _Scorer

    if isinstance(fn, _Scorer):
        if is_async_callable(fn.metric):
            return fn
        return _Scorer(fn.program, _Inline(fn.metric))
    return fn if is_async_callable(fn) else _Inline(fn)


class Worker:
    """One worker of a ``RayExecutor`` (used as a Ray actor class)."""

    def __init__(self, concurrency: int, limits: Any = None, worker_id: str = "", threads: int | None = None) -> None:
        self.concurrency = concurrency
        self.threads = threads
        if limits is not None:
            import ray

            from ._serialize import use_cluster_limits

            use_cluster_limits(limits, worker_id)
            limits.register.remote(worker_id, ray.get_runtime_context().current_actor)
        self.limits = limits
        self.worker_id = worker_id
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._slots: anyio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                ready = threading.Event()

                async def home() -> None:
                    self._loop = asyncio.get_running_loop()
                    ready.set()
                    await asyncio.Event().wait()  # runs as long as the worker (a daemon thread)

                threading.Thread(target=asyncio.run, args=(home(),), name="asynclm-worker", daemon=True).start()
                ready.wait()
            assert self._loop is not None
            return self._loop

    async def run_chunk(
        self, job_ref: list[Any], chunk: list[tuple[int, int, Any]], timeout: float | None, share: int
    ) -> dict[str, Any]:
        """Run a chunk's items on the worker's own loop (cancelling this cancels them there)."""
        future = asyncio.run_coroutine_threadsafe(self._run_chunk(job_ref, chunk, timeout, share), self._own_loop())
        result: dict[str, Any] = await asyncio.wrap_future(future)
        return result

    async def _job(self, ref: Any, share: int) -> _Job:
        key = ref.hex()
        job = self._jobs.get(key)
        if job is None:
            fns, settings, budget, inline = await ref
            job = self._jobs.get(key)  # another chunk of the batch may have got here first
            if job is None:
                if inline:
                    fns = tuple(run_inline(fn) for fn in fns)
                job = self._jobs[key] = _Job(fns, settings, budget, anyio.Semaphore(share))
                while len(self._jobs) > _JOBS_KEPT:
                    self._jobs.popitem(last=False)
        return job

    async def _run_chunk(
        self, job_ref: list[Any], chunk: list[tuple[int, int, Any]], timeout: float | None, share: int
    ) -> dict[str, Any]:
        job = await self._job(job_ref[0], share)
        fns, settings, budget, callers, share_slots = job.fns, job.settings, job.budget, job.callers, job.slots
        if self._slots is None:
            self._slots = anyio.Semaphore(self.concurrency)
            if self.threads is not None:  # plain functions (metrics) run in at most this many threads at once
                anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        slots = self._slots
        out: list[tuple[bool, Any]] = [(False, None)] * len(chunk)

        async def one(k: int, index: int, fi: int, args: Any) -> None:
            # this batch's share of its concurrency on this worker, then the worker's own bound
            async with share_slots, slots:
                try:
                    value = await call_item(callers, fi, fns[fi], args, index, timeout)
                except Exception as exc:
                    out[k] = (False, portable_error(exc))
                    return
                out[k] = (True, value)

        remote = None
        with context(**settings), track_usage() as usage, ExitStack() as stack:
            if budget is not None:  # the driver's usage_limits blocks, as accounts in the limiter actor
                remote = RemoteBudget(self.limits, budget[0], budget[1], self.worker_id)
                stand_in = UsageLimits()
                stand_in.remote = remote
                stack.enter_context(stand_in)
            async with anyio.create_task_group() as tg:
                for k, (index, fi, args) in enumerate(chunk):
                    tg.start_soon(one, k, index, fi, args)
        if remote is not None and remote.used:
            # the actor runs this worker's calls in order: once this returns, every settle sent
            # above is counted, so the driver's figures after the batch include them
            await self.limits.flush.remote()
        return {"items": out, "usage": usage.by_model() if usage.calls else None, "cache_hits": usage.cache_hits}

    def apply_pause(self, key: str, seconds: float) -> None:
        """Another worker got a 429 with Retry-After from this LM: hold back this worker's requests too."""
        from ._limits import apply_pause

        apply_pause(key, seconds)

    def ping(self) -> int:
        import os

        return os.getpid()
