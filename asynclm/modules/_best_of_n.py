"""``BestOfN`` (concurrent candidates) and ``Refine`` (sequential attempts with LM-written advice).

Distinct samples: each attempt runs on its own copy of the module (``Module.deepcopy``: the LM
objects, adapters and callbacks are shared, not copied) whose predictors get a ``rollout_id`` of
their own in their request configuration, and ``temperature=1.0`` unless they set a temperature.
The ``rollout_id`` is a cache-key component that the LM never sends, so the attempts are distinct
requests (never cache hits of one another) while each one stays cacheable and reproducible — the
same scheme as DSPy 3's ``lm.copy(rollout_id=i, temperature=1.0)``. A rollout id already set on a
predictor is kept as a prefix (an int ``k`` gives ``k + i``, anything else ``f"{k}/{i}"``), so
nested ``BestOfN``/``Refine`` still get distinct samples.

Both are re-entrant: everything a call needs (the copies, the counts, the advice) is local to the
call, so concurrent calls of one instance never interfere. Each attempt runs in its own
``asynclm.modules.trace_scope``; only the returned attempt's predictor calls are added to the
caller's trace, mapped back to the original predictors (so optimizers see the program's own
predictors, never the copies). Token usage counts every attempt.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio

from asynclm.adapters import Adapter, ChatAdapter
from asynclm.runtime import current_settings, is_async_callable
from asynclm.signatures import InputField, OutputField, Signature, SignatureField

from ._module import Module
from ._predict import Predict
from ._stream_state import sink_var
from ._tool import run_blocking
from ._trace import TraceEntry, record, trace_scope

__all__ = ["BestOfN", "OfferFeedback", "Refine"]

logger = logging.getLogger("asynclm.modules")

Reward = Callable[[dict[str, Any], Any], Any]


def _resolve_n(cls: str, n: int | None, big_n: int | None) -> int:
    if n is not None and big_n is not None and n != big_n:
        raise TypeError(f"{cls}: give the number of attempts once, as n= (N= is DSPy's spelling)")
    value = n if n is not None else big_n
    if value is None:
        raise TypeError(f"{cls}() missing the number of attempts: {cls}(module, n=3, reward_fn=..., threshold=...)")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{cls}(n={value!r}): the number of attempts must be an int >= 1")
    return value


def _check_common(cls: str, module: Any, reward_fn: Any, fail_count: int | None, n: int) -> int:
    if not isinstance(module, Module):
        raise TypeError(f"{cls}: module must be an asynclm Module (Predict, ChainOfThought, ...), got {module!r}")
    if not callable(reward_fn):
        raise TypeError(f"{cls}: reward_fn must be a function (args: dict, prediction) -> float, got {reward_fn!r}")
    if fail_count is None:
        return n
    if not isinstance(fail_count, int) or fail_count < 0:
        raise ValueError(f"{cls}(fail_count={fail_count!r}): use an int >= 0 (or None for n)")
    return fail_count


def _rollout_id(base: Any, i: int) -> Any:
    if base is None:
        return i
    if isinstance(base, int) and not isinstance(base, bool):
        return base + i
    return f"{base}/{i}"


def rollout_copy(module: Module, rollout: int) -> tuple[Module, dict[int, Any]]:
    """A copy of ``module`` whose predictors sample rollout ``rollout``, and a map from each
    copied predictor's ``id`` to the original predictor."""
    copy = module.deepcopy()
    originals = dict(module.named_predictors())
    mapping: dict[int, Any] = {}
    for name, predictor in copy.named_predictors():
        config = dict(predictor.config)
        config["rollout_id"] = _rollout_id(config.get("rollout_id"), rollout)
        config.setdefault("temperature", 1.0)
        predictor.config = config
        mapping[id(predictor)] = originals[name]
    return copy, mapping


async def score(reward_fn: Reward, args: dict[str, Any], prediction: Any) -> float:
    """``reward_fn(args, prediction)`` as a float: awaited if async, in a worker thread if sync
    (so it may block or call ``.sync()``, e.g. an LM judge)."""
    if is_async_callable(reward_fn):
        value = await reward_fn(args, prediction)
    else:
        value = await run_blocking(reward_fn, args, prediction)
        if inspect.isawaitable(value):
            value = await value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"reward_fn returned {value!r}; it must return a number (float, int or bool)") from None


@contextlib.contextmanager
def not_streaming() -> Iterator[None]:
    """Attempts never stream: which one is returned is only known at the end (under ``streamify``
    the caller gets the final prediction only)."""
    token = sink_var.set(None)
    try:
        yield
    finally:
        sink_var.reset(token)


