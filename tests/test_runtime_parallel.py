"""Parallel: order, bounds, error policies, per-item timeouts, nesting, scale, argument shapes."""

# NOTE: a parametrized async test must take ``anyio_backend`` itself: when it does not, AnyIO's
# plugin re-creates the item per backend and drops the other parameters.

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import pytest

from asynclm.runtime import Parallel, context, run_items, settings, sync_twin

from .helpers import InFlight, StubLM


class Boom(Exception):
    pass


class Other(Exception):
    pass




async def echo(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


async def test_results_keep_input_order() -> None:
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.02) for _ in range(60)]

    async def item(i: int, delay: float) -> int:
        await anyio.sleep(delay)
        return i * i

    out = await Parallel(concurrency=8)([(item, (i, d)) for i, d in enumerate(delays)])
    assert out == [i * i for i in range(60)]


async def test_empty_input_and_generators() -> None:
    assert await Parallel()([]) == []
    assert await Parallel()((echo, (i,)) for i in range(3)) == [0, 1, 2]


@pytest.mark.parametrize("concurrency", [1, 3, 16])
async def test_concurrency_is_never_exceeded_and_is_reached(concurrency: int, anyio_backend: str) -> None:
    gauge = InFlight()

    async def item() -> None:
        with gauge:
            await anyio.sleep(0.005)

    await Parallel(concurrency=concurrency)([(item, ())] * 40)
    assert gauge.peak == concurrency
    assert gauge.now == 0


async def test_concurrency_bound_holds_for_sync_callables_in_threads() -> None:
    gauge = InFlight()

    def item() -> None:
        with gauge:
            threading.Event().wait(0.03)  # long enough for 4 threads to overlap on a busy machine

    await Parallel(concurrency=4)([(item, ())] * 16)
    assert gauge.peak == 4


async def test_first_failure_is_raised_with_its_type_and_cancels_in_flight_items() -> None:
    finished: list[int] = []
    cancelled: list[int] = []

    async def item(i: int) -> int:
        try:
            if i == 3:
                await anyio.sleep(0.01)
                raise Boom(f"item {i}")
            await anyio.sleep(5)
            finished.append(i)
            return i
        except anyio.get_cancelled_exc_class():
            cancelled.append(i)
            raise

    with anyio.fail_after(4), pytest.raises(Boom, match="item 3"):
        await Parallel(concurrency=8)([(item, (i,)) for i in range(20)])
    assert finished == []
    assert sorted(cancelled) == [0, 1, 2, 4, 5, 6, 7]  # in flight when 3 failed; 8.. never started


