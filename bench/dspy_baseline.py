"""The DSPy baseline: one measurement, printed as a JSON line. Runs inside ``bench/.venv-dspy``
(DSPy 3.4.1, made by ``python -m bench``); it imports neither asynclm nor anything from
``bench``, so it needs nothing but DSPy.

    bench/.venv-dspy/bin/python bench/dspy_baseline.py '{"scenario": "conc", "mode": "acall",
        "url": "http://127.0.0.1:PORT/v1", "n": 1000, "concurrency": 64, "question": "...", "answer": "Paris"}'

Scenarios: ``import`` (seconds to ``import dspy``), ``seq`` (sequential ``acall``), ``conc``
(``mode`` ``acall``: ``await predict.acall`` under an ``asyncio.Semaphore``; ``mode``
``parallel``: ``dspy.Parallel(num_threads=concurrency)``), ``parallel`` (trivial items through
``dspy.Parallel``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup at import


def _import_time() -> dict[str, float]:
    t0 = time.perf_counter()
    import dspy  # type: ignore[import-not-found]  # noqa: F401

    return {"s": time.perf_counter() - t0}


def _setup(spec: dict[str, Any]) -> Any:
    import dspy

    lm = dspy.LM("openai/x", api_base=spec["url"], api_key="k", cache=False, num_retries=0)
    dspy.configure(lm=lm)
    return dspy.Predict("question -> answer")


def _check(pred: Any, spec: dict[str, Any]) -> None:
    if pred.answer != spec["answer"]:
        raise RuntimeError(f"DSPy answered {pred.answer!r}, expected {spec['answer']!r}")


def _seq(spec: dict[str, Any]) -> dict[str, float]:
    import asyncio

    predict = _setup(spec)
    q, n = spec["question"], spec["n"]

    async def main() -> dict[str, float]:
        for _ in range(min(20, n)):
            _check(await predict.acall(question=q), spec)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await predict.acall(question=q)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {"us_per_call": 1e6 * wall / n, "cpu_us_per_call": 1e6 * cpu / n}

    return asyncio.run(main())


def _conc(spec: dict[str, Any]) -> dict[str, float]:
    import asyncio

    import dspy

    predict = _setup(spec)
    q, n, c = spec["question"], spec["n"], spec["concurrency"]
    if spec["mode"] == "acall":

        async def main() -> tuple[float, float]:
            sem = asyncio.Semaphore(c)

            async def one() -> None:
                async with sem:
                    await predict.acall(question=q)

            _check(await predict.acall(question=q), spec)
            await asyncio.gather(*(one() for _ in range(c)))  # warm-up: open the pool
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return time.perf_counter() - t0, time.process_time() - cpu0

        wall, cpu = asyncio.run(main())
    else:
        parallel = dspy.Parallel(num_threads=c, disable_progress_bar=True)
        _check(predict(question=q), spec)
        parallel([(predict, {"question": q})] * c)  # warm-up: threads and connections
        cpu0, t0 = time.process_time(), time.perf_counter()
        out = parallel([(predict, {"question": q})] * n)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if sum(p is not None for p in out) != n:
            raise RuntimeError("dspy.Parallel lost items")
    return {"calls_per_s": n / wall, "cpu_ms_per_call": 1000 * cpu / n, "wall_s": wall}


def _parallel(spec: dict[str, Any]) -> dict[str, float]:
    import dspy

    items = spec["n"]

    def trivial(i: int) -> int:
        return i

    pairs = [(trivial, (i,)) for i in range(items)]
    parallel = dspy.Parallel(num_threads=spec["concurrency"], disable_progress_bar=True)
    parallel(pairs)
    t0 = time.perf_counter()
    out = parallel(pairs)
    ms = 1000 * (time.perf_counter() - t0)
    if out[-1] != items - 1:
        raise RuntimeError("dspy.Parallel returned wrong results")
    return {"ms": ms}


def main() -> None:
    spec = json.loads(sys.argv[1])
    fn = {"import": lambda s: _import_time(), "seq": _seq, "conc": _conc, "parallel": _parallel}[spec["scenario"]]
    print(json.dumps(fn(spec)))


if __name__ == "__main__":
    main()
