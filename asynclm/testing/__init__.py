"""The asynclm testing kit: a real OpenAI-compatible server on loopback with fault injection
(``FakeOpenAIServer``), an in-process scripted LM (``ScriptedLM``) and pytest fixtures
(``asynclm.testing.pytest_plugin``, loaded automatically by pytest). See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._embeddings import fake_embedding
from ._server import DEFAULT_FAULTS, FakeOpenAIServer, FakeRequest, Fault, Fields, Headers, Reply, SpawnedFakeServer

if TYPE_CHECKING:
    from ._scripted import (  # type: ignore[import-not-found, unused-ignore]
        ScriptedLM,
        ScriptedRequest,
        render_chat,
        render_json,
    )

# Loaded on first use: they import the LM client (heavier than the server), and a missing or broken
# module must never break ``import asynclm.testing`` (nor the pytest plugin).
_LAZY = {
    "ScriptedLM": "._scripted",
    "ScriptedRequest": "._scripted",
    "render_chat": "._scripted",
    "render_json": "._scripted",
}

__all__ = [
    "DEFAULT_FAULTS",
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "Fields",
    "Headers",
    "Reply",
    "ScriptedLM",
    "ScriptedRequest",
    "SpawnedFakeServer",
    "fake_embedding",
    "render_chat",
    "render_json",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
