"""Anthropic's Messages API (``POST {base_url}/messages``), spoken natively.

Request (from asynclm's chat-completions shaped body):

* ``system`` (and ``developer``) messages, wherever they are, become the top-level ``system``
  (one string, or text blocks when a part is not plain text); the other messages keep their order;
  consecutive messages of one role are merged into one message of content blocks (the API wants
  user and assistant turns to alternate); ``tool`` messages become ``tool_result`` blocks of a user
  turn and an assistant's ``tool_calls`` become ``tool_use`` blocks; OpenAI content parts are
  mapped (``image_url`` to ``image``, a ``file`` with ``file_data`` to ``document``); parts
  already in Anthropic's format are sent as they are.
* ``max_tokens`` (or ``max_completion_tokens``) is required by the API: ``DEFAULT_MAX_TOKENS``
  when the call sets none. ``stop`` is sent as ``stop_sequences``; OpenAI-format ``tools`` and
  ``tool_choice`` are mapped; ``user`` becomes ``metadata.user_id``. ``n`` > 1 raises
  ``BadRequestError`` before anything is sent (the API returns one completion per request).
  ``response_format`` and ``stream_options`` are dropped; any other parameter is sent as is
  (``top_k``, ``thinking``, ``metadata``… and the API's own error for one it does not know).

Response: the text of the ``text`` content blocks, ``stop_reason`` as an OpenAI finish reason,
``usage`` (cache reads and writes counted in ``prompt_tokens``, as OpenAI counts cached tokens;
the split stays in ``raw["usage"]``). ``raw`` is Anthropic's JSON, ``tool_use`` blocks included;
``AnthropicResponse.tool_calls`` gives them in OpenAI's shape.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMError,
    RateLimitError,
    ServerError,
)
from .._models import LMResponse, StreamDelta, Usage
from .._retry import is_retryable_status
from ._base import StreamParser, WireFormat

__all__ = [
    "ANTHROPIC",
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicResponse",
    "AnthropicStreamParser",
    "AnthropicWire",
]

_loads = json.loads

#: the ``anthropic-version`` header sent with every request
ANTHROPIC_VERSION = "2023-06-01"

#: ``max_tokens`` when a call sets none: the largest output every Claude model since Claude 3
#: accepts (pydantic-ai's default too). Pass ``max_tokens=`` for longer answers.
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}

# Anthropic's error types and the HTTP status each comes with
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# chat-completions parameters with no Messages-API counterpart that asynclm's own modules send
_DROPPED = frozenset({"response_format", "stream_options"})
_HANDLED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "n", "user", "tools", "tool_choice"}
)


# -- the request -------------------------------------------------------------------------------------


def _data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:<type>;base64,<data>`` URL, else ``None``."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")], data


def _part(part: Any) -> dict[str, Any]:
    """One OpenAI content part as an Anthropic content block (Anthropic blocks pass unchanged)."""
    if not isinstance(part, dict):
        if isinstance(part, str):
            return {"type": "text", "text": part}
        raise TypeError(f"LM call: a message content part must be a dict, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise TypeError("LM call: an image_url part needs image_url={'url': ...}")
        inline = _data_url(url)
        if inline is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        inline = _data_url(data) if isinstance(data, str) else None
        if inline is not None:
            return {"type": "document", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
        if isinstance(file, dict) and isinstance(file.get("file_id"), str):
            return {"type": "document", "source": {"type": "file", "file_id": file["file_id"]}}
    return part


def _blocks(content: Any) -> str | list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(p) for p in content]
    raise TypeError(
        f"LM call: a message's content must be a string or a list of content parts, got {type(content).__name__}"
    )


def _as_list(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _tool_use(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise TypeError(f"LM call: tool_calls must be a list of dicts, got an item of type {type(call).__name__}")
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise TypeError(
                f"LM call: the arguments of tool call {call.get('id')!r} are not valid JSON: {arguments[:100]!r}"
            ) from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments or {}}


def convert_messages(messages: list[Any]) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """``(system, messages)`` for the Messages API from chat-completions messages."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(f"LM call: each message must be a dict with 'role' and 'content', got {message!r:.100}")
        role = message.get("role")
        content = message.get("content")
        if role == "system" or role == "developer":
            system.extend(_as_list(_blocks(content)))
            continue
        blocks: str | list[dict[str, Any]]
        if role == "tool":
            role = "user"
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            if content is not None:
                result["content"] = _blocks(content)
            blocks = [result]
        elif role == "user" or role == "assistant":
            blocks = _blocks(content)
            calls = message.get("tool_calls") if role == "assistant" else None
            if calls:
                blocks = [*_as_list(blocks), *(_tool_use(c) for c in calls)]
        else:
            raise TypeError(
                f"LM call: message role {role!r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'"
            )
        if out and out[-1]["role"] == role:  # the API wants turns to alternate: merge
            previous = out[-1]
            previous["content"] = [*_as_list(previous["content"]), *_as_list(blocks)]
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise TypeError("LM call: Anthropic's Messages API needs at least one user message besides the system prompt")
    if all(block.get("type") == "text" and set(block) <= {"type", "text"} for block in system):
        joined = "\n\n".join(str(block.get("text", "")) for block in system)
        return (joined or None), out
    return system, out


