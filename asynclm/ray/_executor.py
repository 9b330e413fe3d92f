"""``RayExecutor``: a batch's items on Ray actors, with ``run_items``'s contract kept on the driver."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread

from asynclm.lm._budget import merge, snapshot
from asynclm.runtime import Progress, current_settings
from asynclm.runtime._executor import ItemResults
from asynclm.runtime._parallel import check_args

__all__ = ["RayExecutor", "RemoteItemError"]

logger = logging.getLogger("asynclm.ray")

# settings that stay on the driver: the executor itself, and the backend (workers run asyncio)
_LOCAL_SETTINGS = ("executor", "backend")


class RemoteItemError(Exception):
    """An item failed on a worker with an exception that could not travel back to the driver.

    Attributes:
        type_name: the qualified name of the original exception's class.
    """

    def __init__(self, message: str, type_name: str = "") -> None:
        super().__init__(message, type_name)
        self.type_name = type_name

    def __str__(self) -> str:
        return str(self.args[0])


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("asynclm.ray.RayExecutor needs Ray: pip install 'asynclm[ray]' (or pip install ray)") from exc
    return ray


class RayExecutor:
    """Run ``Module.batch``, ``Parallel``, ``Evaluate`` and the optimizers' evaluations on Ray actors.

    ``await program.batch(items, executor=RayExecutor(num_workers=4))`` or, for everything in a
    block, ``with asynclm.context(executor=ex): ...``. Results, their order, ``max_errors``,
    ``return_exceptions``, the per-item ``timeout`` and ``progress`` are exactly those of a run
    without it; a failed item's exception arrives with its own type.

    Each worker is a Ray actor running one asyncio event loop with asynclm inside. The items'
    callables (the program, or Evaluate's program + metric) travel once per batch by Ray's
    serialization (cloudpickle: classes importable on the workers by reference, others by value);
    an ``LM`` travels as its constructor arguments, without its API key, which the workers read
    from their environment (``env_vars=``, or the cluster's runtime env). The driver's settings
    (``lm``, ``adapter``, ``callbacks`` that can travel, ``cache_dir``...) and ``context()``
    overrides go with each batch. Items go out in chunks, so the driver holds a bounded window of
    work in flight; a worker that dies has its unfinished chunks run again on a fresh worker (each
    item's result is taken once); cancelling the batch on the driver cancels the remote work.

    Args:
        num_workers: how many actors.
        concurrency_per_worker: the most items in flight in one worker.
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``...); ``None``: the Ray
            session already running in this process, else a new local one (``ray.init()``).
        num_cpus_per_worker: the CPU each actor reserves; fractional by default, so that there
            may be more workers than cores (I/O-bound work).
        chunk_size: the most items per chunk sent to a worker (a worker runs at most its share of
            the batch's ``concurrency`` at once and queues the rest).
        env_vars: environment variables for the workers (for instance an API key read from the
            driver's environment); passed through Ray's runtime env, never stored with a program.
        runtime_env: a Ray runtime env for the workers (``env_vars`` is merged into it).
        threads_per_worker: the most worker threads a worker runs plain (sync) functions in at
            once — metrics, ``def forward`` programs (anyio's default is 40). CPU-bound functions
            in many threads of one process fight over its GIL with Ray's own threads; ``None``:
            anyio's default.
        sync_inline: call plain (sync) functions — a metric, a plain item function — on the
            worker's event loop instead of in a worker thread. Faster for pure-CPU functions (no
            thread hop, no GIL ping-pong between the loop and the threads), but such a function
            then holds up the worker's other items while it runs, and must neither block on I/O
            nor call ``.sync()`` (which raises inside a running loop). Off by default, so that a
            batch behaves exactly as without the executor.
    """

    def __init__(
        self,
        num_workers: int = 2,
        concurrency_per_worker: int = 256,
        address: str | None = None,
        *,
        num_cpus_per_worker: float = 0.25,
        chunk_size: int = 64,
        env_vars: Mapping[str, str] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        threads_per_worker: int | None = 4,
        sync_inline: bool = False,
    ) -> None:
        for name, value in (
            ("num_workers", num_workers),
            ("concurrency_per_worker", concurrency_per_worker),
            ("chunk_size", chunk_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RayExecutor({name}={value!r}): use an int >= 1")
        if not (isinstance(num_cpus_per_worker, (int, float)) and num_cpus_per_worker >= 0):
            raise ValueError(f"RayExecutor(num_cpus_per_worker={num_cpus_per_worker!r}): use a number >= 0")
        self.num_workers = num_workers
        self.concurrency_per_worker = concurrency_per_worker
        self.address = address
        self.num_cpus_per_worker = float(num_cpus_per_worker)
        self.chunk_size = chunk_size
        if threads_per_worker is not None and (not isinstance(threads_per_worker, int) or threads_per_worker < 1):
            raise ValueError(f"RayExecutor(threads_per_worker={threads_per_worker!r}): use an int >= 1, or None")
        self.threads_per_worker = threads_per_worker
        self.sync_inline = bool(sync_inline)
        env = dict(runtime_env or {})
        if env_vars:
            env["env_vars"] = {**dict(env.get("env_vars") or {}), **dict(env_vars)}
        self._runtime_env = env or None
        self._workers: list[Any] = []
        self._limits: Any = None  # the limiter actor
        self._count = 0
        self._names: dict[int, str] = {}  # id(actor handle) -> worker id
        self._lock = threading.Lock()
        self.restarts = 0  # workers replaced after they died
        self.peak_items_out = 0  # the most items a batch had sent and not yet had back (its window)

    def __repr__(self) -> str:
        return (
            f"RayExecutor(num_workers={self.num_workers}, concurrency_per_worker={self.concurrency_per_worker}, "
            f"address={self.address!r})"
        )

    # -- the actors -----------------------------------------------------------------------------

    def _new_worker(self) -> Any:
        ray = _import_ray()
        from ._worker import Worker

        options: dict[str, Any] = {"num_cpus": self.num_cpus_per_worker, "max_concurrency": 10_000}
        if self._runtime_env:
            options["runtime_env"] = self._runtime_env
        self._count += 1
        actor = ray.remote(Worker).options(**options)
        handle = actor.remote(self.concurrency_per_worker, self._limits, f"w{self._count}", self.threads_per_worker)
        self._names[id(handle)] = f"w{self._count}"
        return handle

    def _start(self) -> list[Any]:
        """Join or start Ray and make the actors (blocking: call it in a worker thread)."""
        with self._lock:
            ray = _import_ray()
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            from asynclm.lm import LM

            from ._serialize import lm_config, lm_from_config

            ray.util.register_serializer(LM, serializer=lm_config, deserializer=lm_from_config)
            if self._limits is None:
                from ._limits import LimitsActor

                self._limits = ray.remote(LimitsActor).options(num_cpus=0).remote()
            while len(self._workers) < self.num_workers:
                self._workers.append(self._new_worker())
            return list(self._workers)

    def _replace(self, dead: Any) -> Any:
        with self._lock:
            # its requests in flight leave the budgets' accounts (counted at their estimates)
            self._limits.budget_drop_worker.remote(self._names.pop(id(dead), ""))
            for i, worker in enumerate(self._workers):
                if worker is dead:
                    self._workers[i] = self._new_worker()
                    self.restarts += 1
                    logger.warning("asynclm.ray: a worker died; its unfinished items run again on a new one")
                    return self._workers[i]
            return next(w for w in self._workers)

    def shutdown(self) -> None:
        """Kill the actors (a later batch makes new ones). The Ray session itself is left running."""
        with self._lock:
            if self._workers:
                ray = _import_ray()
                for worker in [*self._workers, self._limits]:
                    try:
                        ray.kill(worker)
                    except Exception:
                        pass
            self._workers = []
            self._limits = None

    def limit_stats(self) -> dict[str, Any]:
        """The limiter actor's figures: slots leased and their peak, per LM configuration."""
        if self._limits is None:
            return {}
        ray = _import_ray()
        stats: dict[str, Any] = ray.get(self._limits.stats.remote())
        return stats

    @property
    def workers(self) -> list[Any]:
        """The actor handles (for tests and monitoring)."""
        return list(self._workers)

    # -- the batch ------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        ray = _import_ray()
        snapshot = current_settings()
        shipped: dict[str, Any] = {}
        for name in type(snapshot).__dataclass_fields__:
            if name in _LOCAL_SETTINGS:
                continue
            value = getattr(snapshot, name)
            if name == "callbacks":
                kept = []
                for callback in value:
                    try:
                        ray.put(callback)
                    except Exception as exc:
                        logger.warning("asynclm.ray: callback %r stays here (cannot travel: %s)", callback, exc)
                    else:
                        kept.append(callback)
                value = tuple(kept)
            elif value is not None:
                try:
                    ray.put(value)
                except Exception as exc:
                    logger.warning("asynclm.ray: setting %s stays on the driver (cannot travel: %s)", name, exc)
                    continue
            shipped[name] = value
        return shipped

    async def run_items(
        self,
        items: Sequence[tuple[Callable[..., Any], Any]],
        *,
        concurrency: int | None,
        max_errors: int | None = 0,
        return_exceptions: bool = False,
        timeout: float | None = None,
        progress: bool | Progress = False,
        on_result: Callable[[int, Any, BaseException | None], None] | None = None,
    ) -> list[Any]:
        """``asynclm.runtime.run_items`` on the actors (see ``RayExecutor``)."""
        n = len(items)
        if n == 0:
            return []
        fn_index: dict[int, int] = {}
        fns: list[Callable[..., Any]] = []
        for i, (fn, args) in enumerate(items):
            check_args(args, i)
            if id(fn) not in fn_index:
                fn_index[id(fn)] = len(fns)
                fns.append(fn)
        ray = _import_ray()
        await anyio.to_thread.run_sync(self._start)
        settings = self._settings()
        blocks = _budget_blocks()
        budget = None
        if blocks:  # the driver's usage_limits blocks hold across the workers: accounts in the limiter actor
            budget = ([f"{id(b):x}" for b in blocks], any(b.max_cost is not None for b in blocks))
            chain = [(key, snapshot(b)) for key, b in zip(budget[0], blocks, strict=True)]
            with anyio.CancelScope(shield=True):  # opened means closed below: never left half done
                await anyio.to_thread.run_sync(ray.get, self._limits.budget_open.remote(chain))
        outcomes = ItemResults(
            n, max_errors=max_errors, return_exceptions=return_exceptions, progress=progress, on_result=on_result
        )
        pending: dict[Any, tuple[int, Any, tuple[int, int]]] = {}  # ref -> (position, worker, (start, end))
        try:
            job = await anyio.to_thread.run_sync(ray.put, (tuple(fns), settings, budget, self.sync_inline))
            # The batch's concurrency is split into a share per worker (the shares add up to it, so
            # the bound holds across workers); a worker runs at most its share of the batch's items
            # at once and queues the rest of its chunks. So chunks can be large (few round trips,
            # little per-chunk work) and still keep every worker busy: each worker has at most
            # enough chunks to fill its share plus one, which bounds the items out at once to
            # concurrency + 2 * chunk size per worker (the driver's window).
            bound = min(n if concurrency is None else concurrency, self.num_workers * self.concurrency_per_worker)
            active = min(self.num_workers, bound)
            shares = [bound // active + (i < bound % active) for i in range(active)]
            size = max(1, min(self.chunk_size, math.ceil(n / (2 * active))))
            ahead = [math.ceil(share / size) + 1 for share in shares]
            todo: deque[tuple[int, int]] = deque((start, min(start + size, n)) for start in range(0, n, size))
            load = [0] * active  # chunks out, per worker position
            deaths = 0
            out = 0  # items out

            def send() -> None:
                nonlocal out
                while todo:
                    pos = min(range(active), key=lambda i: load[i] / ahead[i])
                    if load[pos] >= ahead[pos]:
                        return
                    start, end = todo.popleft()
                    chunk = [(i, fn_index[id(items[i][0])], items[i][1]) for i in range(start, end)]
                    worker = self._workers[pos]
                    ref = worker.run_chunk.remote([job], chunk, timeout, shares[pos])
                    pending[ref] = (pos, worker, (start, end))
                    load[pos] += 1
                    out += end - start
                    self.peak_items_out = max(self.peak_items_out, out)

            send()
            while pending and outcomes.fatal is None:
                done = await anyio.to_thread.run_sync(_wait, ray, list(pending), abandon_on_cancel=True)
                for ref, ok, value in done:
                    pos, worker, (start, end) = pending.pop(ref)
                    load[pos] -= 1
                    out -= end - start
                    if not ok:
                        if isinstance(value, ray.exceptions.RayActorError):
                            deaths += 1
                            if deaths > 3 * self.num_workers:  # a chunk that kills every worker it reaches
                                raise RuntimeError(
                                    f"RayExecutor: {deaths} workers died during this batch (last: {value}); "
                                    "an item may be killing them (out of memory?): run it locally to see"
                                ) from value
                            if self._workers[pos] is worker:  # not replaced yet (by this batch or another)
                                await anyio.to_thread.run_sync(self._replace, worker)
                            todo.appendleft((start, end))
                            continue
                        cause = getattr(value, "cause", None)  # a RayTaskError: the worker code's own error
                        raise cause if isinstance(cause, BaseException) else value
                    if value["usage"]:
                        roll_up(value["usage"], value["cache_hits"])
                    for index, (item_ok, item) in zip(range(start, end), value["items"], strict=True):
                        if item_ok:
                            outcomes.ok(index, item)
                        elif outcomes.failed(index, item):
                            break
                    if outcomes.fatal is not None:
                        break
                if outcomes.fatal is None:
                    send()
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            outcomes.close()
            if budget is not None:
                with anyio.CancelScope(shield=True):  # the figures come back even when cancelled
                    deltas = await anyio.to_thread.run_sync(ray.get, self._limits.budget_close.remote(budget[0]))
                for block, delta in zip(blocks, deltas, strict=True):
                    merge(block, delta)
        return outcomes.value()


def roll_up(by_model: dict[str, dict[str, Any]], cache_hits: int) -> None:
    """Add a chunk's usage (counted on a worker) to the driver's enclosing ``track_usage`` blocks."""
    from asynclm.lm import _usage

    tracker = _usage._current.get()
    with _usage._LOCK:
        while tracker is not None:
            for model, row in by_model.items():
                tracker.prompt_tokens += row["prompt_tokens"]
                tracker.completion_tokens += row["completion_tokens"]
                tracker.total_tokens += row["total_tokens"]
                tracker.calls += row["calls"]
                if row["cost"] is None:
                    tracker.unknown_cost_calls += row["calls"]
                else:
                    tracker.known_cost += row["cost"]
                if tracker._by_model is None:
                    tracker._by_model = {}
                mine = tracker._by_model.setdefault(model, [0, 0, 0, 0, 0.0, 0])
                mine[0] += row["prompt_tokens"]
                mine[1] += row["completion_tokens"]
                mine[2] += row["total_tokens"]
                mine[3] += row["calls"]
                if row["cost"] is None:
                    mine[5] += row["calls"]
                else:
                    mine[4] += row["cost"]
            tracker.cache_hits += cache_hits
            tracker = tracker.parent


def _budget_blocks() -> list[Any]:
    """The driver's active ``usage_limits`` blocks, innermost first."""
    from asynclm.lm._budget import _current

    blocks = []
    block = _current.get()
    while block is not None:
        if block.remote is None:
            blocks.append(block)
        block = block.parent
    return blocks


def _wait(ray: Any, refs: list[Any]) -> list[tuple[Any, bool, Any]]:
    """Block until at least one chunk is done (or 0.2 s pass); fetch every finished one."""
    ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
    if not ready:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    out = []
    for ref in ready:
        try:
            out.append((ref, True, ray.get(ref)))
        except Exception as exc:
            out.append((ref, False, exc))
    return out
