"""GEPA compile wall time, asynclm vs DSPy 3.4.1, on the same task and server (``bench/_gepa_task.py``).

    python -m bench.bench_gepa [--budget 300] [--latency 0.05] [--repeat 1] [--skip-dspy]

It also checks that asynclm with ``proposals_per_round=1`` takes DSPy's steps: the same
candidates, parents, validation scores and metric calls at each discovery.

A ``FakeOpenAIServer`` in this process plays the task model and the reflection model with
``--latency`` on every call; each compile runs in a fresh interpreter: asynclm's ``GEPA`` with
``proposals_per_round`` 1 and 8, DSPy's ``dspy.GEPA`` with several ``num_threads``. Prints a
markdown table: wall time, the best validation score found, metric calls spent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bench._common import BENCH_DIR, run_json


def _client(url: str, budget: int, k: int, backend: str) -> None:
    """One asynclm compile (run in a fresh interpreter); prints its summary as JSON."""
    import anyio

    import asynclm
    from bench._gepa_task import TRAIN_WORDS, VAL_WORDS, feedback_of, result_summary, score_of

    class Pipeline(asynclm.Module):
        def __init__(self, lm: asynclm.LM) -> None:
            super().__init__()
            self.first = asynclm.Predict("question -> draft", lm=lm)
            self.second = asynclm.Predict("draft -> answer", lm=lm)

        async def forward(self, question: str) -> asynclm.Prediction:
            return await self.second(draft=(await self.first(question=question)).draft)

    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        score = score_of(gold.question, str(pred.answer))
        if pred_name is None:
            return score
        return asynclm.ScoreWithFeedback(score, feedback_of(gold.question, str(pred.answer), pred_name))

    async def main() -> dict[str, Any]:
        task = asynclm.LM("openai/task", base_url=url, api_key="k", cache=False, max_retries=0)
        reflect = asynclm.LM("openai/reflect", base_url=url, api_key="k", cache=False, max_retries=0)
        train = [asynclm.Example(question=w).with_inputs("question") for w in TRAIN_WORDS]
        val = [asynclm.Example(question=w).with_inputs("question") for w in VAL_WORDS]
        gepa = asynclm.GEPA(
            metric, reflection_lm=reflect, max_metric_calls=budget, proposals_per_round=k, seed=0, progress=False
        )
        t0 = time.perf_counter()
        best = await gepa.compile(Pipeline(task), trainset=train, valset=val)
        wall = time.perf_counter() - t0
        r = best.detailed_results
        return result_summary(
            list(r.val_aggregate_scores),
            r.total_metric_calls,
            len(r.candidates),
            wall,
            r.parents,
            r.discovery_eval_counts,
        )

    print(json.dumps(anyio.run(main, backend=backend)))


def _world() -> Any:
    from asynclm.testing import FakeRequest, Fields
    from bench._gepa_task import reflection_model, task_model

    def respond(request: FakeRequest) -> Any:
        if request.model == "reflect":
            return reflection_model(request.inputs["current_instruction"].strip(), request.last_user_message)
        return Fields(task_model(str(request.messages[0]["content"]), request.inputs))

    return respond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", default="8,32", help="DSPy num_threads values to try")
    parser.add_argument("--skip-dspy", action="store_true")
    args = parser.parse_args()

    from asynclm.testing import FakeOpenAIServer
    from bench.__main__ import dspy_python

    dspy, why = dspy_python(args.skip_dspy)
    rows: list[tuple[str, list[str]]] = [
        (
            f"asynclm GEPA proposals_per_round={k} ({backend})",
            [sys.executable, "-m", "bench.bench_gepa", "--client", str(k), backend],
        )
        for k in (1, 8)
        for backend in ("asyncio", "trio")
    ]
    if dspy is not None:
        rows += [
            (f"DSPy 3.4.1 GEPA num_threads={t}", [dspy, str(BENCH_DIR / "gepa_dspy.py"), "{url}", str(args.budget), t])
            for t in args.threads.split(",")
        ]
    else:
        print(f"DSPy: {why}", file=sys.stderr)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in rows}
    with FakeOpenAIServer(_world(), latency=args.latency) as server:
        for _ in range(args.repeat):
            for label, cmd in rows:
                cmd = [c.replace("{url}", server.base_url) for c in cmd]
                if "--client" in cmd:
                    cmd += [server.base_url, str(args.budget)]
                out = run_json(cmd, timeout=1800, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
                results[label].append(out)
                print(f"  {label}: {out}", file=sys.stderr, flush=True)
    print(
        f"\nGEPA, max_metric_calls={args.budget}, server latency {1000 * args.latency:.0f} ms, "
        f"median of {args.repeat}\n"
    )
    print("| run | wall s | best val score | metric calls | candidates |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        best = statistics.median(r["best_val_score"] for r in runs)
        print(f"| {label} | {wall:.1f} | {best:.2f} | {runs[0]['metric_calls']} | {runs[0]['candidates']} |")
    ones = [r["steps"] for label, runs in results.items() if "proposals_per_round=1" in label for r in runs]
    theirs = [r["steps"] for label, runs in results.items() if label.startswith("DSPy") for r in runs]
    if ones and theirs:
        same = all(step == ones[0] for step in ones + theirs)
        print(
            "\nasynclm with proposals_per_round=1 and DSPy found the same candidates (parents, validation scores, "
            f"metric calls at discovery): {'yes' if same else 'NO'}"
        )
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _client(sys.argv[4], int(sys.argv[5]), int(sys.argv[2]), sys.argv[3])
    else:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        main()
