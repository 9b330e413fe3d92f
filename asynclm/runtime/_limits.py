"""Limits that hold process-wide: across tasks, threads, ``.sync()`` portals and both backends.

An ``anyio.CapacityLimiter`` belongs to one event loop: shared between loops it hangs. These keep
their state under a ``threading.Lock`` and wake each waiter on its *own* loop with that loop's
thread-safe scheduler.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

import anyio

from ._backends import current_waker

__all__ = ["ConcurrencyLimiter", "CrossLoopEvent", "RateLimiter"]


class _Waiter:
    __slots__ = ("event", "granted", "thread", "wake")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.wake: Callable[[Callable[[], object]], object] = current_waker()
        self.thread = threading.get_ident()
        self.granted = False

    def notify(self) -> bool:
        if threading.get_ident() == self.thread:
            self.event.set()  # same thread, so same (running) loop
            return True
        try:
            self.wake(self.event.set)
        except Exception:  # that loop has ended; its task is gone
            return False
        return True


class CrossLoopEvent:
    """A one-shot event awaited on the loop that made it and set from any thread.

    Make it in the task that will wait (it binds to that task's event loop, asyncio or trio), then
    ``await event.wait()`` there; ``event.set()`` may be called from any thread, any loop. For
    waits on state that many loops share (a process-wide budget): register the event under the
    state's lock, so that no change is missed, and wait outside it.
    """

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter = _Waiter()

    def set(self) -> bool:
        """Wake the waiter; ``False`` if its loop has ended."""
        return self._waiter.notify()

    async def wait(self) -> None:
        await self._waiter.event.wait()


class ConcurrencyLimiter:
    """At most ``total`` holders at once, process-wide, first come first served.

    ``async with limiter: ...``. Cancelling a waiter removes it; cancelling a holder releases its
    slot. ``peak`` records the most holders seen at once (for tests and benchmarks).
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {total}")
        self.total = total
        self.borrowed = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self) -> None:
        with self._lock:
            if self.borrowed < self.total and not self._waiters:
                self.borrowed += 1
                self.peak = max(self.peak, self.borrowed)
                return
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    self.borrowed -= 1
                    return
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot moves to the waiter; borrowed is unchanged
            if waiter.notify():
                return
            # its loop is gone: give the slot to the next waiter

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class RateLimiter:
    """A continuously refilled token bucket, process-wide.

    ``rate`` tokens per second, at most ``burst`` stored (default: one second's worth, at least
    one). ``acquire`` takes ``cost`` tokens, sleeping on the caller's own loop until the bucket
    has them; the balance may go negative, so a cost above ``burst`` waits rather than deadlocks.

    ``pause`` (a 429 with ``Retry-After``) delays everyone by the pause: callers already
    waiting are shifted by it, keeping their spacing, so the end of a pause is not a stampede.
    ``adjust`` gives back or takes tokens once the real cost is known (tokens per minute).
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"a rate limit must be > 0 per second, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._shift = 0.0  # total seconds of pause so far
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens now; return how many seconds the caller must wait before using them."""
        return self._reserve(cost)[0]

    def _reserve(self, cost: float) -> tuple[float, float]:
        with self._lock:
            now = time.monotonic()
            self._refill(now)
            self._tokens -= cost
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(wait, self._paused_until - now), self._shift

    def adjust(self, delta: float) -> None:
        """Give back (``delta > 0``) or take (``delta < 0``) tokens after the fact."""
        with self._lock:
            self._refill(time.monotonic())
            self._tokens = min(self.burst, self._tokens + delta)

    def pause(self, seconds: float) -> None:
        """Make every caller, waiting or to come, wait ``seconds`` more from now."""
        with self._lock:
            now = time.monotonic()
            until = now + seconds
            extra = until - max(self._paused_until, now)
            if extra <= 0:
                return
            self._paused_until = until
            self._shift += extra
            self._refill(now)
            self._tokens -= extra * self.rate

    def paused_for(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - time.monotonic())

    async def acquire(self, cost: float = 1.0) -> None:
        delay, shift = self._reserve(cost)
        try:
            while delay > 0:
                await anyio.sleep(delay)
                with self._lock:
                    delay, shift = self._shift - shift, self._shift  # pauses that began meanwhile
        except BaseException:
            self.adjust(cost)  # cancelled before use: refund
            raise
