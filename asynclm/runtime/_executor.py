"""The executor seam: where a batch's items run when they do not run in this event loop.

``run_items`` (and so ``Parallel``, ``Module.batch`` and ``Evaluate``) hands its items to an
executor when one is given (``executor=``) or set for the block (``asynclm.context(executor=...)``).
An executor is any object with the coroutine method below; it must keep ``run_items``'s contract:
results in input order, ``max_errors`` / ``return_exceptions`` / per-item ``timeout`` / ``progress``
as without it, each failed item's exception with its own type, and ``on_result`` called once per
item. ``asynclm.ray.RayExecutor`` is one (Ray actors, each with its own event loop).

The runtime knows nothing about language models or Ray: it only routes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ._progress import Progress
from ._settings import current_settings

__all__ = ["Executor", "current_executor"]


@runtime_checkable
class Executor(Protocol):
    """Runs ``(callable, arguments)`` items somewhere else, with ``run_items``'s semantics."""

    async def run_items(
        self,
        items: Sequence[tuple[Callable[..., Any], Any]],
        *,
        concurrency: int,
        max_errors: int | None = 0,
        return_exceptions: bool = False,
        timeout: float | None = None,
        progress: bool | Progress = False,
        on_result: Callable[[int, Any, BaseException | None], None] | None = None,
    ) -> list[Any]: ...


def current_executor(explicit: Any = None) -> Any:
    """The executor to use: ``explicit`` if given, else the ``context(executor=...)`` setting (or ``None``)."""
    if explicit is not None:
        check_executor(explicit, "executor")
        return explicit
    return current_settings().executor


def check_executor(executor: Any, what: str) -> None:
    if executor is not None and not callable(getattr(executor, "run_items", None)):
        raise TypeError(
            f"{what}={executor!r}: an executor is an object with an async run_items(...) method, "
            "such as asynclm.ray.RayExecutor(num_workers=2); or None to run in this process"
        )
