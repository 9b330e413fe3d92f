"""The signature layer's exception."""

from __future__ import annotations


class SignatureError(ValueError):
    """A signature is malformed. The message names the problem and quotes the offending text."""
