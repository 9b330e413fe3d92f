"""Cluster-wide LM limits: one limiter actor leases capacity to the workers in small blocks.

Each worker's ``LM`` (rebuilt from its arguments, see ``_serialize``) gets, in place of its
process-local limiters, ones that take their capacity from the executor's limiter actor:

* ``max_concurrency``: a worker leases request slots (a few at a time) and keeps them while it has
  requests waiting for one; once it has none waiting it hands every idle slot back. The actor never
  leases more slots than the limit, so the requests in flight across all workers never exceed it.
* ``rpm`` / ``tpm``: the actor keeps the one token bucket (``runtime.RateLimiter``); a worker
  reserves tokens from it (one request at a time for ``rpm``, each request's estimate for ``tpm``)
  and waits the delay the bucket gives. Refunds (``tpm`` after the real usage is known) go back.
* a 429 with ``Retry-After``: the worker that got it pauses its own LM and tells the actor, which
  pauses the shared buckets and passes the pause on to every other worker.

The actor's calls are short and never wait: a worker that finds no free slot polls again after a
few milliseconds (so a cancelled request never leaves a slot leased to nobody).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from asynclm.runtime import RateLimiter

__all__ = ["LeasedRate", "LeasedSlots", "LimitsActor"]

_POLL = 0.005  # seconds between polls for a free slot
_POLL_MAX = 0.05


class LimitsActor:
    """The limiter actor (one per ``RayExecutor``): slots and token buckets per LM configuration."""

    def __init__(self) -> None:
        self._slots: dict[str, list[int]] = {}  # key -> [total, leased, peak]
        self._buckets: dict[tuple[str, str], RateLimiter] = {}
        self._workers: dict[str, Any] = {}

    def register(self, worker_id: str, handle: Any) -> None:
        self._workers[worker_id] = handle

    def lease_slots(self, key: str, total: int, want: int) -> int:
        row = self._slots.setdefault(key, [total, 0, 0])
        granted = max(0, min(want, row[0] - row[1]))
        row[1] += granted
        row[2] = max(row[2], row[1])
        return granted

    def return_slots(self, key: str, count: int) -> None:
        row = self._slots.get(key)
        if row is not None:
            row[1] = max(0, row[1] - count)

    def _bucket(self, key: str, kind: str, per_minute: float) -> RateLimiter:
        bucket = self._buckets.get((key, kind))
        if bucket is None:
            bucket = self._buckets[(key, kind)] = RateLimiter(per_minute / 60.0)
        return bucket

    def lease_tokens(self, key: str, kind: str, per_minute: float, amount: float) -> float:
        """Take ``amount`` tokens; the seconds to wait before using them."""
        return self._bucket(key, kind, per_minute).reserve(amount)

    def return_tokens(self, key: str, kind: str, per_minute: float, amount: float) -> None:
        self._bucket(key, kind, per_minute).adjust(amount)

    def pause(self, key: str, seconds: float, origin: str) -> None:
        for (k, _), bucket in self._buckets.items():
            if k == key:
                bucket.pause(seconds)
        for worker_id, handle in list(self._workers.items()):
            if worker_id != origin:
                try:
                    handle.apply_pause.remote(key, seconds)
                except Exception:  # a dead worker
                    self._workers.pop(worker_id, None)

    def stats(self) -> dict[str, Any]:
        """Leased and peak slots per LM configuration (for tests and monitoring)."""
        return {key: {"total": t, "leased": leased, "peak": peak} for key, (t, leased, peak) in self._slots.items()}


class _Pause:
    """A worker-local pause (``time.monotonic``), shared by an LM's limiters on this worker."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = 0.0

    def extend(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while True:
            delay = self.until - time.monotonic()
            if delay <= 0:
                return
            await anyio.sleep(delay)


class LeasedSlots:
    """An LM's ``max_concurrency`` on a worker, with slots leased from the limiter actor."""

    def __init__(self, actor: Any, key: str, total: int, block: int = 4) -> None:
        self.actor = actor
        self.key = key
        self.total = total
        self.block = max(1, min(block, total))
        self.held = 0
        self.used = 0
        self.waiting = 0
        self.peak = 0

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            poll = _POLL
            while self.used >= self.held:
                with anyio.CancelScope(shield=True):  # a short call: its answer must not be lost
                    granted = await self.actor.lease_slots.remote(self.key, self.total, min(self.block, self.waiting))
                self.held += granted
                if granted:
                    break
                await anyio.sleep(poll)
                poll = min(_POLL_MAX, poll * 2)
            self.used += 1
            self.peak = max(self.peak, self.used)
        finally:
            self.waiting -= 1
            self._give_back()

    def release(self) -> None:
        self.used -= 1
        self._give_back()

    def _give_back(self) -> None:
        spare = self.held - self.used - self.waiting
        if spare > 0:
            self.held -= spare
            self.actor.return_slots.remote(self.key, spare)


class LeasedRate:
    """An LM's ``rpm`` or ``tpm`` on a worker, drawing on the limiter actor's token bucket.

    With ``per_minute=None`` it only carries pauses (a 429 seen by any worker holds back all).
    """

    def __init__(
        self, actor: Any, key: str, kind: str, per_minute: float | None, pause: _Pause, worker_id: str
    ) -> None:
        self.actor = actor
        self.key = key
        self.kind = kind
        self.per_minute = per_minute
        self.balance = 0.0  # tokens leased and not yet used (negative: used beyond the lease)
        self._pause = pause
        self.worker_id = worker_id

    async def acquire(self, cost: float = 1.0) -> None:
        await self._pause.wait()
        if self.per_minute is None:
            return
        if self.balance >= cost:
            self.balance -= cost
            return
        # the tokens leased now are this caller's own, usable only after the bucket's delay
        need = cost - self.balance
        self.balance = 0.0
        with anyio.CancelScope(shield=True):
            delay = await self.actor.lease_tokens.remote(self.key, self.kind, self.per_minute, need)
        if delay > 0:
            await anyio.sleep(delay)  # cancelled here: the tokens stay leased (counted as used)
        await self._pause.wait()

    def adjust(self, delta: float) -> None:
        if self.per_minute is None:
            return
        self.balance += delta
        if self.balance > 0:  # hand back what this worker does not need now
            self.actor.return_tokens.remote(self.key, self.kind, self.per_minute, self.balance)
            self.balance = 0.0

    def pause(self, seconds: float) -> None:
        self._pause.extend(seconds)
        self.actor.pause.remote(self.key, seconds, self.worker_id)

    def paused_for(self) -> float:
        return max(0.0, self._pause.until - time.monotonic())


_PAUSES: dict[str, _Pause] = {}


def install(lm: Any, key: str, actor: Any, worker_id: str) -> None:
    """Give ``lm`` (a worker's copy) the cluster-wide limiters."""
    pause = _PAUSES.setdefault(key, _Pause())
    if lm.max_concurrency is not None:
        lm._concurrency = LeasedSlots(actor, key, lm.max_concurrency)
    lm._rpm = LeasedRate(actor, key, "rpm", lm.rpm, pause, worker_id)
    if lm.tpm is not None:
        lm._tpm = LeasedRate(actor, key, "tpm", lm.tpm, pause, worker_id)


def apply_pause(key: str, seconds: float) -> None:
    """A pause another worker reported (through the limiter actor)."""
    _PAUSES.setdefault(key, _Pause()).extend(seconds)
