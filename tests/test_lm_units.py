"""Pure pieces of the LM client: Retry-After parsing, backoff, status -> error mapping, result
objects, cache keys, the disk cache file. No network."""

from __future__ import annotations

import copy
import email.utils
import json
import pickle
import time
from pathlib import Path

import pytest

from asynclm.lm import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMError,
    LMResponse,
    LMTimeoutError,
    RateLimitError,
    ServerError,
    Usage,
)
from asynclm.lm._cache import DiskCache, MemoryCache, cache_key, endpoint_of
from asynclm.lm._errors import error_for_status
from asynclm.lm._retry import MAX_RETRY_AFTER, backoff_delay, is_retryable_status, parse_retry_after


def test_parse_retry_after() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15  # ms wins
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "-1"}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after({"retry-after": date}) or 0) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


def test_backoff_delay() -> None:
    assert backoff_delay(0, 0.5, 8.0, retry_after=3.0) == 3.0
    for attempt, top in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 8.0), (30, 8.0)]:
        delays = [backoff_delay(attempt, 0.5, 8.0, None) for _ in range(200)]
        assert all(0.75 * top <= d <= top for d in delays)
        assert len(set(delays)) > 1  # jittered
    too_long = backoff_delay(0, 0.5, 8.0, retry_after=MAX_RETRY_AFTER + 1)
    assert too_long <= 0.5  # an unreasonable Retry-After falls back to the backoff


def test_retryable_statuses() -> None:
    assert [s for s in (400, 401, 403, 404, 408, 409, 422, 429, 500, 503, 599) if is_retryable_status(s)] == [
        408,
        409,
        429,
        500,
        503,
        599,
    ]


def err(status: int, body: object, secret: str | None = None) -> LMError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_for_status(
        status, raw, url="http://x/v1/chat/completions", model="m", request_id="r1", retry_after=1.5, secret=secret
    )


def test_error_mapping() -> None:
    e = err(400, {"error": {"message": "bad temperature", "type": "invalid_request_error"}})
    assert type(e) is BadRequestError and "bad temperature" in str(e)
    assert (e.status, e.request_id, e.retry_after, e.model) == (400, "r1", 1.5, "m")
    for body in (
        {"error": {"message": "too long", "code": "context_length_exceeded"}},
        {"error": {"message": "This model's maximum context length is 4096 tokens."}},
        {"detail": "the prompt is too long for the context window"},  # some servers
        b"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048 - too many tokens",
    ):
        assert isinstance(err(400, body), ContextWindowExceededError), body
    assert type(err(401, {})) is AuthenticationError and "OPENAI_API_KEY" in str(err(401, {}))
    assert type(err(403, {})) is AuthenticationError
    assert type(err(404, {})) is BadRequestError and "base_url" in str(err(404, {}))
    assert type(err(408, {})) is LMTimeoutError
    assert type(err(429, {})) is RateLimitError
    assert type(err(409, {})) is ServerError and type(err(502, b"<html>Bad gateway</html>")) is ServerError
    assert "Bad gateway" in str(err(502, b"<html>Bad gateway</html>"))
    assert type(err(418, {})) is BadRequestError
    leaked = err(401, {"error": {"message": "Incorrect API key provided: sk-abc123"}}, secret="sk-abc123")
    assert "sk-abc123" not in str(leaked) and "***" in str(leaked)


def test_errors_copy_and_pickle_with_their_attributes() -> None:
    e = err(429, {"error": {"message": "slow down"}})
    for clone in (copy.copy(e), pickle.loads(pickle.dumps(e))):
        assert type(clone) is RateLimitError and str(clone) == str(e)
        assert (clone.status, clone.request_id, clone.retry_after, clone.model) == (429, "r1", 1.5, "m")
    assert issubclass(LMTimeoutError, TimeoutError) and issubclass(ContextWindowExceededError, BadRequestError)


