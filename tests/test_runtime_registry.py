"""loop_resource: one value per event loop run, closed inside that loop when its run ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
import sniffio

from asynclm.runtime import context, loop_resource, sync_twin


class Resource:
    def __init__(self, log: list[Any], name: str = "r") -> None:
        self.name = name
        self.log = log
        self.closed = False

    async def aclose(self) -> None:
        await anyio.sleep(0.001)  # closing may really await
        self.closed = True
        self.log.append(("closed", self.name, sniffio.current_async_library(), threading.get_ident()))


async def test_one_value_per_loop_and_factory_called_once(anyio_backend: str) -> None:
    made: list[object] = []

    def factory() -> object:
        made.append(object())
        return made[-1]

    key = ("test-one-per-loop", object())
    values: list[object] = []

    async def get() -> None:
        await anyio.lowlevel.checkpoint()
        values.append(loop_resource(key, factory))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(get)
    assert len(made) == 1
    assert all(v is made[0] for v in values)
    assert loop_resource(key, factory) is made[0]


async def test_keys_are_independent(anyio_backend: str) -> None:
    a = loop_resource(("k", 1, id(object)), lambda: "a")
    b = loop_resource(("k", 2, id(object)), lambda: "b")
    assert (a, b) == ("a", "b")


@pytest.mark.parametrize("runner", ["asyncio.run", "anyio.run-asyncio", "anyio.run-trio", "trio.run"])
def test_resources_close_inside_their_loop_when_the_run_ends(runner: str) -> None:
    log: list[Any] = []
    key = object()
    held: list[Resource] = []

    async def main() -> None:
        first = loop_resource(key, lambda: Resource(log, "first"), Resource.aclose)
        second = loop_resource((key, 2), lambda: Resource(log, "second"), Resource.aclose)
        held.extend([first, second])
        assert loop_resource(key, lambda: Resource(log, "unused"), Resource.aclose) is first
        log.append(("in loop", sniffio.current_async_library(), threading.get_ident()))
        assert not first.closed

    if runner == "asyncio.run":
        asyncio.run(main())
        library = "asyncio"
    elif runner == "trio.run":
        import trio

        trio.run(main)
        library = "trio"
    else:
        library = runner.split("-")[1]
        anyio.run(main, backend=library)
    me = threading.get_ident()
    assert log == [
        ("in loop", library, me),
        ("closed", "second", library, me),  # reverse order of creation, in the loop's own thread
        ("closed", "first", library, me),
    ]
    assert all(r.closed for r in held)


def test_each_loop_run_gets_a_fresh_value() -> None:
    key = object()
    seen: list[object] = []

    async def main() -> None:
        seen.append(loop_resource(key, object))

    anyio.run(main)
    anyio.run(main)
    anyio.run(main, backend="trio")
    assert len({id(v) for v in seen}) == 3


def test_separate_values_in_loops_of_different_threads() -> None:
    key = object()
    log: list[Any] = []
    values: dict[str, Resource] = {}
    barrier = threading.Barrier(2)

    async def main(name: str) -> None:
        values[name] = loop_resource(key, lambda: Resource(log, name), Resource.aclose)
        await anyio.to_thread.run_sync(barrier.wait)  # both loops alive at the same time
        assert loop_resource(key, lambda: Resource(log, "unused")) is values[name]

    threads = [
        threading.Thread(target=anyio.run, args=(main, "a"), kwargs={"backend": "asyncio"}),
        threading.Thread(target=anyio.run, args=(main, "b"), kwargs={"backend": "trio"}),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values["a"] is not values["b"]
    assert sorted((name, library) for _, name, library, _ in log) == [("a", "asyncio"), ("b", "trio")]


def test_sync_calls_from_one_thread_reuse_the_portals_resource() -> None:
    key = object()
    log: list[Any] = []

    @sync_twin
    async def get(name: str) -> Resource:
        return loop_resource(key, lambda: Resource(log, name), Resource.aclose)

    first = get.sync("main")
    assert get.sync("again") is first  # same thread -> same portal -> same loop -> same value
    other: list[Resource] = []
    thread = threading.Thread(target=lambda: other.append(get.sync("thread")))
    thread.start()
    thread.join()
    assert other[0] is not first
    with context(backend="trio"):
        trio_value = get.sync("trio")
    assert trio_value is not first  # another backend, another portal, another value


def test_a_failing_aclose_does_not_stop_the_others() -> None:
    log: list[Any] = []

    async def broken(_: object) -> None:
        raise OSError("close failed")

    async def main() -> None:
        loop_resource("ok", lambda: Resource(log, "ok"), Resource.aclose)
        loop_resource("bad", object, broken)

    anyio.run(main)
    assert [entry[:2] for entry in log] == [("closed", "ok")]


def test_outside_a_loop_raises_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        loop_resource("k", object)
