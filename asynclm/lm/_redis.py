"""``RedisCache``: the LM response cache shared by processes and machines, in Redis.

The ``redis`` package's asyncio client (``redis.asyncio``) is asyncio-only and bound to the loop
that made it. So:

* on an asyncio loop, each loop gets its own client from the per-loop registry
  (``asynclm.runtime.loop_resource``), made inside that loop and closed when its run ends;
* on trio, each command runs on the runtime's shared asyncio loop thread
  (``asynclm.runtime._asyncio_thread.run_on_asyncio``), awaited without blocking a worker thread;
  cancelling the trio task cancels the command.

Values are the server's JSON response bytes as Redis strings (no pickle), under
``<prefix><sha256 key>``, with ``SET ... PX <ttl>`` when a TTL is given.

A Redis that is down or unreachable never fails a call: the first failure warns
(``CacheWarning``, naming the URL without its password), calls go on with the memory layer only,
and Redis is tried again after ``retry_after`` seconds, by one call at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asynclm.runtime import loop_resource
from asynclm.runtime._asyncio_thread import run_on_asyncio

from ._cache import CacheWarning, MemoryCache, SharedCache, Store

__all__ = ["RedisCache"]

logger = logging.getLogger("asynclm.lm")

_warn_lock = threading.Lock()
_MISSING = "asynclm.RedisCache needs the redis package: pip install 'asynclm[redis]'"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisCache(SharedCache):
    """An LM response cache in Redis, shared by every process and machine that points at it.

    ``asynclm.configure(cache=asynclm.RedisCache("redis://localhost:6379/0"))`` (or
    ``asynclm.context(cache=...)`` for a block): LM calls with ``cache=True`` (or ``"refresh"``)
    then use Redis as their persistent layer in place of the SQLite file, behind a memory layer
    of this object's own. Needs ``pip install 'asynclm[redis]'``.

    Args:
        url: a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, as ``redis.asyncio.from_url``
            takes it (``redis://:password@host:6379/0``). The password never appears in
            ``repr``, warnings or logs.
        ttl: seconds an entry lives (Redis expires it, and the memory layer forgets it at the same
            age); ``None``: no expiry.
        prefix: put before every key, to share one Redis database between applications.
        timeout: the socket connect and read timeout in seconds: a Redis that does not answer
            costs a call at most this long once, then is skipped for ``retry_after`` seconds.

    Attributes:
        retry_after: seconds Redis is left alone after a failure before it is tried again (5).
    """

    def __init__(self, url: str, *, ttl: float | None = None, prefix: str = "asynclm:", timeout: float = 2.0) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"RedisCache(url={redact_url(url) if isinstance(url, str) else url!r}): use a URL like "
                "'redis://localhost:6379/0' (or rediss:// for TLS, unix:///path/to/redis.sock)"
            )
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ValueError(f"RedisCache(ttl={ttl!r}): use a number of seconds > 0, or None for no expiry")
        if not isinstance(prefix, str):
            raise TypeError(f"RedisCache(prefix={prefix!r}): the key prefix must be a string")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"RedisCache(timeout={timeout!r}): use a number of seconds > 0")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self.timeout = float(timeout)
        self.retry_after = 5.0
        self.store = Store(MemoryCache(ttl=ttl), self)
        self._safe_url = redact_url(url)
        self._password = urlsplit(url).password
        self._down_until = 0.0
        self._warned = False
        self._px = None if ttl is None else max(1, round(ttl * 1000))

    def __repr__(self) -> str:
        ttl = "" if self.ttl is None else f", ttl={self.ttl!r}"
        return f"RedisCache({self._safe_url!r}{ttl}, prefix={self.prefix!r})"

    # -- the asyncio side -----------------------------------------------------------------------

    def _make_client(self) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return redis.asyncio.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),  # one try: a failure skips Redis for retry_after seconds
            decode_responses=False,
        )

    def _client(self) -> Any:
        return loop_resource(self, self._make_client, _aclose)

    async def _get(self, key: str) -> bytes | None:
        value = await self._client().get(self.prefix + key)
        return None if value is None else bytes(value)

    async def _set(self, key: str, value: bytes) -> None:
        await self._client().set(self.prefix + key, value, px=self._px)

    # -- the cache interface --------------------------------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        if self._down_until and not self._probe():
            return None
        try:
            value = await run_on_asyncio(self._get, key)
        except Exception as exc:
            self._fail(exc)
            return None
        self._down_until = 0.0
        return value

    async def aput(self, key: str, value: bytes) -> None:
        if self._down_until and not self._probe():
            return
        try:
            await run_on_asyncio(self._set, key, value)
        except Exception as exc:
            self._fail(exc)
        else:
            self._down_until = 0.0

    def _probe(self) -> bool:
        """Whether this call may try a Redis that failed: once ``retry_after`` has passed, one
        call at a time tries it (the others still skip it, instead of each waiting on a timeout)."""
        until = self._down_until
        now = time.monotonic()
        if now < until:
            return False
        with _warn_lock:
            if self._down_until != until:  # another call is trying it
                return False
            self._down_until = now + self.retry_after
        return True

    def _fail(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        with _warn_lock:
            first = not self._warned
            self._warned = True
        if not first:
            logger.warning("the Redis cache at %s failed again (%s)", self._safe_url, text)
            return
        warnings.warn(
            f"asynclm: the Redis cache at {self._safe_url} is unavailable ({text}); LM calls go on "
            f"without it (memory layer only) and try it again every {self.retry_after:g} s",
            CacheWarning,
            stacklevel=2,
        )


async def _aclose(client: Any) -> None:
    await client.aclose()


def _forget_in_child() -> None:
    global _warn_lock
    _warn_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
