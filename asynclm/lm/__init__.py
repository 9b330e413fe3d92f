"""The LM client: a chat-completions client (OpenAI-compatible servers, Anthropic's Messages API)
with retries, a total deadline, process-wide concurrency/rate limits, a cache (memory, SQLite or
Redis) with single-flight, usage tracking, history and streaming; ``FallbackLM`` to move a call to
the next model on a transient error. See ``docs/lm.md``.

Errors (all subclasses of ``LMError``)::

    LMError
    ├── RateLimitError               429 (Anthropic: rate_limit_error), after the retries
    ├── AuthenticationError          401/403, or no API key
    ├── BadRequestError              400/404/422 and other 4xx; n > 1 for Anthropic
    │   └── ContextWindowExceededError
    ├── ServerError                  5xx/409 (Anthropic: 529 overloaded_error) or a malformed
    │                                response, after the retries
    ├── LMConnectionError            refused/reset/truncated, after the retries
    ├── ResponseTooLargeError        a body beyond max_response_bytes (never retried)
    ├── LMTimeoutError               the call's deadline (also a TimeoutError), or 408
    └── UsageLimitExceeded           a usage_limits() block's limit (before the request; never retried)
"""

from ._batch import BatchLM
from ._budget import UsageLimitExceeded, UsageLimits, usage_limits
from ._cache import CacheWarning
from ._client import LM
from ._embedder import Embedder
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMConnectionError,
    LMError,
    LMTimeoutError,
    RateLimitError,
    ResponseTooLargeError,
    ServerError,
)
from ._fallback import DEFAULT_FALLBACK_ON, FallbackLM
from ._history import inspect_history
from ._local import LocalLM, LocalModelUnavailableError
from ._models import LMResponse, StreamDelta, Usage
from ._redis import RedisCache
from ._usage import UsageTracker, track_usage

__all__ = [
    "DEFAULT_FALLBACK_ON",
    "LM",
    "AuthenticationError",
    "BadRequestError",
    "BatchLM",
    "CacheWarning",
    "ContextWindowExceededError",
    "Embedder",
    "FallbackLM",
    "LMConnectionError",
    "LMError",
    "LMResponse",
    "LMTimeoutError",
    "LocalLM",
    "LocalModelUnavailableError",
    "RateLimitError",
    "RedisCache",
    "ResponseTooLargeError",
    "ServerError",
    "StreamDelta",
    "Usage",
    "UsageLimitExceeded",
    "UsageLimits",
    "UsageTracker",
    "inspect_history",
    "track_usage",
    "usage_limits",
]
