"""``Embedder``: text embeddings from an OpenAI-compatible ``/embeddings`` endpoint (or from any
function), with the LM's batching, cache, limits, retries, deadline, usage and cost."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from asynclm.runtime import SyncCallable, asyncify, is_async_callable, run_items

from ._cache import check_cache_mode
from ._client import LM, _Attempts, _check_timeout
from ._errors import LMError
from ._transports import DEFAULT_MAX_RESPONSE_BYTES
from ._usage import record_usage
from ._wire._embeddings import EMBEDDINGS, EmbeddingsResult

__all__ = ["Embedder"]


class _EmbeddingsLM(LM):
    """An LM whose requests go to ``/embeddings``: the same client (transport, retries, limits,
    cache, budgets, cost), another wire format."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if self.provider != "openai":
            raise ValueError(
                f"Embedder({model!r}): embeddings are served by OpenAI-compatible endpoints only; use "
                "'openai/<model>' with base_url= pointing at the server"
            )
        self._wire = EMBEDDINGS
        self._to_wire = None
        self._url = self.base_url + EMBEDDINGS.path

    def _estimate_tokens(self, data: bytes, body: Mapping[str, Any]) -> float:
        return len(data) / 4.0  # nothing is generated

    async def embed(self, texts: list[str], params: dict[str, Any], use_cache: Any, timeout: float | None) -> Any:
        body = {"model": self.model_name, "input": texts, **self.default_params, **params}
        attempts = _Attempts()
        deadline = None if timeout is None else anyio.current_time() + timeout
        try:
            if use_cache:
                result: EmbeddingsResult = await self._resolve(body, use_cache, None, attempts, deadline)  # type: ignore[assignment]
            else:
                _, raw = await self._request(self._encode(body, canonical=False), body, attempts, False, deadline)
                result = EmbeddingsResult.from_json(raw, self.model_name, False)
        except TimeoutError as exc:
            if isinstance(exc, LMError):
                raise
            raise self._deadline_error(timeout, attempts) from None
        if len(result.vectors) != len(texts):
            raise ValueError(f"{self._url} returned {len(result.vectors)} embeddings for {len(texts)} inputs")
        if not result.cache_hit:
            result.usage.cost = self._pricer.cost(result.usage)
        record_usage(self.model_name, result.usage, result.cache_hit)
        return result.vectors


class Embedder(SyncCallable):
    """Text embeddings: ``vectors = await embedder(["text", ...])`` (``embedder.sync(...)`` too).

    ``Embedder("openai/text-embedding-3-small")`` calls ``POST {base_url}/embeddings`` of any
    OpenAI-compatible server (``<model>`` is sent without ``openai/``); it is built on the LM
    client, so batches get its retries, total deadline, process-wide limits, cache (one entry per
    batch, keyed by endpoint, model, texts and parameters), ``track_usage``, ``usage_limits`` and
    cost. ``Embedder(fn)`` wraps any function from a list of strings to their vectors instead
    (sync functions run in a worker thread; a sentence-transformers ``model.encode`` works), as
    DSPy's ``Embedder`` does.

    Args:
        model: ``"openai/<model>"`` or a function ``texts -> vectors`` (sync or ``async def``).
        base_url: as for ``LM``; so are ``api_key``, ``max_retries``, ``timeout``,
            ``max_concurrency``, ``rpm``, ``tpm``, ``http_client_factory``, ``ssl_context``,
            ``max_response_bytes`` and ``price``.
        batch_size: the most texts per request; larger inputs are split and the batches sent
            concurrently (within ``max_concurrency``), results kept in input order.
        cache: ``True`` | ``"memory"`` | ``"refresh"`` | ``False``, as for ``LM``.
        **default_params: other request parameters (``dimensions``, ``user``...).

    Calling it with a list returns one vector (a list of floats) per text; with one string, that
    string's vector. Per-call keyword arguments are request parameters, except ``cache``,
    ``timeout`` and ``batch_size``.
    """

    def __init__(
        self,
        model: str | Callable[[list[str]], Any],
        base_url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 200,
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Embedder(batch_size={batch_size!r}): use an int >= 1")
        check_cache_mode(cache, "Embedder")
        _check_timeout(timeout, "Embedder")
        self.batch_size = batch_size
        self.cache = cache
        self.timeout = timeout
        self._lm: _EmbeddingsLM | None = None
        self._fn: Callable[[list[str]], Any] | None = None
        if callable(model):
            self.model: str | None = None
            self._fn = model if is_async_callable(model) else asyncify(model)
            return
        if isinstance(model, str) and model.startswith("local/"):
            raise ValueError("Embedder: the embedded local model does not serve embeddings; use an 'openai/<model>'")
        self._lm = _EmbeddingsLM(
            model,
            base_url=base_url,
            api_key=api_key,
            cache=cache,
            max_retries=max_retries,
            timeout=timeout,
            max_concurrency=max_concurrency,
            rpm=rpm,
            tpm=tpm,
            http_client_factory=http_client_factory,
            ssl_context=ssl_context,
            max_response_bytes=max_response_bytes,
            price=price,
            **default_params,
        )
        self.model = self._lm.model

    @property
    def base_url(self) -> str | None:
        return self._lm.base_url if self._lm is not None else None

    def __repr__(self) -> str:
        if self._lm is None:
            return f"Embedder({self._fn!r})"
        return f"Embedder({self.model!r}, base_url={self._lm.base_url!r}, batch_size={self.batch_size})"

    def __deepcopy__(self, memo: Any) -> Embedder:
        return self  # a shared client, like an LM

    async def __call__(self, texts: str | Sequence[str], **params: Any) -> Any:
        """The vectors of ``texts`` (one list of floats per text, in order), or of one string.

        Raises:
            LMError: a subclass saying what failed, after the retries (as ``LM``).
            TypeError: ``texts`` is not a string or a list of strings.
        """
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else texts
        if not isinstance(items, Sequence) or not all(isinstance(t, str) for t in items):
            raise TypeError("Embedder: pass a string or a list of strings")
        items = list(items)
        if not items:
            return []
        batch_size = params.pop("batch_size", self.batch_size)
        use_cache = params.pop("cache", self.cache)
        timeout = params.pop("timeout", self.timeout)
        if use_cache is not self.cache:
            check_cache_mode(use_cache, "call")
        if timeout is not self.timeout:
            _check_timeout(timeout, "call")
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        if self._lm is not None:
            lm = self._lm

            async def one(batch: list[str]) -> list[list[float]]:
                vectors: list[list[float]] = await lm.embed(batch, params, use_cache, timeout)
                return vectors

        else:
            fn = self._fn
            assert fn is not None

            async def one(batch: list[str]) -> list[list[float]]:
                found = await fn(batch)
                vectors = found.tolist() if hasattr(found, "tolist") else [list(v) for v in found]
                if len(vectors) != len(batch):
                    raise ValueError(f"Embedder: the function returned {len(vectors)} vectors for {len(batch)} texts")
                return [v.tolist() if hasattr(v, "tolist") else list(v) for v in vectors]

        results = await run_items([(one, (batch,)) for batch in batches], concurrency=len(batches))
        vectors = [v for batch in results for v in batch]
        return vectors[0] if single else vectors
