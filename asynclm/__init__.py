"""asynclm: async-native language-model programs on anyio (asyncio and trio).

Every public coroutine has a ``.sync`` twin that runs it from any plain thread.
Names are re-exported lazily so that ``import asynclm`` stays fast: the heavy
dependencies (pydantic, the HTTP transport) load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    # runtime
    "configure": "asynclm.runtime",
    "context": "asynclm.runtime",
    "settings": "asynclm.runtime",
    "Settings": "asynclm.runtime",
    "syncify": "asynclm.runtime",
    "asyncify": "asynclm.runtime",
    "sync_twin": "asynclm.runtime",
    "Parallel": "asynclm.runtime",
    "SyncInAsyncContextError": "asynclm.runtime",
    # signatures
    "Signature": "asynclm.signatures",
    "InputField": "asynclm.signatures",
    "OutputField": "asynclm.signatures",
    "SignatureError": "asynclm.signatures",
    "Example": "asynclm.signatures",
    "Prediction": "asynclm.signatures",
    "History": "asynclm.signatures",
    "Image": "asynclm.signatures",
    "Audio": "asynclm.signatures",
    "File": "asynclm.signatures",
    "MediaError": "asynclm.signatures",
    "MediaTooLargeError": "asynclm.signatures",
    "MediaTypeError": "asynclm.signatures",
    "ToolCalls": "asynclm.signatures",
    # adapters
    "Adapter": "asynclm.adapters",
    "ChatAdapter": "asynclm.adapters",
    "JSONAdapter": "asynclm.adapters",
    "ParseError": "asynclm.adapters",
    # lm
    "LM": "asynclm.lm",
    "LocalLM": "asynclm.lm",
    "FallbackLM": "asynclm.lm",
    "BatchLM": "asynclm.lm",
    "LocalModelUnavailableError": "asynclm.lm",
    "LMResponse": "asynclm.lm",
    "Usage": "asynclm.lm",
    "LMError": "asynclm.lm",
    "RateLimitError": "asynclm.lm",
    "AuthenticationError": "asynclm.lm",
    "BadRequestError": "asynclm.lm",
    "ContextWindowExceededError": "asynclm.lm",
    "ServerError": "asynclm.lm",
    "LMConnectionError": "asynclm.lm",
    "LMTimeoutError": "asynclm.lm",
    "ResponseTooLargeError": "asynclm.lm",
    "track_usage": "asynclm.lm",
    "RedisCache": "asynclm.lm",
    "Embedder": "asynclm.lm",
    "CacheWarning": "asynclm.lm",
    "usage_limits": "asynclm.lm",
    "UsageLimits": "asynclm.lm",
    "UsageLimitExceeded": "asynclm.lm",
    "inspect_history": "asynclm.lm",
    # modules
    "Module": "asynclm.modules",
    "Predict": "asynclm.modules",
    "ChainOfThought": "asynclm.modules",
    "ReAct": "asynclm.modules",
    "Tool": "asynclm.modules",
    "BestOfN": "asynclm.modules",
    "Refine": "asynclm.modules",
    "MultiChainComparison": "asynclm.modules",
    "streamify": "asynclm.modules",
    "StreamChunk": "asynclm.modules",
    "Callback": "asynclm.modules",
    # evaluate / optimize
    "Evaluate": "asynclm.evaluate",
    "EvaluationResult": "asynclm.evaluate",
    "LabeledFewShot": "asynclm.optimize",
    "BootstrapFewShot": "asynclm.optimize",
    "BootstrapFewShotWithRandomSearch": "asynclm.optimize",
    "Ensemble": "asynclm.optimize",
    "KNNFewShot": "asynclm.optimize",
    "MIPROv2": "asynclm.optimize",
    "majority": "asynclm.optimize",
    "GEPA": "asynclm.optimize",
    "ScoreWithFeedback": "asynclm.optimize",
}

# subpackages behind an extra, imported on first use: ``asynclm.mcp`` (pip install 'asynclm[mcp]'),
# ``asynclm.ray`` (pip install 'asynclm[ray]'; Ray itself is imported when a RayExecutor starts)
_SUBPACKAGES = ("mcp", "ray")

__all__ = ["__version__", *sorted([*_EXPORTS, *_SUBPACKAGES])]

if TYPE_CHECKING:  # static checkers see the real names; at run time they load lazily
    from asynclm import mcp as mcp, ray as ray
    from asynclm.adapters import (
        Adapter as Adapter,
        ChatAdapter as ChatAdapter,
        JSONAdapter as JSONAdapter,
        ParseError as ParseError,
    )
    from asynclm.evaluate import (
        Evaluate as Evaluate,
        EvaluationResult as EvaluationResult,
    )
    from asynclm.lm import (
        LM as LM,
        AuthenticationError as AuthenticationError,
        BadRequestError as BadRequestError,
        BatchLM as BatchLM,
        CacheWarning as CacheWarning,
        ContextWindowExceededError as ContextWindowExceededError,
        Embedder as Embedder,
        FallbackLM as FallbackLM,
        LMConnectionError as LMConnectionError,
        LMError as LMError,
        LMResponse as LMResponse,
        LMTimeoutError as LMTimeoutError,
        LocalLM as LocalLM,
        LocalModelUnavailableError as LocalModelUnavailableError,
        RateLimitError as RateLimitError,
        RedisCache as RedisCache,
        ResponseTooLargeError as ResponseTooLargeError,
        ServerError as ServerError,
        Usage as Usage,
        UsageLimitExceeded as UsageLimitExceeded,
        UsageLimits as UsageLimits,
        inspect_history as inspect_history,
        track_usage as track_usage,
        usage_limits as usage_limits,
    )
    from asynclm.modules import (
        BestOfN as BestOfN,
        Callback as Callback,
        ChainOfThought as ChainOfThought,
        Module as Module,
        MultiChainComparison as MultiChainComparison,
        Predict as Predict,
        ReAct as ReAct,
        Refine as Refine,
        StreamChunk as StreamChunk,
        Tool as Tool,
        streamify as streamify,
    )
    from asynclm.optimize import (
        GEPA as GEPA,
        BootstrapFewShot as BootstrapFewShot,
        BootstrapFewShotWithRandomSearch as BootstrapFewShotWithRandomSearch,
        Ensemble as Ensemble,
        KNNFewShot as KNNFewShot,
        LabeledFewShot as LabeledFewShot,
        MIPROv2 as MIPROv2,
        ScoreWithFeedback as ScoreWithFeedback,
        majority as majority,
    )
    from asynclm.runtime import (
        Parallel as Parallel,
        Settings as Settings,
        SyncInAsyncContextError as SyncInAsyncContextError,
        asyncify as asyncify,
        configure as configure,
        context as context,
        settings as settings,
        sync_twin as sync_twin,
        syncify as syncify,
    )
    from asynclm.signatures import (
        Audio as Audio,
        Example as Example,
        File as File,
        History as History,
        Image as Image,
        InputField as InputField,
        MediaError as MediaError,
        MediaTooLargeError as MediaTooLargeError,
        MediaTypeError as MediaTypeError,
        OutputField as OutputField,
        Prediction as Prediction,
        Signature as Signature,
        SignatureError as SignatureError,
        ToolCalls as ToolCalls,
    )


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"asynclm.{name}")  # the import binds it as an attribute
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asynclm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return list(__all__)
