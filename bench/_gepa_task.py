"""The GEPA benchmark's task, shared by the asynclm and the DSPy side (no asynclm or DSPy import).

A two-step program (``first``: question -> draft, ``second``: draft -> answer) must answer a word
in capitals. The task model capitalises a word that starts with a vowel only when ``first``'s
instructions contain VOWEL, and one that starts with a consonant only when ``second``'s contain
CONSON. Only the metric's feedback names those words; the reflection model copies the words it
finds in the feedback into the instruction it proposes, but only for one proposal in ``LUCK``
(decided by a hash of the instruction and the minibatch's words, so both libraries see the same
luck for the same proposal).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

VOWELS = "aeiou"
LUCK = 3
TRAIN_WORDS = [
    "apple", "river", "eagle", "stone", "onion", "tiger", "umbra", "maple", "ivory", "cabin",
    "oasis", "delta", "unity", "forge", "ember", "grove", "amber", "haven", "orbit", "jewel",
]  # fmt: skip
VAL_WORDS = ["ocean", "piano", "igloo", "lemon", "arrow", "cloud", "input", "melon", "otter", "north"]


def score_of(word: str, answer: str) -> float:
    return float(answer == word.upper())


def feedback_of(word: str, answer: str, pred_name: str | None) -> str:
    if answer == word.upper():
        return "Correct."
    if pred_name == "first" and word[0] in VOWELS:
        return "Words that start with a vowel must be capitalised here: the instructions must contain the word VOWEL."
    if pred_name == "second" and word[0] not in VOWELS:
        return (
            "Words that start with a consonant must be capitalised here: the instructions must contain the word CONSON."
        )
    return "Wrong, but not because of this step."


def task_model(system: str, inputs: dict[str, str]) -> dict[str, str]:
    """The task model's answer to one predictor call."""
    if "question" in inputs:
        word = inputs["question"].strip()
        return {"draft": word.upper() if word[0] in VOWELS and "VOWEL" in system else word}
    draft = inputs["draft"].strip()
    return {"answer": draft.upper() if draft[0].lower() not in VOWELS and "CONSON" in system else draft}


def reflection_model(current: str, prompt: str) -> str:
    """The reflection model's reply (a JSON object with ``new_instruction``)."""
    words = sorted(set(re.findall(r"must contain the word (\w+)", prompt)))
    key = current + "|" + ",".join(sorted(re.findall(r'"(?:question|draft)": "(\w+)"', prompt)))
    if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % LUCK:
        words = []
    new = current + "".join(f" Use {w}." for w in words if w not in current)
    return json.dumps({"new_instruction": new})


def result_summary(
    scores: list[float], total_calls: Any, candidates: int, wall: float, parents: Any, discovery: Any
) -> dict[str, Any]:
    return {
        "wall_s": wall,
        "best_val_score": max(scores),
        "metric_calls": total_calls,
        "candidates": candidates,
        "steps": {"parents": parents, "scores": scores, "discovery": discovery},
    }
