"""The provider wire formats, sans-I/O: request bodies, headers, responses, errors and stream
events mapped by ``asynclm.lm._wire`` without any socket."""

from __future__ import annotations

import json

import pytest

from asynclm.lm import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMError,
    RateLimitError,
    ServerError,
    Usage,
)
from asynclm.lm._stream import SSEDecoder
from asynclm.lm._wire import ANTHROPIC, OPENAI, AnthropicResponse, wire_format
from asynclm.lm._wire._anthropic import DEFAULT_MAX_TOKENS, convert_messages, to_wire

URL = "https://api.example.test/v1/messages"


def ant_body(**kw: object) -> dict[str, object]:
    return {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], **kw}


# -- choosing a format -----------------------------------------------------------------------------


def test_formats_by_prefix() -> None:
    assert wire_format("openai") is OPENAI and wire_format("anthropic") is ANTHROPIC
    assert wire_format("mistral") is None
    assert (OPENAI.path, OPENAI.default_base_url, OPENAI.key_env) == (
        "/chat/completions",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    assert (ANTHROPIC.path, ANTHROPIC.default_base_url, ANTHROPIC.key_env) == (
        "/messages",
        "https://api.anthropic.com/v1",
        "ANTHROPIC_API_KEY",
    )


# -- OpenAI ------------------------------------------------------------------------------------------


def test_openai_request_is_sent_as_built() -> None:
    assert OPENAI.to_wire is None
    assert OPENAI.headers("sk-1") == {
        "content-type": "application/json",
        "accept": "application/json",
        "authorization": "Bearer sk-1",
    }
    assert "authorization" not in OPENAI.headers(None)
    body: dict[str, object] = {"model": "m", "messages": []}
    assert OPENAI.stream_request(body) is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    body = {"model": "m", "messages": [], "stream_options": {"include_usage": False}}
    assert OPENAI.stream_request(body) is False and body["stream_options"] == {"include_usage": False}


def test_openai_response_check_and_errors() -> None:
    payload = json.dumps(
        {
            "model": "m-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    ).encode()
    raw, total = OPENAI.check(payload)
    assert total == 4
    resp = OPENAI.response(raw, "m", False)
    assert (resp.text, resp.finish_reason, resp.model, resp.usage.total_tokens) == ("hi", "stop", "m-2024", 4)
    for bad in (b"[]", b'{"choices": []}', b'{"error": {"message": "x"}}', b"{not json"):
        with pytest.raises(ValueError):
            OPENAI.check(bad)
    kw = {"url": "u", "model": "m", "request_id": None, "retry_after": None, "secret": "sk-secret"}
    err = OPENAI.error(401, b'{"error": {"message": "bad key sk-secret"}}', **kw)  # type: ignore[arg-type]
    assert isinstance(err, AuthenticationError) and "sk-secret" not in str(err) and "OPENAI_API_KEY" in str(err)
    assert OPENAI.retryable(429, b"{}") and not OPENAI.retryable(429, b'{"error": {"code": "insufficient_quota"}}')
    assert OPENAI.retryable(503, b"") and not OPENAI.retryable(400, b"")


def test_openai_stream_parser() -> None:
    parser = OPENAI.stream_parser(URL, "m", None)
    (delta,) = parser.feed('{"choices": [{"index": 0, "delta": {"content": "he"}}]}')
    assert delta.text == "he" and not parser.done
    (last,) = parser.feed('{"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}')
    assert last.usage == Usage(2, 3)
    assert parser.feed("[DONE]") == [] and parser.done
    with pytest.raises(ServerError, match="invalid JSON"):
        OPENAI.stream_parser(URL, "m", None).feed("{oops")
    with pytest.raises(ServerError, match="reported an error: boom"):
        OPENAI.stream_parser(URL, "m", None).feed('{"error": {"message": "boom"}}')


# -- Anthropic: the request ------------------------------------------------------------------------------


def test_anthropic_headers() -> None:
    assert ANTHROPIC.headers("sk-ant") == {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant",
    }
    assert "x-api-key" not in ANTHROPIC.headers(None)


def test_anthropic_system_messages_and_parameters() -> None:
    body = ant_body(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Q2"},
        ],
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        stop="END",
        max_tokens=100,
        n=1,
        response_format={"type": "json_object"},
        stream_options={"include_usage": True},
        user="u-1",
    )
    assert to_wire(body) == {
        "model": "claude-x",
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        "max_tokens": 100,
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
    }
    assert body["messages"][0]["role"] == "system"  # the caller's body is left alone


def test_anthropic_max_tokens_default_and_stop_list() -> None:
    assert to_wire(ant_body())["max_tokens"] == DEFAULT_MAX_TOKENS == 4096
    assert "system" not in to_wire(ant_body())
    assert to_wire(ant_body(max_completion_tokens=7))["max_tokens"] == 7
    assert to_wire(ant_body(stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert to_wire(ant_body(stream=True))["stream"] is True


def test_anthropic_n_above_one_is_refused_before_sending() -> None:
    with pytest.raises(BadRequestError, match=r"n=3: Anthropic's Messages API returns one completion"):
        to_wire(ant_body(n=3))


def test_anthropic_consecutive_roles_are_merged() -> None:
    _, messages = convert_messages(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    )
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
    ]


def test_anthropic_tool_calls_results_and_tools() -> None:
    body = ant_body(
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
        tools=[
            {"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}}}
        ],
        tool_choice="required",
    )
    wire = to_wire(body)
    assert wire["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert wire["tools"] == [{"name": "weather", "input_schema": {"type": "object"}, "description": "d"}]
    assert wire["tool_choice"] == {"type": "any"}


def test_anthropic_content_parts() -> None:
    _, messages = convert_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,BBBB"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "CC"}},
                ],
            }
        ]
    )
    assert messages[0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "BBBB"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "CC"}},
    ]


