"""Signatures and the data that flows through programs.

``Signature`` (string or class form), ``InputField``/``OutputField``, ``SignatureError``,
``Example``/``Prediction`` and the ``History`` input type. Pure data: no I/O, no event loop.
"""

from ._errors import SignatureError
from ._example import Example, Prediction
from ._history import History
from ._signature import InputField, OutputField, Signature, SignatureField

__all__ = [
    "Example",
    "History",
    "InputField",
    "OutputField",
    "Prediction",
    "Signature",
    "SignatureError",
    "SignatureField",
]
