"""Evaluation: ``Evaluate`` (concurrent, cancellable scoring of a program on a dev set) and
metrics: exact match, token F1 and passage match (DSPy-compatible normalisation), and the LM-judged
``SemanticF1``."""

from ._evaluate import Evaluate, EvaluationResult, call_metric, metric_score
from ._metrics import (
    answer_exact_match,
    answer_passage_match,
    em_score,
    exact_match,
    f1_score,
    normalize_text,
    precision_score,
    token_f1,
)
from ._semantic import (
    DecompositionalSemanticRecallPrecision,
    SemanticF1,
    SemanticRecallPrecision,
    semantic_f1,
)
from ._table import format_table

__all__ = [
    "DecompositionalSemanticRecallPrecision",
    "Evaluate",
    "EvaluationResult",
    "SemanticF1",
    "SemanticRecallPrecision",
    "answer_exact_match",
    "answer_passage_match",
    "call_metric",
    "em_score",
    "exact_match",
    "f1_score",
    "format_table",
    "metric_score",
    "normalize_text",
    "precision_score",
    "semantic_f1",
    "token_f1",
]
