"""``Image``, ``Audio`` and ``File``: media values for signature input fields.

Pure data: a media value holds either a URL (images only) or the bytes themselves with their
MIME type (sniffed from the first bytes and checked against what the caller declared). Adapters
render them as OpenAI content parts; saved programs store them as JSON (a URL stays a URL,
inline bytes become base64 with their MIME type).
"""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pydantic

from ._media_state import MEDIA_CLASSES, RENDERING, is_media_annotation, revive_media

__all__ = [
    "Audio",
    "File",
    "Image",
    "Media",
    "MediaError",
    "MediaTooLargeError",
    "MediaTypeError",
    "is_media_annotation",
    "revive_media",
]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# How DSPy (3.x) serialises its Image/Audio/File values, e.g. in saved demos.
_DSPY_START = "<<CUSTOM-TYPE-START-IDENTIFIER>>"
_DSPY_END = "<<CUSTOM-TYPE-END-IDENTIFIER>>"

# Set by the adapters while they render a prompt: a media value met by pydantic's serializer
# then is one nested where no content part can go (inside a dict, a model or an output value).
class MediaError(ValueError):
    """A media value that cannot be built or cannot be sent where it was put."""


class MediaTooLargeError(MediaError):
    """The media is larger than the size cap (``max_bytes``)."""


class MediaTypeError(MediaError):
    """The bytes are not of the kind (or the MIME type) that was declared."""


# -- MIME types --------------------------------------------------------------------------------------

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "audio/mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg-3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-pn-wav": "audio/wav",
    "audio/x-flac": "audio/flac",
    "application/x-pdf": "application/pdf",
}

# The formats recognised from their first bytes. A declared type in this set must match the bytes.
_SNIFFABLE = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/tiff",
        "image/heic",
        "image/heif",
        "image/avif",
        "audio/wav",
        "audio/mpeg",
        "audio/ogg",
        "audio/flac",
        "audio/aac",
        "application/pdf",
    }
)
_AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3"}  # OpenAI's input_audio format names
_FTYP_BRANDS = {
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"hevc": "image/heic",
    b"hevx": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"avif": "image/avif",
    b"avis": "image/avif",
}


def normalize_mime(mime: str) -> str:
    """``"Image/JPG; q=1"`` -> ``"image/jpeg"``: lower case, parameters dropped, aliases resolved."""
    m = mime.split(";", 1)[0].strip().lower()
    return _ALIASES.get(m, m)


def sniff_mime(data: bytes) -> str | None:
    """The MIME type told by the first bytes of ``data``, or ``None`` when not recognised."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        if head[8:12] == b"WEBP":
            return "image/webp"
        if head[8:12] == b"WAVE":
            return "audio/wav"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12])
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # an MPEG audio frame header: layers 1-3 are MP3 and friends, layer 0 is AAC (ADTS)
        return "audio/mpeg" if (head[1] >> 1) & 3 else "audio/aac"
    return None


def _guess_from_name(name: str | None) -> str | None:
    if not name:
        return None
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return normalize_mime(guessed) if guessed else None


def _describe(data: bytes) -> str:
    return f"data starting with {data[:8]!r}" if data else "empty data"


def _parse_data_uri(uri: str, what: str) -> tuple[bytes, str | None]:
    """``data:[<mime>][;base64],<payload>`` -> (bytes, mime or None)."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise MediaError(f"{what}: invalid data URI (no ',' after the header): {uri[:60]!r}")
    params = header.split(";")
    mime = params[0].strip() or None
    if "base64" in (p.strip().lower() for p in params[1:]):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{what}: the data URI's payload is not valid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return data, mime


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what}: 'data' must be base64 text (or bytes); it is not valid base64") from None


# -- the types ---------------------------------------------------------------------------------------