def _tool(tool: Any) -> Any:
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        function = tool["function"]
        mapped = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
        if function.get("description"):
            mapped["description"] = function["description"]
        return mapped
    return tool  # already in Anthropic's format (or one of its server tools)


def _tool_choice(choice: Any) -> Any:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return choice


def to_wire(body: dict[str, Any]) -> dict[str, Any]:
    """asynclm's request body as a Messages API request body."""
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequestError(
            f"n={n!r}: Anthropic's Messages API returns one completion per request. Call the LM once per "
            "sample (with distinct rollout_id= to bypass the cache); Predict does this by itself when an LM "
            "refuses n > 1.",
            model=str(body.get("model")),
        )
    system, messages = convert_messages(body["messages"])
    out: dict[str, Any] = {"model": body["model"]}
    if system:
        out["system"] = system
    out["messages"] = messages
    out["max_tokens"] = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    for key, value in body.items():
        if key not in _HANDLED and key not in _DROPPED:
            out[key] = value
    user = body.get("user")
    if user is not None:
        metadata = out.get("metadata")
        out["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), "user_id": user}
    return out


# -- the response ------------------------------------------------------------------------------------


def usage_from_json(data: Any) -> Usage:
    """``Usage`` from an Anthropic ``usage`` object: prompt tokens include cache reads and writes."""
    if not isinstance(data, dict):
        return Usage()
    prompt = 0
    for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        value = data.get(key)
        if isinstance(value, int):
            prompt += value
    output = data.get("output_tokens")
    cached = data.get("cache_read_input_tokens")
    return Usage(
        prompt, output if isinstance(output, int) else 0, None, cached if isinstance(cached, int) and cached > 0 else 0
    )


_ZERO = Usage(cost=0.0)  # a cache hit costs nothing (as on OpenAI's path): a known 0, not an unknown


class AnthropicResponse(LMResponse):
    """An ``LMResponse`` from Anthropic's Messages API: ``raw`` is Anthropic's JSON (content
    blocks, ``tool_use`` included); ``message`` and ``tool_calls`` are given in OpenAI's shape."""

    __slots__ = ()

    @classmethod
    def from_json(cls, raw: dict[str, Any], requested_model: str, cache_hit: bool) -> LMResponse:
        """Build from a decoded Messages API response. Raises ``ValueError`` if it is not one."""
        content = raw.get("content")
        if not isinstance(content, list):
            raise ValueError("the response has no 'content' list")
        text = "".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
        reason = raw.get("stop_reason")
        model = raw.get("model")
        return cls(
            [text],
            [FINISH_REASONS.get(reason, reason) if isinstance(reason, str) else None],
            _ZERO if cache_hit else usage_from_json(raw.get("usage")),
            cache_hit,
            model if isinstance(model, str) and model else requested_model,
            raw,
        )

    @property
    def message(self) -> dict[str, Any]:
        """The answer as an OpenAI-style assistant message (``content``, and ``tool_calls`` when any)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.texts[0] or None}
        calls = self.tool_calls
        if calls:
            message["tool_calls"] = calls
        return message

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The ``tool_use`` blocks in OpenAI's shape (``id``, ``function.name``, ``function.arguments``
        as a JSON string); ``[]`` when none."""
        return [
            {
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
            }
            for block in self.raw.get("content") or ()
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]


# -- errors ----------------------------------------------------------------------------------------------


def error_from_event(error: Any, *, url: str, model: str, secret: str | None = None) -> LMError:
    """The typed error of an ``error`` event in a stream (the HTTP status was 200 then)."""
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    text = f"the stream from {url} reported an error ({kind or 'unknown'}): {message}"
    if secret:
        text = text.replace(secret, "***")
    status = ERROR_STATUS.get(kind) if isinstance(kind, str) else None
    lowered = str(message).lower()
    if status == 429:
        return RateLimitError(text, model=model)
    if status in (401, 403):
        return AuthenticationError(text, model=model)
    if status is not None and 400 <= status < 500:
        if "prompt is too long" in lowered or "context limit" in lowered:
            return ContextWindowExceededError(text, model=model)
        return BadRequestError(text, model=model)
    return ServerError(text, model=model)  # overloaded_error, api_error, timeout_error, unknown


# -- the stream ------------------------------------------------------------------------------------------


class AnthropicStreamParser(StreamParser):
    """Messages API stream events: ``message_start`` (input usage), ``content_block_start`` /
    ``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``…) /
    ``content_block_stop``, ``message_delta`` (stop reason, output usage), ``message_stop`` (the
    end), ``ping``, ``error``. A text delta becomes a ``StreamDelta`` with that text; other content
    events become deltas with ``text=""`` and the event in ``raw`` (tool use is not lost);
    ``message_delta`` gives the delta with ``finish_reason`` and ``usage``."""

    __slots__ = ("_usage",)

    final_event = "message_stop"

    def __init__(self, url: str, model: str, secret: str | None = None) -> None:
        super().__init__(url, model, secret)
        self._usage: dict[str, Any] = {}

    def feed(self, event: str) -> list[StreamDelta]:
        try:
            data = _loads(event)
        except ValueError:
            raise ServerError(self.scrub(f"the stream from {self.url} sent invalid JSON: {event[:200]!r}")) from None
        if not isinstance(data, dict):
            raise ServerError(self.scrub(f"the stream from {self.url} sent a non-object event: {event[:200]!r}"))
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                return [StreamDelta(text if isinstance(text, str) else "", 0, None, None, data)]
            return [StreamDelta("", 0, None, None, data)]
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._usage.update(usage)
            return []
        if kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                return [StreamDelta(text, 0, None, None, data)] if isinstance(text, str) and text else []
            return [StreamDelta("", 0, None, None, data)]
        if kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):  # cumulative counts: the latest wins
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            finish = FINISH_REASONS.get(reason, reason) if isinstance(reason, str) else None
            return [StreamDelta("", 0, finish, usage_from_json(self._usage), data)]
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            raise error_from_event(data.get("error"), url=self.url, model=self.model, secret=self.secret)
        return []  # ping, content_block_stop, and event types added later


