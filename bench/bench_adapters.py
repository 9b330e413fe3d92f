"""Adapter benchmark: format + parse of a 2-input/2-output signature, in µs per operation.

The signature is ``question: str, context: list[str] -> answer: str, confidence: float`` (with a
``ge``/``le`` constraint). "round trip" is ``format(sig, demos, inputs)`` followed by
``parse(sig, completion)`` — the adapter work of one LM call. Each figure is the best of
``--repeat`` runs of ``--number`` calls (the machine is shared; the minimum is the least noisy).
"Cold" rows build a new (uncached) signature object for every call, to show what the
per-signature cache saves.

    python bench/bench_adapters.py
    python bench/bench_adapters.py --number 5000 --repeat 7
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from asynclm.adapters import ChatAdapter, JSONAdapter
from asynclm.signatures import Example, InputField, OutputField, Signature


class QA(Signature):
    """Answer the question using the context."""

    question: str = InputField(desc="The question.")
    context: list[str] = InputField(desc="Supporting passages.")
    answer: str = OutputField(desc="A short answer.")
    confidence: float = OutputField(desc="Between 0 and 1.", ge=0, le=1)


SIG = Signature.ensure(QA)
INPUTS = {"question": "What is the capital of France?", "context": ["Paris is the capital of France.", "Lyon."]}
DEMOS = [
    Example(question="Capital of Italy?", context=["Rome is the capital."], answer="Rome", confidence=0.9),
    Example(question="Capital of Spain?", context=["Madrid."], answer="Madrid", confidence=0.8),
]
OUTPUTS = {"answer": "Paris", "confidence": 0.95}


def _time(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rows: list[tuple[str, float]] = []
    for adapter in (ChatAdapter(), JSONAdapter()):
        name = type(adapter).__name__
        completion = adapter.format_completion(SIG, OUTPUTS)
        assert adapter.parse(SIG, completion) == OUTPUTS

        def fmt(adapter: ChatAdapter | JSONAdapter = adapter) -> object:
            return adapter.format(SIG, [], INPUTS)

        def fmt_demos(adapter: ChatAdapter | JSONAdapter = adapter) -> object:
            return adapter.format(SIG, DEMOS, INPUTS)

        def parse(adapter: ChatAdapter | JSONAdapter = adapter, completion: str = completion) -> object:
            return adapter.parse(SIG, completion)

        def round_trip(adapter: ChatAdapter | JSONAdapter = adapter, completion: str = completion) -> object:
            adapter.format(SIG, [], INPUTS)
            return adapter.parse(SIG, completion)

        def round_trip_demos(adapter: ChatAdapter | JSONAdapter = adapter, completion: str = completion) -> object:
            adapter.format(SIG, DEMOS, INPUTS)
            return adapter.parse(SIG, completion)

        def format_completion(adapter: ChatAdapter | JSONAdapter = adapter) -> object:
            return adapter.format_completion(SIG, OUTPUTS)

        def cold(adapter: ChatAdapter | JSONAdapter = adapter, completion: str = completion) -> object:
            sig = Signature.from_fields(SIG.fields.values(), SIG.instructions)  # empty cache
            adapter.format(sig, [], INPUTS)
            return adapter.parse(sig, completion)

        n, r = args.number, args.repeat
        rows += [
            (f"{name} format (no demos)", _time(fmt, n, r)),
            (f"{name} format (2 demos)", _time(fmt_demos, n, r)),
            (f"{name} parse", _time(parse, n, r)),
            (f"{name} format_completion", _time(format_completion, n, r)),
            (f"{name} round trip: format + parse", _time(round_trip, n, r)),
            (f"{name} round trip, 2 demos", _time(round_trip_demos, n, r)),
            (f"{name} round trip, cold signature", _time(cold, max(n // 10, 50), r)),
        ]

    width = max(len(label) for label, _ in rows)
    print(f"{'operation':<{width}}  µs/op")
    for label, us in rows:
        print(f"{label:<{width}}  {us:7.1f}")
    print("goal: round trip (format + parse) <= 50 µs")


if __name__ == "__main__":
    main()
