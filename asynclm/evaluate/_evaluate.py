"""``Evaluate``: run a program over a dev set concurrently and score it with a metric."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread

from asynclm.runtime import Progress, SyncCallable, asyncify, current_executor, is_async_callable, run_items
from asynclm.runtime._executor import check_executor
from asynclm.signatures import Example, Prediction

from ._metrics import answer_exact_match, answer_passage_match
from ._table import format_table

__all__ = ["Evaluate", "EvaluationResult", "call_metric", "metric_name", "metric_score"]

logger = logging.getLogger("asynclm.evaluate")

Metric = Callable[..., Any]


def metric_score(value: Any, metric: Any = None) -> float:
    """A metric's result as a float: ``bool`` -> 0.0/1.0, numbers as they are, and an object with
    a ``score`` (``Prediction(score=...)``, as ``SemanticF1`` returns) -> that score."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    score = getattr(value, "score", None) if not isinstance(value, str) else None
    if score is not None:
        return metric_score(score, metric)
    try:
        return float(value)  # numpy scalars, Decimal, Fraction ...
    except (TypeError, ValueError):
        name = metric_name(metric) if metric is not None else "the metric"
        raise TypeError(
            f"{name} returned {value!r} ({type(value).__name__}); a metric must return a number, a bool, "
            "or an object with a numeric .score"
        ) from None


def metric_name(metric: Any) -> str:
    name = getattr(metric, "__name__", None)
    return str(name) if isinstance(name, str) else type(metric).__name__


# asynclm's own string metrics: pure and fast, so they run inline (a thread hop costs more).
_INLINE_METRICS: frozenset[Any] = frozenset({answer_exact_match, answer_passage_match})


async def call_metric(metric: Metric, *args: Any) -> Any:
    """Call ``metric(*args)``: awaited when it is async; asynclm's own string metrics are called
    inline; any other plain function runs in a worker thread (it may block or call ``.sync()``;
    in a worker thread neither stalls the event loop)."""
    if is_async_callable(metric):
        return await metric(*args)
    if metric in _INLINE_METRICS:
        return metric(*args)
    result = await asyncify(metric)(*args)
    if hasattr(result, "__await__"):  # a plain function that returned an awaitable
        return await result
    return result


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What ``Evaluate`` returns.

    Attributes:
        score: the mean metric score as a percentage (0–100), rounded to 2 decimals; failed
            examples count as ``failure_score``.
        results: ``(example, prediction, score)`` per dev-set example, in dev-set order. A failed
            example has an empty ``Prediction()`` and ``failure_score``.
        errors: dev-set index -> the exception that made that example fail (program or metric).
    """

    score: float
    results: list[tuple[Example, Any, float]]
    errors: dict[int, Exception] = dataclasses.field(default_factory=dict)

    @property
    def scores(self) -> list[float]:
        """The per-example scores, in dev-set order."""
        return [score for _, _, score in self.results]

    def __float__(self) -> float:
        return self.score

    def __repr__(self) -> str:
        return (
            f"EvaluationResult(score={self.score}, results=<{len(self.results)} results>, "
            f"errors=<{len(self.errors)} errors>)"
        )


def check_examples(items: Iterable[Any], who: str, what: str) -> list[Example]:
    """The examples as a list, each checked to be an ``Example`` with input keys (shared with the optimizers)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"{who}: {what} must be a list of Example objects; got {type(items).__name__}")
    examples = list(items)
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(
                f"{who}: {what}[{i}] is a {type(ex).__name__}; use asynclm.Example(...).with_inputs(...)"
            )
        if ex.input_keys is None:
            raise ValueError(
                f"{who}: {what}[{i}] has no input keys; build it with Example(...).with_inputs('question', ...)"
            )
    return examples


def _check_devset(devset: Iterable[Any]) -> list[Example]:
    examples = check_examples(devset, "Evaluate", "devset")
    if not examples:
        raise ValueError("Evaluate: the devset is empty; give at least one Example")
    return examples


