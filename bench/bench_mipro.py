"""MIPROv2 compile wall time, asynclm vs DSPy, against a server with 50 ms latency (issue 13).

    python -m bench.bench_mipro                    # auto="light"; DSPy at 16 and 32 threads
    python -m bench.bench_mipro --threads 8,16,32 --repeat 3
    python -m bench.bench_mipro --smoke            # small data, 5 ms latency: checks the harness

The server (a ``FakeOpenAIServer`` in its own process) plays the task model and the prompt model
of ``bench/mipro_task.py``; each side runs in a fresh interpreter, one after the other: asynclm
(``trials_in_flight`` 4 and 1, ``concurrency=32``) and DSPy's ``MIPROv2`` (from
``bench/.venv-dspy``, made by ``python -m bench``, with optuna added; ``--dspy-python`` to use
another). Both compile with ``auto="light"`` and ``seed=0`` on the same data (50 train, 100
validation: minibatches of 35, 10 trials), without a cache; the compiled program is then scored
on 50 held-out examples. Prints a markdown table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import BENCH_DIR, ROOT, run_json

SERVE_READY = "port "


def serve(latency: float) -> None:
    """Run the fake server until stdin closes; print ``port N`` once it listens."""
    from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, Reply
    from bench import mipro_task

    def respond(request: FakeRequest) -> Reply:
        return Reply(text=Fields(mipro_task.answer(request.inputs, request.messages)).render(request))

    with FakeOpenAIServer(respond, latency=latency) as server:
        print(f"{SERVE_READY}{server.port}", flush=True)
        sys.stdin.read()


def run_asynclm(spec: dict[str, Any]) -> dict[str, Any]:
    import asynclm
    from bench import mipro_task

    task = asynclm.LM("openai/task", base_url=spec["url"], api_key="k", cache=False)
    prompt = asynclm.LM("openai/prompt", base_url=spec["url"], api_key="k", cache=False)
    data = mipro_task.splits(**spec.get("sizes", {}))
    train, val, test = ([asynclm.Example(**d).with_inputs("word") for d in data[k]] for k in ("train", "val", "test"))
    mipro = asynclm.MIPROv2(
        mipro_task.exact,
        prompt_model=prompt,
        task_model=task,
        auto=spec["auto"],
        trials_in_flight=spec["trials_in_flight"],
        concurrency=spec["concurrency"],
        seed=spec["seed"],
    )
    t0 = time.perf_counter()
    best = mipro.compile.sync(asynclm.Predict("word -> answer"), trainset=train, valset=val)
    wall = time.perf_counter() - t0
    with asynclm.context(lm=task):
        result = asynclm.Evaluate(devset=test, metric=mipro_task.exact, progress=False).sync(best)
    return {"wall_s": wall, "test_score": result.score, "val_score": best.score, "program_runs": best.total_calls}


def _start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_mipro", "serve", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(SERVE_READY):
        proc.kill()
        raise RuntimeError(f"the MIPROv2 bench server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line[len(SERVE_READY) :])}/v1"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(float(argv[1]))
        return
    if argv[:1] == ["asynclm"]:
        print(json.dumps(run_asynclm(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mipro", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="16,32", help="DSPy's num_threads settings to try")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--skip-dspy", action="store_true")
    parser.add_argument("--dspy-python", default=None, help="a Python with dspy and optuna installed")
    parser.add_argument("--out", default=None, help="where to write the JSON (default: bench/results/)")
    args = parser.parse_args(argv)
    latency = 0.005 if args.smoke else 0.05
    sizes = {"n_train": 20, "n_val": 60, "n_test": 20} if args.smoke else {}
    base = {"auto": "light", "seed": 0, "sizes": sizes}

    rows: list[tuple[str, dict[str, Any]]] = []
    for k in (4, 1):
        rows.append((f"asynclm trials_in_flight={k}, concurrency=32", {"side": "asynclm", "trials_in_flight": k}))
    dspy_python = args.dspy_python or str(BENCH_DIR / ".venv-dspy" / "bin" / "python")
    if not args.skip_dspy and not Path(dspy_python).exists():
        print(f"DSPy rows skipped: no {dspy_python} (run `python -m bench` once to make it)", file=sys.stderr)
    elif not args.skip_dspy:
        for t in (int(x) for x in args.threads.split(",")):
            rows.append((f"DSPy MIPROv2 num_threads={t}", {"side": "dspy", "threads": t}))

    proc, url = _start_server(latency)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in rows}
    try:
        for _ in range(args.repeat):
            for label, row in rows:  # interleaved across repeats: background load hits all alike
                spec = {**base, "url": url}
                if row["side"] == "asynclm":
                    spec.update(trials_in_flight=row["trials_in_flight"], concurrency=32)
                    cmd = [sys.executable, "-m", "bench.bench_mipro", "asynclm", json.dumps(spec)]
                else:
                    spec.update(threads=row["threads"])
                    cmd = [dspy_python, str(BENCH_DIR / "dspy_mipro_baseline.py"), json.dumps(spec)]
                try:
                    results[label].append(run_json(cmd, timeout=1800))
                except RuntimeError as exc:
                    print(f"{label}: failed: {exc}", file=sys.stderr)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)

    print(f"\nMIPROv2 auto='light' compile, server latency {latency * 1000:.0f} ms (median of {args.repeat})\n")
    print("| run | compile wall s | held-out score | val score |")
    print("|---|---|---|---|")
    summary: dict[str, Any] = {}
    for label, runs in results.items():
        if not runs:
            print(f"| {label} | failed | | |")
            continue
        wall = statistics.median(r["wall_s"] for r in runs)
        test = statistics.median(r["test_score"] for r in runs)
        val = statistics.median(r["val_score"] for r in runs)
        summary[label] = {"wall_s": wall, "test_score": test, "val_score": val, "runs": runs}
        print(f"| {label} | {wall:.2f} | {test:.1f} | {val:.1f} |")
    out = (
        Path(args.out)
        if args.out
        else BENCH_DIR / "results" / f"mipro-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"latency": latency, "rows": summary}, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
