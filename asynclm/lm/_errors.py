"""Typed LM errors and the mapping from an HTTP status (and error body) to one of them.

Every error carries ``status`` (HTTP status, ``None`` when no response arrived), ``request_id``
(the server's ``x-request-id`` when sent), ``retry_after`` (seconds, when the server said) and
``model``. Messages never contain the API key: ``error_for_status`` scrubs it from anything the
server echoed back.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ContextWindowExceededError",
    "LMConnectionError",
    "LMError",
    "LMTimeoutError",
    "RateLimitError",
    "ResponseTooLargeError",
    "ServerError",
    "error_for_status",
]


class LMError(Exception):
    """Base class of every error raised by an LM call.

    Attributes:
        status: the HTTP status of the failing response, or ``None`` if none arrived.
        request_id: the server's request id (``x-request-id``), when it sent one.
        retry_after: seconds the server asked us to wait (``Retry-After``), when it said.
        model: the model that was called.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.model = model

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle keep the keyword attributes
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[LMError], message: str, state: dict[str, Any]) -> LMError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class RateLimitError(LMError):
    """429 Too Many Requests, still failing after the retries (or a non-retryable quota error)."""


class AuthenticationError(LMError):
    """401/403: the API key is missing, wrong, or lacks permission. Never retried."""


class BadRequestError(LMError):
    """400/404/422 and other 4xx: the request is wrong (unknown model, bad parameter). Never retried."""


class ContextWindowExceededError(BadRequestError):
    """A 400 saying the prompt (plus ``max_tokens``) does not fit the model's context window."""


class ServerError(LMError):
    """5xx (or 409), or a response the client could not understand (malformed JSON), after the retries."""


class LMConnectionError(LMError):
    """The connection failed (refused, reset, closed mid-response), after the retries."""


class ResponseTooLargeError(LMError):
    """The response body (after decompression) was larger than ``LM(max_response_bytes=...)``.

    Never retried: the same request would most likely get the same answer. Reading stopped at
    the limit, so memory stays bounded whatever the server sends."""


class LMTimeoutError(LMError, TimeoutError):
    """The call's total deadline (``timeout``, retries included) passed, or the server answered 408."""


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "prompt is too long",
    "exceeds the context",
    "reduce the length",
    "exceed context limit",
)


def _server_message(body: bytes) -> tuple[str, str | None]:
    """The error message and code from an OpenAI-style error body (or the raw text, truncated)."""
    text = body[:2000].decode("utf-8", "replace").strip()
    try:
        data = json.loads(body)
    except ValueError:
        return text[:500], None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or text
        code = err.get("code") or err.get("type")
        return str(message)[:500], str(code) if code is not None else None
    if isinstance(err, str):
        return err[:500], None
    return text[:500], None


def error_for_status(
    status: int,
    body: bytes,
    *,
    url: str,
    model: str,
    request_id: str | None,
    retry_after: float | None,
    secret: str | None,
    key_env: str = "OPENAI_API_KEY",
) -> LMError:
    """The typed error for a non-2xx response (the retry decision is the caller's).

    ``key_env`` names the API-key variable in the hint of a 401."""
    message, code = _server_message(body)
    if secret:
        message = message.replace(secret, "***")
    where = f"{status} from {url} (model {model!r})"
    detail = f": {message}" if message else ""
    kw: dict[str, Any] = {
        "status": status,
        "request_id": request_id,
        "retry_after": retry_after,
        "model": model,
    }
    if status == 400:
        lowered = f"{message} {code or ''}".lower()
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextWindowExceededError(
                f"{where}{detail}. The prompt plus max_tokens does not fit the model's context window: "
                "shorten the input, use fewer demos, or lower max_tokens.",
                **kw,
            )
        return BadRequestError(f"{where}{detail}", **kw)
    if status in (401, 403):
        hint = (
            f"check the API key (api_key= or {key_env})"
            if status == 401
            else "the API key lacks permission for this model or endpoint"
        )
        return AuthenticationError(f"{where}{detail}. {hint}.", **kw)
    if status == 404:
        return BadRequestError(
            f"{where}{detail}. Check the model name and base_url (it should end in /v1).", **kw
        )
    if status == 408:
        return LMTimeoutError(f"{where}{detail}", **kw)
    if status == 429:
        return RateLimitError(f"{where}{detail}", **kw)
    if status == 409 or status >= 500:
        return ServerError(f"{where}{detail}", **kw)
    if 400 <= status < 500:
        return BadRequestError(f"{where}{detail}", **kw)
    return LMError(f"unexpected {where}{detail}", **kw)
