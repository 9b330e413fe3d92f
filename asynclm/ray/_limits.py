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

* ``usage_limits``: the driver's active blocks become accounts in the actor for as long as a batch
  runs under them (batches running at once under one block share its account). A worker's
  request is checked against its own blocks (any opened inside the program), then reserved in
  the accounts before each attempt, by the same code as in one process (``lm._budget``:
  ``Ticket.decide``, ``release``), so the same limits, waiting and documented overshoot bound
  hold across all workers together; its usage replaces the reservation when it ends. At the end
  of the batch the driver adds what the accounts used to its blocks' figures.

The actor's calls are short and never wait: a worker that finds no free slot (or a request that
fits a budget only once requests in flight end) polls again after a few milliseconds (so a
cancelled request never leaves a slot leased to nobody).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from asynclm.lm._budget import _FIGURES, Ticket, UsageLimitExceeded, UsageLimits, release
from asynclm.lm._models import Usage
from asynclm.runtime import RateLimiter

__all__ = ["LeasedRate", "LeasedSlots", "LimitsActor", "RemoteBudget"]

_POLL = 0.005  # seconds between polls for a free slot
_POLL_MAX = 0.05


class LimitsActor:
    """The limiter actor (one per ``RayExecutor``): slots and token buckets per LM configuration."""

    def __init__(self) -> None:
        self._slots: dict[str, list[int]] = {}  # key -> [total, leased, peak]
        self._buckets: dict[tuple[str, str], RateLimiter] = {}
        self._workers: dict[str, Any] = {}
        self._accounts: dict[str, list[Any]] = {}  # key -> [block, batches open on it, figures reported]
        self._claims: dict[int, tuple[str, Ticket]] = {}  # claim -> (worker id, its reservation)
        self._claim_count = 0

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

    # -- usage_limits accounts ---------------------------------------------------------------------

    def budget_open(self, chain: list[tuple[str, dict[str, Any]]]) -> None:
        """A batch starts under the driver's blocks ``chain`` (key, ``_budget.snapshot``)."""
        for key, state in chain:
            account = self._accounts.get(key)
            if account is None:
                block = UsageLimits(*(state[name] for name in _LIMITS))
                for name in _FIGURES:
                    setattr(block, name, state[name])
                block.exceeded = state["exceeded"]
                account = self._accounts[key] = [block, 0, {name: state[name] for name in _FIGURES}]
            account[1] += 1

    def budget_close(self, keys: list[str]) -> list[dict[str, Any]]:
        """A batch under ``keys`` ended: what each account used since it was last reported."""
        out = []
        for key in keys:
            account = self._accounts[key]
            block, reported = account[0], account[2]
            now = {name: getattr(block, name) for name in _FIGURES}
            out.append(
                {
                    **{name: now[name] - reported[name] for name in _FIGURES},
                    "peak_in_flight": block.peak_in_flight,
                    "exceeded": block.exceeded,
                }
            )
            account[2] = now
            account[1] -= 1
            if not account[1]:  # reservations still out (cancelled chunks) settle on the orphaned block
                del self._accounts[key]
        return out

    def budget_reserve(
        self, keys: list[str], worker_id: str, estimate: tuple[float, float, float, bool, bool], model: tuple[str, str]
    ) -> Any:
        """Reserve a worker's request in the accounts ``keys``: a claim (int); ``None``: it fits
        once requests in flight end (ask again); or the ``UsageLimitExceeded`` to raise."""
        inp, out, cost, first, stream = estimate
        blocks = tuple(self._accounts[key][0] for key in keys)
        ticket = Ticket(_Model(*model), blocks, inp, out, cost, first, stream)  # type: ignore[arg-type]
        try:
            if ticket.decide() is not None:
                return None
        except UsageLimitExceeded as exc:
            return exc
        self._claim_count += 1
        self._claims[self._claim_count] = (worker_id, ticket)
        return self._claim_count

    def budget_settle(self, claim: int, usage: tuple[int, int, int] | None, cost: float | None) -> None:
        found = self._claims.pop(claim, None)
        if found is not None:
            used = (
                None
                if usage is None
                else Usage(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=usage[2])
            )
            release(found[1], used, cost)

    def budget_drop_worker(self, worker_id: str) -> None:
        """A worker died: its requests in flight count as having used their estimates (their real
        usage is lost with it)."""
        for claim, (owner, ticket) in list(self._claims.items()):
            if owner == worker_id:
                del self._claims[claim]
                estimate = Usage(
                    prompt_tokens=round(ticket.input),
                    completion_tokens=round(ticket.output),
                    total_tokens=round(ticket.input + ticket.output),
                )
                release(ticket, estimate, ticket.cost)

    def budget_stats(self) -> dict[str, int]:
        """Accounts open and reservations out (for tests and monitoring)."""
        return {"accounts": len(self._accounts), "claims": len(self._claims)}

    def flush(self) -> None:
        """Returns once this actor has run every call the caller sent before it."""

    def stats(self) -> dict[str, Any]:
        """Leased and peak slots per LM configuration (for tests and monitoring)."""
        return {key: {"total": t, "leased": leased, "peak": peak} for key, (t, leased, peak) in self._slots.items()}


_LIMITS = ("max_requests", "max_input_tokens", "max_output_tokens", "max_total_tokens", "max_cost")


class _Model:
    """What a refusal's message needs of the LM, in the actor."""

    def __init__(self, model: str, model_name: str) -> None:
        self.model = model
        self.model_name = model_name


class RemoteBudget:
    """On a worker: the driver's ``usage_limits`` blocks, as accounts in the limiter actor (the
    ``remote`` of ``lm._budget``)."""

    def __init__(self, actor: Any, keys: list[str], needs_cost: bool, worker_id: str) -> None:
        self.actor = actor
        self.keys = keys
        self.needs_cost = needs_cost
        self.worker_id = worker_id
        self.used = False  # whether a request was reserved (the chunk then waits for its settles)

    async def reserve(self, ticket: Ticket) -> int:
        poll = _POLL
        estimate = (ticket.input, ticket.output, ticket.cost, ticket.first, ticket.stream)
        model = (ticket.lm.model, ticket.lm.model_name)
        while True:
            with anyio.CancelScope(shield=True):  # a claim must not be lost
                answer = await self.actor.budget_reserve.remote(self.keys, self.worker_id, estimate, model)
            if isinstance(answer, UsageLimitExceeded):
                raise answer
            if answer is not None:
                self.used = True
                return int(answer)
            await anyio.sleep(poll)
            poll = min(_POLL_MAX, poll * 2)

    def settle(self, claim: int, usage: Usage | None, cost: float | None) -> None:
        used = None if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        self.actor.budget_settle.remote(claim, used, cost)


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
