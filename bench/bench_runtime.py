"""Runtime benchmark: the cost of ``.sync()``, of ``Parallel`` and of many threads calling ``.sync()``.

Three comparisons, each printed with its baseline measured in the same run (the machine is
shared: each figure is the best of ``--repeat`` runs, and only the ratios are meaningful):

1. ``.sync()`` round trip of a trivial coroutine vs a raw AnyIO blocking portal
   (``anyio.from_thread.start_blocking_portal().call``), from the main thread and from a plain
   thread, on asyncio and trio portals. Ratio = ``.sync`` time / portal time (lower is better).
2. 10 000 trivial ``Parallel`` items vs an AnyIO task-group fan-out (one task per item) and vs
   ``asyncio.gather``. Ratio = Parallel time / baseline (goal <= 1.5).
3. ``.sync()`` from 64 threads (each call ``await anyio.sleep(0.01)``) vs the same calls awaited
   by 64 tasks in one loop. Ratio = loop time / threads time, i.e. relative throughput
   (goal >= 0.8). "warm" threads already have their portal; "cold" ones are new threads that
   start one on their first call.

    python bench/bench_runtime.py
    python bench/bench_runtime.py --repeat 7 --calls 5000
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.from_thread

from asynclm.runtime import Parallel, context, sync_twin


@sync_twin
async def noop() -> None:
    return None


async def trivial(i: int) -> int:
    return i


@sync_twin
async def work() -> None:
    await anyio.sleep(0.01)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def in_thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


# -- 1. round trip ---------------------------------------------------------------------------


def round_trip(backend: str, calls: int, repeat: int) -> tuple[float, float]:
    """Seconds per call: (.sync(), raw blocking portal), from the calling thread."""
    with context(backend=backend):
        noop.sync()  # start this thread's portal outside the timing

        def via_sync() -> None:
            for _ in range(calls):
                noop.sync()

        t_sync = best(via_sync, repeat) / calls
    with anyio.from_thread.start_blocking_portal(backend) as portal:

        def via_portal() -> None:
            for _ in range(calls):
                portal.call(noop)

        via_portal()
        t_portal = best(via_portal, repeat) / calls
    return t_sync, t_portal


# -- 2. Parallel fan-out ----------------------------------------------------------------------


def fan_out(items: int, repeat: int, backend: str) -> dict[str, float]:
    pairs = [(trivial, (i,)) for i in range(items)]

    async def parallel(concurrency: int) -> None:
        out = await Parallel(concurrency=concurrency)(pairs)
        assert len(out) == items

    async def task_group() -> None:
        results: list[Any] = [None] * items

        async def one(i: int) -> None:
            results[i] = await trivial(i)

        async with anyio.create_task_group() as tg:
            for i in range(items):
                tg.start_soon(one, i)

    async def gather() -> None:
        out = await asyncio.gather(*(trivial(i) for i in range(items)))
        assert len(out) == items

    def run(coro_fn: Callable[[], Any]) -> float:
        async def main() -> float:
            await coro_fn()  # warm up in this loop
            t = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                await coro_fn()
                t.append(time.perf_counter() - t0)
            return min(t)

        return float(anyio.run(main, backend=backend))

    out = {
        "Parallel(concurrency=16)": run(lambda: parallel(16)),
        "Parallel(concurrency=1000)": run(lambda: parallel(1000)),
        "anyio task group": run(task_group),
    }
    if backend == "asyncio":
        out["asyncio.gather"] = run(gather)
    return out


# -- 3. many threads ----------------------------------------------------------------------------


def threads_vs_loop(threads: int, per_thread: int, repeat: int, backend: str) -> dict[str, float]:
    def each_thread() -> None:
        with context(backend=backend):
            for _ in range(per_thread):
                work.sync()

    def warm() -> float:
        with ThreadPoolExecutor(threads) as pool:
            barrier = threading.Barrier(threads)

            def prime() -> None:
                with context(backend=backend):
                    work.sync()
                barrier.wait()  # every pool thread gets (and keeps) its own portal

            list(pool.map(lambda _: prime(), range(threads)))

            def timed() -> None:
                list(pool.map(lambda _: each_thread(), range(threads)))

            return best(timed, repeat)

    def cold() -> float:
        def timed() -> None:
            ts = [threading.Thread(target=each_thread) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        return best(timed, repeat)

    async def one_loop() -> float:
        async def task() -> None:
            for _ in range(per_thread):
                await work()

        async def round_() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(threads):
                    tg.start_soon(task)

        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            await round_()
            t.append(time.perf_counter() - t0)
        return min(t)

    return {
        "one loop, 64 tasks": float(anyio.run(one_loop, backend=backend)),
        "64 threads .sync() (warm)": warm(),
        "64 threads .sync() (cold)": cold(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per timing")
    parser.add_argument("--items", type=int, default=10_000, help="Parallel items")
    parser.add_argument("--per-thread", type=int, default=20, help=".sync() calls per thread")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", default="asyncio,trio")
    args = parser.parse_args()
    backends = args.backends.split(",")

    print("1. .sync() round trip of a trivial coroutine (µs/call; ratio = .sync / raw blocking portal)")
    for backend in backends:
        main_sync, main_portal = round_trip(backend, args.calls, args.repeat)
        thread_sync, thread_portal = in_thread(lambda b=backend: round_trip(b, args.calls, args.repeat))
        for where, s, p in (("main thread", main_sync, main_portal), ("plain thread", thread_sync, thread_portal)):
            print(f"   {backend:7} {where:12}  .sync {s * 1e6:7.1f}   portal.call {p * 1e6:7.1f}   ratio {s / p:5.2f}")

    print(f"\n2. {args.items} trivial items, one loop (ms; ratio = time / anyio task group, goal <= 1.5)")
    for backend in backends:
        times = fan_out(args.items, args.repeat, backend)
        base = times["anyio task group"]
        gather = times.get("asyncio.gather")
        for name, t in times.items():
            extra = f"   vs gather {t / gather:5.2f}" if gather else ""
            print(f"   {backend:7} {name:28} {t * 1e3:8.1f}   ratio {t / base:5.2f}{extra}")

    n = 64 * args.per_thread
    print(
        f"\n3. {n} calls of `await anyio.sleep(0.01)`, 64 at a time "
        f"(ideal {args.per_thread * 10} ms; ratio = one-loop time / time, goal >= 0.8)"
    )
    for backend in backends:
        times = threads_vs_loop(64, args.per_thread, args.repeat, backend)
        base = times["one loop, 64 tasks"]
        for name, t in times.items():
            print(f"   {backend:7} {name:28} {t * 1e3:8.1f}   ratio {base / t:5.2f}")


if __name__ == "__main__":
    main()
