"""The fake server's Anthropic Messages API (``POST .../messages``): request checks, response
bodies, stream events and error bodies in Anthropic's format. Pure functions of the request."""

from __future__ import annotations

import json
import re
from typing import Any

from ._http import dumps
from ._types import FakeRequest, Fault, content_text

# top-level request fields the Messages API accepts (others get its "Extra inputs are not
# permitted" 400, so a test sees an OpenAI-only parameter leaking through)
ALLOWED = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
    "context_management",
})

# status -> (error type, message) modelled on Anthropic's error bodies
ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Bad request (injected by FakeOpenAIServer)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low (injected by FakeOpenAIServer)."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found (injected by FakeOpenAIServer)."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error (injected by FakeOpenAIServer)."),
    504: ("timeout_error", "Request timed out (injected by FakeOpenAIServer)."),
    529: ("overloaded_error", "Overloaded"),
}

# Anthropic error type -> the HTTP status it comes with
STATUS_OF = {kind: status for status, (kind, _) in ERRORS.items()}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

_NUMBERS = re.compile(r"\d+")


def error_body(message: str, error_type: str, request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return dumps(body)


def fault_body(fault: Fault, request_id: str) -> bytes:
    """The Anthropic error body of a status fault."""
    status = fault.status
    default_type, default_message = ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", "Error (injected by FakeOpenAIServer).")
    )
    message = fault.message or default_message
    if fault.code == "context_length_exceeded":  # Fault.context_window_exceeded(): Anthropic's wording
        numbers = _NUMBERS.findall(message)
        limit, requested = (numbers[0], numbers[1]) if len(numbers) >= 2 else ("200000", "201000")
        message = f"prompt is too long: {requested} tokens > {limit} maximum"
    error_type = fault.error_type if fault.error_type in STATUS_OF else default_type
    return error_body(message, error_type, request_id)


def validate(body: Any, headers: Any) -> str | None:
    """The 400 message the Messages API would give this request, or ``None``."""
    if not isinstance(body, dict):
        return f"the request body must be a JSON object, got {type(body).__name__}"
    if not headers.get("anthropic-version"):
        return "anthropic-version: header is required"
    extra = sorted(set(body) - ALLOWED)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous:  # the real API merges these; the fake checks clients alternate
            return f"messages.{i}: roles must alternate between 'user' and 'assistant' (FakeOpenAIServer is strict)"
        content = message.get("content")
        if not isinstance(content, (str, list)) or (isinstance(content, list) and not content):
            return f"messages.{i}.content: a string or a non-empty list of content blocks is required"
        previous = role
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _prompt_tokens(request: FakeRequest) -> int:
    system = request.system
    texts = [system if isinstance(system, str) else content_text(system)]
    texts += [content_text(m.get("content")) for m in request.messages if isinstance(m, dict)]
    return max(1, sum((len(t) + 3) // 4 for t in texts))


def usage(request: FakeRequest, prompt: int | None, completion: int | None, text: str) -> dict[str, int]:
    return {
        "input_tokens": _prompt_tokens(request) if prompt is None else prompt,
        "output_tokens": (len(text) + 3) // 4 if completion is None else completion,
    }


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments = function.get("arguments")
    return {
        "type": "tool_use",
        "id": str(call["id"]).replace("call_", "toolu_", 1),
        "name": function.get("name"),
        "input": json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {},
    }


def message(
    request: FakeRequest,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
) -> bytes:
    """A Messages API response; ``tool_calls`` (OpenAI-shaped) become ``tool_use`` blocks."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not tool_calls else []
    content.extend(_tool_use(call) for call in tool_calls or ())
    return dumps({
        "id": f"msg_fake_{request.index}",
        "type": "message",
        "role": "assistant",
        "model": request.model or model,
        "content": content,
        "stop_reason": STOP_REASONS.get(finish_reason, finish_reason),
        "stop_sequence": None,
        "usage": usage,
    })


def stream_events(
    request: FakeRequest, model: str, pieces: list[str], finish_reason: str, usage: dict[str, int]
) -> list[tuple[bytes | None, bytes]]:
    """``(event name, data)`` of each event of a streamed message, as the API sends them."""

    def event(data: dict[str, Any]) -> tuple[bytes | None, bytes]:
        return str(data["type"]).encode(), dumps(data)

    events = [
        event({
            "type": "message_start",
            "message": {
                "id": f"msg_fake_{request.index}",
                "type": "message",
                "role": "assistant",
                "model": request.model or model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
            },
        }),
        event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        event({"type": "ping"}),
    ]
    for piece in pieces:
        if piece:
            events.append(
                event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            )
    events.append(event({"type": "content_block_stop", "index": 0}))
    events.append(
        event({
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS.get(finish_reason, finish_reason), "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        })
    )
    events.append(event({"type": "message_stop"}))
    return events


def error_event(error_type: str, message: str) -> tuple[bytes | None, bytes]:
    return b"error", dumps({"type": "error", "error": {"type": error_type, "message": message}})


def raw_events(chunk: dict[str, Any]) -> list[tuple[bytes | None, bytes]]:
    """A scripted dict answering a stream: sent as one event (named by its ``type``), then
    ``message_stop`` unless the dict is one or an error."""
    kind = chunk.get("type")
    events: list[tuple[bytes | None, bytes]] = [(str(kind).encode() if kind else None, dumps(chunk))]
    if kind not in ("message_stop", "error"):
        events.append((b"message_stop", dumps({"type": "message_stop"})))
    return events
