"""The executor seam: where a batch's items run when they do not run in this event loop.

``run_items`` (and so ``Parallel``, ``Module.batch`` and ``Evaluate``) hands its items to an
executor when one is given (``executor=``) or set for the block (``asynclm.context(executor=...)``).
An executor is any object with the coroutine method below; it must keep ``run_items``'s contract:
results in input order, ``max_errors`` / ``return_exceptions`` / per-item ``timeout`` / ``progress``
as without it, each failed item's exception with its own type, and ``on_result`` called once per
item. ``asynclm.ray.RayExecutor`` is one (Ray actors, each with its own event loop).

An executor keeps the result rules with ``ItemResults`` (the one place they live; ``run_items``
uses it too), and runs each item with ``call_item`` where the item runs.

The runtime knows nothing about language models or Ray: it only routes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ._progress import Progress
from ._settings import current_settings

__all__ = ["Executor", "ItemResults", "current_executor"]


@runtime_checkable
class Executor(Protocol):
    """Runs ``(callable, arguments)`` items somewhere else, with ``run_items``'s semantics."""

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


class ItemResults:
    """``run_items``' rules for the items' outcomes, applied as each item ends, in one place for
    ``run_items`` and the executors: the results in input order, ``on_result``, the progress bar,
    ``return_exceptions`` and ``max_errors``.

    ``ok(index, value)`` and ``failed(index, exc)`` record an outcome; ``failed`` returns whether
    the batch must stop now (``max_errors`` crossed: ``fatal`` is then the error to raise, the
    first one over the limit). ``close()`` closes a bar it opened; ``value()`` raises ``fatal`` or
    returns the results.
    """

    __slots__ = ("_bar", "_own_bar", "errors", "fatal", "max_errors", "on_result", "results", "return_exceptions")

    def __init__(
        self,
        n: int,
        *,
        max_errors: int | None,
        return_exceptions: bool,
        progress: bool | Progress,
        on_result: Callable[[int, Any, BaseException | None], None] | None,
    ) -> None:
        self.results: list[Any] = [None] * n
        self.max_errors = max_errors
        self.return_exceptions = return_exceptions
        self.on_result = on_result
        self._bar = progress if isinstance(progress, Progress) else Progress.maybe(bool(progress), total=n)
        self._own_bar = self._bar is not None and self._bar is not progress
        self.errors = 0
        self.fatal: BaseException | None = None

    def ok(self, index: int, value: Any) -> None:
        self.results[index] = value
        if self.on_result is not None:
            self.on_result(index, value, None)
        if self._bar is not None:
            self._bar.update()

    def failed(self, index: int, exc: BaseException) -> bool:
        if self.on_result is not None:
            self.on_result(index, None, exc)
        if self._bar is not None:
            self._bar.update(failed=True)
        if self.return_exceptions:
            self.results[index] = exc
            return False
        self.errors += 1
        if self.max_errors is None or self.errors <= self.max_errors:
            return False
        if self.fatal is None:
            self.fatal = exc
        return True

    def close(self) -> None:
        if self._own_bar:
            self._bar.close()  # type: ignore[union-attr]

    def value(self) -> list[Any]:
        if self.fatal is not None:
            raise self.fatal
        return self.results
