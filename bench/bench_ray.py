"""Evaluate over 4 000 examples: one process vs ``RayExecutor`` with 2 workers (issue 18).

    python -m bench.bench_ray                 # both metrics, both modes
    python -m bench.bench_ray --n 400         # smaller

The metric either burns ~2 ms of pure-Python CPU per example (the GIL-bound case: heavy metrics,
parsing, retrieval) or is trivial. The server is a ``FakeOpenAIServer`` in its own process with no
latency; the program is one ``Predict``. Ray runs locally (``ray.init(num_cpus=2)``, started before
the clock starts); the workers are made and warmed by a first small run, also outside the clock.
Prints a markdown table and the JSON of the numbers on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
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
    rows: list[dict[str, Any]] = []
    try:
        lm = asynclm.LM("openai/fake", base_url=server.base_url, api_key="k", cache=False)
        program = asynclm.Predict("question -> answer", lm=lm)
        dev = [asynclm.Example(question=f"q{i}").with_inputs("question") for i in range(args.n)]
        executor = RayExecutor(num_workers=args.workers, concurrency_per_worker=args.concurrency)
        asynclm.Evaluate(devset=dev[:50], metric=trivial, progress=False, executor=executor).sync(program)  # warm
        for name, metric in (("~2 ms CPU", Burn(loops)), ("trivial", trivial)):
            for mode in ("one process", f"RayExecutor, {args.workers} workers"):
                ev = asynclm.Evaluate(
                    devset=dev,
                    metric=metric,
                    concurrency=args.concurrency,
                    progress=False,
                    executor=executor if mode != "one process" else None,
                )
                start = time.perf_counter()
                result = ev.sync(program)
                wall = time.perf_counter() - start
                assert result.score == 100.0, result
                rows.append({"metric": name, "mode": mode, "seconds": round(wall, 2), "per_s": round(args.n / wall)})
                print(f"{name:10} {mode:28} {wall:6.2f} s  {args.n / wall:7.0f} examples/s", flush=True)
        executor.shutdown()
    finally:
        server.stop()
        ray.shutdown()
    print()
    print("| metric | one process | RayExecutor, 2 workers | speed-up |")
    print("|---|---|---|---|")
    for name in ("~2 ms CPU", "trivial"):
        one, two = (r for r in rows if r["metric"] == name)
        print(f"| {name} | {one['per_s']}/s ({one['seconds']} s) | {two['per_s']}/s ({two['seconds']} s) | "
              f"{one['seconds'] / two['seconds']:.2f}× |")
    print(json.dumps({"n": args.n, "loops": loops, "cpus": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
