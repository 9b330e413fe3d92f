"""Every async test runs on asyncio and on trio (AnyIO's pytest plugin in auto mode, see pyproject.toml)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from asynclm.runtime import Settings, configure, current_settings


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _restore_defaults() -> Iterator[None]:
    """Whatever a test configures, the next one starts from the same process defaults."""
    before = current_settings()
    yield
    configure(**{f.name: getattr(before, f.name) for f in dataclasses.fields(Settings)})


@pytest.fixture(params=["asyncio", "trio"])
def portal_backend(request: pytest.FixtureRequest) -> str:
    """The backend that ``.sync()`` portals run (``configure(backend=...)``)."""
    configure(backend=request.param)
    return str(request.param)
