"""``Predict`` and ``ChainOfThought``: one signature, one LM call (plus re-asks)."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import anyio

from asynclm.adapters import Adapter, ChatAdapter, JSONAdapter, ParseError
from asynclm.adapters._native_tools import tool_fields
from asynclm.lm import BadRequestError, ContextWindowExceededError
from asynclm.runtime import current_settings
from asynclm.signatures import Example, OutputField, Prediction, Signature

from . import _stream_state
from ._callbacks import handlers_for, observe
from ._module import Module, ProgramFileError
from ._tool_calling import check_native_tools, predict_native
from ._trace import record

__all__ = ["ChainOfThought", "NoLMError", "Predict"]

_CONTROL = frozenset({"config", "demos", "lm", "signature"})
# Passed to observe() instead of the inputs when no callback is registered: observe only hands
# its inputs to handlers, and building them would cost memory per in-flight call for nothing.
_UNOBSERVED: dict[str, Any] = {}


class NoLMError(RuntimeError):
    """A predictor was called with no LM set on it and none configured."""


def _admits_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return type(None) in typing.get_args(annotation)
    return False


class Predict(Module):
    """Ask an LM for a signature's outputs given its inputs.

    ``await Predict("question -> answer")(question="...")`` returns a ``Prediction`` with the
    output fields. Inputs are keyword-only; a missing or unknown input raises ``TypeError`` naming
    the expected fields.

    Args:
        signature: a ``Signature`` or its string form.
        lm: the LM to use; default: ``asynclm.settings.lm`` at call time.
        adapter: the adapter; default: ``asynclm.settings.adapter``, else the LM's preferred
            adapter, else ``ChatAdapter``.
        demos: few-shot examples (``Example`` or dicts with input and output fields).
        max_parse_retries: re-asks after an unparsable answer (default: the setting, 1); after
            them, one last try through ``JSONAdapter``; then ``ParseError``.
        native_tools: for a signature with a ``list[asynclm.Tool]`` input and an
            ``asynclm.ToolCalls`` output: ``"auto"`` (default) sends the tools as the request's
            ``tools`` and reads the response's ``tool_calls``, falling back to the text protocol
            when the server rejects ``tools`` with a 400; ``True`` never falls back; ``False``
            always describes the tools in the prompt and reads the calls from the text.
        **config: LM request parameters (``temperature``, ``n``, ``max_tokens``, ``rollout_id``…);
            ``n > 1`` fills ``prediction.completions`` (asked concurrently when the server
            returns fewer choices than asked).
    Per call: ``config={...}``, ``demos=[...]``, ``lm=...`` override the above.
    """

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        lm: Any = None,
        adapter: Adapter | None = None,
        demos: Iterable[Example | Mapping[str, Any]] | None = None,
        callbacks: Iterable[Any] | None = None,
        max_parse_retries: int | None = None,
        native_tools: bool | str = "auto",
        **config: Any,
    ) -> None:
        super().__init__(callbacks=callbacks)
        self.native_tools = check_native_tools(native_tools, type(self).__name__)
        self.signature = Signature.ensure(signature)
        self.lm = lm
        self.adapter = adapter
        self.demos: list[Example] = [d if isinstance(d, Example) else Example(d) for d in (demos or [])]
        self.max_parse_retries = max_parse_retries
        self.config = config

    def reset(self) -> None:
        """Forget learned state: demos (the LM and configuration stay)."""
        self.demos = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature!r})"

    # -- state ----------------------------------------------------------------------------------

    def dump_predictor_state(self) -> dict[str, Any]:
        """This predictor's learnable state: signature (with instructions) and demos."""
        return {
            "signature": self.signature.to_dict(),
            # demos may be plain dicts (as in DSPy): saved as Examples
            "demos": [(demo if isinstance(demo, Example) else Example(demo)).to_json_dict() for demo in self.demos],
        }

    def load_predictor_state(
        self, state: Mapping[str, Any], *, custom_types: Mapping[str, Any] | None = None
    ) -> Predict:
        if not isinstance(state, Mapping) or "signature" not in state or "demos" not in state:
            raise ProgramFileError("a predictor's state needs 'signature' and 'demos'")
        saved = Signature.from_dict(state["signature"], custom_types=custom_types)
        if list(saved.input_fields) != list(self.signature.input_fields) or list(saved.output_fields) != list(
            self.signature.output_fields
        ):
            raise ProgramFileError(
                f"the saved signature {saved.signature!r} does not match this predictor's {self.signature.signature!r}"
            )
        self.signature = saved
        self.demos = [Example.from_json_dict(d) for d in state["demos"]]
        return self

    # -- the call -------------------------------------------------------------------------------

    if typing.TYPE_CHECKING:  # the precise type; at run time Module.__call__ runs directly (one frame less)

        async def __call__(self, **kwargs: Any) -> Prediction: ...

    def _expected(self) -> str:
        return ", ".join(f"{n}=..." for n in self.signature.input_fields) or "(no inputs)"

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        control = {k: kwargs.pop(k) for k in _CONTROL & kwargs.keys()}
        fields = self.signature.input_fields
        unknown = [k for k in kwargs if k not in fields]
        if unknown:
            raise TypeError(
                f"{self!r} got unexpected input(s) {', '.join(map(repr, unknown))}; expected {self._expected()}"
            )
        missing = [n for n, f in fields.items() if n not in kwargs and not _admits_none(f.annotation)]
        if missing:
            raise TypeError(
                f"{self!r} is missing input(s) {', '.join(map(repr, missing))}; expected {self._expected()}"
            )
        for name in fields:
            if name not in kwargs:
                kwargs[name] = None
        return kwargs, control

    async def forward(self, *args: Any, **kwargs: Any) -> Prediction:
        call = self._prepare(args, kwargs)
        if tool_fields(call.signature)[1] is not None:  # a ToolCalls output: native function calling
            native = await predict_native(self, call)
            if native is not None:
                return native
        # What was _complete() is written out here: one coroutine frame less per call in flight.
        adapter, signature = call.adapter, call.signature
        format_inputs = {"signature": signature, "inputs": call.inputs} if handlers_for(adapter) else _UNOBSERVED
        async with observe("adapter_format", adapter, format_inputs) as out:
            messages = adapter.format(signature, call.demos, call.inputs)
            out.value = messages
        n = int(call.params.get("n") or 1)
        try:
            texts = await self._ask(call, adapter, messages, call.params)
        except BadRequestError as exc:
            if n == 1 or isinstance(exc, ContextWindowExceededError):
                raise
            texts = []  # the server rejects n > 1: ask for each candidate on its own
        if n > 1 and len(texts) < n:  # the server ignored n: ask for the rest concurrently
            texts = texts + await self._ask_each(call, messages, n - len(texts))
        if len(texts) == 1:  # the common case, without a task group
            completions = [await self._parse_or_reask(call, messages, texts[0])]
        else:
            completions = await self._settle_all(call, messages, texts)
        prediction = Prediction.from_completions(completions)
        record(self, call.inputs, prediction)
        return prediction

    def _prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _PredictCall:
        """Check the inputs and resolve what this call uses (LM, adapter, signature, demos, parameters)."""
        if args:
            raise TypeError(
                f"{self!r} takes its inputs as keywords: {self._expected()}; got {len(args)} positional argument(s)"
            )
        inputs, control = self._split(kwargs)
        signature: Signature = Signature.ensure(control.get("signature", self.signature))
        settings = current_settings()
        lm = control.get("lm") or self.lm or settings.lm
        if lm is None:
            raise NoLMError(
                f"{self!r} has no LM: call asynclm.configure(lm=asynclm.LM('openai/gpt-4o-mini')), "
                "use `with asynclm.context(lm=...)`, or pass Predict(..., lm=...)"
            )
        adapter: Adapter = self.adapter or settings.adapter or _preferred_adapter(lm)
        demos = control.get("demos", self.demos)
        params = {**self.config, **(control.get("config") or {})}
        retries = self.max_parse_retries if self.max_parse_retries is not None else settings.max_parse_retries
        return _PredictCall(lm, adapter, signature, demos, inputs, params, retries)

    async def _settle_all(
        self, call: _PredictCall, messages: list[dict[str, Any]], texts: list[str]
    ) -> list[dict[str, Any]]:
        """Parse (or re-ask for) several candidates at once."""
        results: list[dict[str, Any] | None] = [None] * len(texts)

        async def settle(i: int, text: str) -> None:
            results[i] = await self._parse_or_reask(call, messages, text)

        async with anyio.create_task_group() as tg:
            for i, text in enumerate(texts):
                tg.start_soon(settle, i, text)
        return [r for r in results if r is not None]

    async def _ask(
        self, call: _PredictCall, adapter: Adapter, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[str]:
        request = dict(params)
        response_format = adapter.response_format(call.signature)
        if response_format is not None and "response_format" not in request:
            request["response_format"] = response_format
        lm = call.lm
        sink = _stream_state.current_sink()
        lm_inputs = {"messages": messages, **request} if handlers_for(lm) else _UNOBSERVED
        async with observe("lm", lm, lm_inputs) as out:
            if sink is not None and int(request.get("n") or 1) == 1:
                text = await sink.stream(self, lm, adapter, call.signature, messages, request)
                texts = [text]
            else:
                response = await lm(messages=messages, **request)
                texts = list(response.texts)
            out.value = texts
        return texts

    async def _ask_each(self, call: _PredictCall, messages: list[dict[str, Any]], count: int) -> list[str]:
        base = call.params.get("rollout_id")
        texts: list[list[str]] = [[] for _ in range(count)]

        async def one(i: int) -> None:
            single = {**call.params, "n": None, "rollout_id": f"{base}:{i + 1}" if base is not None else i + 1}
            texts[i] = (await self._ask(call, call.adapter, messages, single))[:1]

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        return [t for group in texts for t in group]

    async def _parse_or_reask(self, call: _PredictCall, messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
        adapter, signature = call.adapter, call.signature
        single = {k: v for k, v in call.params.items() if k != "n"}
        conversation = list(messages)
        attempt = 0
        while True:
            try:
                return await self._parse(adapter, signature, text)
            except ParseError as error:
                if attempt >= call.retries:
                    last_error = error
                    break
                attempt += 1
                conversation = [
                    *conversation,
                    {"role": "assistant", "content": text},
                    *adapter.format_feedback(signature, text, error),
                ]
                text = (await self._ask(call, adapter, conversation, single))[0]
        if isinstance(adapter, JSONAdapter):
            raise last_error
        # Last resort: the same question through the JSON adapter (structured output if supported).
        fallback = JSONAdapter()
        json_messages = fallback.format(signature, call.demos, call.inputs)
        text = (await self._ask(call, fallback, json_messages, single))[0]
        return await self._parse(fallback, signature, text)

    async def _parse(self, adapter: Adapter, signature: Signature, text: str) -> dict[str, Any]:
        parse_inputs = {"signature": signature, "completion": text} if handlers_for(adapter) else _UNOBSERVED
        async with observe("adapter_parse", adapter, parse_inputs) as out:
            values = adapter.parse(signature, text)
            out.value = values
        return values


class _PredictCall:
    """What one ``Predict`` call resolved (LM, adapter, signature, demos, inputs, parameters)."""

    __slots__ = ("adapter", "demos", "inputs", "lm", "params", "retries", "signature")

    def __init__(
        self,
        lm: Any,
        adapter: Adapter,
        signature: Signature,
        demos: list[Any],
        inputs: dict[str, Any],
        params: dict[str, Any],
        retries: int,
    ) -> None:
        self.lm = lm
        self.adapter = adapter
        self.signature = signature
        self.demos = demos
        self.inputs = inputs
        self.params = params
        self.retries = retries


_ADAPTERS_BY_NAME: dict[str, Adapter] = {}


def _preferred_adapter(lm: Any) -> Adapter:
    """The LM's ``preferred_adapter`` (an adapter, or the name ``"chat"``/``"json"``), else ChatAdapter.

    LMs name their preference instead of building an adapter so that the LM layer never imports
    the adapters layer.
    """
    preferred = getattr(lm, "preferred_adapter", None) or "chat"
    if isinstance(preferred, Adapter):
        return preferred
    adapter = _ADAPTERS_BY_NAME.get(preferred)
    if adapter is None:
        kinds = {"chat": ChatAdapter, "json": JSONAdapter}
        if preferred not in kinds:
            raise ValueError(f"{lm!r}.preferred_adapter is {preferred!r}; use 'chat', 'json' or an Adapter")
        adapter = _ADAPTERS_BY_NAME[preferred] = kinds[preferred]()
    return adapter


class ChainOfThought(Predict):
    """``Predict`` with a ``reasoning`` output asked for before the other outputs."""

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        rationale_field: Any = None,
        rationale_type: Any = str,
        **kwargs: Any,
    ) -> None:
        base = Signature.ensure(signature)
        field = rationale_field or OutputField(desc="Think step by step in order to produce the outputs.")
        super().__init__(base.prepend("reasoning", field, rationale_type), **kwargs)
