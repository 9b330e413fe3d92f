"""The Ray actor that runs a batch's items: one asyncio event loop with asynclm inside.

Ray runs an actor whose methods are coroutines on its own asyncio loop; each ``run_chunk`` call
runs its items concurrently there (``Parallel``'s rules: dict/tuple/``Example`` arguments, plain
functions in worker threads, the per-item deadline) and returns one ``(ok, value or exception)``
per item, in order. The items' callables and the driver's settings arrive once per batch (one Ray
object) and are kept while the batch runs.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any

import anyio
import anyio.to_thread

from asynclm.lm import UsageLimits, track_usage
from asynclm.runtime import context
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
        self._jobs: OrderedDict[str, tuple[tuple[Any, ...], dict[str, Any], Any, dict[int, Any]]] = OrderedDict()
        self._slots: anyio.Semaphore | None = None

    async def _job(self, ref: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any, dict[int, Any]]:
        key = ref.hex()
        job = self._jobs.get(key)
        if job is None:
            fns, settings, budget = await ref
            job = (fns, settings, budget, {})
            self._jobs[key] = job
            while len(self._jobs) > _JOBS_KEPT:
                self._jobs.popitem(last=False)
        return job

    async def run_chunk(
        self, job: list[Any], chunk: list[tuple[int, int, Any]], timeout: float | None
    ) -> dict[str, Any]:
        fns, settings, budget, callers = await self._job(job[0])
        if self._slots is None:
            self._slots = anyio.Semaphore(self.concurrency)
            if self.threads is not None:  # plain functions (metrics) run in at most this many threads at once
                anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        slots = self._slots
        out: list[tuple[bool, Any]] = [(False, None)] * len(chunk)

        async def one(k: int, index: int, fi: int, args: Any) -> None:
            async with slots:
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
