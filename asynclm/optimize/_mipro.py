"""``MIPROv2``: instructions proposed by a prompt model and few-shot demo sets, chosen together
per predictor by Bayesian search (optuna's TPE), several trials in flight at once."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import random
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import anyio.to_thread

from asynclm.evaluate import Evaluate, call_metric, metric_score
from asynclm.modules import Module
from asynclm.runtime import Progress, context, current_settings, run_items, sync_twin
from asynclm.signatures import Example

from ._base import Teleprompter, check_trainset, mark_compiled
from ._bootstrap import BootstrapFewShot
from ._labeled import LabeledFewShot
from ._mipro_propose import DEMOS_IN_CONTEXT, GroundedProposer

if TYPE_CHECKING:
    import optuna

__all__ = ["AUTO_RUN_SETTINGS", "MIPROv2", "ScoredPrograms", "TrialLogs"]

logger = logging.getLogger("asynclm.optimize")

# DSPy's presets: n candidates (instructions get n/2 when demos are optimized too) and the
# validation-set size the search samples down to.
AUTO_RUN_SETTINGS: dict[str, dict[str, int]] = {
    "light": {"n": 6, "val_size": 100},
    "medium": {"n": 12, "val_size": 300},
    "heavy": {"n": 18, "val_size": 1000},
}
# With auto, minibatches are used only when the validation set is larger than this (DSPy's).
MIN_MINIBATCH_SIZE = 50

_EXTRA_HINT = "MIPROv2 needs optuna (its Bayesian search): pip install 'asynclm[optuna]'"


def _import_optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError as exc:
        if exc.name == "optuna":
            raise ImportError(_EXTRA_HINT) from None
        raise
    return optuna


def _optuna_available() -> bool:
    try:
        return importlib.util.find_spec("optuna") is not None
    except (ImportError, ValueError):  # a broken or None entry in sys.modules
        return False


class TrialLogs:
    """What happened at each trial, by trial number (DSPy's ``trial_logs``): trial 1 is the full
    evaluation of the unoptimized program; each minibatch trial has ``mb_score``,
    ``mb_program`` and the chosen ``"{i}_predictor_instruction"`` / ``"{i}_predictor_demos"``
    indices; each full evaluation has ``full_eval_score`` and ``full_eval_program``; every trial
    has ``total_eval_calls_so_far``.

    Read it like a dict (``logs[3]["mb_score"]``, ``logs.items()``). It is not a ``dict`` so that
    the programs it holds are not counted among the returned program's predictors.
    """

    __slots__ = ("_logs",)

    def __init__(self, logs: Mapping[int, dict[str, Any]]) -> None:
        self._logs = dict(logs)

    def __getitem__(self, trial: int) -> dict[str, Any]:
        return self._logs[trial]

    def __contains__(self, trial: object) -> bool:
        return trial in self._logs

    def __iter__(self) -> Iterator[int]:
        return iter(self._logs)

    def __len__(self) -> int:
        return len(self._logs)

    def keys(self) -> Iterable[int]:
        return self._logs.keys()

    def values(self) -> Iterable[dict[str, Any]]:
        return self._logs.values()

    def items(self) -> Iterable[tuple[int, dict[str, Any]]]:
        return self._logs.items()

    def get(self, trial: int, default: Any = None) -> Any:
        return self._logs.get(trial, default)

    def __repr__(self) -> str:
        return f"TrialLogs(<{len(self._logs)} trials>)"


class ScoredPrograms(Sequence[dict[str, Any]]):
    """Evaluated candidates as DSPy lists them, best first: dicts with ``score``, ``program`` and
    ``full_eval``. A read-only sequence (not a list), so that a program holding it does not count
    the candidates' predictors as its own."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[dict[str, Any]]) -> None:
        self._items = tuple(items)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"ScoredPrograms(scores={[item['score'] for item in self._items]})"


def _check_int(who: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{who}({name}={value!r}): use an int >= {minimum}")


async def _all(*fns: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the coroutine functions concurrently; their results in order. The first error cancels
    the others and is raised with its own type."""
    return await run_items([(fn, ()) for fn in fns], concurrency=max(1, len(fns)), max_errors=0)


class _Scorer:
    """Scores a candidate program on examples with ``Evaluate``; every program run of every
    evaluation in flight shares one ``concurrency`` limit. An evaluation that fails (more than
    ``max_errors`` failed examples) scores 0, as in DSPy; a metric returning something that is not
    a score raises."""

    def __init__(self, optimizer: MIPROv2, valset: list[Example]) -> None:
        self.limiter = anyio.CapacityLimiter(optimizer.concurrency)
        self.misuse: list[TypeError] = []
        self.metric = optimizer.metric
        self.evaluate = Evaluate(
            devset=valset,
            metric=self.checked_metric,
            concurrency=optimizer.concurrency,
            max_errors=optimizer.max_errors,
            progress=False,
        )

    async def checked_metric(self, example: Example, prediction: Any, trace: Any = None) -> float:
        value = await call_metric(self.metric, example, prediction)
        try:
            return metric_score(value, self.metric)
        except TypeError as exc:  # a bug in the metric, not a failed example
            self.misuse.append(exc)
            raise

    async def __call__(self, candidate: Module, examples: list[Example]) -> float:
        limiter = self.limiter

        async def run(**inputs: Any) -> Any:
            async with limiter:
                return await candidate(**inputs)

        try:
            result = await self.evaluate(run, devset=examples)
        except Exception as exc:
            if self.misuse:
                raise self.misuse[0] from None
            logger.error("MIPROv2: an evaluation failed, scoring 0 (as DSPy does): %r", exc)
            return 0.0
        if self.misuse:
            raise self.misuse[0]
        return result.score


class MIPROv2(Teleprompter):
    """Optimize each predictor's instruction and few-shot demos together (DSPy's MIPROv2).

    ``best = await MIPROv2(metric, auto="light").compile(program, trainset=train, valset=val)``
    (or ``.compile.sync(...)``) runs DSPy's three steps:

    1. **Demo sets.** ``num_candidates`` demo-set candidates per predictor, made as DSPy makes
       them: zero-shot, labelled demos only, ``BootstrapFewShot`` on the training set in order,
       then ``BootstrapFewShot`` on seeded shuffles with a random number of demos. The
       bootstraps run concurrently (each is deterministic at any concurrency).
    2. **Instructions.** The prompt model summarizes the training data, describes the program
       and each predictor, then writes instruction candidates for each predictor, each grounded
       in the summary, the program, bootstrapped demos and a prompting tip drawn at random.
       Candidate 0 is the predictor's own instruction. The proposals run concurrently.
    3. **Search.** optuna's TPE sampler (seeded, multivariate, through its ask/tell interface)
       picks an (instruction, demo set) pair per predictor for each trial. ``trials_in_flight``
       trials are asked at once and evaluated concurrently, then told in the order they were
       asked, so the sampler sees the same history whatever the timing. With ``minibatch``,
       trials score on random minibatches of the validation set and, after every
       ``minibatch_full_eval_steps`` trials and after the last, the combination with the best
       mean minibatch score not yet fully evaluated is scored on the whole validation set, as
       in DSPy. The returned program is the best fully-evaluated one.

    ``trials_in_flight=1`` is DSPy's algorithm (one trial at a time); with more, each wave of
    trials is asked before the previous wave's results are known (optuna's constant-liar
    strategy spreads them out), which trades some sample efficiency for wall time.

    The returned program has DSPy's attributes: ``score`` (its full validation score),
    ``trial_logs`` (a ``TrialLogs``), ``candidate_programs`` (fully evaluated, best first),
    ``mb_candidate_programs`` (minibatch trials, best first), ``total_calls`` (program runs made
    to evaluate candidates) and ``prompt_model_total_calls``; also ``instruction_candidates``
    (per predictor) and ``demo_candidates`` (per predictor, a list of demo sets).

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool/float, sync or async.
        prompt_model: the LM that proposes instructions; default: the context's LM.
        task_model: the LM the program runs with while bootstrapping and evaluating (as
            ``asynclm.context(lm=task_model)``, so predictors with their own LM keep it);
            default: the context's LM.
        auto: ``"light"``, ``"medium"`` or ``"heavy"`` (DSPy's presets: 6, 12 or 18 candidates,
            the validation set sampled down to 100, 300 or 1000 examples, trials from DSPy's
            formula, minibatches only when the validation set is larger than 50); ``None``
            to set ``num_candidates`` here and ``num_trials`` in ``compile``.
        num_candidates: instruction and demo-set candidates per predictor (only with
            ``auto=None``).
        max_bootstrapped_demos, max_labeled_demos: demos per demo set (both 0: optimize
            instructions only).
        minibatch, minibatch_size, minibatch_full_eval_steps: see above (``auto`` decides
            ``minibatch`` itself, as in DSPy).
        trials_in_flight: trials evaluated at once.
        seed: seeds the sampler and every random draw.
        concurrency: program runs in flight at once, over all trials together.
        teacher_settings, metric_threshold: passed to ``BootstrapFewShot``.
        max_errors: failed examples tolerated per evaluation; an evaluation that fails more
            scores 0 (as in DSPy).
        init_temperature: the prompt model's temperature when proposing.
        track_stats: attach the attributes above to the returned program.
        progress: show a bar over the trials with the best score so far.
        num_threads: DSPy's name for ``concurrency`` (they are tasks, not threads).
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        prompt_model: Any = None,
        task_model: Any = None,
        auto: Literal["light", "medium", "heavy"] | None = "light",
        num_candidates: int | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        minibatch: bool = True,
        minibatch_size: int = 35,
        minibatch_full_eval_steps: int = 5,
        trials_in_flight: int = 4,
        seed: int = 0,
        concurrency: int = 32,
        teacher_settings: Mapping[str, Any] | None = None,
        max_errors: int | None = 10,
        metric_threshold: float | None = None,
        init_temperature: float = 1.0,
        track_stats: bool = True,
        progress: bool = False,
        num_threads: int | None = None,
    ) -> None:
        who = "MIPROv2"
        if num_threads is not None:  # DSPy's name for it
            _check_int(who, "num_threads", num_threads, 1)
            if concurrency not in (32, num_threads):
                raise ValueError(f"{who}: give concurrency={concurrency} or num_threads={num_threads}, not both")
            concurrency = num_threads
        if not callable(metric):
            raise TypeError(f"{who}(metric={metric!r}): the metric must be a function metric(example, prediction)")
        if auto not in (None, "light", "medium", "heavy"):
            raise ValueError(f"{who}(auto={auto!r}): use 'light', 'medium' or 'heavy', or None with num_candidates")
        if num_candidates is not None:
            _check_int(who, "num_candidates", num_candidates, 1)
            if auto is not None:
                raise ValueError(
                    f"{who}: auto={auto!r} sets the number of candidates itself; pass auto=None to give "
                    f"num_candidates={num_candidates} (and num_trials to compile)"
                )
        elif auto is None:
            raise ValueError(f"{who}(auto=None): give num_candidates too (and num_trials to compile)")
        for name, value, minimum in (
            ("max_bootstrapped_demos", max_bootstrapped_demos, 0),
            ("max_labeled_demos", max_labeled_demos, 0),
            ("minibatch_size", minibatch_size, 1),
            ("minibatch_full_eval_steps", minibatch_full_eval_steps, 1),
            ("trials_in_flight", trials_in_flight, 1),
            ("concurrency", concurrency, 1),
            ("seed", seed, 0),
        ):
            _check_int(who, name, value, minimum)
        if max_errors is not None:
            _check_int(who, "max_errors", max_errors, 0)
        if not isinstance(minibatch, bool):
            raise TypeError(f"{who}(minibatch={minibatch!r}): use True or False")
        if not _optuna_available():
            raise ImportError(_EXTRA_HINT)
        self.metric = metric
        self.prompt_model = prompt_model
        self.task_model = task_model
        self.auto = auto
        self.num_candidates = num_candidates
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.minibatch = minibatch
        self.minibatch_size = minibatch_size
        self.minibatch_full_eval_steps = minibatch_full_eval_steps
        self.trials_in_flight = trials_in_flight
        self.seed = seed
        self.concurrency = concurrency
        self.teacher_settings = dict(teacher_settings or {})
        self.max_errors = max_errors
        self.metric_threshold = metric_threshold
        self.init_temperature = init_temperature
        self.track_stats = track_stats
        self.progress = progress
        # checked now, as BootstrapFewShot checks them, rather than after the first LM calls
        BootstrapFewShot(teacher_settings=self.teacher_settings)

    # -- settings ------------------------------------------------------------------------------

    @staticmethod
    def num_trials_for(num_predictors: int, num_candidates: int, zeroshot: bool) -> int:
        """DSPy's number of trials: ``max(2 * variables * log2(candidates), 1.5 * candidates)``,
        with two variables per predictor (instruction and demos), one when zero-shot."""
        variables = num_predictors * (1 if zeroshot else 2)
        return int(max(2 * variables * math.log2(num_candidates), 1.5 * num_candidates))

    @staticmethod
    def _split(trainset: list[Example], valset: list[Example] | None) -> tuple[list[Example], list[Example]]:
        if not trainset:
            raise ValueError("MIPROv2: the trainset is empty; give at least one Example")
        if valset is None:
            if len(trainset) < 2:
                raise ValueError(
                    "MIPROv2: with no valset, the trainset needs at least 2 examples (80% become the valset)"
                )
            size = min(1000, max(1, int(len(trainset) * 0.80)))
            cut = len(trainset) - size
            return trainset[:cut], trainset[cut:]
        if not valset:
            raise ValueError("MIPROv2: the valset is empty; give at least one Example, or leave it out")
        return trainset, valset

    # -- compile -------------------------------------------------------------------------------

    @sync_twin
    async def compile(
        self,
        student: Module,
        *,
        trainset: Iterable[Example],
        teacher: Module | None = None,
        valset: Iterable[Example] | None = None,
        num_trials: int | None = None,
        max_bootstrapped_demos: int | None = None,
        max_labeled_demos: int | None = None,
        seed: int | None = None,
        minibatch: bool | None = None,
        minibatch_size: int | None = None,
        minibatch_full_eval_steps: int | None = None,
        program_aware_proposer: bool = True,
        data_aware_proposer: bool = True,
        view_data_batch_size: int = 10,
        tip_aware_proposer: bool = True,
        fewshot_aware_proposer: bool = True,
        requires_permission_to_run: bool | None = None,
    ) -> Module:
        who = "MIPROv2"
        if requires_permission_to_run:
            raise ValueError(
                f"{who}.compile: there is no confirmation prompt (DSPy removed it too); "
                "leave out requires_permission_to_run"
            )
        if not isinstance(student, Module):
            raise TypeError(f"{who}.compile: the program must be an asynclm Module, got {type(student).__name__}")
        if not student.predictors():
            raise ValueError(f"{who}.compile: the program has no predictors (Predict modules) to optimize")
        if not _optuna_available():
            raise ImportError(_EXTRA_HINT)
        max_boot = self.max_bootstrapped_demos if max_bootstrapped_demos is None else max_bootstrapped_demos
        max_lab = self.max_labeled_demos if max_labeled_demos is None else max_labeled_demos
        seed = self.seed if seed is None else seed
        minibatch = self.minibatch if minibatch is None else minibatch
        mb_size = self.minibatch_size if minibatch_size is None else minibatch_size
        full_eval_steps = (
            self.minibatch_full_eval_steps if minibatch_full_eval_steps is None else minibatch_full_eval_steps
        )
        for name, value, minimum in (
            ("max_bootstrapped_demos", max_boot, 0),
            ("max_labeled_demos", max_lab, 0),
            ("seed", seed, 0),
            ("minibatch_size", mb_size, 1),
            ("minibatch_full_eval_steps", full_eval_steps, 1),
            ("view_data_batch_size", view_data_batch_size, 1),
        ):
            _check_int(f"{who}.compile", name, value, minimum)
        if num_trials is not None:
            _check_int(f"{who}.compile", "num_trials", num_trials, 1)
            if self.auto is not None:
                raise ValueError(
                    f"{who}.compile(num_trials={num_trials}): auto={self.auto!r} sets the number of trials itself; "
                    "use MIPROv2(auto=None, num_candidates=...) to choose it"
                )
        elif self.auto is None:
            assert self.num_candidates is not None
            zs = max_boot == 0 and max_lab == 0
            suggestion = self.num_trials_for(len(student.predictors()), self.num_candidates, zs)
            raise ValueError(
                f"{who}.compile: with auto=None, give num_trials too (for num_candidates={self.num_candidates}, "
                f"DSPy's formula suggests num_trials={suggestion})"
            )

        train, val = self._split(
            check_trainset(trainset, who), check_trainset(valset, who, "valset") if valset is not None else None
        )
        rng = random.Random(seed)
        zeroshot = max_boot == 0 and max_lab == 0
        num_predictors = len(student.predictors())
        if self.auto is not None:
            preset = AUTO_RUN_SETTINGS[self.auto]
            val = [val[i] for i in rng.sample(range(len(val)), min(preset["val_size"], len(val)))]
            minibatch = len(val) > MIN_MINIBATCH_SIZE
            num_instructions = preset["n"] if zeroshot else int(preset["n"] * 0.5)
            num_demo_sets = preset["n"]
            num_trials = self.num_trials_for(num_predictors, preset["n"], zeroshot)
        else:
            assert self.num_candidates is not None and num_trials is not None
            num_instructions = num_demo_sets = self.num_candidates
        if minibatch and mb_size > len(val):
            raise ValueError(
                f"{who}: minibatch_size={mb_size} is larger than the valset ({len(val)} examples); "
                "use a smaller minibatch_size or minibatch=False"
            )
        logger.info(
            "%s: %d trials, minibatch=%s, %d demo-set and %d instruction candidates, valset of %d",
            who,
            num_trials,
            minibatch,
            num_demo_sets,
            num_instructions,
            len(val),
        )

        prompt_model = self.prompt_model if self.prompt_model is not None else current_settings().lm
        if prompt_model is None:
            raise ValueError(
                f"{who} needs a prompt model: pass MIPROv2(prompt_model=asynclm.LM(...)) or asynclm.configure(lm=...)"
            )
        program = student.deepcopy()
        proposer = GroundedProposer(
            prompt_model=prompt_model,
            rng=rng,
            program_aware=program_aware_proposer,
            data_aware=data_aware_proposer,
            tip_aware=tip_aware_proposer,
            fewshot_aware=fewshot_aware_proposer,
            view_data_batch_size=view_data_batch_size,
            init_temperature=self.init_temperature,
            concurrency=self.concurrency,
        )
        score = _Scorer(self, val)

        # Step 1, with what needs no demos alongside: the dataset summary (prompt model) and
        # importing optuna (in a worker thread).
        async def import_optuna() -> Any:
            # a cancelled compile does not wait for the import (it finishes in its thread)
            return await anyio.to_thread.run_sync(_import_optuna, abandon_on_cancel=True)

        async def bootstrap() -> list[list[list[Example]]]:
            with self._task_context():
                return await self._demo_candidates(
                    program, train, teacher, rng, num_demo_sets, max_boot, max_lab, zeroshot
                )

        optuna, _, demo_sets = await _all(import_optuna, functools.partial(proposer.prepare, train), bootstrap)
        demo_candidates: list[list[list[Example]]] | None = demo_sets

        # Step 2, with the full evaluation of the program as it is (the search's first trial).
        async def default_score() -> float:
            with self._task_context():
                return await score(program, val)

        instruction_candidates, baseline = await _all(
            functools.partial(proposer.propose, program, train, demo_candidates, num_instructions), default_score
        )
        for i, candidates in enumerate(instruction_candidates):
            logger.info("%s: instruction candidates of predictor %d: %r", who, i, candidates)
        if zeroshot:
            demo_candidates = None

        # Step 3.
        with self._task_context():
            best = await self._search(
                optuna,
                score,
                baseline,
                program,
                instruction_candidates,
                demo_candidates,
                val,
                rng,
                seed,
                num_trials,
                minibatch,
                mb_size,
                full_eval_steps,
            )
        if self.track_stats:
            best.prompt_model_total_calls = proposer.calls  # type: ignore[attr-defined]
            best.instruction_candidates = tuple(tuple(c) for c in instruction_candidates)  # type: ignore[attr-defined]
            best.demo_candidates = (  # type: ignore[attr-defined]
                tuple(tuple(tuple(s) for s in sets) for sets in demo_candidates) if demo_candidates else None
            )
        return best

    def _task_context(self) -> contextlib.AbstractContextManager[Any]:
        return context(lm=self.task_model) if self.task_model is not None else contextlib.nullcontext()

    # -- step 1: demo sets ---------------------------------------------------------------------

    async def _demo_candidates(
        self,
        program: Module,
        trainset: list[Example],
        teacher: Module | None,
        rng: random.Random,
        num_sets: int,
        max_boot: int,
        max_lab: int,
        zeroshot: bool,
    ) -> list[list[list[Example]]]:
        """Per predictor, the demo sets (DSPy's ``create_n_fewshot_demo_sets``). The random draws
        are made first, in DSPy's order; then the bootstraps run concurrently, sharing
        ``concurrency`` between them."""
        if zeroshot:  # demos that only inform the instruction proposals, as in DSPy
            max_boot, max_lab = DEMOS_IN_CONTEXT, 0
        plans: list[tuple[str, list[Example], int]] = []
        for s in range(-3, num_sets - 3):
            if s == -3:
                plans.append(("zero-shot", trainset, 0))
            elif s == -2 and max_lab > 0:
                plans.append(("labeled", trainset, 0))
            elif s == -1:
                plans.append(("bootstrap", list(trainset), max_boot))
            else:
                shuffled = list(trainset)
                rng.shuffle(shuffled)
                size = rng.randint(min(1, max_boot), max_boot)
                plans.append(("bootstrap", shuffled, size))
        bootstraps = sum(1 for kind, _, _ in plans if kind == "bootstrap")
        share = max(1, self.concurrency // max(1, bootstraps))
        programs: list[Module | None] = [None] * len(plans)

        async def make(index: int) -> None:
            kind, examples, size = plans[index]
            if kind == "zero-shot":
                programs[index] = program.reset_copy()
            elif kind == "labeled":
                programs[index] = await LabeledFewShot(k=max_lab).compile(program, trainset=examples)
            else:
                programs[index] = await BootstrapFewShot(
                    metric=self.metric,
                    metric_threshold=self.metric_threshold,
                    teacher_settings=self.teacher_settings,
                    max_bootstrapped_demos=size,
                    max_labeled_demos=max_lab,
                    max_errors=self.max_errors,
                    concurrency=share,
                ).compile(program, trainset=examples, teacher=teacher)

        await _all(*(functools.partial(make, index) for index in range(len(plans))))
        sets: list[list[list[Example]]] = [[] for _ in program.predictors()]
        for made in programs:
            assert made is not None
            for i, predictor in enumerate(made.predictors()):
                sets[i].append(list(predictor.demos))
        return sets

    # -- step 3: the search --------------------------------------------------------------------

    async def _search(
        self,
        optuna: Any,
        score: _Scorer,
        default_score: float,
        program: Module,
        instruction_candidates: list[list[str]],
        demo_candidates: list[list[list[Example]]] | None,
        valset: list[Example],
        rng: random.Random,
        seed: int,
        num_trials: int,
        minibatch: bool,
        mb_size: int,
        full_eval_steps: int,
    ) -> Module:
        who = "MIPROv2"
        num_predictors = len(program.predictors())
        distributions: dict[str, Any] = {}
        for i in range(num_predictors):
            distributions[f"{i}_predictor_instruction"] = optuna.distributions.CategoricalDistribution(
                list(range(len(instruction_candidates[i])))
            )
            if demo_candidates:
                distributions[f"{i}_predictor_demos"] = optuna.distributions.CategoricalDistribution(
                    list(range(len(demo_candidates[i])))
                )

        def build(params: Mapping[str, Any]) -> Module:
            candidate = program.deepcopy()
            for i, predictor in enumerate(candidate.predictors()):
                instruction = instruction_candidates[i][params[f"{i}_predictor_instruction"]]
                predictor.signature = predictor.signature.with_instructions(instruction)
                if demo_candidates:
                    predictor.demos = [d.copy() for d in demo_candidates[i][params[f"{i}_predictor_demos"]]]
            return candidate

        def key_of(params: Mapping[str, Any]) -> str:
            parts = []
            for i in range(num_predictors):
                parts.append(f"Predictor {i}: Instruction {params[f'{i}_predictor_instruction']}")
                if demo_candidates:
                    parts.append(f"Predictor {i}: Few-Shot Set {params[f'{i}_predictor_demos']}")
            return ",".join(parts)

        crossings = (
            sum(1 for m in range(1, num_trials + 1) if m % full_eval_steps == 0 or m == num_trials) if minibatch else 0
        )
        total_evals = 1 + num_trials + crossings
        bar = Progress(total_evals, desc="MIPROv2") if self.progress else None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if optuna.logging.get_verbosity() < optuna.logging.WARNING:
                optuna.logging.set_verbosity(optuna.logging.WARNING)  # as DSPy: no line per trial
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)

        trial_logs: dict[int, dict[str, Any]] = {}
        score_data: list[dict[str, Any]] = []
        param_scores: dict[str, list[tuple[float, Module, dict[str, Any]]]] = {}
        fully_evaluated: dict[str, dict[str, Any]] = {}
        total_eval_calls = 0

        try:
            # trial 1: the program as it is, on the whole valset (scored before the search)
            total_eval_calls += len(valset)
            trial_logs[1] = {
                "full_eval_score": default_score,
                "total_eval_calls_so_far": total_eval_calls,
                "full_eval_program": program.deepcopy(),
            }
            best_score = default_score
            best_program = program.deepcopy()
            score_data.append({"score": default_score, "program": program.deepcopy(), "full_eval": True})
            default_params = dict.fromkeys(distributions, 0)
            study.add_trial(
                optuna.trial.create_trial(params=default_params, distributions=distributions, value=default_score)
            )
            logger.info("%s: default program scores %s", who, default_score)
            if bar is not None:
                bar.update(best=best_score)

            done = 0
            while done < num_trials:
                wave = min(self.trials_in_flight, num_trials - done)
                asked = []
                for _ in range(wave):
                    trial = study.ask(distributions)
                    params = {name: trial.params[name] for name in distributions}
                    examples = (
                        [valset[i] for i in rng.sample(range(len(valset)), mb_size)]
                        if minibatch and mb_size < len(valset)
                        else valset
                    )
                    asked.append((trial, params, build(params), examples))
                scores = await self._evaluate_all(score, [(candidate, examples) for _, _, candidate, examples in asked])

                for (trial, params, candidate, examples), value in zip(asked, scores, strict=True):
                    study.tell(trial, value)
                    total_eval_calls += len(examples)
                    number = trial.number + 1
                    full = len(examples) >= len(valset)
                    log: dict[str, Any] = dict(params)
                    log["total_eval_calls_so_far"] = total_eval_calls
                    if minibatch:
                        log.update(mb_score=value, mb_program=candidate.deepcopy())
                    else:
                        log.update(full_eval_score=value, full_eval_program=candidate.deepcopy())
                        if value > best_score:
                            best_score, best_program = value, candidate.deepcopy()
                            logger.info("%s: best full score so far: %s (trial %d)", who, value, number)
                    trial_logs[number] = log
                    score_data.append({"score": value, "program": candidate, "full_eval": full})
                    param_scores.setdefault(key_of(params), []).append((value, candidate, params))
                    if bar is not None:
                        bar.update(best=best_score)

                due = (
                    sum(1 for m in range(done + 1, done + wave + 1) if m % full_eval_steps == 0 or m == num_trials)
                    if minibatch
                    else 0
                )
                done += wave
                if due:
                    best_score, best_program, total_eval_calls = await self._full_evaluations(
                        optuna,
                        study,
                        due,
                        distributions,
                        param_scores,
                        fully_evaluated,
                        score,
                        valset,
                        trial_logs,
                        score_data,
                        best_score,
                        best_program,
                        total_eval_calls,
                        bar,
                    )
        finally:
            if bar is not None:
                bar.close()

        logger.info("%s: returning the best program, full validation score %s", who, best_score)
        result = best_program.deepcopy()
        mark_compiled(result)
        if self.track_stats:
            ordered = sorted(score_data, key=lambda item: item["score"], reverse=True)
            result.trial_logs = TrialLogs(trial_logs)  # type: ignore[attr-defined]
            result.score = best_score  # type: ignore[attr-defined]
            result.total_calls = total_eval_calls  # type: ignore[attr-defined]
            result.candidate_programs = ScoredPrograms(x for x in ordered if x["full_eval"])  # type: ignore[attr-defined]
            result.mb_candidate_programs = ScoredPrograms(x for x in ordered if not x["full_eval"])  # type: ignore[attr-defined]
        return result

    @staticmethod
    async def _evaluate_all(score: _Scorer, jobs: list[tuple[Module, list[Example]]]) -> list[float]:
        """Score every (program, examples) job concurrently; the scores in the jobs' order."""
        return await _all(*(functools.partial(score, candidate, examples) for candidate, examples in jobs))

    async def _full_evaluations(
        self,
        optuna: Any,
        study: optuna.Study,
        due: int,
        distributions: dict[str, Any],
        param_scores: dict[str, list[tuple[float, Module, dict[str, Any]]]],
        fully_evaluated: dict[str, dict[str, Any]],
        score: _Scorer,
        valset: list[Example],
        trial_logs: dict[int, dict[str, Any]],
        score_data: list[dict[str, Any]],
        best_score: float,
        best_program: Module,
        total_eval_calls: int,
        bar: Progress | None,
    ) -> tuple[float, Module, int]:
        """Fully evaluate the ``due`` combinations with the best mean minibatch score not yet
        fully evaluated (DSPy's picks, one per full-evaluation point), concurrently; record them
        in a fixed order."""
        means = [
            (key, sum(v for v, _, _ in values) / len(values), values[0][1], values[0][2])
            for key, values in param_scores.items()
        ]
        means.sort(key=lambda item: item[1], reverse=True)  # stable: ties keep the order trials were told
        picks = [item for item in means if item[0] not in fully_evaluated][:due]
        if len(picks) < due:
            logger.info("MIPROv2: every combination tried so far is already fully evaluated")
        for _ in range(due - len(picks)):
            if bar is not None:
                bar.update(best=best_score)
        results = await self._evaluate_all(score, [(candidate, valset) for _, _, candidate, _ in picks])
        for (key, mean, candidate, params), value in zip(picks, results, strict=True):
            logger.info("MIPROv2: full evaluation of %s (mean minibatch score %s): %s", key, mean, value)
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
            number = len(study.trials)
            total_eval_calls += len(valset)
            fully_evaluated[key] = {"program": candidate, "score": value}
            score_data.append({"score": value, "program": candidate, "full_eval": True})
            trial_logs[number] = {
                **params,
                "total_eval_calls_so_far": total_eval_calls,
                "full_eval_program": candidate,
                "full_eval_score": value,
            }
            if value > best_score:
                best_score, best_program = value, candidate.deepcopy()
                logger.info("MIPROv2: new best full score: %s", value)
            if bar is not None:
                bar.update(best=best_score)
        return best_score, best_program, total_eval_calls
