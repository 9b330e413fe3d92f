"""``GEPAResult``: what a GEPA run found (``compiled.detailed_results``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from asynclm.modules import Module

__all__ = ["GEPAResult"]


@dataclasses.dataclass(frozen=True, eq=False)
class GEPAResult:
    """Everything a GEPA run found, as ``compiled.detailed_results`` (DSPy's field names).

    Attributes:
        candidates: every accepted candidate as a program, in the order found (0 is the student).
        instructions: each candidate's instruction per predictor name.
        parents: each candidate's parents (``[None]`` for the student, two for a merge).
        origins: how each candidate was made: ``"seed"``, ``"reflection"`` or ``"merge"``.
        rounds: the round that found each candidate (0 for the student).
        val_aggregate_scores: each candidate's mean validation score.
        val_subscores: each candidate's score on each validation example.
        per_val_instance_best_candidates: the Pareto front: for each validation example, the
            candidates with the best score on it.
        highest_score_achieved_per_val_task: the best score on each validation example.
        discovery_eval_counts: the metric calls spent before each candidate was evaluated.
        total_metric_calls: the metric calls spent (never more than ``max_metric_calls``).
        max_metric_calls: the budget.
        num_full_val_evals: how many times a candidate was evaluated on the whole validation set.
        proposals_per_round, seed: as given to ``GEPA``.
        log: one entry per proposal (round, slot, kind, parents, minibatch, scores, outcome).
    """

    candidates: list[Module]
    instructions: list[dict[str, str]]
    parents: list[list[int | None]]
    origins: list[str]
    rounds: list[int]
    val_aggregate_scores: list[float]
    val_subscores: list[list[float]]
    per_val_instance_best_candidates: list[set[int]]
    highest_score_achieved_per_val_task: list[float]
    discovery_eval_counts: list[int]
    total_metric_calls: int
    max_metric_calls: int
    num_full_val_evals: int
    proposals_per_round: int
    seed: int
    log: list[dict[str, Any]]

    @property
    def best_idx(self) -> int:
        """The candidate with the highest mean validation score (the first one on a tie)."""
        scores = self.val_aggregate_scores
        return scores.index(max(scores))

    @property
    def best_candidate(self) -> Module:
        return self.candidates[self.best_idx]

    @property
    def pareto_front(self) -> list[set[int]]:
        """Another name for ``per_val_instance_best_candidates``."""
        return self.per_val_instance_best_candidates

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able data (candidates as their instructions)."""
        return {
            "candidates": [dict(c) for c in self.instructions],
            "parents": [list(p) for p in self.parents],
            "origins": list(self.origins),
            "rounds": list(self.rounds),
            "val_aggregate_scores": list(self.val_aggregate_scores),
            "val_subscores": [list(s) for s in self.val_subscores],
            "per_val_instance_best_candidates": [sorted(s) for s in self.per_val_instance_best_candidates],
            "highest_score_achieved_per_val_task": list(self.highest_score_achieved_per_val_task),
            "discovery_eval_counts": list(self.discovery_eval_counts),
            "total_metric_calls": self.total_metric_calls,
            "max_metric_calls": self.max_metric_calls,
            "num_full_val_evals": self.num_full_val_evals,
            "proposals_per_round": self.proposals_per_round,
            "seed": self.seed,
            "best_idx": self.best_idx,
            "log": [dict(entry) for entry in self.log],
        }

    def __repr__(self) -> str:
        return (
            f"GEPAResult(candidates=<{len(self.candidates)}>, best_idx={self.best_idx}, "
            f"best_score={self.val_aggregate_scores[self.best_idx]:.4g}, "
            f"total_metric_calls={self.total_metric_calls}/{self.max_metric_calls})"
        )
