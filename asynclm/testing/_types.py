"""The data types of the fake server's scripts: requests, replies, faults."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union


def _text_messages(messages: list[Any]) -> list[Any]:
    """``messages`` with multi-part contents (text and media parts) reduced to their text."""
    if not any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages):
        return messages
    out = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            m = {**m, "content": content_text(m["content"])}
        out.append(m)
    return out


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


FaultKind = Literal["status", "reset", "hang", "malformed_json", "truncated", "stream_error"]


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Request headers: a case-insensitive read-only mapping that keeps the raw header list.

    ``headers["authorization"]`` and ``headers["Authorization"]`` are the same; a repeated header
    maps to its values joined by ``", "``. ``raw`` is the list of ``(name, value)`` pairs as
    received, in order, with their original spelling.
    """

    __slots__ = ("_map", "raw")

    def __init__(self, raw: Iterable[tuple[str, str]] = ()) -> None:
        self.raw: list[tuple[str, str]] = list(raw)
        self._map: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    @classmethod
    def _build(cls, raw: list[tuple[str, str]], mapping: dict[str, str]) -> Headers:
        headers = cls.__new__(cls)
        headers.raw = raw
        headers._map = mapping
        return headers

    def get(self, name: str, default: Any = None) -> Any:  # faster than Mapping.get's try/except
        return self._map.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def get_all(self, name: str) -> list[str]:
        """Every value received for ``name`` (case-insensitive), in order."""
        key = name.lower()
        return [value for n, value in self.raw if n.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class FakeRequest:
    """One request received by ``FakeOpenAIServer`` (what response functions get and what
    ``FakeOpenAIServer.request_log`` keeps). Read-only by convention.

    Attributes:
        index: 1-based number of this chat-completion request since the server started (or since
            ``FakeOpenAIServer.reset_counters``); Anthropic ``/messages`` requests count too.
        api: ``"openai"`` (``POST .../chat/completions``) or ``"anthropic"`` (``POST .../messages``).
        method, path: from the request line (``path`` includes any query string).
        headers: every header as received, including ``Authorization`` (tests assert it was sent).
        body: the raw request body.
        json: the parsed JSON body (``None`` when the body was not valid JSON).
        messages: the ``messages`` list (``[]`` when absent or not a list); for Anthropic
            requests the system prompt is not in it but in ``system``.
        system: an Anthropic request's top-level ``system`` (a string or text blocks), else ``None``.
        model: the ``model`` asked for (``None`` when absent).
        stream: whether ``"stream": true`` was asked for.
        n: the number of choices asked for (``1`` when absent or invalid).
    """

    __slots__ = (
        "api", "body", "headers", "index", "json", "messages", "method", "model", "n", "path", "stream", "system"
    )

    def __init__(
        self, index: int, method: str, path: str, headers: Headers, body: bytes, json: Any, api: str = "openai"
    ) -> None:
        self.index = index
        self.api = api
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.json = json
        obj: dict[str, Any] = json if isinstance(json, dict) else {}
        messages = obj.get("messages")
        self.messages: list[Any] = messages if isinstance(messages, list) else []
        model = obj.get("model")
        self.model: str | None = model if isinstance(model, str) else None
        self.stream: bool = obj.get("stream") is True
        n = obj.get("n")
        self.n: int = n if type(n) is int and n >= 1 else 1
        self.system: Any = obj.get("system") if api == "anthropic" else None

    def __repr__(self) -> str:
        return (
            f"<FakeRequest #{self.index} {self.api} {self.method} {self.path} model={self.model!r} "
            f"messages={len(self.messages)} stream={self.stream} n={self.n}>"
        )

    @property
    def last_user_message(self) -> str:
        """The text of the last ``user`` message (text parts joined), or ``""``."""
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
        return ""

    @property
    def last_user_media(self) -> list[dict[str, Any]]:
        """The non-text content parts (``image_url``, ``input_audio``, ``file``) of the last
        ``user`` message, in order; ``[]`` when it is plain text."""
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if not isinstance(content, list):
                    return []
                return [p for p in content if isinstance(p, dict) and p.get("type") != "text"]
        return []

    @property
    def inputs(self) -> dict[str, str]:
        """The input fields as the adapter rendered them in the last user message (texts): what a
        program asked, e.g. ``request.inputs["question"]``."""
        from ._render import input_fields

        return input_fields(_text_messages(self.messages))


@dataclass(frozen=True)
class Reply:
    """A scripted successful completion.

    Args:
        text: the assistant text of every choice (when ``texts`` is not given); default ``"ok"``,
            or no text with ``tool_calls``.
        texts: one text per choice; the client's ``n`` must then be at most ``len(texts)`` (the
            first ``n`` are used).
        prompt_tokens, completion_tokens: the usage to report; ``None`` means a cheap estimate
            (about one token per 4 characters, at least 1 for non-empty text).
        finish_reason: reported on every choice (``"stop"``, ``"length"``, ...); default
            ``"stop"``, or ``"tool_calls"`` with ``tool_calls``.
        latency: seconds before the response (and between stream chunks); ``None`` means the
            server's ``latency`` / ``chunk_delay``.
        tool_calls: tool calls the "model" makes, each ``{"name": ..., "args": {...}}`` (an
            ``"id"`` is made up when absent: ``call_<request>_<i>``) or already in OpenAI's
            ``{"id", "type": "function", "function": {"name", "arguments"}}`` shape. Sent as the
            message's ``tool_calls`` on ``/chat/completions`` (in one chunk when streaming) and as
            ``tool_use`` content blocks on Anthropic's ``/messages`` (not streamed there).
    """

    text: str | None = None
    texts: Sequence[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency: float | None = None
    tool_calls: Sequence[Mapping[str, Any]] | None = None

    @property
    def finish(self) -> str:
        """The finish reason reported."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def openai_tool_calls(self, request_index: int) -> list[dict[str, Any]]:
        """``tool_calls`` in OpenAI's shape (``arguments`` as a JSON string)."""
        import json

        calls = []
        for i, call in enumerate(self.tool_calls or ()):
            if not isinstance(call, Mapping):
                raise TypeError(f"Reply.tool_calls: each call must be a dict, got {type(call).__name__}")
            if "function" in call:
                function = dict(call["function"])
                if not isinstance(function.get("arguments"), str):
                    function["arguments"] = json.dumps(function.get("arguments") or {})
                calls.append({"id": call.get("id") or f"call_{request_index}_{i}", "type": "function",
                              "function": function})  # fmt: skip
                continue
            if not isinstance(call.get("name"), str):
                raise TypeError(f"Reply.tool_calls: a call needs a 'name' (and 'args'), got {dict(call)!r}")
            args = call.get("args", call.get("arguments", {}))
            calls.append({
                "id": call.get("id") or f"call_{request_index}_{i}",
                "type": "function",
                "function": {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
            })
        return calls


class Fields:
    """A successful completion in the format of the adapter that made the request: the given
    output-field values as a JSON object when the request carries ``response_format``
    (``JSONAdapter``), otherwise as the ``ChatAdapter``'s ``[[ ## name ## ]]`` sections.

    ``Fields(answer="Paris")``, ``Fields({"answer": "Paris"})``, or a function of the request's
    input fields — a dict of the texts its last user message gives them, e.g.
    ``Fields(lambda inputs: {"answer": inputs["question"].upper()})``. (A plain dict given to
    ``FakeOpenAIServer`` is a whole raw response body instead; a dict given to ``ScriptedLM`` is
    field values, like ``Fields``.)
    """

    __slots__ = ("_values",)

    def __init__(
        self,
        values: Mapping[str, Any] | Callable[[dict[str, str]], Mapping[str, Any]] | None = None,
        /,
        **fields: Any,
    ) -> None:
        if values is not None and fields:
            raise TypeError("Fields: give a dict or a function, or keyword values, not both")
        if values is None:
            values = fields
        if not (isinstance(values, Mapping) or callable(values)):
            raise TypeError(f"Fields: expected a dict of field values or a function, got {type(values).__name__}")
        self._values = values

    def render(self, request: FakeRequest) -> str:
        """The assistant text for ``request``."""
        from ._render import input_fields, render_chat, render_json

        values = self._values
        if not isinstance(values, Mapping):
            values = values(input_fields(_text_messages(request.messages)))
            if not isinstance(values, Mapping):
                raise TypeError(f"a Fields function must return a dict of field values, got {type(values).__name__}")
        wants_json = isinstance(request.json, Mapping) and "response_format" in request.json
        return render_json(values) if wants_json else render_chat(values)

    def __repr__(self) -> str:
        return f"Fields({self._values!r})"


DEFAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message) modelled on OpenAI's error bodies
    400: ("invalid_request_error", None, "Bad request (injected by FakeOpenAIServer)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key (injected by FakeOpenAIServer)."),
    403: ("permission_error", None, "You are not allowed to do this (injected by FakeOpenAIServer)."),
    404: ("invalid_request_error", "model_not_found", "No such model (injected by FakeOpenAIServer)."),
    408: ("timeout", None, "Request timed out (injected by FakeOpenAIServer)."),
    409: ("conflict", None, "Conflict (injected by FakeOpenAIServer)."),
    422: ("invalid_request_error", None, "Unprocessable request (injected by FakeOpenAIServer)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by FakeOpenAIServer)."),
}


@dataclass(frozen=True)
class Fault:
    """A fault to inject instead of a normal response. Build one with the class methods.

    - ``error`` / ``rate_limit`` / ``server_error`` / ``context_window_exceeded``:
      an HTTP error status with an OpenAI-style body ``{"error": {"message", "type", "param",
      "code"}}`` and optional ``Retry-After`` / ``retry-after-ms`` headers.
    - ``connection_reset``: the connection is reset (TCP RST) without any response.
    - ``hang``: no (further) response at all, until the client disconnects or the server stops.
    - ``malformed_json``: status 200 with a body (or, when streaming, a first event) that is
      not valid JSON.
    - ``overloaded``: Anthropic's 529 ``overloaded_error``.
    - ``stream_error``: a stream sends ``after_chunks`` events, then an error event (Anthropic's
      ``event: error`` with ``error_type``; an OpenAI-style ``{"error": ...}`` chunk on
      ``/chat/completions``) and ends; a request that does not stream gets the error type's
      HTTP status instead.
    - ``truncated``: the body is cut mid-way: a stream stops after ``after_chunks`` events
      without ``data: [DONE]``; a JSON body stops half-way through its declared length. The
      connection is then closed (``clean=True`` instead ends a stream's HTTP body properly, just
      without the final events and ``[DONE]``).

    Timing: an error status, a reset and a malformed JSON body act after ``delay`` seconds (default 0:
    at once, as a rate limiter or a crashed upstream would). A truncated body and the stream faults
    follow the server's ``latency`` and ``chunk_delay`` like a normal response, then break.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | str | None = None
    retry_after_ms: int | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    after_chunks: int = 0
    clean: bool = False
    delay: float = 0.0

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """An HTTP error response with ``status``.

        ``retry_after`` (seconds, or an HTTP date string) is sent as ``Retry-After``;
        ``retry_after_ms`` as ``retry-after-ms``. ``body`` (a dict, str or bytes) replaces the
        OpenAI-style error JSON entirely; otherwise ``message``/``error_type``/``code``/``param``
        fill it, with defaults that match OpenAI's for the status.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"Fault.error() needs an HTTP error status (400-599), got {status}")
        return cls(
            "status",
            status=status,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            message=message,
            error_type=error_type,
            code=code,
            param=param,
            body=body,
            headers=tuple((headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def rate_limit(
        cls,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
        message: str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """A 429 with OpenAI's ``rate_limit_exceeded`` body and optional retry-after headers."""
        return cls.error(429, retry_after=retry_after, retry_after_ms=retry_after_ms, message=message, delay=delay)

    @classmethod
    def server_error(
        cls, status: int = 500, *, retry_after: float | str | None = None, message: str | None = None
    ) -> Fault:
        """A 5xx (default 500) with a ``server_error`` body."""
        if not 500 <= status <= 599:
            raise ValueError(f"Fault.server_error() needs a 5xx status, got {status}")
        return cls.error(status, retry_after=retry_after, message=message)

    @classmethod
    def context_window_exceeded(cls, max_tokens: int = 8192, requested: int | None = None) -> Fault:
        """A 400 with OpenAI's ``context_length_exceeded`` body."""
        requested = requested if requested is not None else max_tokens + 1000
        return cls.error(
            400,
            message=(
                f"This model's maximum context length is {max_tokens} tokens. However, your messages "
                f"resulted in {requested} tokens. Please reduce the length of the messages."
            ),
            error_type="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )

    @classmethod
    def overloaded(cls, *, retry_after: float | str | None = None, message: str = "Overloaded") -> Fault:
        """Anthropic's 529 with an ``overloaded_error`` body (``{"type": "error", "error": ...}`` on
        ``/messages``)."""
        return cls.error(529, retry_after=retry_after, message=message, error_type="overloaded_error")

    @classmethod
    def stream_error(
        cls, *, after_chunks: int = 1, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> Fault:
        """A stream that sends ``after_chunks`` events, then an error event, then ends."""
        return cls("stream_error", after_chunks=after_chunks, error_type=error_type, message=message)

    @classmethod
    def connection_reset(cls, *, delay: float = 0.0) -> Fault:
        """Reset the connection (TCP RST) without sending any response."""
        return cls("reset", delay=delay)

    @classmethod
    def hang(cls, *, after_chunks: int = 0) -> Fault:
        """Never respond (a stream: stall after ``after_chunks`` events), until the client
        disconnects (counted in ``FakeOpenAIServer.client_disconnects``) or the server stops."""
        return cls("hang", after_chunks=after_chunks)

    @classmethod
    def malformed_json(cls, *, delay: float = 0.0) -> Fault:
        """Status 200 whose JSON body (or first stream event) is not valid JSON."""
        return cls("malformed_json", delay=delay)

    @classmethod
    def truncated(cls, *, after_chunks: int = 1, clean: bool = False) -> Fault:
        """Cut the response mid-way: see the class docstring."""
        return cls("truncated", after_chunks=after_chunks, clean=clean)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Build a fault from a short text spec (used by the command line).

        ``"429"`` or ``"429:0.5"`` (status, optional Retry-After seconds), ``"500"``,
        ``"context"`` (context window exceeded), ``"reset"``, ``"hang"``, ``"malformed"``,
        ``"truncate"`` or ``"truncate:3"`` (stream events before the cut).
        """
        name, _, arg = spec.strip().partition(":")
        try:
            if name.isdigit():
                status = int(name)
                if status == 429 and arg:
                    seconds = float(arg)
                    return cls.rate_limit(retry_after=arg, retry_after_ms=round(seconds * 1000))
                return cls.error(status, retry_after=arg or None)
            if name == "context":
                return cls.context_window_exceeded()
            if name == "reset":
                return cls.connection_reset()
            if name == "hang":
                return cls.hang(after_chunks=int(arg or 0))
            if name == "malformed":
                return cls.malformed_json()
            if name == "truncate":
                return cls.truncated(after_chunks=int(arg or 1))
        except ValueError as exc:
            raise ValueError(f"invalid fault spec {spec!r}: {exc}") from None
        raise ValueError(
            f"invalid fault spec {spec!r}: expected a status such as '429' or '429:0.5' (Retry-After "
            "seconds), or one of 'context', 'reset', 'hang', 'malformed', 'truncate', 'truncate:N'"
        )


#: The fault mix used when ``fault_rate`` is set without ``faults``: 429 (retry after 50 ms),
#: 500, 503, connection reset, malformed JSON, truncated body/stream. Hangs are not included
#: (a hang only ends when the client gives up): add ``Fault.hang()`` explicitly.
DEFAULT_FAULTS: tuple[Fault, ...] = (
    Fault.rate_limit(retry_after_ms=50),
    Fault.server_error(500),
    Fault.server_error(503),
    Fault.connection_reset(),
    Fault.malformed_json(),
    Fault.truncated(),
)

# What a faulty stream or body carries before it breaks: several words, so several stream events.
FAULT_REPLY = Reply("this response is broken on purpose by FakeOpenAIServer")

ResponseItem = Union[str, Reply, Fault, Fields, dict[str, Any]]
ResponseFunction = Callable[[FakeRequest], Union[ResponseItem, Awaitable[ResponseItem]]]
Responses = Union[ResponseItem, Sequence[ResponseItem], Iterator[ResponseItem], ResponseFunction]