class Evaluate(SyncCallable):
    """Run a program on every example of a dev set, concurrently, and score it with a metric.

    ``result = await Evaluate(devset=dev, metric=m)(program)`` (or ``.sync(program)``) calls
    ``program(**example.inputs())`` for each example, then ``metric(example, prediction)``, and
    returns an ``EvaluationResult`` whose ``score`` is the mean as a percentage.

    Args:
        devset: ``Example`` objects with input keys set.
        metric: ``metric(example, prediction, trace=None) -> float | bool`` (or an object with a
            ``.score``), a plain or ``async`` function. Plain functions run in a worker thread
            (so they may block, or call ``.sync()``), except asynclm's own string metrics. A
            result of another type is a bug in the metric: ``TypeError`` is raised at once.
        concurrency: the most examples in flight at once; ``None``: no bound (for a ``BatchLM``).
            (A call's ``concurrency=None`` means the Evaluate's own setting.)
        max_errors: how many failed examples (the program or the metric raised) to tolerate, each
            scoring ``failure_score``. The next failure cancels the examples in flight (their LM
            requests are aborted) and is raised with its original type. ``None``: no limit.
        progress: show a progress bar with the running score (tqdm, on stderr, only when it is a
            terminal).
        display_table: after the run, print the first N rows as a plain-text table (``True``: all
            rows; ``0``/``False``: none).
        failure_score: the score of a failed example.
        save_as_csv, save_as_json: write one row per example (example fields, prediction fields,
            then the score under the metric's name) to this file.
        timeout: a per-example deadline in seconds (a timed-out example fails with
            ``TimeoutError`` and counts against ``max_errors``).
        file: where ``display_table`` prints (default ``sys.stdout``).
        executor: run the examples there (``asynclm.ray.RayExecutor``): the program and the metric
            run on its workers, the scores are summed here. Default: the ``context(executor=...)``
            setting, else this process.

    ``metric``, ``devset``, ``concurrency``, ``progress``, ``display_table``, ``save_as_csv`` and
    ``save_as_json`` can be overridden per call:
    ``await ev(program, metric=other, devset=subset, concurrency=4, display_table=5)``.
    An instance holds only configuration: it may be awaited many times, concurrently.
    """

    def __init__(
        self,
        *,
        devset: Iterable[Example],
        metric: Metric | None = None,
        concurrency: int | None = 32,
        max_errors: int | None = None,
        progress: bool = True,
        display_table: bool | int = 0,
        failure_score: float = 0.0,
        save_as_csv: str | os.PathLike[str] | None = None,
        save_as_json: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        file: TextIO | None = None,
        executor: Any = None,
    ) -> None:
        _check_concurrency(concurrency)
        check_executor(executor, "Evaluate(executor)")
        if max_errors is not None and (not isinstance(max_errors, int) or max_errors < 0):
            raise ValueError(f"Evaluate(max_errors={max_errors!r}): use an int >= 0, or None for no limit")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"Evaluate(timeout={timeout!r}): the per-example timeout must be a positive number")
        self.devset = _check_devset(devset)
        self.metric = metric
        self.concurrency = concurrency
        self.max_errors = max_errors
        self.progress = progress
        self.display_table = display_table
        self.failure_score = float(failure_score)
        self.save_as_csv = save_as_csv
        self.save_as_json = save_as_json
        self.timeout = timeout
        self.file = file
        self.executor = executor

    def __repr__(self) -> str:
        metric = metric_name(self.metric) if self.metric is not None else None
        return (
            f"Evaluate(devset=<{len(self.devset)} examples>, metric={metric}, concurrency={self.concurrency}, "
            f"max_errors={self.max_errors})"
        )

    async def __call__(
        self,
        program: Callable[..., Any],
        *,
        metric: Metric | None = None,
        devset: Iterable[Example] | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        display_table: bool | int | None = None,
        save_as_csv: str | os.PathLike[str] | None = None,
        save_as_json: str | os.PathLike[str] | None = None,
    ) -> EvaluationResult:
        metric = metric if metric is not None else self.metric
        if metric is None:
            raise TypeError("Evaluate needs a metric: Evaluate(devset=..., metric=fn) or ev(program, metric=fn)")
        examples = _check_devset(devset) if devset is not None else self.devset
        if concurrency is None:  # per call, None means this Evaluate's own setting
            concurrency = self.concurrency
        _check_concurrency(concurrency)
        show_progress = self.progress if progress is None else progress
        table = self.display_table if display_table is None else display_table
        csv_path = save_as_csv if save_as_csv is not None else self.save_as_csv
        json_path = save_as_json if save_as_json is not None else self.save_as_json

        scores: list[float | None] = [None] * len(examples)

        misuse: list[TypeError] = []
        scope = anyio.CancelScope()
        one = _Scorer(program, metric)  # runs wherever the items run; the scores are summed here

        bar = Progress(len(examples), desc="Evaluate") if show_progress else None
        total = 0.0
        done = 0
        errors: dict[int, Exception] = {}

        def on_result(index: int, value: Any, error: BaseException | None) -> None:
            nonlocal total, done
            if error is None:
                try:
                    scores[index] = metric_score(value[1], metric)
                except TypeError as exc:  # a bug in the metric, not a failed example: stop now
                    misuse.append(exc)
                    scope.cancel()
                    return
            done += 1
            if error is not None:
                if isinstance(error, Exception):
                    errors[index] = error
                total += self.failure_score
                logger.warning("Evaluate: example %d failed: %r", index, error)
            else:
                total += scores[index] or 0.0
            if bar is not None:
                bar.update(failed=error is not None, score=f"{total:.2f}/{done} ({100 * total / done:.1f}%)")

        predictions: list[Any] = []
        try:
            with scope:
                predictions = await run_items(
                    [(one, (ex,)) for ex in examples],
                    concurrency=concurrency,
                    max_errors=self.max_errors,
                    timeout=self.timeout,
                    on_result=on_result,
                    executor=current_executor(self.executor),
                )
        finally:
            if bar is not None:
                bar.close()
        if misuse:
            raise misuse[0]

        results: list[tuple[Example, Any, float]] = []
        for i, example in enumerate(examples):
            if i in errors:
                results.append((example, Prediction(), self.failure_score))
            else:
                score = scores[i]
                results.append((example, predictions[i][0], score if score is not None else self.failure_score))
        mean = sum(score for _, _, score in results) / len(results)
        result = EvaluationResult(score=round(100 * mean, 2), results=results, errors=errors)
        logger.info("Evaluate: %s on %d examples, %d failed", result.score, len(results), len(errors))

        name = metric_name(metric)
        if table:
            rows = result_rows(results, name)
            limit = len(rows) if table is True else int(table)
            text = format_table(rows[:limit])
            if limit < len(rows):
                text += f"\n... {len(rows) - limit} more rows not displayed ..."
            print(text, file=self.file or sys.stdout)
        if csv_path is not None or json_path is not None:
            rows = result_rows(results, name)
            if csv_path is not None:
                await anyio.to_thread.run_sync(_write_text, csv_path, _to_csv(rows))
            if json_path is not None:
                data = json.dumps(rows, ensure_ascii=False, indent=2, default=str)
                await anyio.to_thread.run_sync(_write_text, json_path, data + "\n")
        return result


