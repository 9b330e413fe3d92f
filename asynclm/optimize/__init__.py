"""Optimizers: ``LabeledFewShot``, ``BootstrapFewShot``, ``BootstrapFewShotWithRandomSearch``,
``KNNFewShot``, ``Ensemble`` (with ``majority``), ``MIPROv2`` and ``GEPA`` (with ``ScoreWithFeedback``).
Each ``compile`` is a coroutine with a ``.sync`` twin and returns a new program, leaving the given one untouched."""

from ._base import Optimizer, Teleprompter
from ._bootstrap import BootstrapFewShot
from ._ensemble import Ensemble, EnsembledProgram, majority
from ._gepa import GEPA, GEPAResult, ScoreWithFeedback
from ._knn import KNNFewShot
from ._labeled import LabeledFewShot
from ._mipro import MIPROv2, ScoredPrograms, TrialLogs
from ._random_search import BootstrapFewShotWithRandomSearch, Candidate, CandidatePrograms

__all__ = [
    "GEPA",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Candidate",
    "CandidatePrograms",
    "Ensemble",
    "EnsembledProgram",
    "GEPAResult",
    "KNNFewShot",
    "LabeledFewShot",
    "MIPROv2",
    "Optimizer",
    "ScoreWithFeedback",
    "ScoredPrograms",
    "Teleprompter",
    "TrialLogs",
    "majority",
]
