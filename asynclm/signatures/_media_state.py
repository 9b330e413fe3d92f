"""What the rest of asynclm needs to know about media types without importing them (they are
pydantic models, built on first use of ``Image``, ``Audio`` or ``File``): the registry of media
classes, the adapters' per-thread render state, and reviving saved media values."""

from __future__ import annotations

import threading
from typing import Any

# Every media class, filled in by ``_media`` as the classes are made: ``type(v) in MEDIA_CLASSES``
# is the adapters' fast test, and while it is empty no value or annotation can be a media type.
MEDIA_CLASSES: set[type] = set()

MEDIA_KINDS = ("image", "audio", "file")


class _Rendering(threading.local):
    # Formatting is synchronous (no await inside), so per-thread state is enough, and cheaper
    # than a ContextVar; the adapters save and restore it, so nested formats work.
    slots: list[Any] | None = None


RENDERING = _Rendering()


def is_media_annotation(tp: Any) -> bool:
    """Whether a field type is, or contains (``list[Image]``, ``Image | None``), a media type."""
    if not MEDIA_CLASSES:
        return False
    if isinstance(tp, type) and tp in MEDIA_CLASSES:
        return True
    args = getattr(tp, "__args__", None)
    if not args:
        return False
    return any(is_media_annotation(a) for a in args if a is not Ellipsis)


def revive_media(value: Any) -> Any:
    """``value`` with every dict written by a media value's ``model_dump`` (``{"media": "image",
    ...}``) turned back into that value, in nested lists and dicts too (saved demos, history)."""
    if isinstance(value, dict):
        if value.get("media") in MEDIA_KINDS:
            from ._media import revive_one

            revived = revive_one(value)
            if revived is not None:
                return revived
        return {k: revive_media(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revive_media(v) for v in value]
    return value
