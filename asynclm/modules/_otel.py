"""OpenTelemetry spans for modules, LM calls and tools (extra ``asynclm[otel]``).

Spans follow the GenAI semantic conventions where they apply (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``…). Each span is made current in the
calling task's context, so spans started in child tasks, ``Parallel`` items, ``asyncify`` threads
and ``.sync()`` portal calls nest under it: the context travels with the context variables.
"""

from __future__ import annotations

import threading
from typing import Any

from ._callbacks import Callback

__all__ = ["OpenTelemetryCallback"]

_OPERATION = {"module": "invoke_agent", "lm": "chat", "tool": "execute_tool"}


class OpenTelemetryCallback(Callback):
    """A callback that records an OpenTelemetry span per module, LM and tool call.

    ``asynclm.configure(callbacks=[OpenTelemetryCallback()])``. Uses the global tracer provider
    unless ``tracer_provider`` is given. Prompts and completions are recorded only with
    ``capture_content=True`` (they may hold personal data); API keys never are.
    """

    def __init__(self, tracer_provider: Any = None, *, capture_content: bool = False) -> None:
        try:
            from opentelemetry import context as otel_context, trace
        except ImportError as exc:
            raise ImportError(
                "OpenTelemetryCallback needs the OpenTelemetry API: pip install 'asynclm[otel]'"
            ) from exc
        self._context = otel_context
        self._trace = trace
        self._tracer = trace.get_tracer("asynclm", tracer_provider=tracer_provider)
        self.capture_content = capture_content
        self._open: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # -- shared ---------------------------------------------------------------------------------

    def _start(self, kind: str, call_id: str, name: str, attributes: dict[str, Any]) -> None:
        attributes = {k: v for k, v in attributes.items() if v is not None}
        attributes["gen_ai.operation.name"] = _OPERATION[kind]
        span = self._tracer.start_span(name, attributes=attributes)
        token = self._context.attach(self._trace.set_span_in_context(span))
        with self._lock:
            self._open[call_id] = (span, token)

    def _end(self, call_id: str, exception: BaseException | None, attributes: dict[str, Any] | None = None) -> None:
        with self._lock:
            entry = self._open.pop(call_id, None)
        if entry is None:
            return
        span, token = entry
        for key, value in (attributes or {}).items():
            if value is not None:
                span.set_attribute(key, value)
        if exception is not None:
            span.record_exception(exception)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exception)))
            span.set_attribute("error.type", type(exception).__qualname__)
        span.end()
        try:
            self._context.detach(token)
        except Exception:  # ended in another context than it started (never by asynclm itself)
            pass

    # -- events ---------------------------------------------------------------------------------

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        name = type(instance).__name__
        signature = getattr(instance, "signature", None)
        self._start(
            "module",
            call_id,
            f"invoke_agent {name}",
            {"gen_ai.agent.name": name, "asynclm.signature": getattr(signature, "signature", None)},
        )

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        usage = getattr(outputs, "usage", None)
        self._end(
            call_id,
            exception,
            {
                "gen_ai.usage.input_tokens": getattr(usage, "prompt_tokens", None),
                "gen_ai.usage.output_tokens": getattr(usage, "completion_tokens", None),
            },
        )

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        model = getattr(instance, "model_name", None) or getattr(instance, "model", None)
        attributes: dict[str, Any] = {
            "gen_ai.system": getattr(instance, "provider", None) or "openai",
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": inputs.get("temperature"),
            "gen_ai.request.max_tokens": inputs.get("max_tokens"),
            "server.address": _host(getattr(instance, "base_url", None)),
        }
        if self.capture_content:
            import json

            attributes["gen_ai.input.messages"] = json.dumps(inputs.get("messages"), default=str)
        self._start("lm", call_id, f"chat {model}", attributes)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        attributes: dict[str, Any] = {}
        if self.capture_content and outputs is not None:
            import json

            attributes["gen_ai.output.messages"] = json.dumps(outputs, default=str)
        self._end(call_id, exception, attributes)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        name = getattr(instance, "name", None) or type(instance).__name__
        self._start("tool", call_id, f"execute_tool {name}", {"gen_ai.tool.name": name})

    def on_tool_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._end(call_id, exception)


def _host(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    from urllib.parse import urlsplit

    return urlsplit(url).hostname  # never the userinfo part of a URL
