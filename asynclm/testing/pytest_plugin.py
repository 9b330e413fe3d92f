"""pytest plugin for asynclm (registered as the ``asynclm`` ``pytest11`` entry point).

Fixtures:

``fake_openai_server``
    A started ``asynclm.testing.FakeOpenAIServer`` (function-scoped), stopped after the test.
    Configure it per test with the ``fake_openai_server`` marker, whose keyword arguments are passed
    to the constructor::

        @pytest.mark.fake_openai_server(responses=["first", "second"], latency=0.01)
        def test_x(fake_openai_server):
            lm = asynclm.LM("openai/fake-model", base_url=fake_openai_server.base_url, api_key="sk-test")

    or reconfigure the started server (``set_responses()``, ``fail_next()``, attributes such as
    ``latency``). Works for sync and async tests on any backend: the server runs its own event loop
    in a daemon thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from asynclm.testing import FakeOpenAIServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fake_openai_server(**kwargs): keyword arguments for the fake_openai_server fixture's "
        "FakeOpenAIServer(...) constructor",
    )


@pytest.fixture
def fake_openai_server(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    """A started ``asynclm.testing.FakeOpenAIServer`` on 127.0.0.1, stopped after the test."""
    # Imported here so that loading the plugin (in every pytest run) costs nothing.
    from asynclm.testing import FakeOpenAIServer

    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker("fake_openai_server")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(
                "@pytest.mark.fake_openai_server takes keyword arguments only "
                f"(FakeOpenAIServer(**kwargs)); got positional {marker.args!r}"
            )
        kwargs.update(marker.kwargs)
    with FakeOpenAIServer(**kwargs) as server:
        yield server
