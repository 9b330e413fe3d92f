"""Provider wire formats: the sans-I/O seam between asynclm's request and a provider's HTTP API.

``LM`` builds every request in one shape, whatever the provider: an OpenAI chat-completions body
(``model``, ``messages`` with ``system``/``user``/``assistant``/``tool`` roles, parameters). That
shape is what history records and what callers pass. A ``WireFormat`` maps it to one provider's
API and back, without any I/O, the way ``_transports/`` is the seam for the I/O itself:

* the URL path under ``base_url``, the default ``base_url`` and API-key variable, the headers;
* the request body (``to_wire``; ``None`` when the body is sent as built);
* a 2xx body checked and turned into an ``LMResponse`` (also for cache hits: the cache keeps the
  provider's own JSON);
* an error response turned into a typed ``LMError``, and whether it is worth retrying;
* a stream: the body changes for streaming and a parser of its server-sent events into
  ``StreamDelta`` objects.

Every method is plain, synchronous and pure, so each format is tested without a socket
(``tests/test_lm_wire.py``). The OpenAI format is the identity on the request, so the
per-call cost of the seam on the common path is an attribute lookup.
"""

from __future__ import annotations

from ._anthropic import ANTHROPIC, AnthropicResponse, AnthropicWire
from ._base import StreamParser, WireFormat
from ._openai import OPENAI, OpenAIWire

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "AnthropicResponse",
    "AnthropicWire",
    "OpenAIWire",
    "StreamParser",
    "WireFormat",
    "wire_format",
]

_FORMATS: dict[str, WireFormat] = {"openai": OPENAI, "anthropic": ANTHROPIC}


def wire_format(provider: str) -> WireFormat | None:
    """The wire format of a model prefix (``"openai"``, ``"anthropic"``), or ``None`` if unknown."""
    return _FORMATS.get(provider)


def providers() -> list[str]:
    """The known model prefixes."""
    return list(_FORMATS)