def replay(trace: Sequence[TraceEntry], mapping: Mapping[int, Any]) -> None:
    """Add an attempt's predictor calls to the caller's trace, as calls of the original predictors."""
    for predictor, inputs, prediction in trace:
        record(mapping.get(id(predictor), predictor), inputs, prediction)


class _Attempts(Module):
    """What BestOfN and Refine share: the wrapped module, how many attempts, how they are judged."""

    def __init__(
        self,
        module: Module,
        n: int | None = None,
        reward_fn: Reward | None = None,
        threshold: float | None = None,
        fail_count: int | None = None,
        *,
        N: int | None = None,  # DSPy spelling
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(callbacks=callbacks)
        self.n = _resolve_n(type(self).__name__, n, N)
        self.fail_count = _check_common(type(self).__name__, module, reward_fn, fail_count, self.n)
        self.module = module
        self.reward_fn: Reward = reward_fn  # type: ignore[assignment]  # checked callable above
        self.threshold = threshold


class BestOfN(_Attempts):
    """Run ``module`` ``n`` times concurrently and return the best prediction.

    ``BestOfN(module, n, reward_fn, threshold, fail_count=None)``; ``N=`` is accepted for DSPy
    code. Every attempt is a distinct sample (its own ``rollout_id``, ``temperature=1.0``; see
    ``asynclm.modules._best_of_n``), all ``n`` start at once, and each prediction is scored
    with ``reward_fn(args, prediction)`` (``args`` is the dict of inputs; sync or async; a sync
    one runs in a worker thread). The first attempt to *finish* with ``reward >= threshold``
    is returned at once and the others are cancelled (their requests too); otherwise the
    highest reward wins (ties: the lowest attempt number). ``threshold=None`` always waits for
    all ``n``.

    An attempt that raises (the module or ``reward_fn``) is logged and skipped; when more than
    ``fail_count`` attempts have failed (default ``n``: never), the failure is raised with its
    own type and the others are cancelled. If every attempt failed, the last failure is raised.
    The returned prediction's ``usage`` counts the tokens of all attempts.
    """

    async def forward(self, **kwargs: Any) -> Any:
        n, threshold = self.n, self.threshold
        results: list[tuple[float, Any, list[TraceEntry], dict[int, Any]] | None] = [None] * n
        failures: list[BaseException] = []
        winner: list[int] = []
        fatal: list[BaseException] = []

        copies = [rollout_copy(self.module, i) for i in range(n)]  # copy errors raise here, plainly

        async def attempt(i: int, scope: anyio.CancelScope) -> None:
            copy, mapping = copies[i]
            try:
                with trace_scope() as trace, not_streaming():
                    prediction = await copy(**kwargs)
                reward = await score(self.reward_fn, dict(kwargs), prediction)
            except Exception as exc:
                logger.warning("BestOfN: attempt %d of %d failed: %r", i + 1, n, exc)
                failures.append(exc)
                if len(failures) > self.fail_count and not fatal:
                    fatal.append(exc)
                    scope.cancel()
                return
            results[i] = (reward, prediction, list(trace), mapping)
            if threshold is not None and reward >= threshold and not winner and not fatal:
                winner.append(i)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(attempt, i, tg.cancel_scope)
        if fatal:
            raise fatal[0]
        if winner:
            chosen = results[winner[0]]
        else:
            done = [(r[0], -i, r) for i, r in enumerate(results) if r is not None]
            if not done:
                raise failures[-1]
            chosen = max(done, key=lambda t: (t[0], t[1]))[2]
        assert chosen is not None
        _, prediction, trace, mapping = chosen
        replay(trace, mapping)
        return prediction


class OfferFeedback(Signature):
    """
    In the discussion, assign blame to each module that contributed to the final reward being below the threshold, if
    any. Then, prescribe concrete advice of how the module should act on its future input when we retry the process, if
    it were to receive the same or similar inputs. If a module is not to blame, the advice should be N/A.
    The module will not see its own history, so it needs to rely on entirely concrete and actionable advice from you
    to avoid the same mistake on the same or similar inputs.
    """

    program_code: str = InputField(desc="The code of the program that we are analyzing")
    modules_defn: str = InputField(desc="The definition of each module in the program, including its I/O")
    program_inputs: str = InputField(desc="The inputs to the program that we are analyzing")
    program_trajectory: str = InputField(desc="The trajectory of the program's execution, showing each module's I/O")
    program_outputs: str = InputField(desc="The outputs of the program that we are analyzing")
    reward_code: str = InputField(desc="The code of the reward function that we are analyzing")
    target_threshold: float = InputField(desc="The target threshold for the reward function")
    reward_value: float = InputField(desc="The reward value assigned to the program's outputs")
    module_names: list[str] = InputField(desc="The names of the modules in the program, for which we seek advice")
    discussion: str = OutputField(desc="Discussing blame of where each module went wrong, if it did")
    advice: dict[str, str] = OutputField(
        desc="For each module, describe very concretely, in this order: the specific scenarios in which it has made "
        "mistakes in the past and what each mistake was, followed by what it should do differently in that kind of"
        "scenario in the future. If the module is not to blame, write N/A."
    )


_HINT = "hint_"
_HINT_DESC = "A hint to the module from an earlier run"


class HintAdapter(Adapter):
    """Wraps a predictor's adapter to add a ``hint_`` input (the advice from an earlier attempt)
    to the final request, as DSPy's ``Refine`` does. Demos are formatted without it (they never
    had a hint); parsing, schemas and re-asks are the wrapped adapter's."""

    def __init__(self, inner: Adapter | None, hint: str) -> None:
        self.inner = inner
        self.hint = hint

    def _adapter(self) -> Adapter:
        # resolved per call, like Predict does for a predictor without an adapter of its own
        return self.inner or current_settings().adapter or ChatAdapter()

    def format(self, signature: Any, demos: Sequence[Any] | None, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        inner = self._adapter()
        sig = Signature.ensure(signature)
        if _HINT in sig.input_fields:  # nested Refine: one hint field carrying both hints
            hinted, hint = sig, f"{inputs.get(_HINT) or ''}\n{self.hint}".strip()
        else:
            hinted, hint = sig.append(_HINT, InputField(desc=_HINT_DESC)), self.hint
        messages = inner.format(hinted, [], {**inputs, _HINT: hint})
        if demos:
            messages[1:1] = inner.format_demos(sig, demos)
        return messages

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        return self._adapter().parse(signature, completion)

    def response_format(self, signature: Any) -> dict[str, Any] | None:
        return self._adapter().response_format(signature)

    def format_feedback(self, signature: Any, completion: str, error: Any) -> list[dict[str, Any]]:
        return self._adapter().format_feedback(signature, completion, error)

    def stream_fields(self, signature: Any, partial: str) -> list[tuple[str, str]]:
        return self._adapter().stream_fields(signature, partial)

    def format_field_structure(self, signature: Signature) -> str:
        return self._adapter().format_field_structure(signature)

    def user_message_output_requirements(self, signature: Signature) -> str:
        return self._adapter().user_message_output_requirements(signature)

    def format_assistant_message_content(
        self, signature: Signature, outputs: Mapping[str, Any], missing_field_message: str | None = None
    ) -> str:
        return self._adapter().format_assistant_message_content(signature, outputs, missing_field_message)


def _source(obj: Any) -> str:
    for target in (obj, type(obj)):
        try:
            return textwrap.dedent(inspect.getsource(target))
        except (OSError, TypeError):
            continue
    return repr(obj)


def _fields_text(fields: Mapping[str, SignatureField]) -> str:
    return "\n".join(f"{i + 1}. `{f.name}` ({f.type_name}): {f.desc or ''}" for i, f in enumerate(fields.values()))


def describe_modules(program: Module) -> str:
    """Each predictor's name, input and output fields and instructions (DSPy's ``inspect_modules``)."""
    separator = "-" * 80
    out = [separator]
    for name, predictor in program.named_predictors():
        sig = predictor.signature
        instructions = ("\n" + "\t" * 2).join(["", *textwrap.dedent(sig.instructions).splitlines()])
        out.append(f"Module {name}")
        out.append("\n\tInput Fields:")
        out.append(("\n" + "\t" * 2).join(["", *_fields_text(sig.input_fields).splitlines()]))
        out.append("\tOutput Fields:")
        out.append(("\n" + "\t" * 2).join(["", *_fields_text(sig.output_fields).splitlines()]))
        out.append(f"\tOriginal Instructions: {instructions}")
        out.append(separator)
    return "\n".join(o.strip("\n") for o in out)


def _as_json(value: Any) -> str:
    def fallback(o: Any) -> Any:
        dump = getattr(o, "model_dump", None)
        if callable(dump):
            return dump(mode="json")
        if isinstance(o, Mapping):
            return dict(o)
        return f"<non-serializable: {type(o).__name__}>"

    return json.dumps(value, indent=2, ensure_ascii=False, default=fallback)


class Refine(_Attempts):
    """Run ``module`` up to ``n`` times, one after another, each attempt learning from the last.

    ``Refine(module, n, reward_fn, threshold, fail_count=None)`` (``N=`` accepted for DSPy code).
    Each attempt is a distinct sample (own ``rollout_id``, ``temperature=1.0``) scored with
    ``reward_fn(args, prediction)``. The first attempt with ``reward >= threshold`` is returned;
    otherwise, before the next attempt, an LM step (``OfferFeedback``, DSPy's wording) reads
    the program's code, its predictors, the attempt's inputs, per-predictor trajectory, outputs,
    the reward function's code and the reward, and writes advice per predictor. In the next
    attempt each predictor gets its advice as an extra ``hint_`` input ("A hint to the module
    from an earlier run"), through an adapter wrapper (``HintAdapter``) on the attempt's
    copy; the module itself and its saved state never see it, and the trace records the inputs
    without it. After ``n`` attempts the best one is returned (ties: the earliest).

    The advice step uses the module's LM when all its predictors share one, else the context's.
    Failures (the module, ``reward_fn`` or the advice step raising) are logged and skipped until
    more than ``fail_count`` (default ``n``) have happened; then the failure is raised. If no
    attempt produced a prediction, the last failure is raised.
    """

    def __init__(
        self,
        module: Module,
        n: int | None = None,
        reward_fn: Reward | None = None,
        threshold: float | None = None,
        fail_count: int | None = None,
        *,
        N: int | None = None,  # DSPy spelling
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(module, n, reward_fn, threshold, fail_count, N=N, callbacks=callbacks)
        # private (underscore): not a predictor of the program, never saved or optimized
        self._advisor = Predict(OfferFeedback)

    def _advisor_lm(self) -> Any:
        try:
            return self.module.get_lm()
        except ValueError:  # predictors with different LMs: use the context's
            return None

    async def forward(self, **kwargs: Any) -> Any:
        best: tuple[float, Any, list[TraceEntry], dict[int, Any]] | None = None
        advice: dict[str, str] | None = None
        failures = 0
        last_error: BaseException | None = None
        for i in range(self.n):
            copy, mapping = rollout_copy(self.module, i)
            names = [name for name, _ in copy.named_predictors()]
            if advice:
                for name, predictor in copy.named_predictors():
                    predictor.adapter = HintAdapter(predictor.adapter, str(advice.get(name, "N/A")))
            try:
                with trace_scope() as trace, not_streaming():
                    prediction = await copy(**kwargs)
                reward = await score(self.reward_fn, dict(kwargs), prediction)
                if best is None or reward > best[0]:
                    best = (reward, prediction, list(trace), mapping)
                if self.threshold is not None and reward >= self.threshold:
                    break
                if i == self.n - 1:
                    break
                advice = await self._advise(copy, names, kwargs, trace, prediction, reward)
            except Exception as exc:
                logger.warning("Refine: attempt %d of %d failed: %r", i + 1, self.n, exc)
                failures += 1
                last_error = exc
                if failures > self.fail_count:
                    raise
        if best is None:
            assert last_error is not None
            raise last_error
        _, prediction, trace, mapping = best
        replay(trace, mapping)
        return prediction

    async def _advise(
        self,
        copy: Module,
        names: list[str],
        kwargs: Mapping[str, Any],
        trace: Sequence[TraceEntry],
        prediction: Any,
        reward: float,
    ) -> dict[str, str]:
        name_of = {id(p): name for name, p in copy.named_predictors()}
        trajectory = [
            {"module_name": name_of.get(id(p), "?"), "inputs": dict(inputs), "outputs": dict(outputs)}
            for p, inputs, outputs in trace
        ]
        outputs = dict(prediction) if isinstance(prediction, Mapping) or hasattr(prediction, "keys") else prediction
        inputs = {
            "program_code": _source(self.module),
            "modules_defn": describe_modules(copy),
            "program_inputs": _as_json(dict(kwargs)),
            "program_trajectory": _as_json(trajectory),
            "program_outputs": _as_json(outputs),
            "reward_code": _source(self.reward_fn),
            "target_threshold": float(self.threshold) if self.threshold is not None else float("inf"),
            "reward_value": reward,
            "module_names": names,
        }
        # the advisor is not part of the program: keep it out of the caller's trace and stream
        with trace_scope(), not_streaming():
            result = await self._advisor(**inputs, lm=self._advisor_lm())
        advice = result.advice
        return {str(k): str(v) for k, v in (advice or {}).items()}
