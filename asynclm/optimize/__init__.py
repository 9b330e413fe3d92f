"""Optimizers: ``LabeledFewShot``, ``BootstrapFewShot``, ``BootstrapFewShotWithRandomSearch``,
``KNNFewShot``, ``Ensemble`` (with ``majority``) and ``MIPROv2``. Each ``compile`` is a coroutine with a
``.sync`` twin and returns a new program, leaving the given one untouched."""

from ._base import Optimizer, Teleprompter
from ._bootstrap import BootstrapFewShot
from ._ensemble import Ensemble, EnsembledProgram, majority
from ._knn import KNNFewShot
from ._labeled import LabeledFewShot
from ._mipro import MIPROv2, ScoredPrograms, TrialLogs
from ._random_search import BootstrapFewShotWithRandomSearch, Candidate, CandidatePrograms

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Candidate",
    "CandidatePrograms",
    "Ensemble",
    "EnsembledProgram",
    "KNNFewShot",
    "LabeledFewShot",
    "MIPROv2",
    "Optimizer",
    "ScoredPrograms",
    "Teleprompter",
    "TrialLogs",
    "majority",
]
