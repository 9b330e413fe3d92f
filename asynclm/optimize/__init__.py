"""Optimizers: ``LabeledFewShot``, ``BootstrapFewShot``, ``BootstrapFewShotWithRandomSearch``,
``KNNFewShot``, ``Ensemble`` (with ``majority``) and ``GEPA`` (with ``ScoreWithFeedback``).
Each ``compile`` is a coroutine with a ``.sync`` twin and returns a new program, leaving the given one untouched."""

from ._base import Optimizer, Teleprompter
from ._bootstrap import BootstrapFewShot
from ._ensemble import Ensemble, EnsembledProgram, majority
from ._gepa import GEPA, GEPAResult, ScoreWithFeedback
from ._knn import KNNFewShot
from ._labeled import LabeledFewShot
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
    "Optimizer",
    "ScoreWithFeedback",
    "Teleprompter",
    "majority",
]
