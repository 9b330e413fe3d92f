"""The LM client: an OpenAI-compatible chat-completions client with retries, a total deadline,
process-wide concurrency/rate limits, a persistent cache with single-flight, usage tracking,
history and streaming. See ``docs/lm.md``.

Errors (all subclasses of :class:`LMError`)::

    LMError
    ├── RateLimitError               429, after the retries
    ├── AuthenticationError          401/403, or no API key
    ├── BadRequestError              400/404/422 and other 4xx
    │   └── ContextWindowExceededError
    ├── ServerError                  5xx/409 or a malformed response, after the retries
    ├── LMConnectionError            refused/reset/truncated, after the retries
    └── LMTimeoutError               the call's deadline (also a TimeoutError), or 408
"""

from ._client import LM
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMConnectionError,
    LMError,
    LMTimeoutError,
    RateLimitError,
    ServerError,
)
from ._history import inspect_history
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
    "RateLimitError",
    "ServerError",
    "StreamDelta",
    "Usage",
    "UsageTracker",
    "inspect_history",
    "track_usage",
]


class LocalLM:
    """The embedded local model (``asynclm[local]``): not part of this build yet.

    A placeholder so that ``from asynclm import *`` and ``hasattr(asynclm, "LocalLM")`` work;
    making one raises ``ImportError`` naming the extra.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise ImportError(
            "asynclm.LocalLM (the embedded local model) is not available in this build; it needs "
            "`pip install asynclm[local]` and the local-model module. Meanwhile, run any "
            "OpenAI-compatible server and use asynclm.LM('openai/<model>', base_url=...)."
        )
