"""Property test: context() overrides flow down a random tree of tasks and threads, never sideways
or back up.

Each node of a random tree enters a few nested ``context()`` blocks with values unique to it,
records the settings it sees, runs its children concurrently, then records them again. A child
is reached through one of the edges a user would write:

* from async code: a child task (``task``), a blocking function via ``asyncify`` (``asyncify``),
  a ``threading.Thread`` started with ``contextvars.copy_context().run`` (``thread``), a bare
  ``threading.Thread`` (``bare_thread``);
* from sync code: ``.sync()`` of an async function (``sync``, which runs on the thread's portal,
  or on the host loop in an AnyIO worker thread), or one of the two kinds of thread.

Every node must see exactly the overrides of its ancestors and its own — a bare thread starts
from the process defaults, as Python threads do not inherit the context — both before its
children run (nothing from siblings) and after (nothing flowed back from the children).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from asynclm.runtime import Settings, asyncify, configure, context, current_settings, syncify

from .helpers import StubLM

KEYS = ("lm", "adapter", "cache_dir")
DEFAULTS = {"lm": StubLM("default-lm"), "adapter": "default-adapter", "cache_dir": "default-cache"}
ASYNC_EDGES = ("task", "asyncify", "thread", "bare_thread")
SYNC_EDGES = ("sync", "thread", "bare_thread")
CHILD_IS_ASYNC = {"task": True, "sync": True, "asyncify": False, "thread": False, "bare_thread": False}
# Python 3.14 can make threads inherit the context (on by default in free-threaded builds).
THREADS_INHERIT = bool(getattr(sys.flags, "thread_inherit_context", 0))
MAX_DEPTH = 3


@dataclasses.dataclass
class Node:
    id: int
    is_async: bool
    blocks: list[dict[str, str]]
    children: list[tuple[str, Node]]

    def walk(self) -> Iterator[Node]:
        yield self
        for _, child in self.children:
            yield from child.walk()


@st.composite
def trees(draw: st.DrawFn, root_is_async: bool) -> Node:
    ids = itertools.count()

    def node(is_async: bool, depth: int) -> Node:
        nid = next(ids)
        blocks = []
        for b in range(draw(st.integers(0, 2))):
            keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
            blocks.append({k: (StubLM if k == "lm" else str)(f"n{nid}.b{b}.{k}") for k in keys})
        children: list[tuple[str, Node]] = []
        if depth < MAX_DEPTH:
            for _ in range(draw(st.integers(0, 3 if depth == 0 else 2))):
                edge = draw(st.sampled_from(ASYNC_EDGES if is_async else SYNC_EDGES))
                children.append((edge, node(CHILD_IS_ASYNC[edge], depth + 1)))
        return Node(nid, is_async, blocks, children)

    return node(root_is_async, 0)


def expected_views(root: Node, inherited: dict[str, str]) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}

    def visit(node: Node, env: dict[str, str]) -> None:
        for block in node.blocks:
            env = {**env, **block}
        out[node.id] = tuple(env[k] for k in KEYS)
        for edge, child in node.children:
            visit(child, dict(DEFAULTS) if edge == "bare_thread" and not THREADS_INHERIT else env)

    visit(root, inherited)
    return out


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[Any, ...]]] = {}
        self.lock = threading.Lock()

    def record(self, node: Node) -> None:
        snapshot = current_settings()
        with self.lock:
            self.seen.setdefault(node.id, []).append(tuple(getattr(snapshot, k) for k in KEYS))


def run_tree(recorder: Recorder) -> tuple[Any, Any]:
    """The two runners, for async nodes and for sync nodes (mutually recursive)."""

    def spawn(edge: str, child: Node) -> tuple[threading.Thread, list[BaseException]]:
        """Start the thread for a ``thread`` / ``bare_thread`` edge from the calling thread."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                run_sync_node(child)
            except BaseException as exc:
                errors.append(exc)

        if edge == "thread":  # the user carries the context over explicitly
            thread = threading.Thread(target=contextvars.copy_context().run, args=(target,))
        else:
            thread = threading.Thread(target=target)
        thread.start()
        return thread, errors

    def join(started: list[tuple[threading.Thread, list[BaseException]]]) -> None:
        for thread, errors in started:
            thread.join()
            if errors:
                raise errors[0]

    def spawn_and_join(edge: str, child: Node) -> None:
        join([spawn(edge, child)])

    async def run_async_node(node: Node) -> None:
        with contextlib.ExitStack() as stack:
            for block in node.blocks:
                stack.enter_context(context(**block))
                await anyio.lowlevel.checkpoint()  # let siblings interleave inside the blocks
            recorder.record(node)
            async with anyio.create_task_group() as tg:
                for edge, child in node.children:
                    if edge == "task":
                        tg.start_soon(run_async_node, child)
                    elif edge == "asyncify":
                        tg.start_soon(asyncify(run_sync_node), child)
                    else:
                        # from a worker thread, which runs in a copy of this task's context
                        tg.start_soon(anyio.to_thread.run_sync, spawn_and_join, edge, child)
            recorder.record(node)

    def run_sync_node(node: Node) -> None:
        with contextlib.ExitStack() as stack:
            for block in node.blocks:
                stack.enter_context(context(**block))
            recorder.record(node)
            started = []
            for edge, child in node.children:
                if edge == "sync":
                    syncify(run_async_node)(child)
                else:
                    started.append(spawn(edge, child))
            join(started)
            recorder.record(node)

    return run_async_node, run_sync_node


def check(root: Node, recorder: Recorder, inherited: dict[str, str]) -> None:
    expected = expected_views(root, inherited)
    assert set(recorder.seen) == {n.id for n in root.walk()}, "some node did not run"
    for nid, views in recorder.seen.items():
        assert views == [expected[nid]] * 2, f"node {nid}: saw {views}, expected {expected[nid]}"


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    before = current_settings()
    configure(**DEFAULTS)
    yield
    configure(**{f.name: getattr(before, f.name) for f in dataclasses.fields(Settings)})


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=trees(root_is_async=False), backend=st.sampled_from(["asyncio", "trio"]))
def test_context_flows_down_a_tree_rooted_in_sync_code(root: Node, backend: str) -> None:
    recorder = Recorder()
    _, run_sync_node = run_tree(recorder)
    with context(backend=backend):  # the portals of this tree's .sync() calls
        run_sync_node(root)
    check(root, recorder, DEFAULTS)


@hypothesis_settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(root=trees(root_is_async=True))
async def test_context_flows_down_a_tree_rooted_in_async_code(anyio_backend: str, root: Node) -> None:
    recorder = Recorder()
    run_async_node, _ = run_tree(recorder)
    with context(lm=StubLM("test-lm")):
        await run_async_node(root)
    check(root, recorder, {**DEFAULTS, "lm": "test-lm"})
