"""The USD cost of a call: ``LM(price=...)``, else the ``genai-prices`` package's price data.

Each LM gets one ``Pricer`` at construction. Its rates are resolved once (for a genai-prices
lookup: the first time the LM sends a request, in a worker thread, since importing that package
and its data takes ~0.4 s of CPU) and after that a call's cost is three multiplications.

How the price is found, first match wins:

1. ``LM(price={"input": usd_per_1M, "output": usd_per_1M, "cached_input": usd_per_1M})``: these
   rates ("cached_input" defaults to "input").
2. ``LM(price="<provider id>")``: genai-prices' price of the model at that provider (for a
   gateway or proxy that serves, e.g., OpenAI's models at another URL).
3. The LM's default base_url (OpenAI's): genai-prices' price at ``openai``.
4. Any other base_url: the provider whose API URL genai-prices recognises (Groq, Together,
   OpenRouter, Anthropic, ...). A loopback or ``.invalid`` host is never a priced provider.
5. Otherwise the price is unknown and the cost is ``None`` (never a guess).

genai-prices is exact (``Decimal``) and handles tiers and time-of-day prices, but takes ~0.2 ms
per calculation. A model with one flat price per token kind is priced linearly: the per-token
rates are read from genai-prices once (its cost of 1M input, 1M cached input, 1M output tokens),
then each call is ``uncached_input * a + cached * b + output * c``. Models with tiered or
conditional prices call genai-prices for every call. The tests check both against
genai-prices' own ``calc_price``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio

from ._models import Usage

__all__ = ["Pricer", "check_price", "pricer_for"]

_PRICE_KEYS = ("input", "output", "cached_input")
_MTOK = 1_000_000.0

# (model, provider_id, api_url) -> (rates or None, calc or None); filled in worker threads
_LOOKUPS: dict[tuple[str, str | None, str | None], tuple[tuple[float, float, float] | None, Any]] = {}
_LOOKUP_LOCK = threading.Lock()


def check_price(price: Any) -> tuple[float, float, float] | str | None:
    """Validate ``LM(price=...)``; return per-1M rates (input, cached input, output), a provider id, or None."""
    if price is None:
        return None
    if isinstance(price, str):
        if not price.strip():
            raise ValueError("LM(price=''): give a genai-prices provider id such as 'openai', or a dict of rates")
        _check_provider_id(price)
        return price
    if not isinstance(price, Mapping):
        raise TypeError(
            f"LM(price=...) must be a dict of USD per 1M tokens like {{'input': 0.15, 'output': 0.6}} "
            f"(optionally 'cached_input'), or a genai-prices provider id string; got {type(price).__name__}"
        )
    unknown = sorted(str(k) for k in price if k not in _PRICE_KEYS)
    if unknown:
        raise ValueError(
            f"LM(price=...): unknown key(s) {', '.join(map(repr, unknown))}; use 'input', 'output' and optionally "
            "'cached_input' (USD per 1M tokens)"
        )
    missing = [k for k in ("input", "output") if k not in price]
    if missing:
        raise ValueError(
            f"LM(price=...): missing {' and '.join(map(repr, missing))}; give both 'input' and 'output' in USD per "
            "1M tokens, e.g. {'input': 0.15, 'output': 0.6}"
        )
    rates: dict[str, float] = {}
    for key in _PRICE_KEYS:
        if key not in price:
            continue
        value = price[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"LM(price={{{key!r}: {value!r}}}): a price is a finite number >= 0 of USD per 1M tokens")
        rates[key] = float(value)
    return rates["input"], rates.get("cached_input", rates["input"]), rates["output"]


def _check_provider_id(provider_id: str) -> None:
    try:
        from genai_prices import data_snapshot
    except ImportError:
        raise ImportError(
            f"LM(price={provider_id!r}) looks the price up in the genai-prices package, which is not installed: "
            "pip install genai-prices (Python >= 3.11), or give the rates: price={'input': ..., 'output': ...}"
        ) from None
    try:
        data_snapshot.get_snapshot().find_provider(None, provider_id, None)
    except AttributeError:  # genai-prices' internals changed: the first lookup will tell
        return
    except LookupError:
        raise ValueError(
            f"LM(price={provider_id!r}): genai-prices knows no provider {provider_id!r} (try 'openai', "
            "'anthropic', 'google', 'groq', ...), or give the rates: price={'input': ..., 'output': ...}"
        ) from None


def _unpriced_host(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return (
        host in ("localhost", "0.0.0.0", "::1", "")
        or host.startswith("127.")
        or host.endswith((".invalid", ".localhost", ".local"))
    )


class Pricer:
    """The price of one LM's calls. ``cost(usage)`` is ``None`` while (or when) the price is unknown.

    Attributes:
        ready: whether the price has been resolved (always, except for a genai-prices lookup
            before the LM's first request).
        known: whether a price was found (meaningful once ``ready``).
        source: where the price comes from, for messages ("LM(price=...)", "genai-prices: openai/gpt-4o-mini").
    """

    __slots__ = ("_calc", "_key", "_rates", "known", "ready", "source")

    def __init__(
        self,
        rates: tuple[float, float, float] | None,
        lookup: tuple[str, str | None, str | None] | None,
        source: str,
    ) -> None:
        # rates per 1M tokens: (input, cached input, output)
        self._rates = rates
        self._calc: Callable[[int, int, int], float] | None = None
        self._key = lookup
        self.source = source
        self.known = rates is not None
        self.ready = lookup is None

    async def load(self) -> None:
        """Resolve a genai-prices lookup (importing the package in a worker thread the first time)."""
        if self.ready:
            return
        key = self._key
        assert key is not None
        found = _LOOKUPS.get(key)
        if found is None:
            found = await anyio.to_thread.run_sync(_lookup, key)
        self._rates, self._calc = found
        self.known = self._rates is not None or self._calc is not None
        self.ready = True

    def cost(self, usage: Usage) -> float | None:
        """The USD cost of ``usage``: ``None`` if the price is unknown, or if ``usage`` reports no
        tokens at all (the server sent no usage, or a stream was stopped before it did)."""
        if not (usage.prompt_tokens or usage.completion_tokens or usage.total_tokens):
            return None
        rates = self._rates
        if rates is not None:
            prompt = usage.prompt_tokens
            cached = min(usage.cached_tokens, prompt)
            return ((prompt - cached) * rates[0] + cached * rates[1] + usage.completion_tokens * rates[2]) / _MTOK
        if self._calc is not None:
            return self._calc(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
        return None

    def estimate(self, input_tokens: float, output_tokens: float) -> float | None:
        """The cost of a request's estimated tokens (all input counted as uncached)."""
        rates = self._rates
        if rates is not None:
            return (input_tokens * rates[0] + output_tokens * rates[2]) / _MTOK
        if self._calc is not None:
            return self._calc(math.ceil(input_tokens), 0, math.ceil(output_tokens))
        return None

    def unknown_reason(self) -> str:
        """Why the price is unknown, for error messages."""
        if self._key is None:
            return self.source
        return f"genai-prices has no price for {self.source.removeprefix('genai-prices: ')}"

    def __repr__(self) -> str:
        if not self.ready:
            return f"<Pricer {self.source} (not resolved yet)>"
        if self._rates is not None:
            a, b, c = self._rates
            return f"<Pricer {self.source}: ${a:g}/1M input, ${b:g}/1M cached input, ${c:g}/1M output>"
        return f"<Pricer {self.source}{'' if self.known else ': unknown'}>"


def pricer_for(model: str, base_url: str, default_base_url: str, price: Any, provider: str = "openai") -> Pricer:
    """The ``Pricer`` of an LM (``price`` as validated by ``check_price``); ``provider`` is the
    genai-prices id of the API at ``default_base_url`` (``"openai"``, ``"anthropic"``)."""
    checked = check_price(price)
    if isinstance(checked, tuple):
        return Pricer(checked, None, "LM(price=...)")
    if isinstance(checked, str):
        return Pricer(None, (model, checked, None), f"genai-prices: {checked}/{model}")
    if base_url == default_base_url:
        return Pricer(None, (model, provider, None), f"genai-prices: {provider}/{model}")
    if _unpriced_host(base_url):
        return Pricer(None, None, f"no priced provider at {base_url}")
    return Pricer(None, (model, None, base_url), f"genai-prices: {model} at {base_url}")


def _lookup(key: tuple[str, str | None, str | None]) -> tuple[tuple[float, float, float] | None, Any]:
    with _LOOKUP_LOCK:
        found = _LOOKUPS.get(key)
        if found is None:
            found = _LOOKUPS[key] = _resolve(*key)
        return found


def _resolve(model: str, provider_id: str | None, api_url: str | None) -> tuple[tuple[float, float, float] | None, Any]:
    try:
        import genai_prices
    except ImportError:  # not installed (it needs Python >= 3.11): prices are unknown
        return None, None
    try:
        return _resolve_fast(model, provider_id, api_url)
    except LookupError:
        return None, None
    except Exception:  # genai-prices' internals changed: use its public calc_price for every call
        pass

    def calc(prompt: int, cached: int, completion: int) -> float:
        usage = genai_prices.Usage(
            input_tokens=prompt, cache_read_tokens=min(cached, prompt) or None, output_tokens=completion
        )
        if provider_id is not None:
            return float(genai_prices.calc_price(usage, model, provider_id=provider_id).total_price)
        return float(genai_prices.calc_price(usage, model, provider_api_url=api_url).total_price)

    try:
        calc(1, 0, 1)
    except LookupError:
        return None, None
    return None, calc


def _resolve_fast(
    model: str, provider_id: str | None, api_url: str | None
) -> tuple[tuple[float, float, float] | None, Any]:
    """Through genai-prices' model data: linear rates for a flat price, else its per-model calculation."""
    from datetime import datetime, timezone

    from genai_prices import Usage as PriceUsage, data_snapshot, types

    provider, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, api_url)
    prices = info.prices
    if isinstance(prices, types.ModelPrice) and not any(
        isinstance(v, types.TieredPrices) for v in vars(prices).values()
    ):

        def total(**counts: int) -> float:
            return float(prices.calc_price(PriceUsage(**counts))["total_price"])

        return (
            total(input_tokens=1_000_000),
            total(input_tokens=1_000_000, cache_read_tokens=1_000_000),
            total(output_tokens=1_000_000),
        ), None

    def calc(prompt: int, cached: int, completion: int) -> float:
        usage = PriceUsage(input_tokens=prompt, cache_read_tokens=min(cached, prompt) or None, output_tokens=completion)
        result = info.calc_price(
            usage, provider, genai_request_timestamp=datetime.now(tz=timezone.utc), auto_update_timestamp=None
        )
        return float(result.total_price)

    return None, calc
