"""``BootstrapFewShot``: demos made from the teacher's own successful traces."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio

from asynclm.evaluate import call_metric, metric_score
from asynclm.modules import Module, trace_scope
from asynclm.runtime import Progress, Settings, context, sync_twin
from asynclm.signatures import Example

from ._base import Teleprompter, check_trainset, is_compiled, mark_compiled, match_predictors
from ._labeled import LabeledFewShot

__all__ = ["BootstrapFewShot"]

logger = logging.getLogger("asynclm.optimize")


@dataclasses.dataclass
class _Outcome:
    """What running the teacher on one training example gave (over up to ``max_rounds`` tries)."""

    success: bool = False
    demos: dict[str, list[Example]] = dataclasses.field(default_factory=dict)  # predictor path -> demos
    errors: list[Exception] = dataclasses.field(default_factory=list)  # one per failed round
    misuse: TypeError | None = None  # the metric returned something that is not a score: a bug


def _stable_seed(demos: list[Example]) -> int:
    data = json.dumps([d.to_dict() for d in demos], sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.sha256(data.encode()).digest()[:8], "big")


class BootstrapFewShot(Teleprompter):
    """Few-shot demos bootstrapped from a teacher's successful runs on the training set (DSPy's).

    ``compiled = await BootstrapFewShot(metric=m).compile(program, trainset=train)``:

    1. The teacher is ``teacher`` (or a copy of ``program``); unless it was itself compiled, it is
       first given labelled demos with ``LabeledFewShot(k=max_labeled_demos)``.
    2. The teacher runs on the training examples (``concurrency`` at a time), each inside its own
       task-local ``asynclm.modules.trace_scope``, without the example itself among its
       demos. When ``metric(example, prediction, trace)`` passes (is truthy, or
       ``>= metric_threshold``), each traced predictor call becomes a demo
       ``Example(augmented=True, **inputs, **outputs)`` for the student predictor with the same
       path (one per predictor per example; when a predictor ran several times, one of its calls
       is drawn with a seed derived from the calls, as in DSPy). A failed example is retried up
       to ``max_rounds`` times, round ``r > 0`` with ``temperature=1.0`` and ``rollout_id=r``.
    3. Bootstrapping stops at the ``max_bootstrapped_demos``-th passing example. Examples are
       judged in training-set order whatever the order they finish in, so the result is exactly
       that of a sequential run: the same data and LM answers give the same demos at any
       concurrency. (Examples already in flight past the stopping point are cancelled.)
    4. Each student predictor gets its bootstrapped demos, then labelled demos drawn from the
       examples that were not bootstrapped, up to ``max_labeled_demos`` in total.

    Args:
        metric: ``metric(example, prediction, trace)`` -> bool/float, sync or async; ``None``
            accepts every trace.
        metric_threshold: accept a trace when the metric's score is at least this.
        teacher_settings: settings the teacher runs with (``asynclm.context(**teacher_settings)``),
            e.g. ``{"lm": big_lm}``.
        max_bootstrapped_demos: bootstrapped demos per predictor (and examples to bootstrap).
        max_labeled_demos: total demos per predictor (bootstrapped + labelled).
        max_rounds: tries per example.
        max_errors: failed tries (the teacher or the metric raised) to tolerate; the next one is
            raised with its original type. ``None``: no limit.
        concurrency: training examples in flight at once.
        progress: show a progress bar (tqdm, on a terminal only).
    """

    def __init__(
        self,
        metric: Callable[..., Any] | None = None,
        metric_threshold: float | None = None,
        teacher_settings: Mapping[str, Any] | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        max_errors: int | None = 10,
        concurrency: int = 16,
        progress: bool = False,
    ) -> None:
        for name, value in (
            ("max_bootstrapped_demos", max_bootstrapped_demos),
            ("max_labeled_demos", max_labeled_demos),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"BootstrapFewShot({name}={value!r}): use an int >= 0")
        if not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"BootstrapFewShot(max_rounds={max_rounds!r}): use an int >= 1")
        if max_errors is not None and (not isinstance(max_errors, int) or max_errors < 0):
            raise ValueError(f"BootstrapFewShot(max_errors={max_errors!r}): use an int >= 0, or None for no limit")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"BootstrapFewShot(concurrency={concurrency!r}): use an int >= 1")
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(teacher_settings or {}) - known)
        if unknown:
            raise TypeError(
                f"BootstrapFewShot(teacher_settings=...): unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"known settings are: {', '.join(sorted(known))}"
            )
        self.metric = metric
        self.metric_threshold = metric_threshold
        self.teacher_settings = dict(teacher_settings or {})
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.max_errors = max_errors
        self.concurrency = concurrency
        self.progress = progress

    @sync_twin
    async def compile(self, student: Module, *, trainset: Iterable[Example], teacher: Module | None = None) -> Module:
        examples = check_trainset(trainset, "BootstrapFewShot")
        compiled = student.reset_copy()
        mark_compiled(compiled, False)
        mentor = teacher.deepcopy() if teacher is not None else student.deepcopy()
        if self.max_labeled_demos and not is_compiled(mentor):
            mentor = await LabeledFewShot(k=self.max_labeled_demos).compile(mentor.reset_copy(), trainset=examples)
        match_predictors(compiled, mentor, "BootstrapFewShot")

        bootstrapped = await self._bootstrap(mentor, examples)

        traces: dict[str, list[Example]] = {name: [] for name, _ in compiled.named_predictors()}
        for index in sorted(bootstrapped):
            for name, demos in bootstrapped[index].demos.items():
                traces[name].extend(demos)

        # Labelled demos come from the examples that were not bootstrapped, drawn as DSPy does.
        raw = [ex for i, ex in enumerate(examples) if i not in bootstrapped]
        random.Random(0).shuffle(raw)
        rng = random.Random(0)
        for name, predictor in compiled.named_predictors():
            augmented = traces[name][: self.max_bootstrapped_demos]
            size = max(0, min(self.max_labeled_demos - len(augmented), len(raw)))
            raw = rng.sample(raw, size)
            predictor.demos = augmented + [ex.copy() for ex in raw]
        mark_compiled(compiled)
        return compiled

    def _teachers(self, mentor: Module) -> list[Module]:
        """One teacher per round: round ``r > 0`` samples afresh (temperature 1, ``rollout_id=r``,
        which also gives it its own cache entries)."""
        teachers = [mentor]
        for r in range(1, self.max_rounds):
            copy = mentor.deepcopy()
            for predictor in copy.predictors():
                predictor.config = {**predictor.config, "temperature": 1.0, "rollout_id": r}
            teachers.append(copy)
        return teachers

    async def _run_one(self, teachers: list[Module], example: Example) -> _Outcome:
        outcome = _Outcome()
        for teacher in teachers:
            program = teacher
            if any(example in p.demos for p in teacher.predictors()):
                # The example must not be its own demo. The teacher is shared by concurrent
                # examples, so filter a private copy rather than the teacher's lists.
                program = teacher.deepcopy()
                for p in program.predictors():
                    p.demos = [d for d in p.demos if d != example]
            names = {id(p): name for name, p in program.named_predictors()}
            try:
                settings = context(**self.teacher_settings) if self.teacher_settings else contextlib.nullcontext()
                with trace_scope() as trace, settings:
                    prediction = await program(**dict(example.inputs()))
                if self.metric is None:
                    success = True
                else:
                    with trace_scope():  # calls made by an LM-judged metric are not the program's
                        result = await call_metric(self.metric, example, prediction, trace)
                    try:
                        value = metric_score(result, self.metric)
                    except TypeError as exc:
                        outcome.misuse = exc
                        return outcome
                    success = value >= self.metric_threshold if self.metric_threshold is not None else bool(value)
            except Exception as exc:
                outcome.errors.append(exc)
                logger.warning("BootstrapFewShot: the teacher or the metric failed on %r: %r", example, exc)
                continue
            if not success:
                continue
            per_predictor: dict[str, list[Example]] = {}
            for predictor, inputs, output in trace:
                name = names.get(id(predictor))
                if name is None:  # a predictor outside the program (e.g. inside a tool)
                    continue
                per_predictor.setdefault(name, []).append(Example({"augmented": True, **inputs, **dict(output)}))
            for name, demos in per_predictor.items():
                if len(demos) > 1:  # a predictor that ran several times: keep one of its calls
                    rng = random.Random(_stable_seed(demos))
                    demos = [rng.choice(demos[:-1]) if rng.random() < 0.5 else demos[-1]]
                outcome.demos[name] = demos
            outcome.success = True
            return outcome
        return outcome

    async def _bootstrap(self, mentor: Module, examples: list[Example]) -> dict[int, _Outcome]:
        """Run the teacher on the examples; return the first ``max_bootstrapped_demos`` passing
        ones (by index), exactly as a sequential run would."""
        wanted = self.max_bootstrapped_demos
        n = len(examples)
        if wanted == 0 or n == 0:
            return {}
        teachers = self._teachers(mentor)
        outcomes: list[_Outcome | None] = [None] * n
        passed: dict[int, _Outcome] = {}
        fatal: list[Exception] = []
        next_index = 0
        settled = 0  # outcomes[:settled] are known and judged, in order
        errors = 0
        bar = Progress(n, desc="Bootstrap") if self.progress else None

        stopped = False

        def judge(scope: anyio.CancelScope) -> None:
            nonlocal settled, errors, stopped
            # Another example may finish in the same loop tick as the one that stopped the run,
            # before the cancellation reaches it: once stopped, nothing more is judged.
            while not stopped and settled < n and (outcome := outcomes[settled]) is not None:
                for error in outcome.errors:
                    errors += 1
                    if self.max_errors is not None and errors > self.max_errors:
                        fatal.append(error)
                        stopped = True
                        scope.cancel()
                        return
                if outcome.success:
                    passed[settled] = outcome
                settled += 1
                if len(passed) >= wanted:
                    stopped = True
                    scope.cancel()  # what is still in flight lies past the stopping point
                    return

        async def worker(scope: anyio.CancelScope) -> None:
            nonlocal next_index, stopped
            while not stopped and next_index < n:
                index = next_index
                next_index += 1
                outcome = outcomes[index] = await self._run_one(teachers, examples[index])
                if outcome.misuse is not None and not stopped:  # a bug in the metric: stop now
                    fatal.append(outcome.misuse)
                    stopped = True
                    scope.cancel()
                    return
                if bar is not None:
                    bar.update(failed=not outcome.success, bootstrapped=len(passed))
                judge(scope)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(self.concurrency, n)):
                    tg.start_soon(worker, tg.cancel_scope)
        finally:
            if bar is not None:
                bar.close()
        if fatal:
            raise fatal[0]
        logger.info(
            "BootstrapFewShot: bootstrapped %d traces from the first %d of %d examples", len(passed), settled, n
        )
        return passed
