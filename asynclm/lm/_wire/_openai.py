"""OpenAI chat completions (``POST {base_url}/chat/completions``): also vLLM, Ollama, llama.cpp,
Groq, Together, OpenRouter, Gemini's OpenAI-compatible endpoint and any other compatible server.

asynclm's request body already has this shape, so ``to_wire`` is ``None``: the body built by the
LM is encoded and sent as is.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ServerError
from .._models import LMResponse, StreamDelta, Usage
from .._retry import is_retryable_status
from ._base import StreamParser, WireFormat

__all__ = ["OPENAI", "OpenAIStreamParser", "OpenAIWire"]

_loads = json.loads


class OpenAIStreamParser(StreamParser):
    """Chat-completion chunks; the stream ends with ``data: [DONE]``."""

    __slots__ = ()

    final_event = "[DONE]"

    def feed(self, event: str) -> list[StreamDelta]:
        if event == "[DONE]":
            self.done = True
            return []
        try:
            chunk = _loads(event)
        except ValueError:
            raise ServerError(self.scrub(f"the stream from {self.url} sent invalid JSON: {event[:200]!r}")) from None
        if not isinstance(chunk, dict):
            raise ServerError(self.scrub(f"the stream from {self.url} sent a non-object chunk: {event[:200]!r}"))
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise ServerError(self.scrub(f"the stream from {self.url} reported an error: {message}"), model=self.model)
        usage = Usage.from_json(chunk["usage"]) if chunk.get("usage") else None
        out: list[StreamDelta] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            out.append(
                StreamDelta(
                    content if isinstance(content, str) else "",
                    choice.get("index", 0),
                    choice.get("finish_reason"),
                    None,
                    chunk,
                )
            )
        if usage is not None:
            if out:
                out[-1].usage = usage
            else:
                out.append(StreamDelta("", 0, None, usage, chunk))
        return out


class OpenAIWire(WireFormat):
    """The OpenAI chat-completions API (and every server compatible with it)."""

    name = "openai"
    path = "/chat/completions"
    default_base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"
    request_id_header = "x-request-id"
    default_max_tokens = None
    to_wire = None

    def __init__(self) -> None:
        # an instance attribute (not a method): the call path looks it up and calls it directly
        self.response = LMResponse.from_json

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return headers

    def usage(self, raw: dict[str, Any]) -> Usage:
        return Usage.from_json(raw.get("usage"))

    def check(self, payload: bytes) -> tuple[dict[str, Any], int]:
        raw = _loads(payload)  # ValueError (JSONDecodeError) if malformed
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            if "error" in raw:
                raise ValueError(f"error object: {raw['error']!r}"[:300])
            raise ValueError("no 'choices'")
        usage = raw.get("usage")
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        return raw, total if isinstance(total, int) else 0

    def retryable(self, status: int, payload: bytes) -> bool:
        # an exhausted quota is a 429 too, but waiting does not refill it
        return is_retryable_status(status) and b"insufficient_quota" not in payload

    def stream_request(self, body: dict[str, Any]) -> bool:
        body["stream"] = True
        if "stream_options" in body:
            return False
        body["stream_options"] = {"include_usage": True}
        return True

    def stream_parser(self, url: str, model: str, secret: str | None) -> StreamParser:
        return OpenAIStreamParser(url, model, secret)


OPENAI = OpenAIWire()