class _Scorer:
    """One example's work: run the program, then the metric; returns ``(prediction, metric value)``.

    A plain object holding the program and the metric (no closure over ``Evaluate``'s state), so an
    executor can ship it to other processes.
    """

    __slots__ = ("metric", "program")

    def __init__(self, program: Callable[..., Any], metric: Metric) -> None:
        self.program = program
        self.metric = metric

    async def __call__(self, example: Example) -> tuple[Any, Any]:
        program = self.program
        run = program if is_async_callable(program) else asyncify(program)
        prediction = await run(**dict(example.inputs()))
        value = await call_metric(self.metric, example, prediction)
        return prediction, value


def _check_concurrency(concurrency: Any) -> None:
    if concurrency is None:
        return  # no bound
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(
            f"Evaluate(concurrency={concurrency!r}): concurrency must be an int >= 1, or None for no bound"
        )


def _as_dict(value: Any) -> dict[str, Any]:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if isinstance(value, Mapping):
        return dict(value)
    return {"prediction": value}


def result_rows(results: Sequence[tuple[Example, Any, float]], metric: str) -> list[dict[str, Any]]:
    """One JSON-able dict per result: the example's fields, the prediction's fields (a name on both
    sides becomes ``example_<name>`` / ``pred_<name>``), then the score under the metric's name."""
    rows = []
    for example, prediction, score in results:
        ex, pred = _as_dict(example), _as_dict(prediction)
        row = {(f"example_{k}" if k in pred else k): v for k, v in ex.items()}
        row.update({(f"pred_{k}" if k in ex else k): v for k, v in pred.items()})
        row[metric] = score
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _to_csv(rows: list[dict[str, Any]]) -> str:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    Path(path).write_text(text, encoding="utf-8", newline="")
