"""The LM client: an OpenAI-compatible chat-completions client with retries, a total deadline,
process-wide concurrency/rate limits, a persistent cache with single-flight, usage tracking,
history and streaming. See ``docs/lm.md``.

Errors (all subclasses of ``LMError``)::

    LMError
    ├── RateLimitError               429, after the retries
    ├── AuthenticationError          401/403, or no API key
    ├── BadRequestError              400/404/422 and other 4xx
    │   └── ContextWindowExceededError
    ├── ServerError                  5xx/409 or a malformed response, after the retries
    ├── LMConnectionError            refused/reset/truncated, after the retries
    ├── ResponseTooLargeError        a body beyond max_response_bytes (never retried)
    ├── LMTimeoutError               the call's deadline (also a TimeoutError), or 408
    └── UsageLimitExceeded           a usage_limits() block's limit (before the request; never retried)
"""

from ._budget import UsageLimitExceeded, UsageLimits, usage_limits
from ._client import LM
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
from ._history import inspect_history
from ._local import LocalLM, LocalModelUnavailableError
from ._models import LMResponse, StreamDelta, Usage
from ._usage import UsageTracker, track_usage

__all__ = [
    "LM",
    "AuthenticationError",
    "BadRequestError",
    "ContextWindowExceededError",
    "LMConnectionError",
    "LMError",
    "LMResponse",
    "LMTimeoutError",
    "LocalLM",
    "LocalModelUnavailableError",
    "RateLimitError",
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
