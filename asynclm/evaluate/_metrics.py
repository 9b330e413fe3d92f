"""String metrics, compatible with DSPy's ``dspy.evaluate.metrics``.

Every comparison goes through ``normalize_text`` (SQuAD-style normalisation), so
``"The Eiffel Tower!"`` and ``"eiffel tower"`` are equal.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = [
    "answer_exact_match",
    "answer_passage_match",
    "em_score",
    "exact_match",
    "f1_score",
    "normalize_text",
    "precision_score",
    "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_text(text: str) -> str:
    """Normalise text for comparison, exactly as DSPy does: Unicode NFD, lowercase, drop ASCII
    punctuation, drop the English articles ``a``/``an``/``the``, collapse whitespace.

    >>> normalize_text("The,  Eiffel  Tower!")
    'eiffel tower'
    """
    text = unicodedata.normalize("NFD", str(text)).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def em_score(prediction: str, ground_truth: str) -> bool:
    """True when both strings are equal after ``normalize_text``."""
    return normalize_text(prediction) == normalize_text(ground_truth)


def _overlap(prediction: str, ground_truth: str) -> tuple[int, int, int]:
    pred_tokens = normalize_text(prediction).split()
    truth_tokens = normalize_text(ground_truth).split()
    same = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    return same, len(pred_tokens), len(truth_tokens)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of the normalised strings (whitespace tokens, multiset overlap).

    0.0 when no token is shared, including when both are empty (as in DSPy).

    >>> round(f1_score("the Eiffel Tower is in Paris", "Eiffel Tower"), 2)
    0.57
    """
    same, n_pred, n_truth = _overlap(prediction, ground_truth)
    if same == 0:
        return 0.0
    precision = same / n_pred
    recall = same / n_truth
    return 2 * precision * recall / (precision + recall)


def precision_score(prediction: str, ground_truth: str) -> float:
    """Token-level precision: the share of the prediction's tokens found in the reference."""
    same, n_pred, _ = _overlap(prediction, ground_truth)
    return 0.0 if same == 0 else same / n_pred


def _references(answers: str | Sequence[str], what: str) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, Sequence) and answers and all(isinstance(a, str) for a in answers):
        return list(answers)
    raise ValueError(f"{what}: the reference answer must be a string or a non-empty list of strings; got {answers!r}")


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """True when ``prediction`` equals any of ``answers`` after normalisation (DSPy's ``EM``)."""
    return any(em_score(prediction, a) for a in _references(answers, "exact_match"))


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """The best ``f1_score`` of ``prediction`` against any of ``answers`` (DSPy's ``F1``)."""
    return max(f1_score(prediction, a) for a in _references(answers, "token_f1"))


def answer_exact_match(example: Any, pred: Any, trace: Any = None, frac: float = 1.0) -> bool:
    """Metric: ``pred.answer`` matches ``example.answer`` (a string, or a list of accepted answers).

    With ``frac=1.0`` (default) the match is exact after normalisation; with ``frac < 1`` it is
    token F1 >= ``frac`` against the best reference.
    """
    references = _references(example.answer, "answer_exact_match")
    if frac >= 1.0:
        return exact_match(pred.answer, references)
    return token_f1(pred.answer, references) >= frac


def _contains(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False
    width = len(needle)
    return any(haystack[i : i + width] == needle for i in range(len(haystack) - width + 1))


def answer_passage_match(example: Any, pred: Any, trace: Any = None) -> bool:
    """Metric: some passage of ``pred.context`` (a list of strings, or one string) contains
    ``example.answer`` (or one of a list of answers) as a whole-token sequence, after normalisation.
    """
    references = _references(example.answer, "answer_passage_match")
    context = pred.context
    passages = [context] if isinstance(context, str) else list(context)
    wanted = [normalize_text(a).split() for a in references]
    for passage in passages:
        tokens = normalize_text(passage).split()
        if any(_contains(tokens, answer) for answer in wanted):
            return True
    return False
