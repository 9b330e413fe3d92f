"""Evaluate a QA program, compile it with few-shot demos, evaluate it again, save it.

    python examples/optimize_qa.py                                # embedded model: asynclm[local]
    python examples/optimize_qa.py --model openai/gpt-4o-mini     # uses $OPENAI_API_KEY
    python examples/optimize_qa.py --save qa_program.json

BootstrapFewShot runs the program (the "teacher") on the training set, keeps the runs the metric
accepts and turns them into demos. Everything is concurrent (tasks on one event loop) and still
deterministic: the same data and answers give the same compiled program at any concurrency.
LM answers are cached on disk, so running this again costs no new requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import asynclm as alm
from asynclm.evaluate import answer_exact_match

# Short answers in a fixed style ("4", not "The answer is 4."): a zero-shot model often gets the
# content right and the form wrong, which is exactly what a few demos fix.
TRAIN = [
    ("What is 2 + 2?", "4"),
    ("What is the capital of Japan?", "Tokyo"),
    ("How many days are in a week?", "7"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What is the opposite of hot?", "cold"),
    ("How many legs does a cat have?", "4"),
]
DEV = [
    ("What is 3 + 5?", "8"),
    ("What is the capital of France?", "Paris"),
    ("How many months are in a year?", "12"),
    ("What colour is grass?", "green"),
    ("What is the opposite of up?", "down"),
]


def examples(pairs: list[tuple[str, str]]) -> list[alm.Example]:
    # with_inputs marks which fields go into the program; the rest are labels for the metric.
    return [alm.Example(question=q, answer=a).with_inputs("question") for q, a in pairs]


def make_lm(model: str, base_url: str | None) -> alm.LM:
    """``local/...`` is the embedded llama.cpp model; anything else an OpenAI-compatible server."""
    if model.startswith("local/"):
        return alm.LocalLM(model)
    return alm.LM(model, base_url=base_url)


async def main(model: str, base_url: str | None, save: str | None) -> tuple[float, float]:
    alm.configure(lm=make_lm(model, base_url))
    program = alm.Predict("question -> answer")
    evaluate = alm.Evaluate(
        devset=examples(DEV), metric=answer_exact_match, concurrency=8, display_table=5, progress=True
    )

    print(f"evaluating the zero-shot program on {len(DEV)} examples...", flush=True)
    before = await evaluate(program)
    print(f"zero-shot: {before.score:.1f}%")

    optimizer = alm.BootstrapFewShot(metric=answer_exact_match, max_bootstrapped_demos=3, max_labeled_demos=3)
    print(f"bootstrapping few-shot demos from {len(TRAIN)} training examples...", flush=True)
    compiled = await optimizer.compile(program, trainset=examples(TRAIN))  # `program` itself is unchanged
    print(f"demos per predictor: {[len(p.demos) for p in compiled.predictors()]}")

    after = await evaluate(compiled)
    print(f"few-shot:  {after.score:.1f}%")

    if save:
        compiled.save(save)  # JSON: signatures and demos, never the LM or its key
        print(f"saved to {save}; load with alm.Predict('question -> answer').load({save!r})")
    return before.score, after.score


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Evaluate, compile, evaluate.")
    default = "openai/gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else "local/gemma-3-270m"
    parser.add_argument("--model", default=os.environ.get("ASYNCLM_MODEL", default))
    parser.add_argument("--base-url", default=os.environ.get("ASYNCLM_BASE_URL"), help="the server's /v1 URL")
    parser.add_argument("--save", help="write the compiled program to this JSON file")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.base_url, args.save))
