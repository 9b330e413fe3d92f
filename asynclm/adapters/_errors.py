"""The adapter layer's exception."""

from __future__ import annotations

from typing import Any


class ParseError(ValueError):
    """The LM's completion could not be turned into the signature's typed outputs.

    Attributes: ``adapter`` (class name), ``raw`` (the full completion text), ``field`` (the
    output field that failed, or ``None`` when the text as a whole is unusable), ``reason`` (why,
    in words an LM can act on: ``Adapter.format_feedback`` sends it back), ``parsed`` (the fields
    that did parse). Re-asking the LM is the module layer's policy, not the adapter's.
    """

    def __init__(
        self,
        reason: str,
        *,
        adapter: str,
        raw: str,
        field: str | None = None,
        parsed: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.adapter = adapter
        self.raw = raw
        self.field = field
        self.parsed = dict(parsed or {})
        where = f" (field {field!r})" if field else ""
        shown = raw if len(raw) <= 500 else raw[:500] + f"... [{len(raw) - 500} more characters]"
        super().__init__(f"{adapter} could not parse the LM output{where}: {reason}\nLM output:\n{shown}")

    def __reduce__(self) -> Any:
        return (_rebuild, (self.reason, self.adapter, self.raw, self.field, self.parsed))


def _rebuild(reason: str, adapter: str, raw: str, field: str | None, parsed: dict[str, Any]) -> ParseError:
    return ParseError(reason, adapter=adapter, raw=raw, field=field, parsed=parsed)
