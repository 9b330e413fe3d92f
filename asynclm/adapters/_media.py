"""Media values (``Image``, ``Audio``, ``File``) in prompts: OpenAI content parts.

While ``Adapter.format`` runs, each media input value is written into the text as a placeholder
that names it (with a per-call random token, so no user text can forge one); once the messages are
built, a user message holding placeholders becomes a list of content parts: the text around
each media value, then the value's part, in field order (DSPy's layout). Messages without media
stay plain strings, byte for byte as without this module.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic_core import PydanticSerializationError

from asynclm.signatures import SignatureField
from asynclm.signatures._media_state import MEDIA_CLASSES, RENDERING

if TYPE_CHECKING:
    from asynclm.signatures import Media

# The media classes themselves (pydantic models) are imported only once a media value shows up.


def _media_error_type() -> type[Exception]:
    from asynclm.signatures._media import MediaError

    return MediaError


def _media_error(message: str) -> Exception:
    return _media_error_type()(message)


def content_part(media: Media) -> dict[str, Any]:
    """The OpenAI chat content part for ``media``."""
    from asynclm.signatures._media import Audio, File, Image

    if isinstance(media, Image):
        image_url: dict[str, Any] = {"url": media.data_uri}
        if media.detail is not None:
            image_url["detail"] = media.detail
        return {"type": "image_url", "image_url": image_url}
    if isinstance(media, Audio):
        return {"type": "input_audio", "input_audio": {"data": media.base64, "format": media.format}}
    if isinstance(media, File):
        return {"type": "file", "file": {"file_data": media.data_uri, "filename": media.name}}
    raise _media_error(f"no content part for {type(media).__name__}; use Image, Audio or File")


def _split(slots: list[Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the placeholders of ``slots`` (its prefix, then the media values)
    replaced by content parts."""
    prefix = slots[0]
    pattern = re.compile(re.escape(prefix) + r"(\d+)>>")
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and prefix in content:
            _require_user(message, "an output field")
            parts: list[dict[str, Any]] = []
            last = 0
            for m in pattern.finditer(content):
                if m.start() > last:
                    parts.append({"type": "text", "text": content[last : m.start()]})
                parts.append(content_part(slots[int(m.group(1))]))
                last = m.end()
            if last < len(content):
                parts.append({"type": "text", "text": content[last:]})
            message = {**message, "content": parts}
        out.append(message)
    return out


def _placeholder(slots: list[Any], media: Media) -> str:
    if not slots:
        slots.append(f"<<asynclm-media-{secrets.token_hex(8)}-")  # a per-call token: no text can forge it
    slots.append(media)
    return f"{slots[0]}{len(slots) - 1}>>"


def _require_user(message: Mapping[str, Any], where: str) -> None:
    if message.get("role") != "user":
        raise _media_error(
            f"a media value ended up in {where} of the {message.get('role')!r} message; Image, Audio and "
            "File can only be sent in user messages, as input fields (models cannot be shown media as "
            "their own answers)"
        )


def raw_message(turn: Mapping[str, Any]) -> dict[str, Any]:
    """A raw chat message from a ``History``, copied; media objects in its content (the content
    itself, or items of a content list, next to strings and ready-made parts) become parts."""
    message = dict(turn)
    content = message["content"]
    if type(content) in MEDIA_CLASSES or (isinstance(content, list) and any(type(p) in MEDIA_CLASSES for p in content)):
        _require_user(message, "a history message")
        items = content if isinstance(content, list) else [content]
        message["content"] = [_raw_part(p) for p in items]
    return message


def _raw_part(item: Any) -> Any:
    if type(item) in MEDIA_CLASSES:
        return content_part(item)
    return {"type": "text", "text": item} if isinstance(item, str) else item


def as_media(field: SignatureField, value: Any) -> Any:
    """``value`` validated against a media-typed input field (``"https://..."`` -> ``Image``)."""
    if type(value) in MEDIA_CLASSES or (isinstance(value, list) and all(type(v) in MEDIA_CLASSES for v in value)):
        return value
    try:
        return field.type_adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        reasons = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors()[:3])
        raise _media_error(f"input field {field.name!r} ({field.type_name}): {reasons}") from None


def media_text(field: SignatureField, value: Any) -> str:
    """The placeholder text for a media value (or a list of them) of input ``field``."""
    slots = RENDERING.slots
    if slots is None:
        raise _media_error(
            f"field {field.name!r} holds a media value, which only Adapter.format can place (as content "
            "parts of a user message)"
        )
    if type(value) in MEDIA_CLASSES:
        return _placeholder(slots, value)
    for item in value:
        if type(item) not in MEDIA_CLASSES:
            raise _media_error(
                f"field {field.name!r}: a list mixes media values with {type(item).__name__} items; give the "
                "media values and the other items in separate input fields"
            )
    return "".join(_placeholder(slots, item) for item in value)


def rendering(build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run ``build`` (which formats messages) with media placeholders enabled, then split the
    messages into content parts where media were placed."""
    slots: list[Any] = []
    outer, RENDERING.slots = RENDERING.slots, slots
    try:
        messages = build()
    except PydanticSerializationError as exc:
        if isinstance(exc.__cause__, _media_error_type()):
            raise exc.__cause__ from None
        raise
    finally:
        RENDERING.slots = outer
    return _split(slots, messages) if slots else messages


def no_media_outputs(name: str, field: SignatureField) -> None:
    raise _media_error(
        f"output field {name!r} has the type {field.type_name}: Image, Audio and File are input types only "
        "(models answer in text); make it an input field or change its type"
    )