@pytest.mark.parametrize("max_errors", [1, 3])
async def test_max_errors_tolerates_k_failures_with_none_slots(max_errors: int, anyio_backend: str) -> None:
    failing = set(range(0, 2 * max_errors, 2))  # k failures, spread out

    async def item(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i in failing:
            raise Boom(i)
        return i

    out = await Parallel(concurrency=4, max_errors=max_errors)([(item, (i,)) for i in range(10)])
    assert out == [None if i in failing else i for i in range(10)]


@pytest.mark.parametrize("max_errors", [0, 1, 3])
async def test_failure_k_plus_one_is_raised_with_its_original_type(
    max_errors: int, anyio_backend: str
) -> None:
    async def item(i: int) -> int:
        # concurrency 1: failures happen in index order, so the (k+1)-th one is known
        await anyio.lowlevel.checkpoint()
        if i < max_errors:
            raise Boom(i)
        if i == max_errors:
            raise Other(i)
        return i

    with pytest.raises(Other) as info:
        await Parallel(concurrency=1, max_errors=max_errors)([(item, (i,)) for i in range(10)])
    assert info.value.args == (max_errors,)


async def test_max_errors_none_tolerates_everything() -> None:
    async def item(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i % 2:
            raise Boom(i)
        return i

    out = await Parallel(max_errors=None)([(item, (i,)) for i in range(10)])
    assert out == [i if i % 2 == 0 else None for i in range(10)]


async def test_return_exceptions_puts_each_exception_in_its_slot() -> None:
    async def item(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        if i % 3 == 0:
            raise (Boom if i % 2 else Other)(i)
        return i

    out = await Parallel(concurrency=4, return_exceptions=True)([(item, (i,)) for i in range(12)])
    for i, value in enumerate(out):
        if i % 3 == 0:
            assert type(value) is (Boom if i % 2 else Other)
            assert value.args == (i,)
        else:
            assert value == i


async def test_per_item_timeout_cancels_the_item_and_yields_timeout_error() -> None:
    cleaned: list[int] = []

    async def item(i: int) -> int:
        try:
            await anyio.sleep(30 if i % 4 == 0 else 0.001)
            return i
        finally:
            cleaned.append(i)

    with anyio.fail_after(10):  # (1 s per item: a 1 ms item on a loaded 2-core CI box once took 0.2 s)
        out = await Parallel(concurrency=8, timeout=1.0, return_exceptions=True)(
            [(item, (i,)) for i in range(12)]
        )
    for i, value in enumerate(out):
        if i % 4 == 0:
            assert isinstance(value, TimeoutError)
        else:
            assert value == i
    assert sorted(cleaned) == list(range(12))  # the timed-out items' finally blocks ran


async def test_per_item_timeout_raises_timeout_error_by_default() -> None:
    async def slow() -> None:
        await anyio.sleep(30)

    with anyio.fail_after(10), pytest.raises(TimeoutError):
        await Parallel(timeout=0.05)([(slow, ())])


async def test_per_item_timeout_applies_to_sync_callables_too() -> None:
    # A worker thread cannot be interrupted: the item fails when the function returns late.
    def slow() -> str:
        threading.Event().wait(0.3)
        return "late"

    def fast() -> str:
        return "ok"

    out = await Parallel(timeout=0.05, return_exceptions=True)([(slow, ()), (fast, ())])
    assert isinstance(out[0], TimeoutError)
    assert "item 0" in str(out[0])
    assert out[1] == "ok"


async def test_an_item_that_swallows_its_cancellation_still_times_out() -> None:
    async def stubborn() -> str:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            pass  # misbehaving: swallows the cancellation and returns a value
        return "late"

    with pytest.raises(TimeoutError):
        await Parallel(timeout=0.05)([(stubborn, ())])


async def test_nested_parallel() -> None:
    inner = Parallel(concurrency=3)
    gauge = InFlight()

    async def leaf(i: int, j: int) -> int:
        with gauge:
            await anyio.sleep(0.001)
        return i * 10 + j

    async def branch(i: int) -> list[int]:
        return await inner([(leaf, (i, j)) for j in range(5)])

    out = await Parallel(concurrency=4)([(branch, (i,)) for i in range(6)])
    assert out == [[i * 10 + j for j in range(5)] for i in range(6)]
    assert gauge.peak <= 12  # 4 branches x 3 leaves


async def test_the_same_instance_can_run_concurrently_without_shared_state() -> None:
    par = Parallel(concurrency=2, max_errors=1)
    results: dict[str, Any] = {}

    async def item(tag: str, i: int) -> str:
        await anyio.sleep(0.001)
        if tag == "a" and i == 0:
            raise Boom  # one tolerated error in run "a" must not count against run "b"
        return f"{tag}{i}"

    async def run(tag: str) -> None:
        results[tag] = await par([(item, (tag, i)) for i in range(6)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a")
        tg.start_soon(run, "b")
    assert results["a"] == [None, "a1", "a2", "a3", "a4", "a5"]
    assert results["b"] == [f"b{i}" for i in range(6)]
    # and again: nothing accumulated from the previous runs
    assert await par([(item, ("a", 0)), (item, ("b", 1))]) == [None, "b1"]


async def test_ten_thousand_trivial_items() -> None:
    async def item(i: int) -> int:
        return i

    out = await Parallel(concurrency=64)([(item, (i,)) for i in range(10_000)])
    assert out == list(range(10_000))


async def test_sync_callables_run_in_worker_threads_with_the_context() -> None:
    host = threading.get_ident()

    def blocking(i: int) -> tuple[int, bool, Any]:
        return i, threading.get_ident() != host, settings.lm

    with context(lm=StubLM("ctx")):
        out = await Parallel(concurrency=4)([(blocking, (i,)) for i in range(8)])
    assert out == [(i, True, "ctx") for i in range(8)]


async def test_argument_shapes_dict_tuple_and_example_like() -> None:
    class ExampleLike:
        def __init__(self, **fields: Any) -> None:
            self.fields = fields

        def inputs(self) -> dict[str, Any]:
            return {k: v for k, v in self.fields.items() if k != "label"}

    async def item(a: int, b: int = 0) -> int:
        return a * 10 + b

    class Callable:
        async def __call__(self, a: int, b: int = 0) -> int:
            return a - b

    out = await Parallel()(
        [
            (item, {"a": 1, "b": 2}),
            (item, (3, 4)),
            (item, (5,)),
            (item, ExampleLike(a=6, b=7, label="ignored")),
            (Callable(), {"a": 9, "b": 1}),
            (sync_twin(item), (1,)),
        ]
    )
    assert out == [12, 34, 50, 67, 8, 10]


async def test_bad_items_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"item 1 must be a \(callable, arguments\) pair"):
        await Parallel()([(echo, (1,)), echo])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="item 0 must be"):
        await Parallel()([("not callable", ())])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"item 0: arguments must be a dict .*Wrap a single argument"):
        await Parallel()([(echo, 5)])
    ran: list[int] = []

    async def side_effect() -> None:
        ran.append(1)

    # A malformed batch fails before anything runs, whatever the error policy.
    for policy in ({"max_errors": None}, {"return_exceptions": True}):
        with pytest.raises(TypeError, match="item 1: arguments must be"):
            await Parallel(**policy)([(side_effect, ()), (echo, [1])])
    assert ran == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"max_errors": -1}, "max_errors"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Parallel(**kwargs)


async def test_cancelling_the_batch_cancels_in_flight_items() -> None:
    cancelled: list[int] = []

    async def item(i: int) -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(i)
            raise

    with anyio.move_on_after(0.1) as scope:
        await Parallel(concurrency=5)([(item, (i,)) for i in range(20)])
    assert scope.cancelled_caught
    assert sorted(cancelled) == [0, 1, 2, 3, 4]


def test_parallel_sync_from_plain_code_and_threads() -> None:
    pairs = [(echo, (i,)) for i in range(50)]
    assert Parallel(concurrency=5).sync(pairs) == list(range(50))
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(Parallel(concurrency=5).sync(pairs)))
    thread.start()
    thread.join()
    assert out == [list(range(50))]


