"""Media values (``Image``, ``Audio``, ``File``) in prompts: OpenAI content parts.

While ``Adapter.format`` runs, each media input value is written into the text as a placeholder
that names it (a per-call random token, so no user text can forge one); once the messages are
built, a user message holding placeholders becomes a list of content parts: the text around
each media value, then the value's part, in field order (DSPy's layout). Messages without media
stay plain strings, byte for byte as without this module.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from pydantic_core import PydanticSerializationError

from asynclm.signatures import Audio, File, Image, Media, MediaError, SignatureField
from asynclm.signatures._media import RENDERING


def content_part(media: Media) -> dict[str, Any]:
    """The OpenAI chat content part for ``media``."""
    if isinstance(media, Image):
        image_url: dict[str, Any] = {"url": media.data_uri}
        if media.detail is not None:
            image_url["detail"] = media.detail
        return {"type": "image_url", "image_url": image_url}
    if isinstance(media, Audio):
        return {"type": "input_audio", "input_audio": {"data": media.base64, "format": media.format}}
    if isinstance(media, File):
        return {"type": "file", "file": {"file_data": media.data_uri, "filename": media.name}}
    raise MediaError(f"no content part for {type(media).__name__}; use Image, Audio or File")


class MediaSlots:
    """The media values placed in one ``format`` call, and their placeholders."""

    __slots__ = ("_pattern", "_prefix", "items")

    def __init__(self) -> None:
        self.items: list[Media] = []
        self._prefix = ""
        self._pattern: re.Pattern[str] | None = None

    def placeholder(self, media: Media) -> str:
        if not self._prefix:
            self._prefix = f"<<asynclm-media-{secrets.token_hex(8)}-"
        self.items.append(media)
        return f"{self._prefix}{len(self.items) - 1}>>"

    def split(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with placeholders replaced by content parts (and media objects in raw
        history messages' content lists turned into parts)."""
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and self._prefix and self._prefix in content:
                self._require_user(message, "an output field")
                message = {**message, "content": self._parts(content)}
            elif isinstance(content, Media) or (
                isinstance(content, list) and any(isinstance(p, Media) for p in content)
            ):
                self._require_user(message, "a history message")
                items = content if isinstance(content, list) else [content]
                message = {**message, "content": [_raw_part(p) for p in items]}
            out.append(message)
        return out

    def _require_user(self, message: dict[str, Any], where: str) -> None:
        if message.get("role") != "user":
            raise MediaError(
                f"a media value ended up in {where} of the {message.get('role')!r} message; Image, Audio and "
                "File can only be sent in user messages, as input fields (models cannot be shown media as "
                "their own answers)"
            )

    def _parts(self, text: str) -> list[dict[str, Any]]:
        if self._pattern is None:
            self._pattern = re.compile(re.escape(self._prefix) + r"(\d+)>>")
        parts: list[dict[str, Any]] = []
        last = 0
        for m in self._pattern.finditer(text):
            if m.start() > last:
                parts.append({"type": "text", "text": text[last : m.start()]})
            parts.append(content_part(self.items[int(m.group(1))]))
            last = m.end()
        if last < len(text):
            parts.append({"type": "text", "text": text[last:]})
        return parts


def _raw_part(item: Any) -> Any:
    if isinstance(item, Media):
        return content_part(item)
    return {"type": "text", "text": item} if isinstance(item, str) else item


def media_text(field: SignatureField, value: Media | Sequence[Media]) -> str:
    """The placeholder text for a media value (or a list of them) of input ``field``."""
    slots = RENDERING.get()
    if not isinstance(slots, MediaSlots):
        raise MediaError(
            f"field {field.name!r} holds a media value, which only Adapter.format can place (as content "
            "parts of a user message)"
        )
    if isinstance(value, Media):
        return slots.placeholder(value)
    for item in value:
        if not isinstance(item, Media):
            raise MediaError(
                f"field {field.name!r}: a list mixes media values with {type(item).__name__} items; give the "
                "media values and the other items in separate input fields"
            )
    return "".join(slots.placeholder(item) for item in value)


def rendering(build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run ``build`` (which formats messages) with media placeholders enabled, then split the
    messages into content parts where media were placed."""
    slots = MediaSlots()
    token = RENDERING.set(slots)
    try:
        messages = build()
    except PydanticSerializationError as exc:
        if isinstance(exc.__cause__, MediaError):
            raise exc.__cause__ from None
        raise
    finally:
        RENDERING.reset(token)
    if slots.items or any(not isinstance(m.get("content"), str) for m in messages):
        return slots.split(messages)
    return messages


def no_media_outputs(name: str, field: SignatureField) -> None:
    raise MediaError(
        f"output field {name!r} has the type {field.type_name}: Image, Audio and File are input types only "
        "(models answer in text); make it an input field or change its type"
    )
