"""Portal lifetime: owner exit (watchdog), interpreter exit (atexit), fork, KeyboardInterrupt."""

from __future__ import annotations

import _thread
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import anyio
import pytest
import sniffio

from asynclm.runtime import configure, shutdown_portals, sync_twin

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process model")




@sync_twin
async def identify() -> tuple[int, str]:
    await anyio.lowlevel.checkpoint()
    return threading.get_ident(), sniffio.current_async_library()


def _portal_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("asynclm-portal")}


def _wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# -- owner exit --------------------------------------------------------------------------------


def test_portal_stops_after_its_owner_thread_exits(portal_backend: str) -> None:
    seen: list[int] = []
    owner = threading.Thread(target=lambda: seen.append(identify.sync()[0]))
    owner.start()
    owner.join()
    (portal_ident,) = seen
    portal = next((t for t in _portal_threads() if t.ident == portal_ident), None)
    if portal is not None:  # already gone is fine too
        portal.join(2.0)
        assert not portal.is_alive()


def test_200_short_lived_threads_leak_no_portal(portal_backend: str) -> None:
    identify.sync()  # the main thread's portal belongs to the baseline
    baseline_portals = _portal_threads()
    baseline = threading.active_count()
    results: list[str] = []
    errors: list[BaseException] = []

    def short_lived() -> None:
        try:
            results.append(identify.sync()[1])
            results.append(identify.sync()[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=short_lived) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [portal_backend] * 400
    time.sleep(2.0)
    assert _portal_threads() <= baseline_portals
    assert threading.active_count() <= baseline


def test_shutdown_portals_then_sync_again_starts_a_new_portal(portal_backend: str) -> None:
    @sync_twin
    async def portal_thread() -> threading.Thread:
        return threading.current_thread()

    first = portal_thread.sync()
    shutdown_portals()
    assert not first.is_alive()
    second = portal_thread.sync()  # thread idents may be reused: compare Thread objects
    assert second is not first
    assert second.is_alive()
    assert identify.sync()[1] == portal_backend


def test_shutdown_cancels_in_flight_calls_which_report_portal_closed(portal_backend: str) -> None:
    from asynclm.runtime import PortalClosedError

    running = threading.Semaphore(0)
    cleaned: list[str] = []
    outcomes: list[str] = []

    @sync_twin
    async def slow() -> None:
        try:
            running.release()
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # the portal waits for async cleanup too
            cleaned.append(sniffio.current_async_library())

    def caller() -> None:
        try:
            slow.sync()
        except PortalClosedError:
            outcomes.append("closed")

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert running.acquire(timeout=10)
    t0 = time.monotonic()
    shutdown_portals()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - t0 < 5
    assert outcomes == ["closed"] * 4
    assert cleaned == [portal_backend] * 4


# -- KeyboardInterrupt ------------------------------------------------------------------------


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_keyboard_interrupt_during_sync_cancels_the_coroutine(portal_backend: str) -> None:
    state: dict[str, Any] = {}
    started = threading.Event()

    @sync_twin
    async def slow() -> None:
        try:
            started.set()
            await anyio.sleep(30)
            state["completed"] = True
        finally:
            state["finally"] = sniffio.current_async_library()

    def interrupt() -> None:
        if started.wait(10):
            _thread.interrupt_main()

    timer = threading.Thread(target=interrupt)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        slow.sync()
    timer.join()
    assert state == {"finally": portal_backend}  # finally ran, before .sync() returned
    assert time.monotonic() - t0 < 10
    assert identify.sync()[1] == portal_backend  # the portal is still usable


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_keyboard_interrupt_at_any_moment_never_orphans_the_coroutine(portal_backend: str) -> None:
    # Regression: a Ctrl-C landing inside submit() (after the task had started) used to escape
    # without cancelling the coroutine, which kept running in the portal.
    import random

    running = [0]
    rng = random.Random(1)

    @sync_twin
    async def slow() -> None:
        running[0] += 1
        try:
            await anyio.sleep(30)
        finally:
            running[0] -= 1

    for _ in range(30):  # each interrupt is seen within the 0.1 s poll of the waiting caller
        delay = rng.choice([0.0, 0.0001, 0.0005, 0.001, 0.003])
        interrupter = threading.Thread(target=lambda d=delay: (time.sleep(d), _thread.interrupt_main()))
        try:
            interrupter.start()
            slow.sync()
        except KeyboardInterrupt:
            pass
        finally:
            interrupter.join()
        assert running[0] == 0  # cancelled (its finally ran) or never started
    assert identify.sync()[1] == portal_backend


# -- fork ----------------------------------------------------------------------------------------


def _child_calls_sync(queue: Any, backend: str) -> None:
    configure(backend=backend)
    queue.put(identify.sync())
    queue.put(identify.sync())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_call_sync(portal_backend: str) -> None:
    parent_portal, _ = identify.sync()  # the parent has a live portal before forking
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a threaded process
        child = ctx.Process(target=_child_calls_sync, args=(queue, portal_backend))
        child.start()
    try:
        first = queue.get(timeout=20)
        second = queue.get(timeout=20)
    finally:
        child.join(20)
    assert child.exitcode == 0
    assert first[1] == second[1] == portal_backend
    assert first[0] == second[0]  # the child reuses its own new portal
    assert identify.sync()[0] == parent_portal  # the parent's portal is unaffected


# -- interpreter exit ------------------------------------------------------------------------------

_AT_EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    import anyio
    from asynclm.runtime import configure, loop_resource, sync_twin

    configure(backend=sys.argv[1])
    started = threading.Event()

    def say(line):
        os.write(1, (line + "\\n").encode())  # one write per line: threads print concurrently

    class Resource:
        async def aclose(self):
            say("resource closed")

    @sync_twin
    async def pending_forever():
        loop_resource("test-resource", Resource, Resource.aclose)
        try:
            started.set()
            await anyio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # async cleanup still works at exit
            say("finally ran")

    def caller():
        try:
            pending_forever.sync()
        except BaseException as exc:
            say("caller got " + type(exc).__name__)

    # A daemon thread's .sync() call is still running when the main thread ends.
    threading.Thread(target=caller, daemon=True).start()
    assert started.wait(10)
    say("main exiting")
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pending_portal_call_runs_its_finally_at_interpreter_exit(backend: str) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _AT_EXIT_SCRIPT, backend], capture_output=True, text=True, timeout=30
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    # The daemon caller may or may not get to report its PortalClosedError before the end.
    lines = [line for line in proc.stdout.splitlines() if line != "caller got PortalClosedError"]
    assert lines[:3] == ["main exiting", "finally ran", "resource closed"], (proc.stdout, proc.stderr)
    assert elapsed < 20  # the exit did not wait for the 60 s sleep


