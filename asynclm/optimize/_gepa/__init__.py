"""GEPA: reflective prompt evolution, in concurrent rounds (see ``_optimizer``)."""

from ._feedback import ScoreWithFeedback
from ._optimizer import GEPA
from ._result import GEPAResult

__all__ = ["GEPA", "GEPAResult", "ScoreWithFeedback"]
