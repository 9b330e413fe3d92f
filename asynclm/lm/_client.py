"""``LM``: a chat-completions client for OpenAI-compatible servers and Anthropic's Messages API.

The provider's wire format (URL path, headers, request and response bodies, stream events, error
bodies) is a sans-I/O mapping in ``_wire/``, picked from the model prefix; everything here
(transport, retries, limits, cache, usage, history, streaming) is the same for every provider.

One ``LM`` object may be used from any number of tasks, threads, ``.sync()`` portals and event
loops (asyncio and trio) at once:

* per-event-loop state (the HTTP transport and its connections) is looked up on each call
  through the transport registry, so nothing loop-bound is stored on the object;
* process-wide state (limits, cache, history, usage trackers) is thread-safe.

The per-call path is kept lean (no validation layer, no copies): one ``json.dumps`` of the body,
one ``json.loads`` of the response, a dict lookup for the loop's transport.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import anyio

from asynclm.runtime import ConcurrencyLimiter, RateLimiter, SyncCallable, current_settings, iterate_sync

from ._budget import UsageLimitExceeded, admit, settle
from ._cache import cache_key, check_cache_mode, endpoint_of, flights, memory_store, store_for
from ._cost import pricer_for
from ._errors import (
    AuthenticationError,
    BadRequestError,
    LMConnectionError,
    LMError,
    LMTimeoutError,
    ResponseTooLargeError,
    ServerError,
)
from ._history import global_history
from ._models import LMResponse, StreamDelta, Usage
from ._retry import backoff_delay, parse_retry_after
from ._stream import SSEDecoder
from ._transports import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DeadlineExceeded,
    ResponseTooLarge,
    TransportError,
    TransportTimeout,
    check_header_value,
    check_url,
    get_transport,
)
from ._transports._base import LimitingTransport
from ._usage import record_usage
from ._wire import WireFormat, providers, wire_format

__all__ = ["LM"]

logger = logging.getLogger("asynclm.lm")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
HISTORY_SIZE = 100
# tokens reserved against ``tpm`` for the completion when the call sets no max_tokens
DEFAULT_COMPLETION_ESTIMATE = 512

_UNSET: Any = object()
_dumps = json.dumps
_loads = json.loads


class _Secret:
    """Holds the API key; its repr never shows it (so neither does the LM's ``vars()``)."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'" if self.value else "None"

    def __deepcopy__(self, memo: Any) -> _Secret:
        return self


class _Headers(dict[str, str]):
    """The request headers; the repr masks the API key's header (Authorization, x-api-key)."""

    def __repr__(self) -> str:
        return repr({k: "***" if k in _SECRET_HEADERS else v for k, v in self.items()})


_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})


class StreamMethod:
    """``lm.stream``: call it for an async generator of deltas, or ``.sync(...)`` for an iterator."""

    __slots__ = ("_lm",)

    def __init__(self, lm: LM) -> None:
        self._lm = lm

    def __call__(
        self, prompt: str | None = None, /, *, messages: Any = None, **params: Any
    ) -> AsyncGenerator[StreamDelta, None]:
        return self._lm._stream(prompt, messages=messages, **params)

    def sync(self, prompt: str | None = None, /, *, messages: Any = None, **params: Any) -> Iterator[StreamDelta]:
        """Iterate the stream from synchronous code (not from a thread whose event loop is running)."""
        return iterate_sync(lambda: self._lm._stream(prompt, messages=messages, **params))

    def __repr__(self) -> str:
        return f"<stream method of {self._lm!r} (with .sync)>"


class _Attempts:
    """How a call's retries went, for the message of a deadline error."""

    __slots__ = ("count", "last_error", "ticket")

    def __init__(self) -> None:
        self.count = 0
        self.last_error: BaseException | None = None
        self.ticket: Any = None  # a stream's usage_limits reservation, settled when it ends


T = TypeVar("T")


async def _wait_until(deadline: float | None, wait: Awaitable[T]) -> T:
    """Await ``wait``; cancel it and raise ``TimeoutError`` if ``deadline`` passes first."""
    if deadline is None:
        return await wait
    with anyio.CancelScope(deadline=deadline):
        return await wait
    raise TimeoutError


