"""Retry policy: which failures are retried and how long to wait before the next attempt.

The retry loop itself is in ``_client.py`` and hand-written rather than built on tenacity: it has to
(1) share one whole-call deadline with limiter waits and HTTP attempts, and give up early when the
server's ``Retry-After`` ends past that deadline, (2) turn a 429's ``Retry-After`` into a pause of the
LM for *all* its callers, and (3) release the concurrency slot while sleeping. Those are a dozen
lines in a loop, and awkward as tenacity callbacks.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

__all__ = ["MAX_RETRY_AFTER", "RETRY_STATUSES", "backoff_delay", "parse_retry_after"]

# Retried statuses (as the OpenAI SDK does): timeout, conflict, rate limit, and every server error.
RETRY_STATUSES = frozenset({408, 409, 429})

# A server's Retry-After above this (seconds) is not honoured: the call falls back to its own
# backoff instead of sleeping for minutes.
MAX_RETRY_AFTER = 60.0


def is_retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), or None."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            seconds = float(value) / 1000.0
        except ValueError:
            pass
        else:
            if seconds >= 0:
                return seconds
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
        return max(0.0, seconds)
    return seconds if seconds >= 0 else None


def backoff_delay(attempt: int, base: float, maximum: float, retry_after: float | None) -> float:
    """The wait before retry number ``attempt`` (0 for the first retry).

    The server's ``retry_after`` wins when given and at most ``MAX_RETRY_AFTER``; otherwise
    exponential backoff ``base * 2**attempt`` capped at ``maximum``, with up to 25% jitter
    subtracted so that callers failing together do not retry together.
    """
    if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
        return retry_after
    delay = min(maximum, base * (2.0**attempt))
    return delay * (1.0 - 0.25 * random.random())
