"""Plain result objects: ``Usage``, ``LMResponse``, ``StreamDelta``.

Built once per call from the decoded JSON with no validation layer (the per-call budget is a few
microseconds here); ``raw`` keeps the server's JSON dict for anything not surfaced as an attribute.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LMResponse", "StreamDelta", "Usage"]


class Usage:
    """Token counts and cost of one call (or a sum of calls). Cache hits have all zeros.

    Attributes:
        prompt_tokens, completion_tokens, total_tokens: as the server reported them.
        cached_tokens: how many of ``prompt_tokens`` the provider served from its prompt cache
            (OpenAI's ``prompt_tokens_details.cached_tokens``; 0 when not reported).
        cost: the USD cost (see "Cost" in docs/lm.md): ``None`` when the model's price is unknown,
            0.0 for a cache hit. A sum is ``None`` if any of its parts is.
    """

    __slots__ = ("cached_tokens", "completion_tokens", "cost", "prompt_tokens", "total_tokens")

    def __init__(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        total_tokens: int | None = None,
        cached_tokens: int = 0,
        cost: float | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.total_tokens = prompt_tokens + completion_tokens if total_tokens is None else total_tokens
        self.cached_tokens = cached_tokens
        self.cost = cost

    @classmethod
    def from_json(cls, data: Any) -> Usage:
        """From an OpenAI ``usage`` object; missing or malformed fields count as 0 (cost: None)."""
        if not isinstance(data, dict):
            return cls()
        prompt = data.get("prompt_tokens")
        completion = data.get("completion_tokens")
        total = data.get("total_tokens")
        prompt = prompt if isinstance(prompt, int) else 0
        completion = completion if isinstance(completion, int) else 0
        details = data.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return cls(
            prompt,
            completion,
            total if isinstance(total, int) else None,
            cached if isinstance(cached, int) and cached > 0 else 0,
        )

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            None if self.cost is None or other.cost is None else self.cost + other.cost,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "cost": self.cost,
        }

    def __repr__(self) -> str:
        return (
            f"Usage(prompt_tokens={self.prompt_tokens}, completion_tokens={self.completion_tokens}, "
            f"total_tokens={self.total_tokens}, cached_tokens={self.cached_tokens}, cost={self.cost!r})"
        )


_ZERO = Usage(cost=0.0)  # every cache hit: shared, never mutated


class LMResponse:
    """One chat-completion result.

    Attributes:
        texts: the content of every choice (``n`` of them), ``""`` for a choice with no content.
        finish_reasons: each choice's ``finish_reason`` (``"stop"``, ``"length"``, ``"tool_calls"``…).
        usage: the tokens and USD cost of this call; all zeros (cost 0.0) for a cache hit.
        cache_hit: whether the response came from the cache (memory, disk, or a shared in-flight
            request) instead of a new HTTP request.
        model: the model that answered (the server's ``model`` field, else the requested one).
        raw: the server's JSON response as a dict.
    """

    __slots__ = ("cache_hit", "finish_reasons", "model", "raw", "texts", "usage")

    def __init__(
        self,
        texts: list[str],
        finish_reasons: list[str | None],
        usage: Usage,
        cache_hit: bool,
        model: str,
        raw: dict[str, Any],
    ) -> None:
        self.texts = texts
        self.finish_reasons = finish_reasons
        self.usage = usage
        self.cache_hit = cache_hit
        self.model = model
        self.raw = raw

    @classmethod
    def from_json(cls, raw: dict[str, Any], requested_model: str, cache_hit: bool) -> LMResponse:
        """Build from a decoded chat-completion body. Raises ``ValueError`` if it is not one."""
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("the response has no 'choices'")
        texts: list[str] = []
        reasons: list[str | None] = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise ValueError("a choice has no 'message' object")
            content = message.get("content")
            texts.append(content if isinstance(content, str) else "")
            reasons.append(choice.get("finish_reason"))
        model = raw.get("model")
        return cls(
            texts,
            reasons,
            _ZERO if cache_hit else Usage.from_json(raw.get("usage")),
            cache_hit,
            model if isinstance(model, str) and model else requested_model,
            raw,
        )

    @property
    def text(self) -> str:
        """The first choice's content."""
        return self.texts[0]

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason."""
        return self.finish_reasons[0]

    @property
    def message(self) -> dict[str, Any]:
        """The first choice's ``message`` object (role, content, tool_calls…)."""
        message: dict[str, Any] = self.raw["choices"][0]["message"]
        return message

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The first choice's ``tool_calls`` (``[]`` when none)."""
        calls = self.message.get("tool_calls")
        return calls if isinstance(calls, list) else []

    def __repr__(self) -> str:
        text = self.texts[0] if self.texts else ""
        shown = text if len(text) <= 60 else text[:57] + "..."
        return (
            f"LMResponse(text={shown!r}, finish_reason={self.finish_reason!r}, model={self.model!r}, "
            f"usage={self.usage!r}, cache_hit={self.cache_hit})"
        )


class StreamDelta:
    """One piece of a streamed completion.

    Attributes:
        text: the new content (``""`` for chunks carrying only a role, a finish reason or usage).
        index: the choice it belongs to.
        finish_reason: set on the choice's last chunk.
        usage: on the final chunk, when the server reports usage; else ``None``.
        raw: the chunk's JSON dict.
    """

    __slots__ = ("finish_reason", "index", "raw", "text", "usage")

    def __init__(
        self, text: str, index: int, finish_reason: str | None, usage: Usage | None, raw: dict[str, Any]
    ) -> None:
        self.text = text
        self.index = index
        self.finish_reason = finish_reason
        self.usage = usage
        self.raw = raw

    def __repr__(self) -> str:
        return (
            f"StreamDelta(text={self.text!r}, index={self.index}, finish_reason={self.finish_reason!r}, "
            f"usage={self.usage!r})"
        )