def test_usage() -> None:
    assert Usage.from_json({"prompt_tokens": 3, "completion_tokens": 4}) == Usage(3, 4, 7)
    assert Usage.from_json({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}).total_tokens == 9
    assert Usage.from_json(None) == Usage() and Usage.from_json({"prompt_tokens": "x"}) == Usage()
    assert Usage(1, 2) + Usage(3, 4) == Usage(4, 6)
    assert Usage(1, 2).to_dict() == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cached_tokens": 0,
        "cost": None,
    }
    assert (Usage(1, 2, cost=0.5) + Usage(3, 4, cost=0.25)).cost == 0.75
    assert (Usage(1, 2, cost=0.5) + Usage(3, 4)).cost is None  # an unknown part: an unknown sum
    details = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 4}}
    assert Usage.from_json(details).cached_tokens == 4


def test_lm_response_from_json() -> None:
    raw = {
        "model": "m-2024",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    resp = LMResponse.from_json(raw, "m", cache_hit=False)
    assert resp.text == "" and resp.finish_reason == "tool_calls" and resp.model == "m-2024"
    assert resp.tool_calls[0]["function"]["name"] == "f" and resp.usage.total_tokens == 6
    hit = LMResponse.from_json(raw, "m", cache_hit=True)
    assert hit.cache_hit and hit.usage == Usage(cost=0.0)  # a cache hit costs nothing
    assert "tool_calls" in repr(resp)
    for bad in ({}, {"choices": []}, {"choices": [{"text": "legacy"}]}):
        with pytest.raises(ValueError):
            LMResponse.from_json(bad, "m", cache_hit=False)


def test_cache_key() -> None:
    body = b'{"messages":[],"model":"m"}'
    ep = "http://h:80/v1"
    assert cache_key(ep, body, None) == cache_key(ep, body, None)
    keys = {cache_key(ep, body, None), cache_key(ep, body, 1), cache_key(ep, body, "1"), cache_key(ep, body, 2)}
    assert len(keys) == 4
    # the endpoint is part of the key (issue 15 reversed the earlier rule on purpose)
    assert cache_key("http://other:80/v1", body, None) != cache_key(ep, body, None)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://Host:80/v1/", "http://host/v1"),
        ("HTTPS://api.example.com/v1", "https://api.example.com:443/v1/"),
        ("http://user:secret@h:8000/v1?api-version=1", "http://h:8000/v1"),
        ("http://[::1]:8000/v1", "http://[::1]:8000/v1/"),
    ],
)
def test_endpoint_normalization(a: str, b: str) -> None:
    assert endpoint_of(a) == endpoint_of(b)
    assert "secret" not in endpoint_of(a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://h:8000/v1", "http://h:8001/v1"),
        ("http://h/v1", "https://h/v1"),
        ("http://h/v1", "http://h/v2"),
        ("http://h/V1", "http://h/v1"),  # paths are case-sensitive
        ("http://a/v1", "http://b/v1"),
    ],
)
def test_distinct_endpoints(a: str, b: str) -> None:
    assert endpoint_of(a) != endpoint_of(b)


def test_memory_cache_is_an_lru() -> None:
    cache = MemoryCache(maxsize=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1", None, b"3")
    assert len(cache) == 2


def test_disk_cache_roundtrip_index_and_reopen(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path / "sub")
    key = "ab" * 32
    assert not disk.surely_absent(key)  # unknown until the index is read
    assert disk.get(key) is None
    assert disk.surely_absent(key)  # index read: the file has no such key
    disk.put(key, b'{"x": "\\u00e9"}')
    assert not disk.surely_absent(key)
    assert disk.flush(10)
    assert disk.get(key) == b'{"x": "\\u00e9"}'
    disk.close()
    again = DiskCache(tmp_path / "sub")
    assert again.get(key) == b'{"x": "\\u00e9"}' and not again.surely_absent(key)
    assert again.surely_absent("cd" * 32)
    again.close()


def test_disk_cache_writes_after_close_still_land(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path)
    disk.put("ab" * 32, b'"first"')
    disk.close()
    disk.put("cd" * 32, b'"after close"')  # e.g. a portal call finishing during interpreter exit
    assert disk.flush(10)
    assert disk.get("cd" * 32) == b'"after close"' and disk.get("ab" * 32) == b'"first"'
    disk.close()
