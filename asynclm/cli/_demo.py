"""``asynclm demo``: a small program, start to finish, with timings and token usage."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._main import make_lm

QUESTIONS = [
    "What is the capital of France?",
    "What color is the sky on a clear day?",
    "How many legs does a spider have?",
    "What is the largest planet in the solar system?",
    "Which animal is known as the king of the jungle?",
    "What is the boiling point of water in Celsius?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "What gas do plants take in from the air?",
    "Who wrote Romeo and Juliet?",
    "What is the opposite of hot?",
    "What is the chemical symbol for gold?",
]


def _questions(start: int, count: int) -> list[str]:
    return [QUESTIONS[(start + i) % len(QUESTIONS)] for i in range(count)]


def _clip(text: Any, width: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs)

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def run_demo(args: argparse.Namespace) -> int:
    import anyio

    lm = make_lm(args.model, args.base_url, args.threads)
    # The demo shows real calls: no cached answers from an earlier run.
    lm.cache = False
    return int(anyio.run(_demo, args, lm, backend=args.backend))


async def _demo(args: argparse.Namespace, lm: Any) -> int:
    from asynclm.lm import AuthenticationError, LMConnectionError, LMTimeoutError, track_usage
    from asynclm.lm._local import LocalLM
    from asynclm.modules import Module, Predict
    from asynclm.runtime import context

    out = sys.stdout
    started = time.perf_counter()
    print(f"asynclm demo on {lm.model} ({args.backend})", file=out)
    if isinstance(lm, LocalLM):
        from asynclm.lm._local import model_dir

        c = lm.server.config
        first = c.model_path is None and not any(model_dir().glob("*.gguf"))
        print(
            f"Starting the embedded llama.cpp server ({c.threads} thread(s), {c.parallel} slots)"
            + ("; this first run also assembles the 253 MB model file..." if first else "..."),
            file=out,
            flush=True,
        )
        t0 = time.perf_counter()
        await lm.start()
        print(f"  ready in {time.perf_counter() - t0:.1f} s at {lm.base_url}", file=out)
        print(
            "  (Gemma 3 270M is a tiny base model: expect odd answers. The demo shows the machinery:\n"
            "  schema-constrained JSON through Predict, concurrent calls, timings, token usage.)",
            file=out,
        )

    qa = Predict("question -> answer")
    with context(lm=lm), track_usage() as total:
        print(f"\n1. {args.questions} question(s), one at a time:  qa = Predict('question -> answer')", file=out)
        for q in _questions(0, args.questions):
            t0 = time.perf_counter()
            pred = await qa(question=q)
            took = time.perf_counter() - t0
            tokens = pred.usage.total_tokens if pred.usage is not None else 0
            print(f"   {q}\n   -> {_clip(pred.answer, 70)}   ({took:.1f} s, {tokens} tokens)", file=out, flush=True)

        class Timed(Module):
            """Runs the predictor and measures each call (a module composed of a module)."""

            def __init__(self) -> None:
                super().__init__()
                self.qa = qa

            async def forward(self, question: str) -> tuple[Any, float]:
                t0 = time.perf_counter()
                pred = await self.qa(question=question)
                return pred, time.perf_counter() - t0

        questions = _questions(args.questions, args.batch_size)
        print(
            f"\n2. A batch of {len(questions)}, {args.concurrency} at a time:  "
            f"await qa.batch(questions, concurrency={args.concurrency}, progress=True)",
            file=out,
            flush=True,
        )
        t0 = time.perf_counter()
        results = await Timed().batch(
            [{"question": q} for q in questions],
            concurrency=args.concurrency,
            return_exceptions=True,
            progress=not args.no_progress,
        )
        batch_wall = time.perf_counter() - t0

    for r in results:  # a server that is down or refuses us is a setup problem, not a row
        if isinstance(r, (LMConnectionError, LMTimeoutError, AuthenticationError)):
            raise r
    rows = []
    busy = 0.0
    completion = 0
    processed = 0
    for i, (q, r) in enumerate(zip(questions, results, strict=True), 1):
        if isinstance(r, BaseException):
            rows.append([str(i), _clip(q, 44), _clip(f"error: {type(r).__name__}: {r}", 40), "-", "-"])
            continue
        pred, took = r
        busy += took
        usage = pred.usage
        completion += usage.completion_tokens if usage is not None else 0
        processed += usage.total_tokens if usage is not None else 0
        rows.append(
            [str(i), _clip(q, 44), _clip(pred.answer, 40), f"{took:.1f}", str(usage.total_tokens if usage else 0)]
        )
    print("\n" + _table(["#", "question", "answer", "seconds", "tokens"], rows, right={0, 3, 4}), file=out)
    used = total.usage
    print(
        f"\nBatch: {batch_wall:.1f} s wall for {busy:.1f} s of calls ({busy / batch_wall if batch_wall else 0:.1f}x "
        f"overlap); {processed / batch_wall if batch_wall else 0:.0f} tokens/s processed, "
        f"{completion / batch_wall if batch_wall else 0:.1f} generated.",
        file=out,
    )
    print(
        f"Total: {time.perf_counter() - started:.1f} s; {used.total_tokens} tokens "
        f"({used.prompt_tokens} prompt + {used.completion_tokens} completion) in "
        f"{sum(m['calls'] for m in total.by_model().values())} calls.",
        file=out,
    )
    failed = sum(isinstance(r, BaseException) for r in results)
    if failed:
        print(f"{failed} of {len(results)} batch item(s) failed (see the table).", file=out)
    return 0