def _clone(error: BaseException) -> BaseException:
    """A copy of a shared error to raise in another task (tracebacks must not be shared)."""
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    clone.__traceback__ = None
    return clone


def _shareable(error: BaseException) -> bool:
    # A server's verdict on the request is shared with identical waiting calls; a leader's own
    # deadline is not (the waiters have their own).
    return (
        isinstance(error, LMError)
        and not (isinstance(error, LMTimeoutError) and error.status is None)
        and not isinstance(error, UsageLimitExceeded)  # the leader's own budget, not the waiters'
    )


class LM(SyncCallable):
    """A chat-completions client for any OpenAI-compatible server, and for Anthropic's Messages API.

    ``resp = await lm("a prompt")`` or ``await lm(messages=[...], temperature=0.2, n=2)``;
    ``lm.sync(...)`` from synchronous code; ``async for delta in lm.stream(...)`` to stream.

    Args:
        model: ``"openai/<model>"`` (any OpenAI-compatible server: OpenAI, vLLM, Ollama, Groq,
            Together, OpenRouter, Gemini's OpenAI endpoint… with ``base_url``), ``"anthropic/<model>"``
            (Anthropic's native Messages API), or a bare ``"<model>"`` without ``/`` (OpenAI).
            ``<model>`` is sent as is and may itself contain ``/``. See docs/lm.md, Providers.
        base_url: the server's API root, ending in ``/v1`` (default OpenAI's, or
            ``https://api.anthropic.com/v1`` for ``anthropic/``).
        api_key: the key (default ``$OPENAI_API_KEY``, or ``$ANTHROPIC_API_KEY`` for
            ``anthropic/``), sent as a bearer token (as ``x-api-key`` to Anthropic). Never shown in
            ``repr``, history, cache files or error messages.
        temperature, max_tokens: default request parameters (omitted from the request when
            ``None``; for ``anthropic/``, whose API requires ``max_tokens``, it defaults to 4096).
        cache: ``True`` (memory + the SQLite file under ``asynclm.configure(cache_dir=...)``, or
            the shared cache of ``asynclm.configure(cache=...)``), ``"memory"`` (this process
            only), ``"refresh"`` (skip the lookup, store the new answer) or ``False``.
            Overridable per call. Keys include the endpoint of ``base_url``, never the API key.
        max_retries: retries after the first attempt for 408/409/429/5xx, connection errors,
            per-operation timeouts and malformed responses.
        timeout: the total deadline of one call in seconds, retries and limiter waits included
            (``None``: none); overridable per call. Raises ``LMTimeoutError``.
        max_concurrency: the most requests of this LM in flight at once, process-wide.
        rpm, tpm: requests / tokens per minute, process-wide, enforced smoothly (burst = one
            second's worth, at least one request).
        http_client_factory: a zero-argument callable returning an httpx-compatible async client,
            called once per event loop (proxies, mTLS, custom CAs).
        ssl_context: the TLS settings for https (a custom CA, client certificates, pinning);
            default: the operating system's trust store through ``truststore``, TLS >= 1.2. Used
            by the built-in client and by the httpx client it switches to when proxy variables
            are set. Not with ``http_client_factory`` (that client has its own).
        max_response_bytes: the largest response body accepted, after decompression (default
            64 MiB; a stream counts as a whole); a larger one raises
            ``ResponseTooLargeError``, not retried.
        price: what a call costs, for ``Usage.cost`` and ``usage_limits(max_cost=...)``: a dict of
            USD per 1M tokens ``{"input": 0.15, "output": 0.6}`` (optionally ``"cached_input"``,
            default the input price), or a genai-prices provider id (``"openai"``) to price the
            model as that provider does. Default: genai-prices' price for OpenAI at the default
            base_url, for the provider genai-prices recognises from any other base_url, else
            unknown (cost ``None``). See "Cost" in docs/lm.md.
        **default_params: any other chat-completions parameter sent with every call
            (``top_p``, ``stop``, ``response_format``, ``seed``…; for ``anthropic/`` these are
            mapped to the Messages API: ``stop`` as ``stop_sequences``, ``n`` > 1 refused).

    Per-call keyword arguments are request parameters too, except ``cache``, ``timeout`` and
    ``rollout_id`` (a cache-key component to get distinct samples of one request; never sent).

    Attributes:
        provider: the API spoken, from the model prefix: ``"openai"`` or ``"anthropic"``.
        history: the last 100 calls of this LM (JSON-able dicts), oldest first.
        backoff_base, backoff_max: the exponential backoff between retries (seconds; default 0.5
            doubling up to 8, jittered), used when the server sends no ``Retry-After``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> LM:
        # LM("local/...") is the embedded local model: build a LocalLM (its own module, loaded
        # only here, so that plain LMs never import it). (No named `model` parameter here: a
        # subclass may take another first argument and `model=` as a keyword, as ScriptedLM does.)
        model = args[0] if args else kwargs.get("model")
        if cls is LM and isinstance(model, str) and model.startswith("local/"):
            from ._local import LocalLM

            return super().__new__(LocalLM)
        return super().__new__(cls)

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: bool | str = True,
        max_retries: int = 3,
        timeout: float | None = 600,
        max_concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        http_client_factory: Callable[[], Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        price: Mapping[str, float] | str | None = None,
        **default_params: Any,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise TypeError(f"LM(model=...) must be a non-empty string like 'openai/gpt-4o-mini', got {model!r}")
        provider, slash, name = model.partition("/")
        if not slash:
            provider, name = "openai", model
        wire = wire_format(provider)
        if wire is None or not name:
            raise ValueError(
                f"LM({model!r}): unknown provider prefix {provider!r} (known: "
                f"{', '.join(repr(p + '/') for p in providers())}). Use 'openai/<model>' for any "
                "OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, Together, Groq, OpenRouter, Gemini…) "
                f"with base_url= pointing at it, e.g. LM('openai/{name or model}', base_url='http://localhost:8000/v1')."
            )
        check_cache_mode(cache, "LM")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"LM(max_retries={max_retries!r}): use an int >= 0")
        _check_timeout(timeout, "LM")
        for what, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ValueError(f"LM({what}={value!r}): a rate limit must be > 0 per minute (or None)")
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError(f"LM(max_concurrency={max_concurrency!r}): use an int >= 1 (or None)")
        if http_client_factory is not None and not callable(http_client_factory):
            raise TypeError("LM(http_client_factory=...) must be a zero-argument callable returning a client")
        if ssl_context is not None:
            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError(f"LM(ssl_context=...) must be an ssl.SSLContext, got {type(ssl_context).__name__}")
            if http_client_factory is not None:
                raise ValueError(
                    "LM(ssl_context=..., http_client_factory=...): give the TLS settings to the client your "
                    "factory makes (httpx: AsyncClient(verify=ssl_context)), not to the LM"
                )
        if not isinstance(max_response_bytes, int) or isinstance(max_response_bytes, bool) or max_response_bytes < 1:
            raise ValueError(f"LM(max_response_bytes={max_response_bytes!r}): use an int >= 1 (bytes)")
        for reserved in ("stream", "messages", "model"):
            if reserved in default_params:
                raise TypeError(f"LM(..., {reserved}=...) is not a default parameter; see LM's arguments")

        self.model = model
        self.model_name = name
        self.provider = wire.name
        self._wire: WireFormat = wire
        self._to_wire = wire.to_wire
        self.base_url = (base_url or wire.default_base_url).rstrip("/")
        self._url = self.base_url + wire.path
        try:
            check_url(self._url)
        except ValueError as exc:
            raise ValueError(f"LM(base_url=...): {exc}") from None
        self._cache_endpoint = endpoint_of(self.base_url)  # part of every cache key
        self._key = _Secret(api_key if api_key is not None else os.environ.get(wire.key_env))
        if self._key.value:
            try:
                check_header_value("Authorization", self._key.value)
            except ValueError:
                raise ValueError(
                    "the API key contains a control character (a stray newline from a file or an environment "
                    "variable?): strip it"
                ) from None
        self.cache = cache
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.http_client_factory = http_client_factory
        self.ssl_context = ssl_context
        self.max_response_bytes = max_response_bytes
        self.price = price
        self._pricer = pricer_for(name, self.base_url, wire.default_base_url, price, wire.name)  # validates price=
        self.backoff_base = 0.5
        self.backoff_max = 8.0
        if max_tokens is None and "max_completion_tokens" not in default_params:
            max_tokens = wire.default_max_tokens  # a required parameter for some providers
        params = {"temperature": temperature, "max_tokens": max_tokens, **default_params}
        self.default_params: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self._concurrency = ConcurrencyLimiter(max_concurrency) if max_concurrency is not None else None
        self._rpm = RateLimiter(rpm / 60.0) if rpm is not None else None
        self._tpm = RateLimiter(tpm / 60.0) if tpm is not None else None
        self._paused_until = 0.0  # time.monotonic(); used when there is no rpm limiter to pause
        self._pause_lock = threading.Lock()
        self._headers = self._make_headers(self._key.value)
        # made once: the transport registry keys each loop's transport by this object
        self._transport_factory: Callable[[], Any] | None = None
        if http_client_factory is not None:
            from ._transports import transport_factory

            self._transport_factory = transport_factory(http_client_factory)
        elif ssl_context is not None:
            from ._transports import ssl_transport_factory

            self._transport_factory = ssl_transport_factory(ssl_context)

    def _make_headers(self, key: str | None) -> _Headers:
        return _Headers(self._wire.headers(key))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.default_params.items())
        return f"LM({self.model!r}, base_url={self.base_url!r}{extra})"

    def __deepcopy__(self, memo: Any) -> LM:
        # An LM is a shared client (limits, connections), like a connection pool: copying a
        # program that uses it (an optimizer's candidate) must share it, not clone it.
        return self

    @property
    def peak_concurrency(self) -> int | None:
        """The most requests of this LM seen in flight at once (``None`` without ``max_concurrency``)."""
        return self._concurrency.peak if self._concurrency is not None else None

    # -- the call -------------------------------------------------------------------------------

    async def __call__(self, prompt: str | None = None, /, *, messages: Any = None, **params: Any) -> LMResponse:
        """Send one chat completion and return its ``LMResponse``.

        ``prompt`` (a string) is sent as one user message; otherwise pass ``messages``. Other
        keyword arguments are request parameters for this call (``None`` removes a default), except
        ``cache``, ``timeout`` and ``rollout_id``.

        Raises:
            LMError: a subclass saying what failed (see ``asynclm.lm``), after the retries.
        """
        use_cache = self.cache
        timeout = self.timeout
        rollout_id = None
        if params:
            use_cache = params.pop("cache", use_cache)
            timeout = params.pop("timeout", timeout)
            rollout_id = params.pop("rollout_id", None)
            if use_cache is not self.cache:
                check_cache_mode(use_cache, "call")
            if timeout is not self.timeout:
                _check_timeout(timeout, "call")
        body = self._body(prompt, messages, params)
        started = time.time()
        t0 = time.perf_counter()
        attempts = _Attempts()
        # The deadline travels down as a number instead of a cancel scope around the call: our
        # transport enforces it with one timer, and the waits that need a scope open one only
        # while they wait. (A scope held for the whole call is ~1 KB per call in flight.)
        deadline = None if timeout is None else anyio.current_time() + timeout
        try:
            if use_cache:
                response = await self._resolve(body, use_cache, rollout_id, attempts, deadline)
            else:  # inline, not through _resolve: one coroutine frame less per call in flight
                _, raw = await self._request(self._encode(body, canonical=False), body, attempts, False, deadline)
                response = self._wire.response(raw, self.model_name, False)
        except TimeoutError as exc:
            if isinstance(exc, LMError):
                self._record_error(body, exc, started, t0)
                raise
            error = self._deadline_error(timeout, attempts)
            self._record_error(body, error, started, t0)
            raise error from None
        except LMError as exc:
            self._record_error(body, exc, started, t0)
            raise
        if not response.cache_hit:
            response.usage.cost = self._pricer.cost(response.usage)
        record_usage(self.model_name, response.usage, response.cache_hit)
        self._record(body, response.texts, response.usage, response.cache_hit, started, t0)
        return response

    def _body(self, prompt: str | None, messages: Any, params: dict[str, Any]) -> dict[str, Any]:
        if messages is None:
            if prompt is None:
                raise TypeError("LM call needs a prompt string or messages=[{'role': ..., 'content': ...}, ...]")
            if not isinstance(prompt, str):
                raise TypeError(
                    f"LM call: the prompt must be a string (got {type(prompt).__name__}); "
                    "pass a conversation as messages=[...]"
                )
            messages = [{"role": "user", "content": prompt}]
        elif prompt is not None:
            raise TypeError("LM call: pass either a prompt string or messages=[...], not both")
        elif not isinstance(messages, list):
            raise TypeError(f"LM call: messages must be a list of dicts, got {type(messages).__name__}")
        if "stream" in params:
            raise TypeError("LM call: use `async for delta in lm.stream(...)` to stream, not stream=True")
        body = {"model": self.model_name, "messages": messages, **self.default_params}
        if params:
            for key, value in params.items():
                if value is None:
                    body.pop(key, None)
                else:
                    body[key] = value
        return body

    def _encode(self, body: dict[str, Any], canonical: bool) -> bytes:
        if self._to_wire is not None:  # a provider whose API has another shape (Anthropic)
            body = self._to_wire(body)
        try:
            if canonical:
                return _dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            return _dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"LM call: the request is not JSON-serializable ({exc})") from None

    async def _resolve(
        self, body: dict[str, Any], use_cache: bool | str, rollout_id: Any, attempts: _Attempts, deadline: float | None
    ) -> LMResponse:
        """A call with the cache on: memory, then one flight per key across tasks and threads, then
        the persistent layer (the cache directory's SQLite file, or the shared cache)."""
        data = self._encode(body, canonical=True)
        key = cache_key(self._cache_endpoint, data, rollout_id)
        store = memory_store if use_cache == "memory" else store_for(current_settings())
        memory, persistent = store.memory, store.persistent
        if use_cache == "refresh":  # no lookup: the new answer replaces the stored one
            payload, raw = await self._request(data, body, attempts, False, deadline)
            memory.put(key, payload)
            if persistent is not None:
                await persistent.aput(key, payload)
            return self._wire.response(raw, self.model_name, False)
        hit = memory.get(key)
        if hit is not None:
            return self._from_cache(hit)
        flight_key = (store, key)
        flight = flights.join(flight_key)
        try:
            await _wait_until(deadline, flight.limiter.acquire())
            try:
                if flight.value is not None:
                    return self._from_cache(flight.value)
                if flight.error is not None:
                    raise _clone(flight.error)
                hit = memory.get(key)
                if hit is not None:
                    return self._from_cache(hit)
                if persistent is not None:
                    hit = await _wait_until(deadline, persistent.aget(key))
                    if hit is not None:
                        memory.put(key, hit)
                        flight.value = hit
                        return self._from_cache(hit)
                try:
                    payload, raw = await self._request(data, body, attempts, False, deadline)
                except LMError as exc:
                    if _shareable(exc):
                        flight.error = exc
                    raise
                flight.value = payload
                memory.put(key, payload)
                if persistent is not None:
                    await persistent.aput(key, payload)
                return self._wire.response(raw, self.model_name, False)
            finally:
                flight.limiter.release()
        finally:
            flights.leave(flight_key, flight)

    def _from_cache(self, payload: bytes) -> LMResponse:
        # parsed anew for each hit, so that no two callers share (and can mutate) one dict
        return self._wire.response(_loads(payload), self.model_name, True)

    # -- one request, with limits and retries ----------------------------------------------------

    def _estimate_tokens(self, data: bytes, body: Mapping[str, Any]) -> float:
        completion = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_COMPLETION_ESTIMATE
        n = body.get("n") or 1
        return len(data) / 4.0 + float(completion) * n

    async def _wait_pause(self) -> None:
        if self._rpm is None:
            delay = self._paused_until - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)

    def _pause(self, seconds: float) -> None:
        """A 429 with Retry-After: hold back every caller of this LM for ``seconds``."""
        if self._rpm is not None:
            self._rpm.pause(seconds)
            return
        with self._pause_lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _check_key(self) -> None:
        if self._key.value or self.base_url != self._wire.default_base_url:
            return
        key = os.environ.get(self._wire.key_env)
        if key:  # set after this LM was made
            # The headers first: another thread that sees the key set goes on to send
            # self._headers, which must already hold it (else a request without the key: a 401).
            self._headers = self._make_headers(key)
            self._key = _Secret(key)
            return
        raise AuthenticationError(
            f"no API key for {self.model!r} at {self.base_url}: pass LM(..., api_key=...) or set "
            f"{self._wire.key_env} (or point base_url= at a server that needs none)",
            model=self.model_name,
        )

    async def _request(
        self, data: bytes, body: Mapping[str, Any], attempts: _Attempts, stream: bool, deadline: float | None
    ) -> Any:
        """POST with retries until ``deadline`` (``anyio.current_time()`` clock; ``TimeoutError`` when
        it passes). ``stream=False``: return ``(bytes, decoded)`` of a 2xx chat completion;
        ``stream=True``: the open 2xx response. (Called directly, without a typed wrapper coroutine:
        each extra frame is memory held per in-flight call.)"""
        self._check_key()
        if not self._pricer.ready:  # a genai-prices lookup, once per LM (a worker thread)
            await self._pricer.load()
        transport = get_transport(self._transport_factory)
        estimate = self._estimate_tokens(data, body) if self._tpm is not None else 0.0
        limiter = self._concurrency
        # our transports take the deadline and the body limit themselves; around any other, a
        # cancel scope and a size check after the fact
        limits = getattr(transport, "accepts_call_limits", False)
        while True:
            if self._rpm is None and self._paused_until:
                await _wait_until(deadline, self._wait_pause())
            error: LMError
            retryable = True
            if limiter is not None:
                await _wait_until(deadline, limiter.acquire())
            keep_slot = False
            ticket = None
            try:
                if self._rpm is not None:
                    await _wait_until(deadline, self._rpm.acquire())
                if self._tpm is not None:
                    await _wait_until(deadline, self._tpm.acquire(estimate))
                try:  # usage_limits: check and reserve (None outside any block)
                    ticket = admit(self, data, body, attempts.count == 0)
                    if ticket is not None and not ticket.admitted:  # fits once requests in flight end
                        await _wait_until(deadline, ticket.wait())
                except BaseException:
                    if self._tpm is not None:
                        self._tpm.adjust(estimate)
                    raise
                attempts.count += 1
                response: Any
                try:
                    if not limits:
                        response = await _wait_until(
                            deadline,
                            transport.post_stream(self._url, data, self._headers)
                            if stream
                            else transport.post(self._url, data, self._headers),
                        )
                        if not stream and len(response.body) > self.max_response_bytes:
                            raise ResponseTooLarge(self.max_response_bytes)
                    elif stream:
                        response = await _wait_until(
                            deadline,
                            cast(LimitingTransport, transport).post_stream(
                                self._url, data, self._headers, max_response_bytes=self.max_response_bytes
                            ),
                        )
                    else:
                        response = await cast(LimitingTransport, transport).post(
                            self._url,
                            data,
                            self._headers,
                            deadline=deadline,
                            max_response_bytes=self.max_response_bytes,
                        )
                except DeadlineExceeded:
                    raise TimeoutError from None  # the call's deadline, not this attempt's: no retry
                except TransportTimeout as exc:
                    error = LMTimeoutError(self._transport_message(exc, "timed out"), model=self.model_name)
                except ResponseTooLarge as exc:
                    error = ResponseTooLargeError(self._transport_message(exc, "failed"), model=self.model_name)
                    retryable = False
                except TransportError as exc:
                    error = LMConnectionError(self._transport_message(exc, "failed"), model=self.model_name)
                else:
                    status = response.status
                    if stream:
                        if 200 <= status < 300:
                            keep_slot = True
                            attempts.ticket = ticket  # settled when the stream ends
                            return response
                        try:
                            payload = await response.aread()
                        except TransportError:
                            payload = b""
                        finally:
                            with anyio.CancelScope(shield=True):
                                await response.aclose()
                    else:
                        payload = response.body
                    if 200 <= status < 300 and not stream:
                        try:
                            raw, used = self._wire.check(payload)
                        except ValueError as exc:
                            error = ServerError(
                                f"{status} from {self._url} with an invalid {self._wire.name} completion body "
                                f"({exc}): {payload[:200]!r}",
                                status=status,
                                request_id=response.headers.get(self._wire.request_id_header),
                                model=self.model_name,
                            )
                        else:
                            if self._tpm is not None:
                                self._tpm.adjust(estimate - used)
                            if ticket is not None:
                                settle(ticket, self._wire.usage(raw))
                                ticket = None
                            return payload, raw
                    else:
                        retry_after = parse_retry_after(response.headers)
                        error = self._wire.error(
                            status,
                            payload,
                            url=self._url,
                            model=self.model_name,
                            request_id=response.headers.get(self._wire.request_id_header),
                            retry_after=retry_after,
                            secret=self._key.value,
                        )
                        retryable = self._wire.retryable(status, payload)
                        if status == 429 and retry_after and retryable:
                            self._pause(min(retry_after, 60.0))
                if self._tpm is not None:
                    self._tpm.adjust(estimate)  # nothing was generated: give the estimate back
            finally:
                if limiter is not None and not keep_slot:
                    limiter.release()
                if ticket is not None and not keep_slot:
                    settle(ticket, None)  # failed: no usage
            attempts.last_error = error
            retry = attempts.count - 1
            if not retryable or retry >= self.max_retries:
                raise error
            delay = backoff_delay(retry, self.backoff_base, self.backoff_max, error.retry_after)
            limit = anyio.current_effective_deadline()
            if deadline is not None:
                limit = min(limit, deadline)
            if anyio.current_time() + delay >= limit:
                raise error  # the wait would outlast the call's deadline: report the real failure now
            logger.info(
                "retrying %s in %.3f s (retry %d of %d) after %s",
                self.model_name,
                delay,
                retry + 1,
                self.max_retries,
                error,
            )
            if delay > 0:
                await anyio.sleep(delay)

    def _describe_exc(self, exc: BaseException | str) -> str:
        text = exc if isinstance(exc, str) else str(exc) or type(exc).__name__
        if self._key.value:
            text = text.replace(self._key.value, "***")
        return text

    def _transport_message(self, exc: TransportError, verb: str) -> str:
        """One line naming the URL once, what failed and why, with a hint where one helps."""
        text = self._describe_exc(exc)
        if self.base_url not in text and "://" not in text:  # a transport that did not say where
            text = f"{self._url} {verb}: {text}"
        phase = getattr(exc, "phase", None)
        if phase == "connect" and not isinstance(exc, TransportTimeout):
            text += " (is the server running?)"
        elif phase == "DNS":
            text += " (is the host name in base_url right?)"
        return text

    def _deadline_error(self, timeout: float | None, attempts: _Attempts) -> LMTimeoutError:
        last = attempts.last_error
        tail = f"; last error: {last}" if last is not None else ""
        return LMTimeoutError(
            f"{self.model!r} gave no response within the call's timeout of {timeout} s "
            f"({attempts.count} attempt(s){tail}). Raise LM(timeout=...) or pass timeout= per call.",
            model=self.model_name,
        )

    # -- history --------------------------------------------------------------------------------

    def _record(
        self,
        body: dict[str, Any],
        outputs: list[str],
        usage: Usage,
        cache_hit: bool,
        started: float,
        t0: float,
    ) -> None:
        entry = {
            "model": self.model_name,
            "messages": body["messages"],
            "params": {k: v for k, v in body.items() if k != "messages" and k != "model"},
            "outputs": outputs,
            "usage": usage.to_dict(),
            "cache_hit": cache_hit,
            "timestamp": started,
            "duration": time.perf_counter() - t0,
        }
        self.history.append(entry)
        global_history.append(entry)

    def _record_error(self, body: dict[str, Any], error: BaseException, started: float, t0: float) -> None:
        entry = {
            "model": self.model_name,
            "messages": body["messages"],
            "params": {k: v for k, v in body.items() if k != "messages" and k != "model"},
            "outputs": [],
            "usage": Usage().to_dict(),
            "cache_hit": False,
            "timestamp": started,
            "duration": time.perf_counter() - t0,
            "error": f"{type(error).__name__}: {error}",
        }
        self.history.append(entry)
        global_history.append(entry)

    # -- streaming ------------------------------------------------------------------------------

    @property
    def stream(self) -> StreamMethod:
        """Stream a chat completion: ``async for delta in lm.stream(...)``, each with ``.text``.

        Takes the same arguments as a call. Retries (as for a normal call) happen only before the
        first byte of the answer; after that a failure raises. ``timeout`` bounds the whole stream.
        Breaking out of the loop closes the HTTP response: at once with ``async with
        contextlib.aclosing(lm.stream(...)) as s``, otherwise when the generator is
        garbage-collected (immediately on CPython). Usage comes from the final chunk when the
        server sends it (``stream_options.include_usage`` is requested unless you pass
        ``stream_options``). Streams are never cached.

        From synchronous code: ``for delta in lm.stream.sync(...)`` (the stream runs on the calling
        thread's portal; leaving the loop early closes it there).
        """
        return StreamMethod(self)

    async def _stream(
        self, prompt: str | None = None, /, *, messages: Any = None, **params: Any
    ) -> AsyncGenerator[StreamDelta, None]:
        timeout = params.pop("timeout", self.timeout)
        _check_timeout(timeout, "stream")
        params.pop("cache", None)
        params.pop("rollout_id", None)
        body = self._body(prompt, messages, params)
        asked_usage = self._wire.stream_request(body)
        data = self._encode(body, canonical=False)
        started = time.time()
        t0 = time.perf_counter()
        deadline = float("inf") if timeout is None else anyio.current_time() + timeout
        attempts = _Attempts()
        texts: dict[int, list[str]] = {}
        usage: Usage | None = None
        response: Any = None
        error: BaseException | None = None
        try:
            try:
                with anyio.fail_after(None if timeout is None else timeout):
                    try:
                        response = await self._request(data, body, attempts, True, None)
                    except BadRequestError as exc:
                        if not (asked_usage and "stream_options" in str(exc)):
                            raise
                        # a server that rejects stream_options (older vLLM, some proxies):
                        # ask again without it; usage is then whatever the server sends
                        logger.info("%s rejected stream_options; streaming without usage", self._url)
                        del body["stream_options"]
                        data = self._encode(body, canonical=False)
                        response = await self._request(data, body, attempts, True, None)
            except TimeoutError as exc:
                if isinstance(exc, LMError):
                    raise
                raise self._deadline_error(timeout, attempts) from None
            decoder = SSEDecoder()
            parser = self._wire.stream_parser(self._url, self.model_name, self._key.value)
            chunks = response.aiter_bytes().__aiter__()
            done = False
            while not done:
                try:
                    with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._deadline_error(timeout, attempts) from None
                except ResponseTooLarge as exc:
                    raise ResponseTooLargeError(
                        f"{self._transport_message(exc, 'failed')} (streaming)", model=self.model_name
                    ) from None
                except TransportError as exc:
                    raise LMConnectionError(
                        f"{self._transport_message(exc, 'failed')} (the stream broke)", model=self.model_name
                    ) from None
                for event in decoder.feed(chunk):
                    for delta in parser.feed(event):
                        if delta.usage is not None:
                            usage = delta.usage
                        if delta.text:
                            texts.setdefault(delta.index, []).append(delta.text)
                        yield delta
                    if parser.done:
                        done = True
                        break
            if not done:
                raise LMConnectionError(
                    f"the stream from {self._url} ended before its {parser.final_event} event (truncated response)",
                    model=self.model_name,
                )
        except BaseException as exc:
            error = exc
            raise
        finally:
            if response is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await response.aclose()
                    except Exception:
                        pass
                if self._concurrency is not None:
                    self._concurrency.release()
            if isinstance(error, LMError):  # as for a failed call: no usage, an error entry
                if attempts.ticket is not None:
                    settle(attempts.ticket, None)
                self._record_error(body, error, started, t0)
            else:  # finished, or stopped early by the consumer: what was streamed counts
                used = usage or Usage()
                used.cost = self._pricer.cost(used)
                if attempts.ticket is not None:
                    settle(attempts.ticket, used)
                record_usage(self.model_name, used, False)
                outputs = ["".join(texts[i]) for i in sorted(texts)]
                self._record(body, outputs, used, False, started, t0)


def _check_timeout(timeout: Any, what: str) -> None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"{what}(timeout={timeout!r}): use a number of seconds > 0, or None for no deadline")
