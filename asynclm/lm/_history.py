"""Call history: a bounded deque per LM and one for the process (``inspect_history``).

Entries are JSON-able dicts. They hold the request body as sent minus nothing secret (the API
key travels in a header, never in the body) — messages and parameters are stored by reference, not
copied, to keep calls cheap: mutating a message list after the call shows in its entry.
``deque.append`` is atomic, so recording needs no lock.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, TextIO

__all__ = ["GLOBAL_HISTORY_SIZE", "format_entry", "global_history", "inspect_history"]

GLOBAL_HISTORY_SIZE = 1000
global_history: deque[dict[str, Any]] = deque(maxlen=GLOBAL_HISTORY_SIZE)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: show the text parts, name the others
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append(f"<{part.get('type', 'part')}>")
        return "\n".join(parts)
    return "" if content is None else str(content)


def format_entry(entry: dict[str, Any]) -> str:
    """A readable rendering of one history entry."""
    lines = [
        f"[{entry.get('timestamp', '')}] {entry.get('model')}"
        f"{' (cache hit)' if entry.get('cache_hit') else ''}"
        f" {entry.get('duration', 0.0) * 1000:.1f} ms, usage {entry.get('usage')}"
    ]
    for message in entry.get("messages") or ():
        role = message.get("role", "?") if isinstance(message, dict) else "?"
        content = message.get("content") if isinstance(message, dict) else message
        lines.append(f"--- {role} ---")
        lines.append(_content_text(content))
    outputs = entry.get("outputs") or []
    for i, text in enumerate(outputs):
        lines.append("--- response ---" if len(outputs) == 1 else f"--- response {i} ---")
        lines.append(text)
    if entry.get("error"):
        lines.append(f"--- error ---\n{entry['error']}")
    return "\n".join(lines)


def inspect_history(n: int = 1, file: TextIO | None = None) -> None:
    """Print the last ``n`` LM calls of the process (every LM, every thread), oldest first."""
    entries = list(global_history)[-n:] if n > 0 else []
    out = file if file is not None else sys.stdout
    for entry in entries:
        print(format_entry(entry), end="\n\n", file=out)
