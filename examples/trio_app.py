"""asynclm under trio: await, batch, streaming, cancellation and blocking code in worker threads.

    pip install trio
    python examples/trio_app.py                                  # embedded model: asynclm[local]
    python examples/trio_app.py --model openai/gpt-4o-mini       # uses $OPENAI_API_KEY

asynclm is written against AnyIO, so the same program runs on trio and on asyncio with no change:
the HTTP connections, locks and limiters it needs are created inside whichever loop is running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import trio

import asynclm as alm

QUESTIONS = ["What is the capital of Italy?", "What is 7 times 6?", "Which planet is largest?"]


def make_lm(model: str, base_url: str | None) -> alm.LM:
    """``local/...`` is the embedded llama.cpp model; anything else an OpenAI-compatible server."""
    if model.startswith("local/"):
        return alm.LocalLM(model)
    return alm.LM(model, base_url=base_url)


qa = alm.Predict("question -> answer")


def legacy_report(questions: list[str]) -> list[str]:
    """Blocking code that was written before the rest went async. It runs in a worker thread
    (below), where ``.sync`` runs the program back on the trio loop that started the thread."""
    return [f"{q} {qa.sync(question=q).answer}" for q in questions]


async def main(model: str, base_url: str | None, deadline: float) -> None:
    alm.configure(lm=make_lm(model, base_url))

    # 1. One call.
    pred = await qa(question=QUESTIONS[0])
    print("answer:", pred.answer)

    # 2. Many calls at once: a batch is tasks in one nursery (a task group), in input order.
    started = time.perf_counter()
    preds = await qa.batch([{"question": q} for q in QUESTIONS], concurrency=8)
    print(f"batch of {len(preds)} in {time.perf_counter() - started:.2f} s:", [p.answer for p in preds])

    # 3. Streaming: output fields as the LM writes them, then the Prediction. aclosing() closes the
    # stream (and its HTTP response) when the block ends, even on break or error.
    stream = alm.streamify(qa)(question="Describe trio in one sentence.")
    async with contextlib.aclosing(stream) as items:
        async for item in items:
            if isinstance(item, alm.StreamChunk):
                print(f"  [{item.field}] {item.text!r}")
            else:
                print("streamed:", item.answer)

    # 4. Cancellation is trio's own: leaving the scope cancels the request in flight (the server
    # sees the connection close); nothing keeps running in the background. (cache=False: a cached
    # answer from an earlier run would arrive before any deadline; the deadline is far shorter
    # than writing a long essay takes any model.)
    with trio.move_on_after(deadline) as scope:
        await qa(question="Write a very long essay about patience.", config={"max_tokens": 2000, "cache": False})
    print("essay:", f"cancelled after {deadline} s" if scope.cancelled_caught else "finished in time")

    # 5. Blocking code in a trio worker thread still reaches the program through .sync.
    for line in await trio.to_thread.run_sync(legacy_report, QUESTIONS[:2]):
        print("legacy:", line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="asynclm under trio.")
    default = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "local/gemma-3-270m"
    parser.add_argument("--model", default=os.environ.get("ASYNCLM_MODEL", default))
    parser.add_argument("--base-url", default=os.environ.get("ASYNCLM_BASE_URL"), help="the server's /v1 URL")
    parser.add_argument("--deadline", type=float, default=0.3, help="seconds before the essay is cancelled")
    args = parser.parse_args()
    trio.run(main, args.model, args.base_url, args.deadline)
