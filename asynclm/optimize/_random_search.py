"""``BootstrapFewShotWithRandomSearch``: several bootstrapped candidates, the best on a validation set."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

from asynclm.evaluate import Evaluate
from asynclm.modules import Module
from asynclm.runtime import sync_twin
from asynclm.signatures import Example

from ._base import Teleprompter, check_trainset
from ._bootstrap import BootstrapFewShot
from ._labeled import LabeledFewShot

__all__ = ["BootstrapFewShotWithRandomSearch", "Candidate", "CandidatePrograms"]

logger = logging.getLogger("asynclm.optimize")


@dataclasses.dataclass(frozen=True, eq=False)
class Candidate:
    """One candidate program of a random search and its validation score (a percentage).

    ``seed`` says how it was made: -3 zero-shot, -2 labelled demos only, -1 bootstrapped from the
    training set in order, >= 0 bootstrapped from a shuffled training set with a random number of
    demos. ``candidate["score"]`` also works (DSPy's candidates are dicts).
    """

    score: float
    subscores: list[float]
    seed: int
    program: Module

    def __getitem__(self, key: str) -> Any:
        if key not in ("score", "subscores", "seed", "program"):
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self) -> str:
        return f"Candidate(seed={self.seed}, score={self.score})"


class CandidatePrograms(Sequence[Candidate]):
    """The candidates of a random search, best first (ties in the order they were made).

    A read-only sequence rather than a list, so that a program holding it does not count the
    candidates' predictors as its own (``named_predictors`` walks lists, not this).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Candidate]) -> None:
        self._items = tuple(items)

    @overload
    def __getitem__(self, index: int) -> Candidate: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, index: int | slice) -> Candidate | Sequence[Candidate]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"CandidatePrograms({list(self._items)!r})"


class BootstrapFewShotWithRandomSearch(Teleprompter):
    """Make several candidate programs and keep the one that scores best on a validation set.

    The candidates are DSPy's, in this order (``seed`` in ``range(-3, num_candidate_programs)``):

    * ``-3``: the program with no demos (zero-shot);
    * ``-2``: ``LabeledFewShot`` with ``max_labeled_demos``;
    * ``-1``: ``BootstrapFewShot`` on the training set in order;
    * ``s >= 0``: ``BootstrapFewShot`` on the training set shuffled with
      ``random.Random(seed * 1_000_003 + s)``, with ``max_bootstrapped_demos`` drawn from
      ``1..max_bootstrapped_demos`` by the same generator seed. With ``seed=0`` these are the
      draws DSPy makes.

    Each candidate is scored with ``asynclm.Evaluate`` on ``valset`` (default: the
    training set). Candidates are made and scored one after another, each running its examples
    concurrently, so the result depends on the seed and the data only, never on timing. The
    returned program is the first best-scoring candidate; its ``candidate_programs`` attribute
    lists every ``Candidate``, best first.

    Args:
        metric: as for ``BootstrapFewShot`` and ``Evaluate``.
        teacher_settings, max_bootstrapped_demos, max_labeled_demos, max_rounds,
            metric_threshold: passed to ``BootstrapFewShot``.
        num_candidate_programs: how many shuffled candidates (after the three fixed ones).
        num_threads: examples in flight at once, when bootstrapping and when evaluating (tasks,
            not threads; the name is DSPy's). ``None``: 16.
        max_errors: failures tolerated in each bootstrap and each evaluation; ``None``: no limit.
        stop_at_score: stop making candidates once one scores at least this (a percentage).
        seed: the base seed of the shuffles.
        progress: show progress bars.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        teacher_settings: Mapping[str, Any] | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        num_candidate_programs: int = 16,
        num_threads: int | None = None,
        max_errors: int | None = 10,
        stop_at_score: float | None = None,
        metric_threshold: float | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(num_candidate_programs, int) or num_candidate_programs < 0:
            raise ValueError(
                f"BootstrapFewShotWithRandomSearch(num_candidate_programs={num_candidate_programs!r}): use an int >= 0"
            )
        if not isinstance(max_bootstrapped_demos, int) or max_bootstrapped_demos < 1:
            raise ValueError(
                f"BootstrapFewShotWithRandomSearch(max_bootstrapped_demos={max_bootstrapped_demos!r}): use an int >= 1"
            )
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"BootstrapFewShotWithRandomSearch(num_threads={num_threads!r}): use an int >= 1 or None")
        self.metric = metric
        self.teacher_settings = dict(teacher_settings or {})
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.num_candidate_programs = num_candidate_programs
        self.num_threads = num_threads
        self.max_errors = max_errors
        self.stop_at_score = stop_at_score
        self.metric_threshold = metric_threshold
        self.seed = seed
        self.progress = progress

    def _bootstrapper(self, size: int) -> BootstrapFewShot:
        return BootstrapFewShot(
            metric=self.metric,
            metric_threshold=self.metric_threshold,
            teacher_settings=self.teacher_settings,
            max_bootstrapped_demos=size,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            max_errors=self.max_errors,
            concurrency=self.num_threads or 16,
            progress=self.progress,
        )

    @sync_twin
    async def compile(
        self,
        student: Module,
        *,
        trainset: Iterable[Example],
        teacher: Module | None = None,
        valset: Iterable[Example] | None = None,
        restrict: Collection[int] | None = None,
        labeled_sample: bool = True,
    ) -> Module:
        who = "BootstrapFewShotWithRandomSearch"
        train = check_trainset(trainset, who)
        val = check_trainset(valset, who, "valset") if valset is not None else train
        if not val:
            raise ValueError(f"{who}: nothing to validate on: give a non-empty trainset or valset")
        evaluate = Evaluate(
            devset=val,
            metric=self.metric,
            concurrency=self.num_threads or 16,
            max_errors=self.max_errors,
            progress=self.progress,
        )
        candidates: list[Candidate] = []
        best: Candidate | None = None
        for s in range(-3, self.num_candidate_programs):
            if restrict is not None and s not in restrict:
                continue
            if s == -3:
                program = student.reset_copy()
            elif s == -2:
                program = await LabeledFewShot(k=self.max_labeled_demos).compile(
                    student, trainset=train, sample=labeled_sample
                )
            elif s == -1:
                program = await self._bootstrapper(self.max_bootstrapped_demos).compile(
                    student, trainset=train, teacher=teacher
                )
            else:
                shuffled = list(train)
                rng_seed = self.seed * 1_000_003 + s
                random.Random(rng_seed).shuffle(shuffled)
                size = random.Random(rng_seed).randint(1, self.max_bootstrapped_demos)
                program = await self._bootstrapper(size).compile(student, trainset=shuffled, teacher=teacher)
            result = await evaluate(program)
            candidate = Candidate(score=result.score, subscores=result.scores, seed=s, program=program)
            candidates.append(candidate)
            if best is None or candidate.score > best.score:
                best = candidate
                logger.info("%s: new best score %s (candidate seed %d)", who, candidate.score, s)
            if self.stop_at_score is not None and candidate.score >= self.stop_at_score:
                logger.info("%s: stopping early, score %s >= stop_at_score", who, candidate.score)
                break
        if best is None:
            raise ValueError(f"{who}: restrict={sorted(restrict or ())} selected no candidate (seeds run from -3)")
        best.program.candidate_programs = CandidatePrograms(  # type: ignore[attr-defined]
            sorted(candidates, key=lambda c: c.score, reverse=True)
        )
        return best.program
