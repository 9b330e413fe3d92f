"""``GEPA``: reflective prompt evolution (Agrawal et al., 2025), DSPy's algorithm, run in
concurrent rounds.

One round: draw ``proposals_per_round`` parents from the Pareto front and a training minibatch
for each (one seeded generator, in a fixed order); for each parent, at once: run it on its
minibatch with traces, let the reflection LM rewrite one predictor's instruction from the
traced inputs, outputs and the metric's feedback, run the child on the same minibatch, and if it
does better, score it on the whole validation set. Then the round's children join the pool in
proposal order. With ``proposals_per_round=1`` this is DSPy's loop, step for step."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

import anyio

from asynclm.evaluate import call_metric
from asynclm.modules import Module, trace_scope
from asynclm.runtime import Progress, sync_twin
from asynclm.signatures import Example

from .._base import Teleprompter, check_trainset
from ._feedback import read_result
from ._reflection import propose_instruction
from ._result import GEPAResult
from ._state import (
    AUTO_CANDIDATES,
    MergeBook,
    MinibatchSampler,
    Pool,
    auto_budget,
    merge_subsample,
    pick_merge,
    select_parent,
)

__all__ = ["GEPA"]

logger = logging.getLogger("asynclm.optimize")

_MERGE_SUBSAMPLE = 5


def _metric_arity(metric: Any) -> int:
    """How many positional arguments to give the metric: 5 (gold, pred, trace, pred_name,
    pred_trace) when it takes them, else 3 or 2 (an ordinary metric; no per-predictor feedback)."""
    if not callable(metric):
        raise TypeError(f"GEPA(metric=...) must be a function; got {type(metric).__name__}")
    try:
        signature = inspect.signature(metric)
    except (TypeError, ValueError):
        return 5
    for n in (5, 3, 2):
        try:
            signature.bind(*([None] * n))
        except TypeError:
            continue
        return n
    raise TypeError(
        "GEPA's metric must accept (gold, pred, trace=None, pred_name=None, pred_trace=None) "
        f"(or at least (gold, pred)); {getattr(metric, '__name__', metric)!r} has signature {signature}"
    )


async def _together(calls: Iterable[Callable[[], Awaitable[None]]]) -> None:
    """Run the calls concurrently; the first one to raise cancels the others, and its exception
    propagates as it is (not inside an exception group)."""
    failed: list[Exception] = []

    async def guard(call: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        try:
            await call()
        except Exception as exc:
            if not failed:
                failed.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(guard, call, tg.cancel_scope)
    if failed:
        raise failed[0]


@dataclasses.dataclass
class _Rollout:
    score: float
    failed: bool = False
    records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # predictor -> reflection record


@dataclasses.dataclass
class _Slot:
    """One proposal of a round and what became of it."""

    kind: str  # "reflection" or "merge"
    iteration: int
    parents: list[int]
    example_ids: list[int]  # a training minibatch (reflection) or validation examples (merge)
    components: list[str]
    child: dict[str, str] | None = None  # a merge's child is known up front
    max_cost: int = 0
    allowance: int = 0
    spent: int = 0
    started: bool = False
    skipped: bool = False  # a perfect minibatch (or no budget): the parent's round robin does not move
    spent_before_val: int = 0
    scores_before: list[float] | None = None
    scores_after: list[float] | None = None
    val_scores: list[float] | None = None
    outcome: str = "not run"


class GEPA(Teleprompter):
    """Reflective prompt evolution: a reflection LM reads the metric's feedback and rewrites the
    program's instructions; the candidates are kept on a per-example Pareto front (DSPy's GEPA).

    ``best = await GEPA(metric, reflection_lm=lm, auto="light").compile(program, trainset=train,
    valset=val)`` (or ``.compile.sync(...)``) returns a copy of ``program`` whose predictors carry
    the best instructions found, with ``best.detailed_results`` (a ``GEPAResult``).

    Args:
        metric: ``metric(gold, pred, trace=None, pred_name=None, pred_trace=None)``, sync or
            async, returning a float, a bool or ``asynclm.ScoreWithFeedback(score, feedback)``.
            When GEPA asks for feedback to improve one predictor, ``pred_name`` is its name and
            ``pred_trace`` its call (``[(predictor, inputs, prediction)]``). A metric taking only
            ``(gold, pred)`` or ``(gold, pred, trace)`` also works (feedback is then the score).
        reflection_lm: the LM that proposes new instructions: an ``asynclm.LM`` (asked through a
            ``Predict`` with the JSON adapter, as DSPy 3.4 does), or a plain function of a prompt
            string returning text, sync or async (given one text prompt, as the ``gepa`` package
            does). A strong model pays off here.
        auto: ``"light"``, ``"medium"`` or ``"heavy"``: the budget from DSPy's formula. Give
            exactly one of ``auto``, ``max_metric_calls``, ``max_full_evals``.
        max_metric_calls: the budget in metric calls (one per program run on one example). A hard
            cap: a round in flight never goes past it.
        max_full_evals: the budget in passes over train + val (DSPy's).
        candidate_selection: ``"pareto"`` (a parent drawn from the Pareto front, weighted by the
            number of validation examples it is best on) or ``"current_best"``.
        minibatch_size: training examples per reflection (DSPy's ``reflection_minibatch_size``).
        use_merge: also try merging two front candidates that improved different predictors of a
            common ancestor (after a round that found a new candidate, at most
            ``max_merge_invocations`` accepted merges).
        seed: seeds every draw (parents, minibatches, merges).
        proposals_per_round: reflective mutations per round, run concurrently (k parents drawn
            from the front at once). 1 is DSPy's algorithm; more explores more per second of wall
            time, at the cost of choosing parents from a front that is one round older.
        concurrency: the most program runs in flight at once, over the whole round.
        progress: show a progress bar over the budget with the best score so far.
        component_selector: ``"round_robin"`` (one predictor per proposal, in turn) or ``"all"``.
        skip_perfect_score: do not reflect on a minibatch where every score is ``perfect_score``.
        failure_score: the score of a program run that raised.

    DSPy's names ``reflection_minibatch_size``, ``candidate_selection_strategy`` and
    ``num_threads`` are accepted for ``minibatch_size``, ``candidate_selection`` and
    ``concurrency``.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        reflection_lm: Any = None,
        auto: Literal["light", "medium", "heavy"] | None = None,
        max_metric_calls: int | None = None,
        max_full_evals: int | None = None,
        candidate_selection: Literal["pareto", "current_best"] = "pareto",
        minibatch_size: int = 3,
        use_merge: bool = True,
        max_merge_invocations: int = 5,
        seed: int = 0,
        proposals_per_round: int = 1,
        concurrency: int = 32,
        progress: bool = True,
        component_selector: Literal["round_robin", "all"] = "round_robin",
        skip_perfect_score: bool = True,
        perfect_score: float = 1.0,
        failure_score: float = 0.0,
        reflection_minibatch_size: int | None = None,
        candidate_selection_strategy: Literal["pareto", "current_best"] | None = None,
        num_threads: int | None = None,
        track_stats: bool = True,
    ) -> None:
        self._arity = _metric_arity(metric)
        if reflection_lm is None:
            raise TypeError(
                "GEPA needs a reflection LM to propose instructions: GEPA(metric, reflection_lm=asynclm.LM(...)); "
                "a strong model works best"
            )
        if not callable(reflection_lm):
            raise TypeError(
                f"GEPA(reflection_lm=...) must be an asynclm.LM or a function; got {type(reflection_lm).__name__}"
            )
        budgets = (("auto", auto), ("max_metric_calls", max_metric_calls), ("max_full_evals", max_full_evals))
        given = [name for name, v in budgets if v is not None]
        if len(given) != 1:
            raise ValueError(
                "GEPA: give exactly one budget: auto='light'|'medium'|'heavy', max_metric_calls=N or max_full_evals=N"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if auto is not None and auto not in AUTO_CANDIDATES:
            raise ValueError(f"GEPA(auto={auto!r}): use 'light', 'medium' or 'heavy'")
        for name, value in (("max_metric_calls", max_metric_calls), ("max_full_evals", max_full_evals)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"GEPA({name}={value!r}): use an int >= 1")
        minibatch_size = _alias(
            "minibatch_size", minibatch_size, 3, "reflection_minibatch_size", reflection_minibatch_size
        )
        candidate_selection = _alias(
            "candidate_selection",
            candidate_selection,
            "pareto",
            "candidate_selection_strategy",
            candidate_selection_strategy,
        )
        concurrency = _alias("concurrency", concurrency, 32, "num_threads", num_threads)
        for name, value in (
            ("minibatch_size", minibatch_size),
            ("proposals_per_round", proposals_per_round),
            ("concurrency", concurrency),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GEPA({name}={value!r}): use an int >= 1")
        if not isinstance(max_merge_invocations, int) or max_merge_invocations < 0:
            raise ValueError(f"GEPA(max_merge_invocations={max_merge_invocations!r}): use an int >= 0")
        if candidate_selection not in ("pareto", "current_best"):
            raise ValueError(f"GEPA(candidate_selection={candidate_selection!r}): use 'pareto' or 'current_best'")
        if component_selector not in ("round_robin", "all"):
            raise ValueError(f"GEPA(component_selector={component_selector!r}): use 'round_robin' or 'all'")
        if not isinstance(seed, int):
            raise TypeError(f"GEPA(seed={seed!r}): use an int")
        self.metric = metric
        self.reflection_lm = reflection_lm
        self.auto = auto
        self.max_metric_calls = max_metric_calls
        self.max_full_evals = max_full_evals
        self.candidate_selection = candidate_selection
        self.minibatch_size = minibatch_size
        self.use_merge = use_merge
        self.max_merge_invocations = max_merge_invocations
        self.seed = seed
        self.proposals_per_round = proposals_per_round
        self.concurrency = concurrency
        self.progress = progress
        self.component_selector = component_selector
        self.skip_perfect_score = skip_perfect_score
        self.perfect_score = float(perfect_score)
        self.failure_score = float(failure_score)

    def budget(self, num_predictors: int, train_size: int, val_size: int, *, separate_valset: bool = True) -> int:
        """The run's budget in metric calls (``max_metric_calls``, or what ``auto`` or
        ``max_full_evals`` come to for these sizes)."""
        if self.max_metric_calls is not None:
            return self.max_metric_calls
        if self.max_full_evals is not None:
            return self.max_full_evals * (train_size + (val_size if separate_valset else 0))
        assert self.auto is not None
        return auto_budget(max(num_predictors, 1), AUTO_CANDIDATES[self.auto], val_size)

    @sync_twin
    async def compile(
        self,
        student: Module,
        *,
        trainset: Iterable[Example],
        valset: Iterable[Example] | None = None,
        teacher: Module | None = None,
    ) -> Module:
        """Evolve the instructions of ``student``'s predictors; return the best program found
        (a new one: ``student`` is not changed) with ``detailed_results``. ``trainset`` feeds
        the reflections, ``valset`` (default: ``trainset``) ranks the candidates."""
        who = "GEPA"
        if teacher is not None:
            raise ValueError("GEPA does not use a teacher (as in DSPy): compile(student, trainset=..., valset=...)")
        if not isinstance(student, Module):
            raise TypeError(f"GEPA.compile: the student must be an asynclm Module; got {type(student).__name__}")
        train = check_trainset(trainset, who)
        if not train:
            raise ValueError("GEPA: the trainset is empty; give at least one Example")
        val = check_trainset(valset, who, "valset") if valset is not None else train
        if not val:
            raise ValueError("GEPA: the valset is empty; give at least one Example (or leave valset out)")
        names = [name for name, _ in student.named_predictors()]
        if not names:
            raise ValueError(
                "GEPA: the program has no predictor (no Predict inside it) whose instructions could change"
            )
        budget = self.budget(len(names), len(train), len(val), separate_valset=valset is not None)
        if budget < len(val):
            raise ValueError(
                f"GEPA: a budget of {budget} metric calls cannot even score the program on the {len(val)} validation "
                "examples; raise max_metric_calls (or use a smaller valset)"
            )
        run = _Run(self, student.deepcopy(), names, train, val, budget)
        return await run.go()


def _alias(name: str, value: Any, default: Any, dspy_name: str, dspy_value: Any) -> Any:
    if dspy_value is None:
        return value
    if value != default and value != dspy_value:
        raise TypeError(f"GEPA: give {name}= or {dspy_name}= (DSPy's name), not both")
    return dspy_value


class _Run:
    """One ``compile``: the pool, the seeded generator and the budget."""

    def __init__(
        self, opt: GEPA, base: Module, names: list[str], train: list[Example], val: list[Example], budget: int
    ) -> None:
        self.opt = opt
        self.base = base
        self.names = names
        self.train = train
        self.val = val
        self.budget = budget
        self.left = budget  # metric calls neither spent nor promised to a proposal in flight
        self.rng = random.Random(opt.seed)
        self.sampler = MinibatchSampler(opt.minibatch_size, self.rng)
        self.pool = Pool(names=list(names))
        self.book = MergeBook()
        self.iteration = 0
        self.full_evals = 0
        self.log: list[dict[str, Any]] = []
        self.limiter = anyio.CapacityLimiter(opt.concurrency)
        self.bar: Progress | None = None
        self.base_text = {name: p.signature.instructions for name, p in base.named_predictors()}
        self._programs: dict[tuple[tuple[str, str], ...], Module] = {}

    # -- programs --------------------------------------------------------------------------------

    def build(self, candidate: dict[str, str]) -> Module:
        """A new program with the candidate's instructions (predictors whose text is unchanged
        are left exactly as the student has them)."""
        program = self.base.deepcopy()
        for name, predictor in program.named_predictors():
            text = candidate[name]
            if text != self.base_text[name]:
                predictor.signature = predictor.signature.with_instructions(text)
        return program

    def program(self, candidate: dict[str, str]) -> Module:
        key = tuple(sorted(candidate.items()))
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = self.build(candidate)
        return program

    # -- evaluation --------------------------------------------------------------------------------

    async def _metric(self, *args: Any) -> tuple[float, str | None]:
        with trace_scope():  # an LM-judged metric's own calls are not the program's
            value = await call_metric(self.opt.metric, *args[: self.opt._arity])
        return read_result(value, self.opt.metric)

    async def _rollout(
        self, program: Module, example: Example, components: Sequence[str], choice_seed: str | None
    ) -> _Rollout:
        async with self.limiter:
            try:
                with trace_scope() as trace:
                    prediction = await program(**dict(example.inputs()))
            except Exception as exc:
                logger.warning("GEPA: the program failed on %r: %r (scored %s)", example, exc, self.opt.failure_score)
                self._tick(failed=True)
                return _Rollout(score=self.opt.failure_score, failed=True)
            if not components:
                score, _ = await self._metric(example, prediction, None, None, None)
                self._tick()
                return _Rollout(score=score)
            names = {id(p): name for name, p in program.named_predictors()}
            chooser = random.Random(choice_seed)
            rollout = _Rollout(score=self.opt.failure_score)
            for position, name in enumerate(components):
                calls = [entry for entry in trace if names.get(id(entry[0])) == name]
                chosen = chooser.choice(calls) if calls else None
                score, feedback = await self._metric(
                    example, prediction, trace, name, [chosen] if chosen is not None else []
                )
                if position == 0:
                    rollout.score = score
                if chosen is not None:
                    _, inputs, outputs = chosen
                    rollout.records[name] = {
                        "Inputs": {k: str(v) for k, v in inputs.items()},
                        "Generated Outputs": {k: str(v) for k, v in dict(outputs.items()).items()},
                        "Feedback": feedback if feedback is not None else f"This trajectory got a score of {score}.",
                    }
            self._tick()
            return rollout

    async def evaluate(
        self,
        candidate: dict[str, str],
        examples: Sequence[Example],
        components: Sequence[str] = (),
        iteration: int | None = None,
    ) -> list[_Rollout]:
        """Run the candidate on the examples (``concurrency`` runs at a time over the whole
        run) and score each; with ``components``, also collect each one's reflection record."""
        program = self.program(candidate)
        results: list[_Rollout | None] = [None] * len(examples)

        async def one(i: int) -> None:
            seed = f"{self.opt.seed}/{iteration}/{i}" if components else None
            results[i] = await self._rollout(program, examples[i], components, seed)

        await _together(functools.partial(one, i) for i in range(len(examples)))
        return [r for r in results if r is not None]

    def _tick(self, failed: bool = False) -> None:
        if self.bar is not None:
            best = max(self.pool.aggregate) if self.pool.aggregate else None
            self.bar.update(failed=failed, **({"best": f"{best:.3f}"} if best is not None else {}))

    # -- proposals ---------------------------------------------------------------------------------

    async def _propose(self, parent: dict[str, str], dataset: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
        texts: dict[str, str] = {}

        async def one(name: str) -> None:
            texts[name] = await propose_instruction(self.opt.reflection_lm, parent[name], dataset[name])

        await _together(functools.partial(one, name) for name in dataset)
        return {name: texts[name] for name in dataset}

    async def _run_reflection(self, slot: _Slot) -> None:
        parent = self.pool.candidates[slot.parents[0]]
        minibatch = [self.train[i] for i in slot.example_ids]
        traced_cost = len(minibatch) * len(slot.components)
        if slot.allowance < traced_cost:
            slot.skipped, slot.outcome = True, "no budget"
            return
        slot.started = True
        rollouts = await self.evaluate(parent, minibatch, slot.components, slot.iteration)
        slot.spent += traced_cost
        slot.scores_before = [r.score for r in rollouts]
        if self.opt.skip_perfect_score and all(s >= self.opt.perfect_score for s in slot.scores_before):
            slot.skipped, slot.outcome = True, "perfect minibatch"
            return
        dataset = {name: [r.records[name] for r in rollouts if name in r.records] for name in slot.components}
        dataset = {name: records for name, records in dataset.items() if records}
        if not dataset:
            slot.outcome = "no traced call to reflect on"
            logger.warning("GEPA: iteration %d: no traced call of %s to reflect on", slot.iteration, slot.components)
            return
        try:
            proposed = await self._propose(parent, dataset)
        except Exception as exc:
            slot.outcome = f"reflection failed: {exc!r}"
            logger.warning("GEPA: iteration %d: the reflection LM failed: %r", slot.iteration, exc)
            return
        slot.child = {**parent, **proposed}
        if slot.allowance - slot.spent < len(minibatch):
            slot.outcome = "no budget"
            return
        after = await self.evaluate(slot.child, minibatch)
        slot.spent += len(minibatch)
        slot.scores_after = [r.score for r in after]
        if sum(slot.scores_after) <= sum(slot.scores_before):
            slot.outcome = "rejected: not better on the minibatch"
            return
        await self._validate(slot)

    async def _run_merge(self, slot: _Slot) -> None:
        assert slot.child is not None
        a, b = slot.parents
        if slot.allowance < len(slot.example_ids):
            slot.outcome = "no budget"
            return
        slot.started = True
        after = await self.evaluate(slot.child, [self.val[i] for i in slot.example_ids])
        slot.spent += len(slot.example_ids)
        slot.scores_after = [r.score for r in after]
        sums = [sum(self.pool.val_scores[p][i] for i in slot.example_ids) for p in (a, b)]
        slot.scores_before = sums
        if sum(slot.scores_after) < max(sums):
            slot.outcome = "rejected: worse than both parents"
            return
        await self._validate(slot)

    async def _validate(self, slot: _Slot) -> None:
        assert slot.child is not None
        if slot.allowance - slot.spent < len(self.val):
            slot.outcome = "improved, but no budget left to validate it"
            return
        slot.spent_before_val = slot.spent
        rollouts = await self.evaluate(slot.child, self.val)
        slot.spent += len(self.val)
        slot.val_scores = [r.score for r in rollouts]
        slot.outcome = "accepted"

    # -- rounds ------------------------------------------------------------------------------------

    def _plan(self) -> list[_Slot]:
        """The round's proposals, drawn in a fixed order from the seeded generator: a merge first
        when one is due, then reflective mutations (parent, then minibatch, for each)."""
        pool, opt, slots = self.pool, self.opt, []
        if opt.use_merge and self.book.due > 0 and self.book.found_new_last_round:
            picked = pick_merge(pool, self.rng, self.book)
            if picked is not None:
                child, a, b, _ancestor = picked
                ids = merge_subsample(pool.val_scores[a], pool.val_scores[b], self.rng, _MERGE_SUBSAMPLE)
                slots.append(
                    _Slot("merge", self.iteration, [a, b], ids, [], child=child, max_cost=len(ids) + len(self.val))
                )
                self.iteration += 1
        position = dict(enumerate(pool.next_component))
        while len(slots) < opt.proposals_per_round:
            parent = select_parent(pool, opt.candidate_selection, self.rng)
            ids = self.sampler.ids(len(self.train), self.iteration)
            if opt.component_selector == "all":
                components = list(self.names)
            else:
                components = [self.names[position[parent]]]
                position[parent] = (position[parent] + 1) % len(self.names)
            cost = len(ids) * len(components) + len(ids) + len(self.val)
            slots.append(_Slot("reflection", self.iteration, [parent], ids, components, max_cost=cost))
            self.iteration += 1
        return slots

    async def _round(self, number: int) -> bool:
        slots = self._plan()
        start_used = self.budget - self.left
        for slot in slots:  # budget promised in proposal order: the same whatever finishes first
            slot.allowance = min(slot.max_cost, self.left)
            self.left -= slot.allowance
        await _together(
            functools.partial(self._run_merge if slot.kind == "merge" else self._run_reflection, slot) for slot in slots
        )
        self.left += sum(slot.allowance - slot.spent for slot in slots)

        pool, book, found_new = self.pool, self.book, False
        used = start_used
        for index, slot in enumerate(slots):
            added = None
            if slot.kind == "reflection" and not slot.skipped:
                parent = slot.parents[0]
                pool.next_component[parent] = (pool.next_component[parent] + 1) % len(self.names)
            if slot.val_scores is not None:
                assert slot.child is not None
                added = pool.add(
                    slot.child,
                    list(slot.parents),
                    slot.val_scores,
                    discovered_at=used + slot.spent_before_val,
                    origin=slot.kind,
                    round_found=number,
                )
                self.full_evals += 1
                if slot.kind == "merge":
                    book.due -= 1
                    book.tested += 1
                else:
                    found_new = True
                    if book.tested < self.opt.max_merge_invocations:
                        book.due += 1
                logger.info(
                    "GEPA: round %d: candidate %d (%s of %s) scores %.4g on the valset (best %.4g)",
                    number,
                    added,
                    slot.kind,
                    slot.parents,
                    pool.aggregate[added],
                    max(pool.aggregate),
                )
            used += slot.spent
            self.log.append(
                {
                    "round": number,
                    "slot": index,
                    "iteration": slot.iteration,
                    "kind": slot.kind,
                    "parents": list(slot.parents),
                    "components": list(slot.components),
                    "example_ids": list(slot.example_ids),
                    "scores_before": slot.scores_before,
                    "scores_after": slot.scores_after,
                    "proposed": dict(slot.child) if slot.child is not None else None,
                    "outcome": slot.outcome,
                    "new_candidate": added,
                    "metric_calls": slot.spent,
                }
            )
        book.found_new_last_round = found_new
        return any(slot.started for slot in slots)

    async def go(self) -> Module:
        opt = self.opt
        logger.info(
            "GEPA: up to %d metric calls (%.2f passes over train + val), %d proposal(s) per round",
            self.budget,
            self.budget / (len(self.train) + len(self.val)),
            opt.proposals_per_round,
        )
        self.bar = Progress(self.budget, desc="GEPA") if opt.progress else None
        try:
            seed = {name: self.base_text[name] for name in self.names}
            self.left -= len(self.val)
            rollouts = await self.evaluate(seed, self.val)
            self.full_evals += 1
            self.pool.add(seed, [None], [r.score for r in rollouts], discovered_at=0, origin="seed", round_found=0)
            number = 0
            while self.left > 0:
                number += 1
                if not await self._round(number):
                    break
        finally:
            if self.bar is not None:
                self.bar.close()
        return self._result(number)

    def _result(self, rounds: int) -> Module:
        pool = self.pool
        best = self.build(pool.candidates[pool.best])
        best.detailed_results = GEPAResult(  # type: ignore[attr-defined]
            candidates=[self.build(c) for c in pool.candidates],
            instructions=[dict(c) for c in pool.candidates],
            parents=[list(p) for p in pool.parents],
            origins=list(pool.origin),
            rounds=list(pool.round_found),
            val_aggregate_scores=list(pool.aggregate),
            val_subscores=[list(s) for s in pool.val_scores],
            per_val_instance_best_candidates=[set(cell) for cell in pool.front],
            highest_score_achieved_per_val_task=list(pool.front_scores),
            discovery_eval_counts=list(pool.discovered_at),
            total_metric_calls=self.budget - self.left,
            max_metric_calls=self.budget,
            num_full_val_evals=self.full_evals,
            proposals_per_round=self.opt.proposals_per_round,
            seed=self.opt.seed,
            log=self.log,
        )
        logger.info(
            "GEPA: %d rounds, %d candidates, best %d scores %.4g (student %.4g), %d metric calls",
            rounds,
            len(pool.candidates),
            pool.best,
            pool.aggregate[pool.best],
            pool.aggregate[0],
            self.budget - self.left,
        )
        return best
