"""Evaluate over 4 000 examples: one process vs ``RayExecutor`` with 2 workers (issue 18).

    python -m bench.bench_ray                 # both metrics, all modes, 3 runs each (medians)
    python -m bench.bench_ray --n 400 --repeat 1

The metric either burns ~2 ms of pure-Python CPU per example (the GIL-bound case: heavy metrics,
parsing, retrieval) or is trivial. The server is a ``FakeOpenAIServer`` in its own process with no
latency; the program is one ``Predict``. Ray runs locally (``ray.init(num_cpus=2)``, started before
the clock starts); the workers are made and warmed by a first small run, also outside the clock.
Modes: one process; ``RayExecutor`` as it comes (a plain metric runs in the workers' threads, as
it would without the executor); ``RayExecutor(sync_inline=True)`` (the plain metric runs on the
workers' event loops). Prints each run, a markdown table of the medians with the load average
seen, and the JSON of the numbers on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from bench._common import ROOT


class Burn:
    """A metric that does ``loops`` iterations of pure-Python arithmetic (calibrated to ~2 ms)."""

    def __init__(self, loops: int) -> None:
        self.loops = loops
        self.__name__ = "burn"

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> bool:
        total = 0
        for i in range(self.loops):
            total += i * i % 7
        return bool(prediction.answer) and total >= 0


def trivial(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(prediction.answer)


def calibrate(ms: float) -> int:
    loops = 20_000
    burn = Burn(loops)

    class P:
        answer = "x"

    start = time.process_time()
    for _ in range(20):
        burn(None, P)
    per = (time.process_time() - start) / 20
    return max(1, int(loops * (ms / 1000) / per))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each row (the median is reported)")
    args = parser.parse_args()

    import ray

    import asynclm
    from asynclm.ray import RayExecutor
    from asynclm.testing import FakeOpenAIServer

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    loops = calibrate(2.0)
    server = FakeOpenAIServer.spawn(text="[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]")
    ray_mode = f"RayExecutor, {args.workers} workers"
    modes = ("one process", ray_mode, ray_mode + ", sync_inline")
    runs: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}  # ms of CPU per example, all the run's processes
    loads: list[float] = []
    try:
        lm = asynclm.LM("openai/fake", base_url=server.base_url, api_key="k", cache=False)
        program = asynclm.Predict("question -> answer", lm=lm)
        dev = [asynclm.Example(question=f"q{i}").with_inputs("question") for i in range(args.n)]
        executors = {
            ray_mode: RayExecutor(num_workers=args.workers, concurrency_per_worker=args.concurrency),
            ray_mode + ", sync_inline": RayExecutor(
                num_workers=args.workers, concurrency_per_worker=args.concurrency, sync_inline=True
            ),
        }
        for executor in executors.values():  # workers made and warm, outside the clock
            asynclm.Evaluate(devset=dev[:50], metric=trivial, progress=False, executor=executor).sync(program)
        # the processes whose CPU a run uses: this one, the server, and the mode's workers
        pids = {mode: [ray.get(w.ping.remote()) for w in ex.workers] for mode, ex in executors.items()}
        base = [os.getpid(), server.process.pid]
        # the rows alternate, so that the load of other jobs falls on all of them alike
        for _ in range(args.repeat):
            for name, metric in (("~2 ms CPU", Burn(loops)), ("trivial", trivial)):
                for mode in modes:
                    ev = asynclm.Evaluate(
                        devset=dev,
                        metric=metric,
                        concurrency=args.concurrency,
                        progress=False,
                        executor=executors.get(mode),
                    )
                    loads.append(os.getloadavg()[0])
                    procs = base + pids.get(mode, [])
                    cpu0 = sum(cpu_seconds(pid) for pid in procs)
                    start = time.perf_counter()
                    result = ev.sync(program)
                    wall = time.perf_counter() - start
                    cpu = (sum(cpu_seconds(pid) for pid in procs) - cpu0) / args.n * 1000
                    assert result.score == 100.0, result
                    runs.setdefault((name, mode), []).append(wall)
                    cpus.setdefault((name, mode), []).append(cpu)
                    print(
                        f"{name:10} {mode:42} {wall:6.2f} s  {args.n / wall:7.0f} examples/s  "
                        f"{cpu:5.2f} ms CPU/example (driver + server + workers)",
                        flush=True,
                    )
        for executor in executors.values():
            executor.shutdown()
    finally:
        server.stop()
        ray.shutdown()
    median = {key: statistics.median(walls) for key, walls in runs.items()}
    print()
    print(
        f"median of {args.repeat} runs each; load average (1 min) during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f})"
    )
    print()
    print("| metric | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for name in ("~2 ms CPU", "trivial"):
        one = median[(name, "one process")]
        cells = [f"{args.n / one:.0f}/s ({one:.2f} s)"]
        for mode in modes[1:]:
            wall = median[(name, mode)]
            cells.append(f"{args.n / wall:.0f}/s ({wall:.2f} s): **{one / wall:.2f}×**")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("CPU per example (ms, median; driver + server + the mode's workers):")
    for name in ("~2 ms CPU", "trivial"):
        print(f"  {name}: " + ", ".join(f"{mode}: {statistics.median(cpus[(name, mode)]):.2f}" for mode in modes))
    rows = [
        {
            "metric": name,
            "mode": mode,
            "seconds": [round(w, 2) for w in walls],
            "median_s": round(median[(name, mode)], 2),
        }
        for (name, mode), walls in runs.items()
    ]
    print(json.dumps({"n": args.n, "loops": loops, "cpus": os.cpu_count(), "load": loads, "rows": rows}))


if __name__ == "__main__":
    main()
