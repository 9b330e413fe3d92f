"""The MIPROv2 benchmark's task and fake models, shared by the server, asynclm and DSPy sides.

Pure Python (no asynclm, no DSPy import), so that ``bench/dspy_mipro_baseline.py`` can load it
from DSPy's virtual environment. The task: spell a word backwards. The task model answers
correctly only when its instructions say "backwards" and, for words past "m", only when it is also
shown demos. The prompt model says so in its observations only if it sees a word and its
reverse in the data it is shown, and writes the good instruction only under some of the random
tips — so the search has to find the right (instruction, demo set) pair.
"""

from __future__ import annotations

import random
import re
from typing import Any

GOOD = "Spell the word backwards, last letter first."
BAD = "You are a helpful assistant. Answer the question."


def words(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(n)]


def splits(n_train: int = 50, n_val: int = 100, n_test: int = 50) -> dict[str, list[dict[str, str]]]:
    """Train, validation and test examples as dicts ``{"word", "answer"}``."""
    return {
        name: [{"word": w, "answer": w[::-1]} for w in words(seed, n)]
        for name, seed, n in (("train", 1, n_train), ("val", 2, n_val), ("test", 3, n_test))
    }


def task_answer(inputs: dict[str, str], messages: list[Any]) -> dict[str, str]:
    word = inputs["word"].strip()
    system = str(messages[0].get("content", "")) if messages else ""
    demos = max(0, (len(messages) - 2) // 2)  # a user and an assistant turn per demo
    if "backwards" in system and (demos > 0 or word[0] <= "m"):
        return {"answer": word[::-1]}
    return {"answer": word}


def prompt_answer(inputs: dict[str, str]) -> dict[str, str]:
    if "basic_instruction" in inputs:  # an instruction proposal
        knows = "backwards" in inputs.get("dataset_description", "")
        bad_tip = re.search(r"persona|high.stakes", inputs.get("tip", ""), re.IGNORECASE) is not None
        return {"proposed_instruction": GOOD if knows and not bad_tip else BAD}
    if "module" in inputs:
        return {"module_description": "It is the only step: it answers for the word."}
    if "program_code" in inputs:
        return {"program_description": "The program maps a word to an answer in one step."}
    if "examples" in inputs:  # a look at the data: does a word appear next to its reverse?
        tokens = set(re.findall(r"[a-z]{6}", inputs["examples"]))
        reversed_ = any(t[::-1] in tokens for t in tokens)
        return {"observations": "Each answer is the word spelled backwards." if reversed_ else "Words."}
    if "observations" in inputs:
        return {"summary": inputs["observations"].strip().splitlines()[0]}
    raise ValueError(f"unexpected request with inputs {sorted(inputs)}")


def answer(inputs: dict[str, str], messages: list[Any]) -> dict[str, str]:
    """The output fields for a request (the task model's when it has a ``word`` input)."""
    return task_answer(inputs, messages) if "word" in inputs else prompt_answer(inputs)


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)
