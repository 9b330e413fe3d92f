"""Settings: ``configure()`` from any thread or task, ``context()`` overrides, the read-only view."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

import asynclm
from asynclm.runtime import Settings, configure, context, current_settings, settings

from .helpers import StubLM


def test_public_names_are_exported() -> None:
    assert asynclm.configure is configure
    assert asynclm.context is context
    assert asynclm.settings is settings


def test_configure_sets_process_defaults_seen_by_other_threads() -> None:
    configure(lm=StubLM("model-a"), max_parse_retries=3)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append((settings.lm, settings.max_parse_retries)))
    thread.start()
    thread.join()
    assert seen == [("model-a", 3)]


def test_configure_from_another_thread_is_allowed_and_seen_by_main() -> None:
    # No owner-thread rule: a thread that did not configure first may still configure.
    configure(lm=StubLM("from-main"))
    thread = threading.Thread(target=configure, kwargs={"lm": StubLM("from-thread")})
    thread.start()
    thread.join()
    assert settings.lm == "from-thread"


def test_configure_unknown_key_raises_type_error_listing_known_keys() -> None:
    with pytest.raises(TypeError) as info:
        configure(lm=StubLM("x"), temprature=0.5)
    message = str(info.value)
    assert "'temprature'" in message
    for name in ("adapter", "backend", "lm", "max_parse_retries"):
        assert name in message
    assert settings.lm != "x"  # nothing was applied


@pytest.mark.parametrize("setter", [configure, context])
def test_an_lm_that_is_not_an_lm_is_refused_at_once(setter: object) -> None:
    """DSPy refuses a non-LM at configure(); a model name here used to fail later, deep in a call."""
    with pytest.raises(TypeError, match=r"needs an LM object, such as asynclm\.LM\('openai/gpt-4o-mini'\), not a str"):
        if setter is configure:
            configure(lm="openai/gpt-4o-mini")
        else:
            with context(lm="openai/gpt-4o-mini"):
                pass
    assert current_settings().lm is None or callable(current_settings().lm)


def test_context_unknown_key_raises_type_error() -> None:
    with pytest.raises(TypeError, match="known settings are"), context(nope=1):
        pass


def test_configure_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="asyncio"):
        configure(backend="curio")


def test_settings_view_is_read_only_and_rejects_unknown_names() -> None:
    with pytest.raises(AttributeError, match="read-only"):
        settings.lm = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="known settings"):
        _ = settings.nope
    assert isinstance(settings.snapshot(), Settings)
    assert "asynclm.settings" in repr(settings)


def test_context_nests_and_restores() -> None:
    configure(lm=StubLM("default"), adapter="default-adapter")
    with context(lm=StubLM("outer")) as outer:
        assert outer.lm == "outer"
        with context(adapter="inner") as inner:
            assert (inner.lm, inner.adapter) == ("outer", "inner")
            assert (settings.lm, settings.adapter) == ("outer", "inner")
            with context(lm=StubLM("innermost")):
                assert (settings.lm, settings.adapter) == ("innermost", "inner")
            assert settings.lm == "outer"
        assert (settings.lm, settings.adapter) == ("outer", "default-adapter")
    assert (settings.lm, settings.adapter) == ("default", "default-adapter")


def test_context_restores_after_an_exception() -> None:
    configure(lm=StubLM("default"))
    with pytest.raises(ZeroDivisionError), context(lm=StubLM("temp")):
        1 / 0  # noqa: B018
    assert settings.lm == "default"


def test_configure_inside_context_updates_keys_the_block_did_not_override() -> None:
    configure(lm=StubLM("default"), adapter="a0")
    with context(lm=StubLM("overridden")):
        configure(adapter="a1", lm=StubLM("ignored-here"))
        assert (settings.lm, settings.adapter) == ("overridden", "a1")
    assert (settings.lm, settings.adapter) == ("ignored-here", "a1")


def test_context_in_one_thread_is_invisible_to_another() -> None:
    configure(lm=StubLM("default"))
    inside = threading.Event()
    release = threading.Event()
    seen: list[object] = []

    def holder() -> None:
        with context(lm=StubLM("private")):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(5)
    seen.append(settings.lm)
    with ThreadPoolExecutor(4) as pool:
        seen.extend(pool.map(lambda _: settings.lm, range(8)))
    release.set()
    thread.join()
    assert seen == ["default"] * 9


def test_callbacks_are_stored_as_a_tuple() -> None:
    configure(callbacks=[1, 2])
    assert settings.callbacks == (1, 2)
    configure(callbacks=None)
    assert settings.callbacks == ()


def _check_consistent(snapshot: Settings) -> None:
    # Writers always set lm and adapter to the same number in one configure() call.
    assert snapshot.lm == str(snapshot.adapter), snapshot


def test_configure_from_16_threads_readers_always_see_complete_snapshots() -> None:
    configure(lm=StubLM("-1"), adapter=-1)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                _check_consistent(current_settings())
                with context(trace=False):  # a merged snapshot must be consistent too
                    _check_consistent(current_settings())
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    def writer(k: int) -> None:
        for i in range(300):
            value = k * 1000 + i
            configure(lm=StubLM(str(value)), adapter=value)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(writer, range(16)))
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert reads[0] > 0
    final = current_settings()
    _check_consistent(final)
    assert int(final.lm) % 1000 == 299  # the last write of some writer, never a torn one


async def test_configure_from_sibling_tasks_readers_always_see_complete_snapshots() -> None:
    configure(lm=StubLM("-1"), adapter=-1)
    done = anyio.Event()
    checks = [0]

    async def writer(k: int) -> None:
        for i in range(200):
            configure(lm=StubLM(str(k * 1000 + i)), adapter=k * 1000 + i)
            await anyio.lowlevel.checkpoint()

    async def reader() -> None:
        while not done.is_set():
            _check_consistent(current_settings())
            with context(max_parse_retries=5):
                _check_consistent(current_settings())
                await anyio.lowlevel.checkpoint()
                _check_consistent(current_settings())
                assert settings.max_parse_retries == 5
            checks[0] += 1

    async with anyio.create_task_group() as readers:
        for _ in range(4):
            readers.start_soon(reader)
        async with anyio.create_task_group() as writers:
            for k in range(16):
                writers.start_soon(writer, k)
        done.set()
    assert checks[0] > 0
    _check_consistent(current_settings())


async def test_context_in_a_task_is_invisible_to_siblings_and_seen_by_children() -> None:
    configure(lm=StubLM("default"))
    entered = anyio.Event()
    release = anyio.Event()
    seen: dict[str, object] = {}

    async def child() -> None:
        seen["child"] = settings.lm

    async def overrider() -> None:
        with context(lm=StubLM("private")):
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
            entered.set()
            await release.wait()

    async def sibling() -> None:
        await entered.wait()
        seen["sibling"] = settings.lm
        release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(overrider)
        tg.start_soon(sibling)
    assert seen == {"child": "private", "sibling": "default"}
    assert settings.lm == "default"


async def test_child_task_context_does_not_flow_back_to_parent() -> None:
    configure(lm=StubLM("default"))

    async def child() -> None:
        with context(lm=StubLM("child")):
            await anyio.lowlevel.checkpoint()
        # leave one active on purpose: the task ends inside its own context copy
        context(lm=StubLM("leaked")).__enter__()

    async with anyio.create_task_group() as tg:
        tg.start_soon(child)
    assert settings.lm == "default"
