"""``.sync()`` and ``await`` from FastAPI routes served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from asynclm.runtime import SyncInAsyncContextError, context, settings, sync_twin  # noqa: E402

from .helpers import InFlight, StubLM  # noqa: E402

gauge = InFlight()


@sync_twin
async def handle(i: int) -> dict[str, Any]:
    with gauge:
        await anyio.sleep(0.05)
    return {"i": i, "lm": settings.lm, "loop_thread": threading.get_ident()}


def make_app() -> Any:
    app = fastapi.FastAPI()

    @app.get("/def/{i}")
    def sync_route(i: int) -> dict[str, Any]:
        with context(lm=StubLM(f"def-{i}")):
            out = handle.sync(i)
        out["route_thread"] = threading.get_ident()
        return out

    @app.get("/async/{i}")
    async def async_route(i: int) -> dict[str, Any]:
        try:
            handle.sync(i)
        except SyncInAsyncContextError as exc:
            error = str(exc)
        else:  # pragma: no cover - the test fails on this
            error = ""
        with context(lm=StubLM(f"async-{i}")):
            out = await handle(i)
        out["route_thread"] = threading.get_ident()
        out["sync_error"] = error
        return out

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    config = uvicorn.Config(make_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = 100
    while not srv.started and deadline and thread.is_alive():
        threading.Event().wait(0.05)
        deadline -= 1
    assert srv.started, "uvicorn did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", thread.ident or 0
    srv.should_exit = True
    thread.join(10)


async def _fire(base: str, kind: str, n: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{}] * n
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            response = await client.get(f"/{kind}/{i}")
            assert response.status_code == 200, response.text
            results[i] = response.json()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return results


async def test_def_route_sync_runs_on_the_server_loop_under_64_concurrent_requests(
    server: tuple[str, int], anyio_backend: str
) -> None:
    base, server_thread = server
    gauge.peak = 0
    results = await _fire(base, "def", 64)
    assert [r["i"] for r in results] == list(range(64))
    assert [r["lm"] for r in results] == [f"def-{i}" for i in range(64)]  # each request's own context
    assert {r["loop_thread"] for r in results} == {server_thread}  # on uvicorn's loop, not a portal
    assert all(r["route_thread"] != server_thread for r in results)  # the route ran in a worker thread
    assert gauge.peak > 1  # requests overlapped on the server loop


async def test_async_route_awaits_and_sync_there_raises_the_clear_error(
    server: tuple[str, int], anyio_backend: str
) -> None:
    base, server_thread = server
    gauge.peak = 0
    results = await _fire(base, "async", 64)
    assert [r["lm"] for r in results] == [f"async-{i}" for i in range(64)]
    assert {r["loop_thread"] for r in results} == {server_thread}
    assert {r["route_thread"] for r in results} == {server_thread}
    assert all("await handle(...)" in r["sync_error"] for r in results)
    assert gauge.peak > 1
