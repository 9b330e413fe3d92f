"""Parallel: run many (callable, arguments) pairs concurrently, bounded, in input order."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio

from ._executor import ItemResults, check_executor, current_executor
from ._progress import Progress
from ._sync import SyncCallable, asyncify, is_async_callable

__all__ = ["Parallel", "call_item", "call_with_args", "check_args"]


def _args_error(args: Any, index: int | None) -> TypeError:
    where = f"item {index}: " if index is not None else ""
    return TypeError(
        f"Parallel {where}arguments must be a dict (keyword arguments), a tuple (positional "
        f"arguments) or an Example; got {type(args).__name__}. Wrap a single argument as (value,)."
    )


def _valid_args(args: Any) -> bool:
    return isinstance(args, (Mapping, tuple)) or callable(getattr(args, "inputs", None))


def check_args(args: Any, index: int) -> None:
    """Raise the ``TypeError`` for item ``index``'s arguments unless they are a dict, a tuple or an
    ``Example`` (a malformed batch is a caller bug: check before running anything)."""
    if not _valid_args(args):
        raise _args_error(args, index)


def call_with_args(fn: Callable[..., Any], args: Any, index: int | None = None) -> Any:
    """Call ``fn`` with ``args`` spread the Parallel way: dict -> keywords, tuple -> positional,
    an object with ``.inputs()`` (an ``Example``) -> its inputs as keywords."""
    if isinstance(args, Mapping):
        return fn(**args)
    if isinstance(args, tuple):
        return fn(*args)
    inputs = getattr(args, "inputs", None)
    if callable(inputs):
        return fn(**dict(inputs()))
    raise _args_error(args, index)


class Parallel(SyncCallable):
    """Run ``(callable, arguments)`` pairs concurrently with a bound, returning results in input order.

    ``await Parallel(concurrency=16)(pairs)`` or ``Parallel(...).sync(pairs)``. Each pair is
    ``(callable, args)`` where ``args`` is a ``dict`` (keyword arguments), a ``tuple`` (positional
    arguments) or an ``Example`` (its inputs, as keywords). Coroutine functions and asynclm modules
    are awaited; plain functions run in worker threads (``asyncify``), so they never block the loop.

    Args:
        concurrency: the most items in flight at once; never exceeded. ``None``: no bound, every
            item starts at once (each waiting item is one cheap coroutine; what ``BatchLM`` needs,
            since a provider batch gathers the calls of all items parked at the same time).
        max_errors: how many failed items to tolerate (their slots hold ``None``); the next failure
            cancels every in-flight item and is raised with its original type. ``None`` tolerates
            any number.
        return_exceptions: never raise; each failed item's slot holds its exception object.
        timeout: a per-item deadline in seconds; an item over it is cancelled (its ``finally``
            blocks run) and fails with ``TimeoutError``.
        progress: show a progress bar (tqdm) on stderr when it is a terminal.
        executor: run the items there (``asynclm.ray.RayExecutor``) instead of in this event loop,
            with the same results, order and errors; default: the ``context(executor=...)``
            setting, else this process.

    An instance holds only its configuration: it can be awaited many times, concurrently, and
    nested inside its own items.
    """

    __slots__ = ("concurrency", "executor", "max_errors", "progress", "return_exceptions", "timeout")

    def __init__(
        self,
        concurrency: int | None = 16,
        max_errors: int | None = 0,
        return_exceptions: bool = False,
        timeout: float | None = None,
        progress: bool = False,
        executor: Any = None,
    ) -> None:
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ValueError(
                f"Parallel(concurrency={concurrency!r}): concurrency must be an int >= 1, or None for no bound"
            )
        if max_errors is not None and (not isinstance(max_errors, int) or max_errors < 0):
            raise ValueError(f"Parallel(max_errors={max_errors!r}): use an int >= 0, or None for no limit")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"Parallel(timeout={timeout!r}): the per-item timeout must be a positive number")
        self.concurrency = concurrency
        self.max_errors = max_errors
        self.return_exceptions = return_exceptions
        self.timeout = timeout
        self.progress = progress
        check_executor(executor, "Parallel(executor)")
        self.executor = executor

    def __repr__(self) -> str:
        return (
            f"Parallel(concurrency={self.concurrency}, max_errors={self.max_errors}, "
            f"return_exceptions={self.return_exceptions}, timeout={self.timeout}, progress={self.progress})"
        )

    async def __call__(self, pairs: Iterable[tuple[Callable[..., Any], Any]]) -> list[Any]:
        items = list(pairs)
        for i, pair in enumerate(items):
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0])):
                raise TypeError(f"Parallel item {i} must be a (callable, arguments) pair; got {type(pair).__name__}")
            # before running anything, whatever max_errors / return_exceptions say (they are
            # for failures of the items)
            check_args(pair[1], i)
        return await run_items(
            items,
            concurrency=self.concurrency,
            max_errors=self.max_errors,
            return_exceptions=self.return_exceptions,
            timeout=self.timeout,
            progress=self.progress,
            executor=current_executor(self.executor),
        )


async def run_items(
    items: Sequence[tuple[Callable[..., Any], Any]],
    *,
    concurrency: int | None,
    max_errors: int | None = 0,
    return_exceptions: bool = False,
    timeout: float | None = None,
    progress: bool | Progress = False,
    on_result: Callable[[int, Any, BaseException | None], None] | None = None,
    executor: Any = None,
) -> list[Any]:
    """The engine behind ``Parallel`` (and module ``batch`` / ``Evaluate``).

    With an ``executor`` (see ``runtime.Executor``) the items run there, under the same contract.

    ``concurrency`` workers pull the next index from a shared counter: no task or semaphore per
    item, so 10 000 items cost 10 000 awaits and nothing more. ``on_result(index, value, error)``
    is called as each item ends (for progress and running scores). ``concurrency=None``: one
    worker per item (no bound).
    """
    n = len(items)
    if n == 0:
        return []
    if executor is not None:
        out: list[Any] = await executor.run_items(
            items,
            concurrency=concurrency,
            max_errors=max_errors,
            return_exceptions=return_exceptions,
            timeout=timeout,
            progress=progress,
            on_result=on_result,
        )
        return out
    callers: dict[Any, Callable[..., Any]] = {}  # id(fn) -> fn itself, or fn wrapped by asyncify
    next_index = 0
    outcomes = ItemResults(
        n, max_errors=max_errors, return_exceptions=return_exceptions, progress=progress, on_result=on_result
    )

    async def worker(cancel_scope: anyio.CancelScope) -> None:
        nonlocal next_index
        while outcomes.fatal is None:
            index = next_index
            if index >= n:
                return
            next_index += 1
            fn, args = items[index]
            try:
                value = await call_item(callers, id(fn), fn, args, index, timeout)
            except Exception as exc:
                if outcomes.failed(index, exc):
                    cancel_scope.cancel()
                    return
                continue
            outcomes.ok(index, value)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(n if concurrency is None else min(concurrency, n)):
                tg.start_soon(worker, tg.cancel_scope)
    finally:
        outcomes.close()
    return outcomes.value()


async def call_item(
    callers: dict[Any, Callable[..., Any]],
    key: Any,
    fn: Callable[..., Any],
    args: Any,
    index: int,
    timeout: float | None,
) -> Any:
    """Run one item the ``Parallel`` way: ``fn`` awaited, or in a worker thread when it is plain
    (its wrapper kept in ``callers`` under ``key``), within the per-item ``timeout``."""
    caller = callers.get(key)
    if caller is None:
        caller = callers[key] = fn if is_async_callable(fn) else asyncify(fn)
    if timeout is None:
        return await call_with_args(caller, args, index)
    with anyio.move_on_after(timeout) as deadline:
        value = await call_with_args(caller, args, index)
    if deadline.cancel_called:
        # Also when the item could not be interrupted and returned late (a sync callable
        # finishes its worker thread first): over the deadline is a failure.
        raise TimeoutError(f"Parallel item {index} did not finish within {timeout} s")
    return value
