"""Sans-I/O adapters: (signature, demos, inputs) -> chat messages; completion text -> typed outputs.

``ChatAdapter`` (the default, DSPy's ``[[ ## field ## ]]`` format) and ``JSONAdapter`` (one JSON
object, with a ``response_format`` JSON schema). No adapter calls an LM or needs an event loop.
"""

from ._base import Adapter
from ._chat import ChatAdapter
from ._errors import ParseError
from ._json import JSONAdapter

__all__ = ["Adapter", "ChatAdapter", "JSONAdapter", "ParseError"]
