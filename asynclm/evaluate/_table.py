"""A plain-text table for ``Evaluate(display_table=N)`` (no pandas)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table"]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return " ".join(text.split())  # one line per row: newlines and runs of spaces collapse


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: Sequence[dict[str, Any]], max_width: int = 40) -> str:
    """Rows (dicts; missing keys are blank) as an aligned table with a header and a rule.
    Cells are single-line and clipped to ``max_width`` characters (``…`` marks a cut)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    names = list(columns)
    if not names:
        return "(no rows)"
    cells = [[_clip(_text(row[c]) if c in row else "", max_width) for c in names] for row in rows]
    header = [_clip(c, max_width) for c in names]
    widths = [max(len(header[j]), *(len(r[j]) for r in cells)) if cells else len(header[j]) for j in range(len(names))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines.extend(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
    return "\n".join(lines)
