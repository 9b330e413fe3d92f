"""The asynclm testing kit: a real OpenAI-compatible server on loopback with fault injection
(:class:`FakeOpenAIServer`), an in-process scripted LM (:class:`ScriptedLM`) and pytest fixtures
(``asynclm.testing.pytest_plugin``, loaded automatically by pytest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._server import DEFAULT_FAULTS, FakeOpenAIServer, FakeRequest, Fault, Headers, Reply, SpawnedFakeServer

if TYPE_CHECKING:
    from ._scripted import ScriptedLM  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "DEFAULT_FAULTS",
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "Headers",
    "Reply",
    "ScriptedLM",
    "SpawnedFakeServer",
]


def __getattr__(name: str) -> Any:
    # ScriptedLM lives in a module written separately; load it on first use so that a missing or
    # broken module never breaks ``import asynclm.testing`` (nor the pytest plugin).
    if name == "ScriptedLM":
        from ._scripted import ScriptedLM  # type: ignore[import-not-found, unused-ignore]

        return ScriptedLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
