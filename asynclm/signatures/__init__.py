"""Signatures and the data that flows through programs.

``Signature`` (string or class form), ``InputField``/``OutputField``, ``SignatureError``,
``Example``/``Prediction``, the ``History`` input type and the ``ToolCalls`` output type.
Pure data: no I/O, no event loop.
"""

from ._errors import SignatureError
from ._example import Example, Prediction
from ._history import History
from ._signature import InputField, OutputField, Signature, SignatureField
from ._tool_calls import ToolCall, ToolCalls

__all__ = [
    "Example",
    "History",
    "InputField",
    "OutputField",
    "Prediction",
    "Signature",
    "SignatureError",
    "SignatureField",
    "ToolCall",
    "ToolCalls",
]
