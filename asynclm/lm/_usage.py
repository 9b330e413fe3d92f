"""``track_usage()``: roll up token usage over everything run inside a block.

The tracker lives in a ``contextvars.ContextVar``. Child tasks, ``Parallel`` items,
``asyncify`` threads and ``.sync()`` portal calls all run in a *copy* of the caller's context; a
copy holds the same tracker object, so every call made anywhere under the block adds to it. The
tracker is thread-safe because those calls may run on other threads' loops at the same time.
Blocks nest: a call counts in every enclosing block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any

from ._models import Usage

__all__ = ["UsageTracker", "record_usage", "start_tracking", "stop_tracking", "track_usage"]


_LOCK = threading.Lock()


class UsageTracker:
    """The running totals of a ``track_usage`` block (read them any time, from any thread).

    Attributes:
        prompt_tokens, completion_tokens, total_tokens: summed over every call.
        calls: LM calls made, cache hits included.
        cache_hits: how many of those were served from the cache (they cost zero tokens).
        cost: the USD cost summed over every call, or ``None`` if the price of any call was
            unknown (then ``known_cost`` holds the sum over the calls whose price was known).
        known_cost: the USD cost of the calls with a known price (cache hits count 0.0).
        unknown_cost_calls: how many calls had an unknown price.
    """

    __slots__ = (
        "_by_model",
        "cache_hits",
        "calls",
        "completion_tokens",
        "known_cost",
        "parent",
        "prompt_tokens",
        "total_tokens",
        "unknown_cost_calls",
    )

    def __init__(self, parent: UsageTracker | None = None) -> None:
        self.parent = parent
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.calls = 0
        self.cache_hits = 0
        self.known_cost = 0.0
        self.unknown_cost_calls = 0
        # made on the first add: every Module call opens a tracker, most see one LM call or none
        self._by_model: dict[str, list[Any]] | None = None

    def add(self, model: str, usage: Usage, cache_hit: bool) -> None:
        cost = usage.cost
        with _LOCK:  # one lock for all trackers: a lock each is memory per call in flight
            tracker: UsageTracker | None = self
            while tracker is not None:
                tracker.prompt_tokens += usage.prompt_tokens
                tracker.completion_tokens += usage.completion_tokens
                tracker.total_tokens += usage.total_tokens
                tracker.calls += 1
                tracker.cache_hits += cache_hit
                if cost is None:
                    tracker.unknown_cost_calls += 1
                else:
                    tracker.known_cost += cost
                if tracker._by_model is None:
                    tracker._by_model = {}
                row = tracker._by_model.get(model)
                if row is None:
                    row = tracker._by_model[model] = [0, 0, 0, 0, 0.0, 0]
                row[0] += usage.prompt_tokens
                row[1] += usage.completion_tokens
                row[2] += usage.total_tokens
                row[3] += 1
                if cost is None:
                    row[5] += 1
                else:
                    row[4] += cost
                tracker = tracker.parent

    @property
    def cost(self) -> float | None:
        """The USD cost of every call, or ``None`` if any call's price was unknown."""
        with _LOCK:
            return None if self.unknown_cost_calls else self.known_cost

    @property
    def usage(self) -> Usage:
        """The totals as a ``Usage`` (with ``cost``)."""
        with _LOCK:
            cost = None if self.unknown_cost_calls else self.known_cost
            return Usage(self.prompt_tokens, self.completion_tokens, self.total_tokens, cost=cost)

    def by_model(self) -> dict[str, dict[str, Any]]:
        """Per-model totals: ``{model: {"prompt_tokens", "completion_tokens", "total_tokens", "calls",
        "cost"}}`` (``cost`` is ``None`` if any call of that model had an unknown price)."""
        with _LOCK:
            return {
                model: {
                    "prompt_tokens": p,
                    "completion_tokens": c,
                    "total_tokens": t,
                    "calls": n,
                    "cost": None if unknown else cost,
                }
                for model, (p, c, t, n, cost, unknown) in (self._by_model or {}).items()
            }

    def __repr__(self) -> str:
        return (
            f"<UsageTracker calls={self.calls} cache_hits={self.cache_hits} "
            f"prompt_tokens={self.prompt_tokens} completion_tokens={self.completion_tokens} "
            f"total_tokens={self.total_tokens} cost={self.cost!r}>"
        )


_current: ContextVar[UsageTracker | None] = ContextVar("asynclm.usage", default=None)


@contextlib.contextmanager
def track_usage() -> Iterator[UsageTracker]:
    """Count the tokens of every LM call made inside the block, wherever it runs.

    ``with asynclm.track_usage() as u: ...`` then read ``u.prompt_tokens``, ``u.completion_tokens``,
    ``u.total_tokens``, ``u.calls``, ``u.cache_hits``, ``u.cost`` (USD; ``None`` if any call's
    price was unknown) and ``u.by_model()``. Calls in child tasks,
    ``Parallel`` items, ``asyncify`` threads and ``.sync()`` calls started inside the block are
    included; calls started elsewhere (other threads, sibling tasks) are not. A plain ``with``:
    usable in sync and async code alike.
    """
    tracker, token = start_tracking()
    try:
        yield tracker
    finally:
        stop_tracking(token)


def start_tracking() -> tuple[UsageTracker, Token[UsageTracker | None]]:
    """Open a ``track_usage`` block by hand; close it with ``stop_tracking(token)``.

    For the per-call path of ``Module.__call__``: a generator-based context manager keeps a
    generator frame and its manager alive for the whole call, which adds up with thousands of
    calls in flight.
    """
    tracker = UsageTracker(_current.get())
    return tracker, _current.set(tracker)


def stop_tracking(token: Token[UsageTracker | None]) -> None:
    """Close the block opened by the ``start_tracking`` call that returned ``token``."""
    _current.reset(token)


def record_usage(model: str, usage: Usage, cache_hit: bool) -> None:
    """Add one call to the trackers of the calling context (a no-op outside any block)."""
    tracker = _current.get()
    if tracker is not None:
        tracker.add(model, usage, cache_hit)