# -- the format ------------------------------------------------------------------------------------------


class AnthropicWire(WireFormat):
    """Anthropic's Messages API."""

    name = "anthropic"
    path = "/messages"
    default_base_url = "https://api.anthropic.com/v1"
    key_env = "ANTHROPIC_API_KEY"
    request_id_header = "request-id"
    default_max_tokens = DEFAULT_MAX_TOKENS

    def __init__(self) -> None:
        self.to_wire = to_wire
        self.response = AnthropicResponse.from_json

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def usage(self, raw: dict[str, Any]) -> Usage:
        return usage_from_json(raw.get("usage"))

    def check(self, payload: bytes) -> tuple[dict[str, Any], int]:
        raw = _loads(payload)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("type") == "error" or "error" in raw:
            raise ValueError(f"error object: {raw.get('error')!r}"[:300])
        if not isinstance(raw.get("content"), list):
            raise ValueError("no 'content' list")
        return raw, usage_from_json(raw.get("usage")).total_tokens

    def retryable(self, status: int, payload: bytes) -> bool:
        return is_retryable_status(status)  # 408, 409, 429, 5xx including 529 overloaded

    def stream_request(self, body: dict[str, Any]) -> bool:
        body["stream"] = True
        return False  # usage always comes in message_start and message_delta

    def stream_parser(self, url: str, model: str, secret: str | None) -> StreamParser:
        return AnthropicStreamParser(url, model, secret)


ANTHROPIC = AnthropicWire()
