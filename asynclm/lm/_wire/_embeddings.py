"""OpenAI embeddings (``POST {base_url}/embeddings``): also vLLM, Ollama, llama.cpp, Together and
other compatible servers. The request is sent as built (``{"model", "input": [...], ...}``)."""

from __future__ import annotations

import json
from typing import Any

from .._models import Usage
from ._openai import OpenAIWire

__all__ = ["EMBEDDINGS", "EmbeddingsResult", "EmbeddingsWire"]

_loads = json.loads


class EmbeddingsResult:
    """One embeddings response: a vector per input, in input order, and its usage."""

    __slots__ = ("cache_hit", "usage", "vectors")

    def __init__(self, vectors: list[list[float]], usage: Usage, cache_hit: bool) -> None:
        self.vectors = vectors
        self.usage = usage
        self.cache_hit = cache_hit

    @classmethod
    def from_json(cls, raw: dict[str, Any], requested_model: str, cache_hit: bool) -> EmbeddingsResult:
        data = sorted(raw["data"], key=lambda item: item.get("index", 0))
        vectors = [item["embedding"] for item in data]
        return cls(vectors, Usage() if cache_hit else _usage(raw), cache_hit)


def _usage(raw: dict[str, Any]) -> Usage:
    usage = raw.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return Usage(prompt if isinstance(prompt, int) else 0, 0)


class EmbeddingsWire(OpenAIWire):
    """The embeddings endpoint of an OpenAI-compatible server (errors, headers and retries as for
    chat completions)."""

    path = "/embeddings"

    def __init__(self) -> None:
        self.response = EmbeddingsResult.from_json  # type: ignore[assignment]

    def usage(self, raw: dict[str, Any]) -> Usage:
        return _usage(raw)

    def check(self, payload: bytes) -> tuple[dict[str, Any], int]:
        raw = _loads(payload)  # ValueError (JSONDecodeError) if malformed
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        data = raw.get("data")
        if not isinstance(data, list) or not data:
            if "error" in raw:
                raise ValueError(f"error object: {raw['error']!r}"[:300])
            raise ValueError("no 'data'")
        for item in data:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vector, list) or not all(isinstance(v, (int, float)) for v in vector):
                raise ValueError("an item of 'data' has no list of numbers as 'embedding' (encoding_format='float'?)")
        return raw, _usage(raw).total_tokens


EMBEDDINGS = EmbeddingsWire()