class Media(pydantic.BaseModel):
    """The base of ``Image``, ``Audio`` and ``File``: an immutable media value.

    Holds either ``url`` (images only) or ``data`` (the bytes) with ``mime_type``. Equal values
    compare equal and hash alike. As JSON (``model_dump``, saved programs) a URL stays a URL and
    inline bytes are written as base64 with their MIME type, e.g.
    ``{"media": "image", "mime_type": "image/png", "data": "iVBORw0..."}``; validating that dict,
    a URL or a ``data:`` URI string rebuilds an equal value.

    ``max_bytes`` (a class attribute, 20 MB by default) caps the size of inline data; set it on
    one class (``asynclm.Image.max_bytes = 5_000_000``) or on ``Media`` for all three, or pass
    ``max_bytes=`` to a constructor.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[str] = "media"
    max_bytes: ClassVar[int] = DEFAULT_MAX_BYTES

    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MEDIA_CLASSES.add(cls)

    def __init__(self, source: Any = None, /, **fields: Any) -> None:
        if source is not None:
            if fields:
                raise TypeError(
                    f"{type(self).__name__}() takes either one positional source (a URL, a data URI or "
                    "bytes) or keyword fields, not both"
                )
            super().__init__(**self._coerce(source))
        else:
            super().__init__(**fields)

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, mime: str | None = None, *, max_bytes: int | None = None) -> Any:
        """Inline media from ``data``. The MIME type is sniffed from the first bytes; ``mime``
        (e.g. ``"image/png"``) is needed only for formats that cannot be recognised, and when
        given must agree with the bytes (``MediaTypeError`` otherwise). ``MediaTooLargeError``
        when ``data`` is larger than ``max_bytes`` (default: the class's ``max_bytes``)."""
        return cls._inline(data, mime, None, max_bytes)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], mime: str | None = None, *, max_bytes: int | None = None) -> Any:
        """Inline media read from the file at ``path`` (the size cap is checked before reading).
        This reads the file in the calling thread: from async code use
        ``await Cls.afrom_file(path)``, which reads it in a worker thread."""
        data = cls._read(path, max_bytes)
        return cls._inline(data, mime, os.fspath(path), max_bytes)

    @classmethod
    async def afrom_file(
        cls, path: str | os.PathLike[str], mime: str | None = None, *, max_bytes: int | None = None
    ) -> Any:
        """``from_file`` for async code: the file is read (and checked) in a worker thread, so
        the event loop keeps running. Works on asyncio and trio."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(functools.partial(cls.from_file, path, mime, max_bytes=max_bytes))

    # -- properties -----------------------------------------------------------------------------

    @property
    def is_url(self) -> bool:
        """True for media given by URL (not inline)."""
        return self.url is not None

    @property
    def base64(self) -> str:
        """The inline data as base64 text (``MediaError`` for a URL)."""
        if self.data is None:
            raise MediaError(f"{self!r} is a URL; it has no inline data")
        return self._b64

    @functools.cached_property
    def _b64(self) -> str:
        assert self.data is not None
        return base64.b64encode(self.data).decode("ascii")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with ``update`` applied (not validated, as in pydantic)."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("_b64", None)  # the cached base64 may belong to the old data
        return copy

    @property
    def data_uri(self) -> str:
        """``data:<mime>;base64,<data>`` for inline media; the URL itself otherwise."""
        if self.url is not None:
            return self.url
        return f"data:{self.mime_type};base64,{self._b64}"

    def __repr__(self) -> str:
        name = type(self).__name__
        if self.url is not None:
            shown = self.url if len(self.url) <= 80 else self.url[:77] + "..."
            return f"{name}(url={shown!r})"
        size = len(self.data or b"")
        return f"{name}(mime_type={self.mime_type!r}, {size} bytes{self._repr_extra()})"

    __str__ = __repr__

    def _repr_extra(self) -> str:
        return ""

    # -- validation and serialisation -----------------------------------------------------------

    @classmethod
    def _what(cls) -> str:
        return "an " + cls.__name__ if cls.__name__[0] in "AEIOU" else "a " + cls.__name__

    @classmethod
    def _coerce(cls, value: Any) -> dict[str, Any]:
        """Any accepted input -> complete, checked field values."""
        what = cls.__name__
        if isinstance(value, str):
            if value.startswith(_DSPY_START) and value.endswith(_DSPY_END):
                return cls._from_dspy(value)
            if value.startswith("data:"):
                data, mime = _parse_data_uri(value, what)
                return cls._inline_fields(data, mime, None, None)
            return cls._url_fields(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return cls._inline_fields(bytes(value), None, None, None)
        if isinstance(value, os.PathLike):
            raise MediaError(
                f"{what}: got the path {os.fspath(value)!r}; read a local file with {what}.from_file(path) "
                f"(or await {what}.afrom_file(path) in async code)"
            )
        if isinstance(value, Mapping):
            return cls._from_mapping(value)
        if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):
            return cls._from_pil_fields(value, None)
        raise MediaError(
            f"cannot make {cls._what()} from {type(value).__name__}: give a URL or data URI string, bytes, "
            f"a dict such as {{'url': ...}} or {{'data': <base64>, 'mime_type': ...}}, or use {what}.from_file()"
        )

    @classmethod
    def _from_dspy(cls, text: str) -> dict[str, Any]:
        """A value saved by DSPy (its custom-type marker around a JSON list of content parts)."""
        import json

        try:
            parts = json.loads(text[len(_DSPY_START) : -len(_DSPY_END)])
        except ValueError:
            parts = None
        if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
            raise MediaError(f"{cls.__name__}: could not read the DSPy value {text[:80]!r}")
        return cls._from_mapping(parts[0])

    @classmethod
    def _from_part(cls, part: Mapping[str, Any]) -> dict[str, Any]:
        """An OpenAI content part (``{"type": "image_url", ...}``, ``input_audio``, ``file``)."""
        kind = part.get("type")
        body = part.get(str(kind))
        expected = {"image": "image_url", "audio": "input_audio", "file": "file"}.get(cls.kind)
        if kind != expected or not isinstance(body, Mapping):
            raise MediaTypeError(f"{cls.__name__}: a {kind!r} content part is not {cls._what()}")
        if kind == "image_url":
            return cls._from_mapping({k: v for k, v in body.items() if k in ("url", "detail")})
        if kind == "input_audio":
            fmt = str(body.get("format", ""))
            mime = {"wav": "audio/wav", "mp3": "audio/mpeg"}.get(fmt, f"audio/{fmt}")
            return cls._from_mapping({"data": body.get("data"), "mime_type": mime})
        if "file_data" not in body:
            raise MediaError(f"{cls.__name__}: only files given inline (file_data) are supported, got {body!r}")
        fields: dict[str, Any] = {"url": body["file_data"]}
        if body.get("filename") is not None:
            fields["filename"] = body["filename"]
        return cls._from_mapping(fields)

    @classmethod
    def _from_mapping(cls, value: Mapping[str, Any]) -> dict[str, Any]:
        what = cls.__name__
        if value.get("type") in ("image_url", "input_audio", "file") and "media" not in value:
            return cls._from_part(value)
        fields = dict(value)
        tag = fields.pop("media", cls.kind)
        if tag != cls.kind:
            raise MediaTypeError(f"{what}: the value is tagged media={tag!r}, expected {cls.kind!r}")
        allowed = set(cls.model_fields)
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise MediaError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {sorted(allowed)}")
        url, data = fields.pop("url", None), fields.pop("data", None)
        if (url is None) == (data is None):
            raise MediaError(f"{what}: give exactly one of 'url' and 'data'")
        extra = {k: v for k, v in fields.items() if k != "mime_type"}
        if url is not None:
            if not isinstance(url, str):
                raise MediaError(f"{what}: 'url' must be a string, got {type(url).__name__}")
            if url.startswith("data:"):
                raw, mime = _parse_data_uri(url, what)
                return {**cls._inline_fields(raw, mime, extra.get("filename"), None), **extra}
            return {**cls._url_fields(url), **extra}
        if isinstance(data, str):
            data = _b64decode(data, what)
        elif isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise MediaError(f"{what}: 'data' must be bytes or base64 text, got {type(data).__name__}")
        return {**cls._inline_fields(data, fields.get("mime_type"), extra.get("filename"), None), **extra}

    @classmethod
    def _url_fields(cls, url: str) -> dict[str, Any]:
        raise MediaError(
            f"{cls.__name__}: {url[:80]!r} is not a data URI; {cls.__name__} values are sent inline "
            f"(OpenAI takes no URL for them): use {cls.__name__}.from_file(path) or "
            f"{cls.__name__}.from_bytes(data)"
        )

    @classmethod
    def _from_pil_fields(cls, img: Any, fmt: str | None) -> dict[str, Any]:
        raise MediaError(f"{cls.__name__}: a PIL image can only become an Image")

    @classmethod
    def _inline_fields(
        cls, data: bytes, declared: str | None, filename: str | None, max_bytes: int | None
    ) -> dict[str, Any]:
        limit = cls.max_bytes if max_bytes is None else max_bytes
        if len(data) > limit:
            raise MediaTooLargeError(
                f"{cls.__name__}: {len(data):,} bytes is over the size cap of {limit:,} bytes per part; "
                f"shrink or compress it, or raise the cap (max_bytes=..., or {cls.__name__}.max_bytes = ...)"
            )
        return {"data": data, "mime_type": cls._resolve_mime(data, declared, filename)}

    @classmethod
    def _resolve_mime(cls, data: bytes, declared: str | None, filename: str | None) -> str:
        sniffed = sniff_mime(data)
        given = normalize_mime(declared) if declared else None
        if given == "application/octet-stream":
            given = None
        if sniffed is not None and given is not None and given != sniffed:
            raise MediaTypeError(
                f"{cls.__name__}: mime={declared!r} was given but the data is {sniffed} (told by its first "
                "bytes); pass the right type or leave mime out to use the detected one"
            )
        if sniffed is None and given in _SNIFFABLE:
            raise MediaTypeError(
                f"{cls.__name__}: mime={declared!r} was given but the data does not look like {given} "
                f"({_describe(data)}); check that the bytes are what you meant"
            )
        mime = sniffed or given or _guess_from_name(filename)
        return cls._check_mime(mime, data)

    @classmethod
    def _check_mime(cls, mime: str | None, data: bytes) -> str:
        return mime or "application/octet-stream"

    @classmethod
    def _inline(cls, data: bytes, mime: str | None, path: str | None, max_bytes: int | None) -> Any:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise TypeError(f"{cls.__name__}.from_bytes() takes bytes, got {type(data).__name__}")
        fields = cls._inline_fields(data, mime, path, max_bytes)
        if path is not None and "filename" in cls.model_fields:
            fields["filename"] = os.path.basename(path)
        return cls.model_construct(**fields)

    @classmethod
    def _read(cls, path: str | os.PathLike[str], max_bytes: int | None) -> bytes:
        limit = cls.max_bytes if max_bytes is None else max_bytes
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{cls.__name__}.from_file: no such file: {os.fspath(path)!r}") from None
        if size > limit:
            raise MediaTooLargeError(
                f"{cls.__name__}: the file {os.fspath(path)!r} has {size:,} bytes, over the size cap of "
                f"{limit:,} bytes per part; shrink or compress it, or raise the cap (max_bytes=..., or "
                f"{cls.__name__}.max_bytes = ...)"
            )
        with open(path, "rb") as f:
            return f.read(limit + 1)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _validate_any(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, Media):
            raise MediaTypeError(f"expected {cls._what()}, got {value!r}")
        return cls._coerce(value)

    @pydantic.model_serializer(mode="plain")
    def _dump(self) -> dict[str, Any]:
        if RENDERING.slots is not None:
            raise MediaError(
                f"{self!r} is nested inside another value: {type(self).__name__} values can only be sent as "
                "the whole value of an input field (photo: Image) or as the items of a list input "
                "(photos: list[Image]), not inside a dict or model, and never in an output field"
            )
        out: dict[str, Any] = {"media": self.kind}
        if self.url is not None:
            out["url"] = self.url
        else:
            out["mime_type"] = self.mime_type
            out["data"] = self._b64
        out.update(self._dump_extra())
        return out

    def _dump_extra(self) -> dict[str, Any]:
        return {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Media):
            return NotImplemented
        return type(self) is type(other) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple[Any, ...]:
        return (self.url, self.data, self.mime_type, *self._dump_extra().items())


class Image(Media):
    """An image input: ``photo: Image`` (or ``list[Image]``, ``Image | None``) in a signature.

    Build one with ``Image.from_url(url)`` (sent as a URL; the model's server fetches it),
    ``Image.from_file(path)`` / ``await Image.afrom_file(path)``, ``Image.from_bytes(data)`` or
    ``Image.from_pil(img)`` (needs Pillow). ``Image("https://...")`` and ``Image("data:...")``
    work too. Inline images must be images (PNG, JPEG, GIF, WebP, ...: sniffed from the bytes).
    ``detail`` (``"low"``, ``"high"``, ``"auto"``) is passed to OpenAI when set.
    Rendered as ``{"type": "image_url", "image_url": {"url": ...}}``.
    """

    kind: ClassVar[str] = "image"

    detail: Literal["auto", "low", "high"] | None = None

    @classmethod
    def from_url(cls, url: str, *, detail: Literal["auto", "low", "high"] | None = None) -> Image:
        """An image given by its ``http(s)://`` URL (not downloaded here), or a ``data:`` URI."""
        if not isinstance(url, str):
            raise TypeError(f"Image.from_url() takes a string, got {type(url).__name__}")
        return cls(url=url, detail=detail)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        mime: str | None = None,
        *,
        max_bytes: int | None = None,
        detail: Literal["auto", "low", "high"] | None = None,
    ) -> Image:
        """An inline image; see ``Media.from_bytes``."""
        img: Image = cls._inline(data, mime, None, max_bytes)
        return img if detail is None else img.model_copy(update={"detail": detail})

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        mime: str | None = None,
        *,
        max_bytes: int | None = None,
        detail: Literal["auto", "low", "high"] | None = None,
    ) -> Image:
        """An inline image read from ``path``; see ``Media.from_file``."""
        img: Image = cls._inline(cls._read(path, max_bytes), mime, os.fspath(path), max_bytes)
        return img if detail is None else img.model_copy(update={"detail": detail})

    @classmethod
    async def afrom_file(
        cls,
        path: str | os.PathLike[str],
        mime: str | None = None,
        *,
        max_bytes: int | None = None,
        detail: Literal["auto", "low", "high"] | None = None,
    ) -> Image:
        """``from_file`` in a worker thread, for async code."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(
            functools.partial(cls.from_file, path, mime, max_bytes=max_bytes, detail=detail)
        )

    @classmethod
    def from_pil(cls, img: Any, format: str | None = None, *, max_bytes: int | None = None) -> Image:
        """An inline image from a Pillow image, encoded as ``format`` (default: the image's own
        format when it is PNG, JPEG, GIF or WebP, else PNG). Needs Pillow (not a dependency of
        asynclm)."""
        fields = cls._from_pil_fields(img, format, max_bytes)
        return cls.model_construct(**fields)

    from_PIL = from_pil  # DSPy's spelling

    @classmethod
    def _from_pil_fields(cls, img: Any, fmt: str | None, max_bytes: int | None = None) -> dict[str, Any]:
        try:
            import PIL.Image
        except ImportError:
            raise ImportError("Image.from_pil needs Pillow: pip install pillow") from None
        if not isinstance(img, PIL.Image.Image):
            raise TypeError(f"Image.from_pil() takes a PIL.Image.Image, got {type(img).__name__}")
        import io

        fmt = (fmt or (img.format if img.format in ("PNG", "JPEG", "GIF", "WEBP") else None) or "PNG").upper()
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return cls._inline_fields(buf.getvalue(), None, None, max_bytes)

    @classmethod
    def _url_fields(cls, url: str) -> dict[str, Any]:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaError(
                f"Image: {url[:80]!r} is not an http(s) URL or a data URI; for a local file use "
                "Image.from_file(path) (or await Image.afrom_file(path) in async code)"
            )
        return {"url": url}

    @classmethod
    def _check_mime(cls, mime: str | None, data: bytes) -> str:
        if mime is None:
            raise MediaTypeError(
                f"Image: could not recognise the image format ({_describe(data)}); pass mime='image/...' "
                "if it really is an image"
            )
        if not mime.startswith("image/"):
            raise MediaTypeError(f"Image: the data is {mime}, not an image; use Audio or File for other media")
        return mime

    def _dump_extra(self) -> dict[str, Any]:
        return {} if self.detail is None else {"detail": self.detail}


class Audio(Media):
    """An audio input: ``recording: Audio`` in a signature. WAV or MP3 (the formats of OpenAI's
    ``input_audio``), sent inline as ``{"type": "input_audio", "input_audio": {"data": <base64>,
    "format": "wav" | "mp3"}}``. Build one with ``Audio.from_file(path)`` /
    ``await Audio.afrom_file(path)`` or ``Audio.from_bytes(data)``."""

    kind: ClassVar[str] = "audio"

    @classmethod
    def from_bytes(cls, data: bytes, mime: str | None = None, *, max_bytes: int | None = None) -> Audio:
        """Inline audio; see ``Media.from_bytes``."""
        audio: Audio = cls._inline(data, mime, None, max_bytes)
        return audio

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], mime: str | None = None, *, max_bytes: int | None = None) -> Audio:
        """Inline audio read from ``path``; see ``Media.from_file``."""
        audio: Audio = cls._inline(cls._read(path, max_bytes), mime, os.fspath(path), max_bytes)
        return audio

    @property
    def format(self) -> str:
        """OpenAI's name of the format: ``"wav"`` or ``"mp3"``."""
        return _AUDIO_FORMATS[self.mime_type or ""]

    @classmethod
    def _check_mime(cls, mime: str | None, data: bytes) -> str:
        if mime not in _AUDIO_FORMATS:
            got = mime or f"not recognised ({_describe(data)})"
            raise MediaTypeError(
                f"Audio: the data is {got}; Audio takes WAV or MP3 (OpenAI's input_audio formats): convert "
                "it first, or use File for other data"
            )
        return mime