def test_anthropic_system_with_blocks_keeps_them() -> None:
    block = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    system, _ = convert_messages([{"role": "system", "content": [block]}, {"role": "user", "content": "q"}])
    assert system == [block]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "system", "content": "only a system prompt"}], "at least one user message"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        (["not a dict"], "must be a dict"),
        ([{"role": "user", "content": 3}], "content must be a string or a list"),
    ],
)
def test_anthropic_bad_messages_say_what_is_wrong(messages: list[object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        convert_messages(messages)


# -- Anthropic: the response -------------------------------------------------------------------------------


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x-2025",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me check. "},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "text", "text": "Done."},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 20,
    },
}


def test_anthropic_response_texts_usage_finish_and_tool_use() -> None:
    raw, total = ANTHROPIC.check(json.dumps(MESSAGE).encode())
    assert total == 1130
    resp = ANTHROPIC.response(raw, "claude-x", False)
    assert isinstance(resp, AnthropicResponse)
    assert resp.text == "Let me check. Done."
    assert resp.finish_reason == "tool_calls" and resp.model == "claude-x-2025"
    assert resp.usage == Usage(1110, 20, cached_tokens=1000)  # cache reads are in prompt_tokens too
    assert resp.raw["content"][2]["type"] == "tool_use"  # kept in the raw response
    assert resp.tool_calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert resp.message["tool_calls"] == resp.tool_calls and resp.message["content"] == "Let me check. Done."
    hit = ANTHROPIC.response(raw, "claude-x", True)
    assert hit.cache_hit and hit.usage == Usage(cost=0.0)  # a hit is free: a known zero, as on OpenAI's path


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("pause_turn", "pause_turn"), (None, None)],
)
def test_anthropic_finish_reasons(stop_reason: str | None, finish: str | None) -> None:
    resp = ANTHROPIC.response({**MESSAGE, "stop_reason": stop_reason}, "m", False)
    assert resp.finish_reason == finish


def test_anthropic_check_refuses_what_is_not_a_message() -> None:
    for bad in (b"[]", b'{"type": "error", "error": {"type": "overloaded_error"}}', b'{"id": "x"}', b"{"):
        with pytest.raises(ValueError):
            ANTHROPIC.check(bad)


# -- Anthropic: errors -----------------------------------------------------------------------------------------


def ant_error(status: int, kind: str, message: str, **kw: object) -> object:
    payload = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    args = {"url": URL, "model": "claude-x", "request_id": "req_1", "retry_after": None, "secret": "sk-ant-secret"}
    args.update(kw)
    return ANTHROPIC.error(status, payload, **args)  # type: ignore[arg-type]


