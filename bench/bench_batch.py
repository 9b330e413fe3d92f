"""A two-step program over many items through ``BatchLM`` against the fake provider (issue 16).

    python -m bench.bench_batch                         # 10 000 items x 2 steps, batch delay 1 s
    python -m bench.bench_batch --items 1000 --smoke    # quick check of the harness
    python -m bench.bench_batch --provider anthropic    # through Message Batches instead

The server (a ``FakeOpenAIServer`` in its own process, ``batch_delay`` seconds per provider batch)
answers OpenAI's files + batches endpoints (or Anthropic's Message Batches). Each backend runs in a fresh interpreter:
``TwoStep().batch(items, concurrency=None)`` with ``BatchLM(window, poll_interval)`` and a fresh
cache directory; then the baseline, the same items through the plain LM (no batching, ordinary
chat-completion requests to the same server, ``--baseline-concurrency`` at once, a fresh cache
directory too); then a BatchLM row with ``--small`` items (1 000), where the client's CPU is small
beside the model.

It explains the wall time. Per provider round (one program step of every item) it prints the
phases, from BatchLM's history and the fake provider's own timings (wall clock, same machine):
the client building and parking the requests, the window, submitting (JSONL + upload + create +
journal), the provider (its delay and its CPU answering the lines), waiting for the next poll,
downloading + parsing (+ cache writes), then waking. Beside the measured wall it prints the
model ``rounds x (window + delay + poll)`` and that model plus the client's and the fake server's
measured CPU, and the client CPU per LM call beside the plain LM's in the same run.
JSON to bench/results/.
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
    return {"answer": inputs.get("draft", "").upper()}  # (the warm-up call has no fields)


def serve(delay: float) -> None:
    """The fake provider; each ``stats`` line on stdin prints its CPU so far and its batches' timings."""
    from asynclm.testing import FakeOpenAIServer, Fields

    with FakeOpenAIServer(Fields(_fields), batch_delay=delay) as server:
        print(f"{SERVE_READY}{server.port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                # the bench's view into its own kit (absent before the phases were measured)
                timings = list(getattr(server._core.batches, "timings", ()))
                print(json.dumps({"cpu_s": time.process_time(), "batches": timings}), flush=True)


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

    model = "anthropic/claude-haiku-4-5" if spec.get("provider") == "anthropic" else "openai/gpt-4o-mini"
    lm = alm.LM(model, base_url=spec["url"], api_key="k")
    batched = spec["mode"] == "batch"
    # warm-up outside the measurement, the same for both rows: imports and the first connection
    anyio.run(lambda: lm("warm-up", cache=False), backend=spec["backend"])
    if batched:
        import filelock  # noqa: F401
        import httpx

        from asynclm.lm._transports._ssl import default_ssl_context

        # the control plane's client, once: its imports (httpcore imports trio when it is installed)
        # and the trust store are once per process, like the plain row's first connection
        anyio.run(httpx.AsyncClient(verify=default_ssl_context()).aclose, backend=spec["backend"])
        blm = alm.BatchLM(lm, window=spec["window"], poll_interval=spec["poll"])
    items = [{"question": f"q{i}"} for i in range(spec["items"])]

    async def main() -> list[Any]:
        with alm.context(lm=blm if batched else lm, cache_dir=spec["cache_dir"]):
            return await TwoStep().batch(items, concurrency=None if batched else spec["concurrency"])  # type: ignore[no-any-return]

    cpu0 = time.process_time()
    start = time.time()
    t0 = time.perf_counter()
    preds = anyio.run(main, backend=spec["backend"])
    wall = time.perf_counter() - t0
    end = time.time()
    cpu = time.process_time() - cpu0
    ok = all(p.answer == f"Q{i}!" for i, p in enumerate(preds))
    result = {
        "wall_s": wall,
        "start": start,
        "end": end,
        "cpu_s": cpu,
        "cpu_ms_per_item": cpu / len(items) * 1000,
        "cpu_us_per_call": cpu / (2 * len(items)) * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "correct": ok,
    }
    if batched:
        result["history"] = list(blm.history)
        batches = [h for h in blm.history if h["status"] in ("completed", "ended")]
        result["batches"] = len(batches)
        result["batch_sizes"] = [h["requests"] for h in batches]
    return result


class _Server:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_batch", "serve", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(SERVE_READY):
            self.proc.kill()
            raise RuntimeError(f"the batch bench server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line[len(SERVE_READY) :])}/v1"

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _rounds(row: dict[str, Any], server_batches: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The phases of each provider round, in seconds."""
    history = row["history"]
    submitted = {h["batch"]: h for h in history if h["status"] == "submitted"}
    by_id = {b["id"]: b for b in server_batches}
    rounds: list[dict[str, float]] = []
    begin = row["start"]
    for done in (h for h in history if h["status"] != "submitted"):
        sub = submitted.get(done["batch"], {})
        srv = by_id.get(done["batch"], {})
        if "submitting" not in sub or "seen" not in done or "done" not in srv:
            begin = done["time"]  # a version without the phases' timestamps
            continue
        phases = {
            "build": sub.get("last_queued", begin) - begin,
            "window": sub.get("submitting", 0) - sub.get("last_queued", 0),
            "submit": sub.get("time", 0) - sub.get("submitting", 0),
            "provider": srv.get("done", 0) - sub.get("time", 0),
            "provider_cpu": srv.get("cpu_s", 0.0),
            "poll_wait": done.get("seen", 0) - srv.get("done", 0),
            "download_parse": done.get("parsed", 0) - done.get("seen", 0),
            "wake": done["time"] - done.get("parsed", 0),
        }
        rounds.append(phases)
        begin = done["time"]
    if rounds:
        rounds[-1]["tail"] = row["end"] - begin  # the last step's parsing, results back in order
    return rounds


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(float(argv[1]))
        return
    if argv[:1] == ["client"]:
        print(json.dumps(run_client(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=None, help="default 10 000 (200 with --smoke)")
    parser.add_argument("--small", type=int, default=1000,
                        help="also a BatchLM row with this many items, where the client's CPU is small "
                             "beside the model (0: none)")  # fmt: skip
    parser.add_argument("--delay", type=float, default=1.0, help="the fake provider's processing time per batch")
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--provider", default="openai", choices=["openai", "anthropic"],
                        help="whose Batch API the fake provider plays (OpenAI's files + batches, or "
                             "Anthropic's Message Batches)")  # fmt: skip
    parser.add_argument("--baseline-concurrency", type=int, default=256,
                        help="calls in flight for the plain-LM baseline row")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="200 items (unless --items), 0.1 s delay/window/poll")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.delay, args.window, args.poll = args.items or 200, 0.1, 0.1, 0.1
    args.items = args.items or 10_000
    if args.smoke:
        args.small = 0
    server = _Server(args.delay)
    rows: list[dict[str, Any]] = []
    runs = [("batch", args.items)] + ([] if args.no_baseline else [("plain", args.items)])
    if args.small:
        runs.append(("batch", args.small))
    try:
        for backend in args.backends.split(","):
            for mode, items in runs:
                with tempfile.TemporaryDirectory() as cache_dir:
                    spec = {"url": server.url, "items": items, "window": args.window, "poll": args.poll,
                            "backend": backend, "cache_dir": cache_dir, "mode": mode, "provider": args.provider,
                            "concurrency": args.baseline_concurrency}  # fmt: skip
                    before = server.stats()
                    result = run_json([sys.executable, "-m", "bench.bench_batch", "client", json.dumps(spec)],
                                      timeout=1800)  # fmt: skip
                    after = server.stats()
                    row = {"backend": backend, "mode": mode, "items": items, **result,
                           "server_cpu_s": after["cpu_s"] - before["cpu_s"]}  # fmt: skip
                    if mode == "batch":
                        row["rounds"] = _rounds(row, after["batches"][len(before["batches"]) :])
                    rows.append(row)
    finally:
        server.close()
    model = 2 * (args.window + args.delay + args.poll)
    sizes = f"{args.items} (and {args.small})" if args.small else f"{args.items}"
    print(f"\n{sizes} items x 2 steps, batch delay {args.delay} s, window {args.window} s, "
          f"poll {args.poll} s; model 2 x (window + delay + poll) = {model:.1f} s\n")  # fmt: skip
    print("| backend | row | items | wall s | model s | model + client CPU + server CPU s | client CPU s "
          "| server CPU s | client CPU us/call | vs plain | peak RSS MB | correct |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    plain = {r["backend"]: r for r in rows if r["mode"] == "plain"}
    for r in rows:
        base = plain.get(r["backend"])
        ratio = f"{r['cpu_us_per_call'] / base['cpu_us_per_call']:.2f}x" \
            if base and r is not base and r["items"] == base["items"] else ""
        what = f"BatchLM, {r['batches']} batches ({', '.join(map(str, r['batch_sizes']))})" \
            if r["mode"] == "batch" else f"plain LM, {args.baseline_concurrency} at once"
        explained = f"{model + r['cpu_s'] + r['server_cpu_s']:.1f}" if r["mode"] == "batch" else ""
        print(f"| {r['backend']} | {what} | {r['items']} | {r['wall_s']:.1f} "
              f"| {model if r['mode'] == 'batch' else 0:.1f} | {explained} | {r['cpu_s']:.1f} "
              f"| {r['server_cpu_s']:.1f} | {r['cpu_us_per_call']:.0f} | {ratio} "
              f"| {r['peak_rss_mb']:.0f} | {r['correct']} |")  # fmt: skip
    names = ("build", "window", "submit", "provider", "provider_cpu", "poll_wait", "download_parse", "wake", "tail")
    print("\nPhases per round, seconds (build: the client runs the items' step and parks its requests; window: "
          "quiet time before submitting; submit: JSONL + upload + create + journal; provider: created -> its "
          "lines answered, of which provider_cpu is the fake server's CPU; poll_wait: answered -> the poll "
          "that saw it; download_parse: output file fetched, parsed, cached; wake: waiting calls resumed; "
          "tail: the last step's parsing and the results back)\n")  # fmt: skip
    print("| backend | items | round | " + " | ".join(names) + " | sum |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    for r in rows:
        for i, phases in enumerate(r.get("rounds", ()), 1):
            cells = [f"{phases[n]:.2f}" if n in phases else "" for n in names]
            total = sum(v for n, v in phases.items() if n != "provider_cpu")
            print(f"| {r['backend']} | {r['items']} | {i} | " + " | ".join(cells) + f" | {total:.2f} |")
    out = Path(args.out) if args.out else BENCH_DIR / "results" / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.pop("history", None)
    out.write_text(json.dumps({"args": vars(args), "model_s": model, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