def test_sync_items_may_call_sync_themselves() -> None:
    @sync_twin
    async def inner(i: int) -> int:
        await anyio.lowlevel.checkpoint()
        return i + 1

    def blocking(i: int) -> int:
        return inner.sync(i)  # in an anyio worker thread: runs on the Parallel's loop

    assert Parallel(concurrency=4).sync([(blocking, (i,)) for i in range(20)]) == list(range(1, 21))


async def test_run_items_reports_each_result() -> None:
    seen: list[tuple[int, Any, type | None]] = []

    async def item(i: int) -> int:
        if i == 1:
            raise Boom
        return i

    out = await run_items(
        [(item, (i,)) for i in range(3)],
        concurrency=2,
        max_errors=None,
        on_result=lambda i, v, e: seen.append((i, v, type(e) if e else None)),
    )
    assert out == [0, None, 2]
    assert sorted(seen, key=lambda s: s[0]) == [(0, 0, None), (1, None, Boom), (2, 2, None)]


async def test_progress_bar_does_not_change_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert await Parallel(progress=True, max_errors=None)([(echo, (i,)) for i in range(5)]) == list(range(5))


def test_repr_shows_configuration() -> None:
    assert repr(Parallel(concurrency=3, timeout=1.5)) == (
        "Parallel(concurrency=3, max_errors=0, return_exceptions=False, timeout=1.5, progress=False)"
    )
