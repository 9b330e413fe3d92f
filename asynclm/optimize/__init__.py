"""Few-shot optimizers: ``LabeledFewShot``, ``BootstrapFewShot`` and
``BootstrapFewShotWithRandomSearch``. Each ``compile`` is a coroutine with a ``.sync`` twin and
returns a new program, leaving the given one untouched."""

from ._base import Optimizer, Teleprompter
from ._bootstrap import BootstrapFewShot
from ._labeled import LabeledFewShot
from ._random_search import BootstrapFewShotWithRandomSearch, Candidate, CandidatePrograms

__all__ = [
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Candidate",
    "CandidatePrograms",
    "LabeledFewShot",
    "Optimizer",
    "Teleprompter",
]
