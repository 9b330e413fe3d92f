"""``FallbackLM``: an LM that tries the next model when one fails with a transient error.

Each call goes to the first LM; when it fails with one of ``on`` (after that LM's own retries),
the same call goes to the next one, and so on. The inner LMs are called as they are, so each
keeps its own retries, deadline, limits, cache, usage and history; ``FallbackLM`` adds nothing
to the per-call path but a loop and a ``try``.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from asynclm.runtime import SyncCallable

from ._client import HISTORY_SIZE, LM, StreamMethod
from ._errors import LMConnectionError, LMTimeoutError, RateLimitError, ServerError
from ._models import LMResponse, StreamDelta, Usage

__all__ = ["DEFAULT_FALLBACK_ON", "FallbackLM"]

#: the errors that move a call to the next model by default: transient failures of one provider
DEFAULT_FALLBACK_ON: tuple[type[BaseException], ...] = (RateLimitError, ServerError, LMConnectionError, LMTimeoutError)


class FallbackLM(SyncCallable):
    """An LM made of several: each call tries the next one when the previous fails with an error in ``on``.

    ``FallbackLM([primary, secondary, ...])`` is used wherever an LM is (``Predict(lm=...)``,
    ``asynclm.configure(lm=...)``, ``asynclm.context(lm=...)``, ``await lm(...)``,
    ``lm.sync(...)``, ``lm.stream(...)``)::

        lm = asynclm.FallbackLM([
            asynclm.LM("openai/gpt-4o-mini"),
            asynclm.LM("anthropic/claude-haiku-4-5"),
        ])

    A call goes to the first LM. If it fails with one of ``on`` (after that LM's own retries
    and within its own deadline), the same call goes to the next LM; any other error (a
    ``BadRequestError``, an ``AuthenticationError``…) is raised at once. When every LM fails,
    the last error is raised with its own type, the earlier ones chained to it as ``__cause__``
    (last, then the one before, back to the first) and listed in a note of the traceback.

    Each inner LM keeps its own retries, timeout, limits, cache, usage and history, so
    ``track_usage().by_model()`` and ``inspect_history()`` show which model answered (and
    which failed), as does ``LMResponse.model``. ``FallbackLM.history`` keeps one entry per
    call: the answering model, the outputs and usage, and ``fallbacks``, the errors of the
    models tried before it.

    Streaming falls back only while no delta has reached the caller: after the first delta,
    an error is raised (the caller has part of one model's answer).

    Args:
        lms: the LMs to try in order: ``LM`` objects (any provider, ``LocalLM``, another
            ``FallbackLM``) or model strings, each made into ``LM(model)``.
        on: the exception class(es) that move a call to the next LM (default
            ``DEFAULT_FALLBACK_ON``: ``RateLimitError``, ``ServerError``,
            ``LMConnectionError``, ``LMTimeoutError``).

    Attributes:
        lms: the LMs, in order.
        model, model_name: ``"fallback:<model>,<model>,..."``.
        history: the last 100 calls (JSON-able dicts), oldest first.
    """

    model: str
    model_name: str

    def __init__(
        self,
        lms: Sequence[LM | FallbackLM | str],
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] = DEFAULT_FALLBACK_ON,
    ) -> None:
        if isinstance(lms, (str, LM, FallbackLM)) or not isinstance(lms, Sequence):
            raise TypeError(
                "FallbackLM(lms) takes a list of LMs, e.g. FallbackLM([asynclm.LM('openai/gpt-4o-mini'), "
                f"asynclm.LM('anthropic/claude-haiku-4-5')]), got {type(lms).__name__}"
            )
        models: list[LM | FallbackLM] = []
        for i, lm in enumerate(lms):
            if isinstance(lm, str):
                lm = LM(lm)
            if not isinstance(lm, (LM, FallbackLM)):
                raise TypeError(
                    f"FallbackLM: item {i} is a {type(lm).__name__}, not an LM; use asynclm.LM('provider/model') "
                    "objects or model strings"
                )
            models.append(lm)
        if len(models) < 2:
            raise ValueError(f"FallbackLM needs at least two LMs to fall back between, got {len(models)}")
        classes = on if isinstance(on, tuple) else (on,)
        if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
            raise TypeError(
                f"FallbackLM(on={on!r}): give an exception class or a tuple of them, e.g. "
                "on=(asynclm.RateLimitError, asynclm.ServerError)"
            )
        self.lms: tuple[LM | FallbackLM, ...] = tuple(models)
        self.on: tuple[type[BaseException], ...] = classes
        self.model = "fallback:" + ",".join(lm.model for lm in self.lms)
        self.model_name = self.model
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)

    def __repr__(self) -> str:
        on = ", ".join(c.__name__ for c in self.on)
        return f"FallbackLM([{', '.join(repr(lm) for lm in self.lms)}], on=({on}))"

    def __deepcopy__(self, memo: Any) -> FallbackLM:
        return self  # shared, like an LM (its clients, limits and caches)

    @property
    def preferred_adapter(self) -> Any:
        """The first LM's ``preferred_adapter`` (predictors format the prompt once, for any model)."""
        return getattr(self.lms[0], "preferred_adapter", None)

    # -- calls --------------------------------------------------------------------------------------

    async def __call__(self, prompt: str | None = None, /, *, messages: Any = None, **params: Any) -> LMResponse:
        """Call the LMs in turn until one answers; see the class docstring.

        Takes the same arguments as ``LM.__call__`` (each LM gets them all).

        Raises:
            LMError: the first error not in ``on``, or the last LM's error when all failed.
        """
        started = time.time()
        t0 = time.perf_counter()
        errors: list[tuple[LM | FallbackLM, BaseException]] = []
        for lm in self.lms:
            try:
                response = await lm(prompt, messages=messages, **params)
            except self.on as exc:
                errors.append((lm, exc))
                continue
            except Exception as exc:
                self._failed(prompt, messages, params, errors, lm, exc, started, t0)
                raise
            self._record(prompt, messages, params, lm, response.texts, response.usage, response.cache_hit,
                         errors, started, t0)
            return response
        last_lm, last = errors[-1]
        self._failed(prompt, messages, params, errors[:-1], last_lm, last, started, t0)
        raise last

    @property
    def stream(self) -> StreamMethod:
        """Stream from the first LM that starts answering: ``async for delta in lm.stream(...)``.

        A failure in ``on`` before the first delta moves to the next LM; after it, the error is
        raised. ``.sync(...)`` iterates from synchronous code.
        """
        return StreamMethod(cast(Any, self))

    async def _stream(
        self, prompt: str | None = None, /, *, messages: Any = None, **params: Any
    ) -> AsyncGenerator[StreamDelta, None]:
        started = time.time()
        t0 = time.perf_counter()
        errors: list[tuple[LM | FallbackLM, BaseException]] = []
        for lm in self.lms:
            sent = False
            texts: list[str] = []
            usage: Usage | None = None
            try:
                async with contextlib.aclosing(lm.stream(prompt, messages=messages, **params)) as stream:
                    async for delta in stream:
                        sent = True
                        if delta.text:
                            texts.append(delta.text)
                        if delta.usage is not None:
                            usage = delta.usage
                        yield delta
            except self.on as exc:
                if sent:
                    self._failed(prompt, messages, params, errors, lm, exc, started, t0)
                    raise
                errors.append((lm, exc))
                continue
            except Exception as exc:
                self._failed(prompt, messages, params, errors, lm, exc, started, t0)
                raise
            self._record(prompt, messages, params, lm, ["".join(texts)], usage or Usage(), False, errors, started, t0)
            return
        last_lm, last = errors[-1]
        self._failed(prompt, messages, params, errors[:-1], last_lm, last, started, t0)
        raise last

    # -- history and errors -----------------------------------------------------------------------

    def _entry(
        self,
        prompt: str | None,
        messages: Any,
        params: dict[str, Any],
        errors: list[tuple[LM | FallbackLM, BaseException]],
        started: float,
        t0: float,
    ) -> dict[str, Any]:
        return {
            "messages": messages if messages is not None else [{"role": "user", "content": prompt}],
            "params": {k: v for k, v in params.items() if k not in ("cache", "timeout", "rollout_id")},
            "fallbacks": [f"{lm.model}: {type(exc).__name__}: {exc}" for lm, exc in errors],
            "timestamp": started,
            "duration": time.perf_counter() - t0,
        }

    def _record(
        self,
        prompt: str | None,
        messages: Any,
        params: dict[str, Any],
        lm: LM | FallbackLM,
        outputs: list[str],
        usage: Usage,
        cache_hit: bool,
        errors: list[tuple[LM | FallbackLM, BaseException]],
        started: float,
        t0: float,
    ) -> None:
        entry = self._entry(prompt, messages, params, errors, started, t0)
        entry.update(model=lm.model_name, outputs=outputs, usage=usage.to_dict(), cache_hit=cache_hit)
        self.history.append(entry)

    def _failed(
        self,
        prompt: str | None,
        messages: Any,
        params: dict[str, Any],
        errors: list[tuple[LM | FallbackLM, BaseException]],
        failed: LM | FallbackLM,
        error: BaseException,
        started: float,
        t0: float,
    ) -> None:
        """Chain the earlier errors to ``error`` (the one raised) and record the failed call."""
        if errors:
            chain = [exc for _, exc in errors] + [error]
            for earlier, later in itertools.pairwise(chain):
                if later.__cause__ is None and later is not earlier:
                    later.__cause__ = earlier
            tried = "; ".join(f"{lm.model} failed ({type(exc).__name__})" for lm, exc in errors)
            note = f"FallbackLM: {tried}; then this error, from {failed.model} (earlier ones chained as __cause__)"
            if sys.version_info >= (3, 11):
                error.add_note(note)
            else:  # what add_note does (the exceptiongroup backport prints __notes__ on 3.10)
                error.__notes__ = [*getattr(error, "__notes__", []), note]
        entry = self._entry(prompt, messages, params, errors, started, t0)
        entry.update(model=None, outputs=[], usage=Usage().to_dict(), cache_hit=False,
                     error=f"{type(error).__name__}: {error}")
        self.history.append(entry)
