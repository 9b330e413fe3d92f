"""A two-step program over many items through ``BatchLM`` against the fake provider (issue 16).

    python -m bench.bench_batch                         # 10 000 items x 2 steps, batch delay 1 s
    python -m bench.bench_batch --items 1000 --smoke    # quick check of the harness

The server (a ``FakeOpenAIServer`` in its own process, ``batch_delay`` seconds per provider batch)
answers OpenAI's files + batches endpoints. Each backend runs in a fresh interpreter:
``TwoStep().batch(items, concurrency=None)`` with ``BatchLM(window, poll_interval)`` and a fresh
cache directory. Reports wall time next to the model ``rounds x (window + delay + poll)``, the
provider batches created, client CPU per item and the client's peak RSS. JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import BENCH_DIR, ROOT, run_json

SERVE_READY = "port "


def _fields(inputs: dict[str, str]) -> dict[str, str]:
    if "question" in inputs:
        return {"draft": inputs["question"] + "!"}
    return {"answer": inputs["draft"].upper()}


def serve(delay: float) -> None:
    from asynclm.testing import FakeOpenAIServer, Fields

    with FakeOpenAIServer(Fields(_fields), batch_delay=delay) as server:
        print(f"{SERVE_READY}{server.port}", flush=True)
        sys.stdin.read()


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import anyio

    import asynclm as alm

    class TwoStep(alm.Module):
        def __init__(self) -> None:
            super().__init__()
            self.draft = alm.Predict("question -> draft")
            self.answer = alm.Predict("draft -> answer")

        async def forward(self, question: str) -> alm.Prediction:
            draft = (await self.draft(question=question)).draft
            return await self.answer(draft=draft)

    lm = alm.LM("openai/gpt-4o-mini", base_url=spec["url"], api_key="k")
    blm = alm.BatchLM(lm, window=spec["window"], poll_interval=spec["poll"])
    items = [{"question": f"q{i}"} for i in range(spec["items"])]

    async def main() -> list[Any]:
        with alm.context(lm=blm, cache_dir=spec["cache_dir"]):
            return await TwoStep().batch(items, concurrency=None)  # type: ignore[no-any-return]

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    preds = anyio.run(main, backend=spec["backend"])
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ok = all(p.answer == f"Q{i}!" for i, p in enumerate(preds))
    batches = [h for h in blm.history if h["status"] == "completed"]
    return {
        "wall_s": wall,
        "cpu_ms_per_item": cpu / len(items) * 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batches": len(batches),
        "batch_sizes": [h["requests"] for h in batches],
        "correct": ok,
    }


def _start_server(delay: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_batch", "serve", str(delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(SERVE_READY):
        proc.kill()
        raise RuntimeError(f"the batch bench server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line[len(SERVE_READY) :])}/v1"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(float(argv[1]))
        return
    if argv[:1] == ["client"]:
        print(json.dumps(run_client(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=1.0, help="the fake provider's processing time per batch")
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--smoke", action="store_true", help="200 items, 0.1 s delay/window/poll")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.delay, args.window, args.poll = 200, 0.1, 0.1, 0.1
    proc, url = _start_server(args.delay)
    rows: list[dict[str, Any]] = []
    try:
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory() as cache_dir:
                spec = {"url": url, "items": args.items, "window": args.window, "poll": args.poll,
                        "backend": backend, "cache_dir": cache_dir}  # fmt: skip
                result = run_json([sys.executable, "-m", "bench.bench_batch", "client", json.dumps(spec)],
                                  timeout=1800)  # fmt: skip
                rows.append({"backend": backend, **result})
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    model = 2 * (args.window + args.delay + args.poll)
    print(f"\n{args.items} items x 2 steps, batch delay {args.delay} s, window {args.window} s, "
          f"poll {args.poll} s; model 2 x (window + delay + poll) = {model:.1f} s\n")  # fmt: skip
    print("| backend | wall s | provider batches (sizes) | client CPU ms/item | peak RSS MB | correct |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['wall_s']:.1f} | {r['batches']} ({', '.join(map(str, r['batch_sizes']))}) "
              f"| {r['cpu_ms_per_item']:.2f} | {r['peak_rss_mb']:.0f} | {r['correct']} |")  # fmt: skip
    out = Path(args.out) if args.out else BENCH_DIR / "results" / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "model_s": model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
