"""Process-wide limiters: hold across tasks, threads, portals and both backends."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

from asynclm.runtime import ConcurrencyLimiter, RateLimiter, context, sync_twin

from .helpers import InFlight

# -- ConcurrencyLimiter -------------------------------------------------------------------------


def test_bad_limits_raise_value_error() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        ConcurrencyLimiter(0)
    with pytest.raises(ValueError, match="> 0"):
        RateLimiter(0)


async def test_concurrency_limit_holds_within_one_loop() -> None:
    limiter = ConcurrencyLimiter(3)
    gauge = InFlight()

    async def job() -> None:
        async with limiter:
            with gauge:
                await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(job)
    assert gauge.peak == 3
    assert limiter.peak == 3
    assert limiter.borrowed == 0


async def test_concurrency_limit_holds_across_threads_loops_and_backends() -> None:
    # Waiters on this test's loop, on asyncio portals and on trio portals, all at once.
    limiter = ConcurrencyLimiter(3)
    gauge = InFlight()
    done: list[int] = []

    @sync_twin
    async def job(n: int) -> None:
        for _ in range(n):
            async with limiter:
                with gauge:
                    await anyio.sleep(0.001)
            done.append(1)

    def thread_main(backend: str) -> None:
        with context(backend=backend):
            job.sync(15)

    threads = [threading.Thread(target=thread_main, args=(b,)) for b in ["asyncio", "trio"] * 3]
    for thread in threads:
        thread.start()
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(job, 15)
    await anyio.to_thread.run_sync(lambda: [t.join() for t in threads])
    assert len(done) == 150
    assert gauge.peak <= 3
    assert limiter.peak == 3
    assert limiter.borrowed == 0


async def test_cancelled_waiter_frees_nothing_it_did_not_hold() -> None:
    limiter = ConcurrencyLimiter(1)
    await limiter.acquire()
    with anyio.move_on_after(0.05) as scope:
        await limiter.acquire()
    assert scope.cancelled_caught
    assert limiter.borrowed == 1  # still held by us, not released by the cancelled waiter
    got_it = anyio.Event()

    async def next_waiter() -> None:
        async with limiter:
            got_it.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(next_waiter)
        await anyio.sleep(0.02)
        assert not got_it.is_set()  # the slot is still ours
        limiter.release()
    assert got_it.is_set()
    assert limiter.borrowed == 0


async def test_waiter_cancelled_after_being_granted_passes_the_slot_on() -> None:
    limiter = ConcurrencyLimiter(1)
    await limiter.acquire()
    outcome: list[str] = []

    async def waiter(scope_box: list[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            scope_box.append(scope)
            await limiter.acquire()
            outcome.append("acquired")
            limiter.release()
            return
        outcome.append("cancelled")

    box: list[anyio.CancelScope] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, box)
        await anyio.sleep(0.02)
        # Cancel the waiter, then hand it the slot before it gets to run: it wakes up both
        # granted and cancelled, and must pass the slot on rather than lose it.
        box[0].cancel()
        limiter.release()
    assert outcome == ["cancelled"]
    assert limiter.borrowed == 0
    with anyio.fail_after(1):
        await limiter.acquire()  # the slot is immediately available
    limiter.release()


def test_cancelled_waiter_in_another_threads_loop() -> None:
    limiter = ConcurrencyLimiter(1)
    held = threading.Event()
    release = threading.Event()

    @sync_twin
    async def hold() -> None:
        async with limiter:
            held.set()
            await anyio.to_thread.run_sync(release.wait)

    @sync_twin
    async def wait_briefly() -> bool:
        with anyio.move_on_after(0.05) as scope:
            await limiter.acquire()
        return scope.cancelled_caught

    holder = threading.Thread(target=hold.sync)
    holder.start()
    assert held.wait(5)
    with context(backend="trio"):
        assert wait_briefly.sync()
    assert limiter.borrowed == 1
    release.set()
    holder.join()
    assert limiter.borrowed == 0


# -- RateLimiter --------------------------------------------------------------------------------


async def test_rate_is_never_exceeded_across_threads() -> None:
    rate, burst, window = 40.0, 4.0, 0.5
    limiter = RateLimiter(rate, burst=burst)
    stamps: list[float] = []
    t0 = time.monotonic()

    @sync_twin
    async def taker() -> None:
        with anyio.move_on_after(window):
            while True:
                await limiter.acquire()
                stamps.append(time.monotonic() - t0)

    def thread_main(backend: str) -> None:
        with context(backend=backend):
            taker.sync()

    threads = [threading.Thread(target=thread_main, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(taker)
    await anyio.to_thread.run_sync(lambda: [t.join() for t in threads])
    # Upper bound: the burst plus the refill until the last grant. A stamp is taken after its
    # grant, so max(stamps) over-estimates that time: the bound holds whatever the machine load.
    elapsed = max(stamps)
    assert len(stamps) <= burst + rate * elapsed + 1
    assert len(stamps) >= burst  # generous lower bound: it did make progress


async def test_burst_is_available_immediately_then_spaced() -> None:
    limiter = RateLimiter(20, burst=5)
    waits = [limiter.reserve() for _ in range(8)]
    assert waits[:5] == [0.0] * 5
    assert 0 < waits[5] < waits[6] < waits[7] <= 3 / 20 + 0.05


async def test_pause_delays_new_and_waiting_callers() -> None:
    limiter = RateLimiter(1000)
    limiter.pause(0.3)
    assert 0.2 < limiter.paused_for() <= 0.3
    t0 = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - t0 >= 0.25

    # A caller already waiting is shifted by a pause that begins while it waits.
    slow = RateLimiter(10, burst=1)
    slow.reserve()
    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(slow.acquire)  # would wait ~0.1 s
        await anyio.sleep(0.02)
        slow.pause(0.3)
    assert time.monotonic() - t0 >= 0.3
    assert slow.paused_for() == 0.0


def test_shorter_pause_does_not_shorten_a_longer_one() -> None:
    limiter = RateLimiter(10)
    limiter.pause(1.0)
    limiter.pause(0.1)
    assert limiter.paused_for() > 0.8


async def test_cancelled_acquire_refunds_its_tokens() -> None:
    limiter = RateLimiter(2, burst=1)
    await limiter.acquire()  # bucket now empty
    with anyio.move_on_after(0.05):
        await limiter.acquire()  # reserved a token 0.5 s ahead, then cancelled
    # Without the refund the next caller would wait ~1 s (behind the cancelled one).
    assert limiter.reserve() < 0.6


def test_adjust_gives_back_and_takes_tokens() -> None:
    limiter = RateLimiter(100, burst=100)
    limiter.reserve(100)
    assert limiter.reserve(0) < 0.05
    limiter.adjust(-100)
    assert limiter.reserve(0) > 0.5  # in debt by ~100 tokens -> about a second
    limiter.adjust(500)  # capped at the burst
    assert limiter.reserve(100) < 0.05


def test_cost_above_burst_waits_instead_of_deadlocking() -> None:
    limiter = RateLimiter(100, burst=10)
    # The bucket holds 10: the call waits until the other 40 have refilled (0.4 s), no longer.
    assert 0.35 < limiter.reserve(50) <= 0.4
    wait: Any = limiter.reserve(1)
    assert 0.35 < wait <= 0.41
