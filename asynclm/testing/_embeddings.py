"""The vectors ``FakeOpenAIServer`` answers ``/v1/embeddings`` with: a hashed bag of words, so that
texts sharing words are near each other and a test can compute the same vector itself."""

from __future__ import annotations

import hashlib
import math
import re

__all__ = ["fake_embedding"]

_WORD = re.compile(r"\w+")


def fake_embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic unit vector for ``text``: each lower-cased word adds 1 to a coordinate
    chosen by its hash (a text without words gets the first axis)."""
    vector = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        slot = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % dims
        vector[slot] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if not norm:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]
