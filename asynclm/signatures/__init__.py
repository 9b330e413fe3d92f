"""Signatures and the data that flows through programs.

``Signature`` (string or class form), ``InputField``/``OutputField``, ``SignatureError``,
``Example``/``Prediction``, the ``History`` input type and the media input types ``Image``,
``Audio`` and ``File``. Pure data: no I/O, no event loop.
"""

from ._errors import SignatureError
from ._example import Example, Prediction
from ._history import History
from ._media import Audio, File, Image, Media, MediaError, MediaTooLargeError, MediaTypeError
from ._signature import InputField, OutputField, Signature, SignatureField

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
]
