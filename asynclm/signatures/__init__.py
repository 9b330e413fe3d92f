"""Signatures and the data that flows through programs.

``Signature`` (string or class form), ``InputField``/``OutputField``, ``SignatureError``,
``Example``/``Prediction``, the ``History`` input type, the media input types ``Image``,
``Audio`` and ``File``, and the ``ToolCalls`` output type. Pure data: no I/O, no event loop.
"""

from typing import TYPE_CHECKING, Any

from ._errors import SignatureError
from ._example import Example, Prediction
from ._history import History
from ._signature import InputField, OutputField, Signature, SignatureField
from ._tool_calls import ToolCall, ToolCalls

if TYPE_CHECKING:
    from ._media import Audio, File, Image, Media, MediaError, MediaTooLargeError, MediaTypeError

# The media types are pydantic models, made on first use (``asynclm.signatures.Image``).
_MEDIA_NAMES = frozenset({"Audio", "File", "Image", "Media", "MediaError", "MediaTooLargeError", "MediaTypeError"})

__all__ = [
    "Audio",
    "Example",
    "File",
    "History",
    "Image",
    "InputField",
    "Media",
    "MediaError",
    "MediaTooLargeError",
    "MediaTypeError",
    "OutputField",
    "Prediction",
    "Signature",
    "SignatureError",
    "SignatureField",
    "ToolCall",
    "ToolCalls",
]


def __getattr__(name: str) -> Any:
    if name in _MEDIA_NAMES:
        from . import _media

        value = getattr(_media, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asynclm.signatures' has no attribute {name!r}")
