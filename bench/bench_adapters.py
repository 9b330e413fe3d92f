"""Adapter benchmark: format + parse of a 2-input/2-output signature, in µs per operation.

The signature is ``question: str, context: list[str] -> answer: str, confidence: float`` (with a
``ge``/``le`` constraint). "round trip" is ``format(sig, demos, inputs)`` followed by
``parse(sig, completion)`` — the adapter work of one LM call. Each figure is the best of
``--repeat`` runs of ``--number`` calls, in process CPU time (the machine is shared; the minimum
is the least noisy). The last column divides by an in-run baseline, ``json.dumps`` of the
formatted messages plus ``json.loads`` of a JSON completion: numbers from different runs are
comparable through that ratio.
The "new Signature object" row rebuilds the signature for every call (its fields, and their
cached validators, are reused), to show what the per-signature template cache saves.

    python bench/bench_adapters.py
    python bench/bench_adapters.py --number 5000 --repeat 7
"""

from __future__ import annotations

import argparse
import json
import time
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
    # CPU time of this process: robust to being descheduled on a shared machine.
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rows: list[tuple[str, float]] = []
    baseline_messages = ChatAdapter().format(SIG, [], INPUTS)
    baseline_completion = json.dumps(OUTPUTS)

    def baseline() -> object:
        json.dumps(baseline_messages)
        return json.loads(baseline_completion)

    rows.append(("baseline: json.dumps(messages) + json.loads(completion)", _time(baseline, args.number, args.repeat)))
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
            sig = Signature.from_fields(SIG.fields.values(), SIG.instructions)  # empty template cache
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
            (f"{name} round trip, new Signature object", _time(cold, max(n // 10, 50), r)),
        ]

    width = max(len(label) for label, _ in rows)
    base = rows[0][1]
    print(f"{'operation':<{width}}  {'µs/op':>7}  {'× baseline':>10}")
    for label, us in rows:
        print(f"{label:<{width}}  {us:7.1f}  {us / base:10.1f}")
    print("goal: round trip (format + parse) <= 50 µs")


if __name__ == "__main__":
    main()
