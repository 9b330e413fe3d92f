"""Modules: ``Module``, ``Predict``, ``ChainOfThought``, ``ReAct``, ``BestOfN``, ``Refine``,
``MultiChainComparison``, streaming and callbacks."""

from ._best_of_n import BestOfN, Refine
from ._callbacks import Callback, current_call_id
from ._mcp import MCPToolError
from ._module import Module, ProgramFileError
from ._multi_chain import MultiChainComparison
from ._otel import OpenTelemetryCallback
from ._predict import ChainOfThought, NoLMError, Predict
from ._react import ReAct
from ._streaming import StreamChunk, StreamingProgram, streamify
from ._tool import Tool, ToolArgumentError
from ._trace import trace_scope

__all__ = [
    "BestOfN",
    "Callback",
    "ChainOfThought",
    "MCPToolError",
    "Module",
    "MultiChainComparison",
    "NoLMError",
    "OpenTelemetryCallback",
    "Predict",
    "ProgramFileError",
    "ReAct",
    "Refine",
    "StreamChunk",
    "StreamingProgram",
    "Tool",
    "ToolArgumentError",
    "current_call_id",
    "streamify",
    "trace_scope",
]