def test_anthropic_error_types() -> None:
    overloaded = ant_error(529, "overloaded_error", "Overloaded")
    assert isinstance(overloaded, ServerError) and overloaded.status == 529 and "Overloaded" in str(overloaded)
    assert ANTHROPIC.retryable(529, b"") and ANTHROPIC.retryable(429, b"") and not ANTHROPIC.retryable(400, b"")
    limited = ant_error(429, "rate_limit_error", "slow down", retry_after=2.0)
    assert isinstance(limited, RateLimitError) and limited.retry_after == 2.0 and limited.request_id == "req_1"
    auth = ant_error(401, "authentication_error", "invalid x-api-key sk-ant-secret")
    assert isinstance(auth, AuthenticationError) and "ANTHROPIC_API_KEY" in str(auth)
    assert "sk-ant-secret" not in str(auth)
    assert isinstance(ant_error(403, "permission_error", "no"), AuthenticationError)
    too_long = ant_error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    assert isinstance(too_long, ContextWindowExceededError)
    limit = ant_error(400, "invalid_request_error", "input length and `max_tokens` exceed context limit: 1 + 2 > 2")
    assert isinstance(limit, ContextWindowExceededError)
    bad = ant_error(400, "invalid_request_error", "temperature: Input should be less than or equal to 1")
    assert type(bad) is BadRequestError
    assert isinstance(ant_error(500, "api_error", "oops"), ServerError)


# -- Anthropic: the stream ----------------------------------------------------------------------------------------

STREAM = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x", "stop_reason": null, "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: content_block_start
data: {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\\"a\\": 1}"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 1}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""  # noqa: E501


def test_anthropic_stream_events() -> None:
    parser = ANTHROPIC.stream_parser(URL, "claude-x", None)
    decoder = SSEDecoder()
    deltas = [d for event in decoder.feed(STREAM) for d in parser.feed(event)]
    assert parser.done
    assert "".join(d.text for d in deltas) == "Hello world"
    tool_events = [d.raw for d in deltas if not d.text and d.finish_reason is None]
    assert [e["type"] for e in tool_events] == ["content_block_start", "content_block_delta"]  # tool use kept
    final = deltas[-1]
    assert final.finish_reason == "tool_calls" and final.usage == Usage(30, 15, cached_tokens=5)


@pytest.mark.parametrize(
    ("kind", "error_class"),
    [
        ("overloaded_error", ServerError),
        ("api_error", ServerError),
        ("rate_limit_error", RateLimitError),
        ("authentication_error", AuthenticationError),
        ("invalid_request_error", BadRequestError),
    ],
)
def test_anthropic_stream_error_events(kind: str, error_class: type[Exception]) -> None:
    parser = ANTHROPIC.stream_parser(URL, "claude-x", None)
    event = json.dumps({"type": "error", "error": {"type": kind, "message": "it broke"}})
    with pytest.raises(error_class, match=rf"reported an error \({kind}\): it broke"):
        parser.feed(event)


def test_anthropic_stream_malformed_events() -> None:
    with pytest.raises(ServerError, match="invalid JSON"):
        ANTHROPIC.stream_parser(URL, "m", None).feed('{"type": "content_block_delta", ')
    with pytest.raises(ServerError, match="non-object"):
        ANTHROPIC.stream_parser(URL, "m", None).feed("[1]")
    parser = ANTHROPIC.stream_parser(URL, "m", None)
    assert parser.feed('{"type": "some_future_event"}') == [] and not parser.done


@pytest.mark.parametrize("wire", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def test_stream_errors_never_show_the_key(wire: object) -> None:
    parser = wire.stream_parser(URL, "m", "sk-SECRET-1")  # type: ignore[attr-defined]
    for event in (
        '{"type": "error", "error": {"type": "api_error", "message": "bad key sk-SECRET-1"}}',
        '{"error": {"message": "bad key sk-SECRET-1"}}',
        "not json sk-SECRET-1",
    ):
        try:
            parser.feed(event)
        except LMError as exc:
            assert "sk-SECRET-1" not in str(exc)
            assert "***" in str(exc)