class File(Media):
    """A document input (PDF and others): ``report: File`` in a signature. Sent inline as
    OpenAI's ``{"type": "file", "file": {"file_data": "data:<mime>;base64,...", "filename": ...}}``.
    Build one with ``File.from_file(path)`` / ``await File.afrom_file(path)`` (the file name is
    kept) or ``File.from_bytes(data, mime, filename=...)``. The MIME type is sniffed for known
    formats (a PDF declared as something else is an error), else taken from ``mime`` or the file
    name's extension."""

    kind: ClassVar[str] = "file"

    filename: str | None = None

    @classmethod
    def from_bytes(
        cls, data: bytes, mime: str | None = None, *, filename: str | None = None, max_bytes: int | None = None
    ) -> File:
        """An inline file; ``filename`` (sent to the model) defaults to ``file`` plus the
        extension of its MIME type."""
        f: File = cls._inline(data, mime, filename, max_bytes)
        return f if filename is None else f.model_copy(update={"filename": filename})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], mime: str | None = None, *, max_bytes: int | None = None) -> File:
        """An inline file read from ``path``, named after it; see ``Media.from_file``."""
        f: File = cls._inline(cls._read(path, max_bytes), mime, os.fspath(path), max_bytes)
        return f

    @property
    def name(self) -> str:
        """The file name sent to the model: ``filename``, else ``file`` plus an extension."""
        if self.filename:
            return self.filename
        ext = mimetypes.guess_extension(self.mime_type or "") or ""
        return f"file{ext}"

    def _repr_extra(self) -> str:
        return f", filename={self.filename!r}" if self.filename is not None else ""

    def _dump_extra(self) -> dict[str, Any]:
        return {} if self.filename is None else {"filename": self.filename}


MEDIA_CLASSES.add(Media)
_BY_KIND: dict[str, type[Media]] = {cls.kind: cls for cls in (Image, Audio, File)}


def revive_one(value: dict[str, Any]) -> Media | None:
    """The media value a ``{"media": kind, ...}`` dict describes, or ``None`` when the dict has
    other keys (then it is the user's own data)."""
    cls = _BY_KIND[value["media"]]
    if set(value) <= {"media", *cls.model_fields}:
        return cls.model_validate(value)
    return None
