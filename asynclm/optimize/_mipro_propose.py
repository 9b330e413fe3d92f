"""MIPROv2's grounded instruction proposer: a dataset summary, a description of the program and
of each predictor, then instruction candidates written by the prompt model (DSPy's
``GroundedProposer``, with the prompts in asynclm's words)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

from asynclm.modules import Module, Predict
from asynclm.runtime import context, run_items
from asynclm.signatures import Example, InputField, OutputField, Signature

__all__ = ["TIPS", "GroundedProposer", "describe_program_structure", "render_examples"]

logger = logging.getLogger("asynclm.optimize")

# The prompting tips one of which is drawn for each proposal (DSPy's set; "none" gives no tip).
TIPS: dict[str, str] = {
    "none": "",
    "creative": "Feel free to be creative when you write the new instruction.",
    "simple": "Keep the instruction short and clear.",
    "description": "Make the instruction detailed and informative.",
    "high_stakes": "Frame the task as a high-stakes situation in which the model must get it right.",
    "persona": 'Give the model a persona suited to the task (e.g. "You are a ...").',
}

# How many bootstrapped demos the proposer shows the prompt model (DSPy's constant).
DEMOS_IN_CONTEXT = 3
# The most calls the dataset summary makes on further batches of examples (DSPy's limit).
MAX_SUMMARY_CALLS = 10


def _signature(instructions: str, inputs: Sequence[tuple[str, str]], outputs: Sequence[tuple[str, str]]) -> Signature:
    fields: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    for name, desc in inputs:
        fields[name] = InputField(desc=desc)
        annotations[name] = str
    for name, desc in outputs:
        fields[name] = OutputField(desc=desc)
        annotations[name] = str
    namespace = {"__doc__": instructions, "__annotations__": annotations, **fields}
    return type("MIPROPrompt", (Signature,), namespace)  # type: ignore[return-value]


_OBSERVE = _signature(
    "Here are some examples taken from a dataset. Write down what holds for most or all of them: their topic, "
    "content, format, length, style, and how the outputs relate to the inputs. Say what task the data is "
    "probably meant for; an educated guess is welcome.",
    [("examples", "Examples from the dataset.")],
    [("observations", "What holds for most or all of the examples.")],
)

_OBSERVE_MORE = _signature(
    "Here are more examples from a dataset, and the observations made so far on other examples from it. "
    "Add the observations that are missing (topic, content, format, length, style, how the outputs relate to "
    "the inputs, the likely task). If the observations so far already cover everything, answer COMPLETE.",
    [("examples", "More examples from the dataset."), ("prior_observations", "The observations made so far.")],
    [("observations", "New observations, or COMPLETE when there is nothing to add.")],
)

_SUMMARIZE = _signature(
    "Summarize these observations about a dataset in two or three sentences that keep only the most important points.",
    [("observations", "Observations about a dataset.")],
    [("summary", "Two or three sentences with the most important points.")],
)

_DESCRIBE_PROGRAM = _signature(
    "Below is the structure of a program that solves a task with calls to a language model, and an example "
    "of it at work. Describe the task the program solves and how it goes about it.",
    [
        ("program_code", "The program's structure: its steps, their signatures and its code when available."),
        ("program_example", "An example of the program in use."),
    ],
    [("program_description", "What task the program solves and how it solves it.")],
)

_DESCRIBE_MODULE = _signature(
    "Below is the structure of a program that solves a task with calls to a language model. Describe the "
    "role that the named step plays in the program.",
    [
        ("program_code", "The program's structure: its steps, their signatures and its code when available."),
        ("program_example", "An example of the program in use."),
        ("program_description", "What task the program solves and how it solves it."),
        ("module", "The step to describe."),
    ],
    [("module_description", "The step's role in the program.")],
)


def _propose_signature(*, data: bool, program: bool, tip: bool) -> Signature:
    inputs: list[tuple[str, str]] = []
    if data:
        inputs.append(("dataset_description", "What the dataset we work with looks like."))
    if program:
        inputs += [
            ("program_code", "The program the step belongs to."),
            ("program_description", "What task the program solves and how it solves it."),
            ("module", "The step to write an instruction for."),
            ("module_description", "The step's role in the program."),
        ]
    inputs += [
        ("task_demos", "Examples of the step's inputs and outputs."),
        ("basic_instruction", "The step's current instruction."),
    ]
    if tip:
        inputs.append(("tip", "A suggestion for writing the new instruction."))
    return _signature(
        "You write the instruction that a language model is given for one step of a program. Learn what the "
        "task is from the information below, then write a new instruction that will help the model do this "
        "step better.",
        inputs,
        [("proposed_instruction", "The new instruction for the language model.")],
    )


_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:proposed\s+)?instruction(?:\*\*)?\s*:\s*", re.IGNORECASE)


def strip_prefix(text: str) -> str:
    """The text without a leading ``Proposed instruction:`` label or surrounding quotes."""
    text = _PREFIX.sub("", str(text).strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def render_examples(examples: Sequence[Example], fields: Sequence[str] | None = None) -> str:
    """Examples as plain text, one ``name: value`` line per field."""
    blocks = []
    for i, example in enumerate(examples, 1):
        names = [n for n in (fields if fields is not None else example.keys()) if n != "augmented" and n in example]
        lines = [f"{name}: {example[name]}" for name in names]
        blocks.append(f"Example {i}:\n" + "\n".join(lines))
    return "\n\n".join(blocks)


def describe_program_structure(program: Module) -> str:
    """What the proposer tells the prompt model about the program: its class, each predictor's
    path, signature and instructions, and the class's source when it is the user's own."""
    lines = [f"Program: {type(program).__name__}"]
    for name, predictor in program.named_predictors():
        sig = predictor.signature
        lines.append(f"- step {name!r}: {type(predictor).__name__}({sig.signature}); instructions: {sig.instructions}")
    cls = type(program)
    if not cls.__module__.startswith("asynclm."):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        if source:
            lines += ["", "Code:", source[:4000]]
    return "\n".join(lines)


class GroundedProposer:
    """Writes instruction candidates for each predictor with the prompt model.

    The dataset summary is a chain of calls (each batch of examples sees the observations so far),
    as in DSPy; the program is described once and each predictor once (DSPy's estimate of the
    program-aware proposer's cost); then every instruction is proposed concurrently. All random
    draws (the tips and the rollout ids) are made up front, in DSPy's order, from ``rng``.
    """

    def __init__(
        self,
        *,
        prompt_model: Any,
        rng: random.Random,
        program_aware: bool = True,
        data_aware: bool = True,
        tip_aware: bool = True,
        fewshot_aware: bool = True,
        view_data_batch_size: int = 10,
        init_temperature: float = 1.0,
        concurrency: int = 32,
    ) -> None:
        self.prompt_model = prompt_model
        self.rng = rng
        self.program_aware = program_aware
        self.data_aware = data_aware
        self.tip_aware = tip_aware
        self.fewshot_aware = fewshot_aware
        self.view_data_batch_size = view_data_batch_size
        self.init_temperature = init_temperature
        self.concurrency = concurrency
        self.calls = 0
        self.dataset_summary: str | None = None
        self.program_description: str | None = None

    @contextlib.contextmanager
    def _model(self) -> Iterator[None]:
        with context(lm=self.prompt_model):
            yield

    async def _ask(self, signature: Signature, field: str, config: dict[str, Any], **inputs: Any) -> str:
        self.calls += 1
        with self._model():
            prediction = await Predict(signature, **config)(**inputs)
        return str(prediction[field])

    async def summarize_dataset(self, trainset: Sequence[Example]) -> str:
        size = self.view_data_batch_size
        config = {"temperature": 1.0}
        observations = await self._ask(_OBSERVE, "observations", config, examples=render_examples(trainset[:size]))
        skips = 0
        calls = 0
        for start in range(size, len(trainset), size):
            calls += 1
            if calls >= MAX_SUMMARY_CALLS:
                break
            more = await self._ask(
                _OBSERVE_MORE,
                "observations",
                config,
                examples=render_examples(trainset[start : start + size]),
                prior_observations=observations,
            )
            if more.strip()[:8].upper() == "COMPLETE":
                skips += 1
                if skips >= 5:
                    break
                continue
            observations += "\n" + more
        summary = await self._ask(_SUMMARIZE, "summary", config, observations=observations)
        return strip_prefix(summary)

    async def prepare(self, trainset: Sequence[Example]) -> None:
        """Summarize the dataset (when ``data_aware``): it needs no demos, so ``MIPROv2`` runs it
        while the demo sets are bootstrapped."""
        if not self.data_aware:
            return
        try:
            self.dataset_summary = await self.summarize_dataset(trainset)
        except Exception as exc:  # as DSPy: go on without it
            logger.warning("MIPROv2: the dataset summary failed (%r); proposing without it", exc)
            self.data_aware = False

    async def propose(
        self,
        program: Module,
        trainset: Sequence[Example],
        demo_candidates: list[list[list[Example]]] | None,
        num_candidates: int,
    ) -> list[list[str]]:
        """``num_candidates`` instructions per predictor (index 0 is the predictor's own
        instruction, as in DSPy, which replaces the first proposal with it)."""
        predictors = program.predictors()
        if self.data_aware and self.dataset_summary is None:
            await self.prepare(trainset)
        use_demos = self.fewshot_aware and bool(demo_candidates)
        num_sets = max(len(demo_candidates[0]), 1) if demo_candidates else num_candidates
        per_predictor = len(range(num_sets)[: min(num_candidates, num_sets)])

        # the random draws, in DSPy's order: for each predictor, for each proposal, a tip then a rollout id
        draws: list[list[tuple[str, int]]] = []
        for _ in predictors:
            row = []
            for _ in range(per_predictor):
                tip = self.rng.choice(list(TIPS)) if self.tip_aware else "none"
                row.append((TIPS[tip], self.rng.randint(0, 10**9)))
            draws.append(row)

        code = describe_program_structure(program)
        example_demos = self._task_demos(predictors, demo_candidates, 0, 0, use_demos, first=False)
        module_descriptions = ["Not provided"] * len(predictors)
        program_aware = self.program_aware
        if program_aware:
            try:
                self.program_description = strip_prefix(
                    await self._ask(
                        _DESCRIBE_PROGRAM, "program_description", {}, program_code=code, program_example=example_demos
                    )
                )

                async def describe(i: int) -> None:
                    module_descriptions[i] = strip_prefix(
                        await self._ask(
                            _DESCRIBE_MODULE,
                            "module_description",
                            {},
                            program_code=code,
                            program_example=example_demos,
                            program_description=self.program_description,
                            module=self._module_text(predictors[i]),
                        )
                    )

                await run_items([(describe, (i,)) for i in range(len(predictors))], concurrency=len(predictors))
            except Exception as exc:  # as DSPy: go on without it
                logger.warning("MIPROv2: describing the program failed (%r); proposing without it", exc)
                program_aware = False

        results: list[list[str]] = [[pred.signature.instructions] * per_predictor for pred in predictors]

        async def one(i: int, j: int) -> None:
            tip, rollout = draws[i][j]
            sig = _propose_signature(data=self.data_aware, program=program_aware, tip=bool(tip))
            inputs: dict[str, Any] = {
                "task_demos": self._task_demos(predictors, demo_candidates, i, j, use_demos, first=True),
                "basic_instruction": predictors[i].signature.instructions,
            }
            if self.data_aware:
                inputs["dataset_description"] = self.dataset_summary
            if program_aware:
                inputs.update(
                    program_code=code,
                    program_description=self.program_description,
                    module=self._module_text(predictors[i]),
                    module_description=module_descriptions[i],
                )
            if tip:
                inputs["tip"] = tip
            text = await self._ask(
                sig,
                "proposed_instruction",
                {"temperature": self.init_temperature, "rollout_id": rollout},
                **inputs,
            )
            results[i][j] = strip_prefix(text) or predictors[i].signature.instructions

        # proposal 0 of each predictor is replaced by its original instruction: not asked for
        jobs = [(one, (i, j)) for i in range(len(predictors)) for j in range(1, per_predictor)]
        await run_items(jobs, concurrency=self.concurrency)
        return results

    @staticmethod
    def _module_text(predictor: Any) -> str:
        sig = predictor.signature
        return f"{type(predictor).__name__}({', '.join(sig.input_fields)}) -> {', '.join(sig.output_fields)}"

    @staticmethod
    def _task_demos(
        predictors: list[Any],
        demo_candidates: list[list[list[Example]]] | None,
        i: int,
        j: int,
        use_demos: bool,
        *,
        first: bool,
    ) -> str:
        """Up to ``DEMOS_IN_CONTEXT`` bootstrapped demos of predictor ``i``, from demo set ``j``
        then the sets after it (then those before), as DSPy gathers them. Set 0 (zero-shot, when
        ``first``) shows none."""
        none = "No task demos provided."
        if not use_demos or not demo_candidates or (first and j == 0):
            return none
        sets = demo_candidates[i]
        ordered = [sets[j], *sets[j + 1 :], *sets[:j]]
        fields = list(predictors[i].signature.fields)
        chosen: list[Example] = []
        for demo_set in ordered:
            for demo in demo_set:
                if "augmented" in demo.keys():
                    chosen.append(demo)
                    if len(chosen) >= DEMOS_IN_CONTEXT:
                        break
            if len(chosen) >= DEMOS_IN_CONTEXT:
                break
        return render_examples(chosen, fields) if chosen else none
