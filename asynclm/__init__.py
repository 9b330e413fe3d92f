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
    # adapters
    "Adapter": "asynclm.adapters",
    "ChatAdapter": "asynclm.adapters",
    "JSONAdapter": "asynclm.adapters",
    "ParseError": "asynclm.adapters",
    # lm
    "LM": "asynclm.lm",
    "LocalLM": "asynclm.lm",
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
    "track_usage": "asynclm.lm",
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
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # static checkers see the real names; at run time they load lazily
    from asynclm.adapters import (
        Adapter as Adapter,
    )
    from asynclm.adapters import (
        ChatAdapter as ChatAdapter,
    )
    from asynclm.adapters import (
        JSONAdapter as JSONAdapter,
    )
    from asynclm.adapters import (
        ParseError as ParseError,
    )
    from asynclm.evaluate import (
        Evaluate as Evaluate,
    )
    from asynclm.evaluate import (
        EvaluationResult as EvaluationResult,
    )
    from asynclm.lm import (
        LM as LM,
    )
    from asynclm.lm import (
        AuthenticationError as AuthenticationError,
    )
    from asynclm.lm import (
        BadRequestError as BadRequestError,
    )
    from asynclm.lm import (
        ContextWindowExceededError as ContextWindowExceededError,
    )
    from asynclm.lm import (
        LMConnectionError as LMConnectionError,
    )
    from asynclm.lm import (
        LMError as LMError,
    )
    from asynclm.lm import (
        LMResponse as LMResponse,
    )
    from asynclm.lm import (
        LMTimeoutError as LMTimeoutError,
    )
    from asynclm.lm import (
        LocalLM as LocalLM,
    )
    from asynclm.lm import (
        RateLimitError as RateLimitError,
    )
    from asynclm.lm import (
        ServerError as ServerError,
    )
    from asynclm.lm import (
        Usage as Usage,
    )
    from asynclm.lm import (
        inspect_history as inspect_history,
    )
    from asynclm.lm import (
        track_usage as track_usage,
    )
    from asynclm.modules import (
        BestOfN as BestOfN,
    )
    from asynclm.modules import (
        Callback as Callback,
    )
    from asynclm.modules import (
        ChainOfThought as ChainOfThought,
    )
    from asynclm.modules import (
        Module as Module,
    )
    from asynclm.modules import (
        MultiChainComparison as MultiChainComparison,
    )
    from asynclm.modules import (
        Predict as Predict,
    )
    from asynclm.modules import (
        ReAct as ReAct,
    )
    from asynclm.modules import (
        Refine as Refine,
    )
    from asynclm.modules import (
        StreamChunk as StreamChunk,
    )
    from asynclm.modules import (
        Tool as Tool,
    )
    from asynclm.modules import (
        streamify as streamify,
    )
    from asynclm.optimize import (
        BootstrapFewShot as BootstrapFewShot,
    )
    from asynclm.optimize import (
        BootstrapFewShotWithRandomSearch as BootstrapFewShotWithRandomSearch,
    )
    from asynclm.optimize import (
        LabeledFewShot as LabeledFewShot,
    )
    from asynclm.runtime import (
        Parallel as Parallel,
    )
    from asynclm.runtime import (
        Settings as Settings,
    )
    from asynclm.runtime import (
        SyncInAsyncContextError as SyncInAsyncContextError,
    )
    from asynclm.runtime import (
        asyncify as asyncify,
    )
    from asynclm.runtime import (
        configure as configure,
    )
    from asynclm.runtime import (
        context as context,
    )
    from asynclm.runtime import (
        settings as settings,
    )
    from asynclm.runtime import (
        sync_twin as sync_twin,
    )
    from asynclm.runtime import (
        syncify as syncify,
    )
    from asynclm.signatures import (
        Example as Example,
    )
    from asynclm.signatures import (
        History as History,
    )
    from asynclm.signatures import (
        InputField as InputField,
    )
    from asynclm.signatures import (
        OutputField as OutputField,
    )
    from asynclm.signatures import (
        Prediction as Prediction,
    )
    from asynclm.signatures import (
        Signature as Signature,
    )
    from asynclm.signatures import (
        SignatureError as SignatureError,
    )


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asynclm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return list(__all__)