def test_configure_backend_trio_without_trio_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['trio'] = None\n"
        "import asynclm\n"
        "try:\n"
        "    asynclm.configure(backend='trio')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "the trio backend needs trio: pip install 'asynclm[trio]'", out.stderr


FIRST_TRIO_PORTALS = """
import threading, asynclm
from asynclm.testing import ScriptedLM
asynclm.configure(backend="trio")
qa = asynclm.Predict("question -> answer", lm=ScriptedLM({"answer": "ok"}))
barrier = threading.Barrier(64)
failures = []
def first_call():
    barrier.wait()
    try:
        assert qa.sync(question="q").answer == "ok"
    except BaseException as exc:
        failures.append(repr(exc))
threads = [threading.Thread(target=first_call) for _ in range(64)]
for t in threads: t.start()
for t in threads: t.join()
print(len(failures), failures[:2])
"""


@pytest.mark.parametrize("run", range(3))
def test_64_threads_starting_their_first_trio_portal_at_once(run: int) -> None:
    """In a fresh interpreter, 64 threads each make their first ``.sync()`` on trio at the same
    moment: trio and anyio's trio backend are imported once, under a lock (1-2 of 64 used to fail
    with "partially initialized module 'trio._threads'")."""
    out = subprocess.run([sys.executable, "-c", FIRST_TRIO_PORTALS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0 []"
