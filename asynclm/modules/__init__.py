"""Modules: ``Module``, ``Predict``, ``ChainOfThought``, ``ReAct``, ``BestOfN``, ``Refine``,
``MultiChainComparison``, streaming and callbacks."""

from ._callbacks import Callback, current_call_id
from ._module import Module, ProgramFileError
from ._otel import OpenTelemetryCallback
from ._predict import ChainOfThought, NoLMError, Predict
from ._streaming import StreamChunk, StreamingProgram, streamify
from ._trace import trace_scope

__all__ = [
    "Callback",
    "ChainOfThought",
    "Module",
    "NoLMError",
    "OpenTelemetryCallback",
    "Predict",
    "ProgramFileError",
    "StreamChunk",
    "StreamingProgram",
    "current_call_id",
    "streamify",
    "trace_scope",
]
