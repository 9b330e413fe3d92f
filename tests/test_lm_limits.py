"""Process-wide limits of one LM: max_concurrency and rpm across tasks, threads' portals and
both backends at once; one LM object used from many loops."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import pytest
import trio

from asynclm.lm import LM
from asynclm.lm._transports import HTTP11Transport
from asynclm.testing import FakeOpenAIServer

KEY = "sk-limits"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    return LM("openai/fake-model", base_url=server.base_url, api_key=KEY, cache=False, **kw)  # type: ignore[arg-type]


def echo(req) -> str:  # type: ignore[no-untyped-def]
    return f"echo: {req.last_user_message}"


async def run_mixed(lm: LM, threads: int, calls_per_thread: int, tasks: int) -> list[str]:
    """``threads`` plain threads calling ``lm.sync`` (each on its own portal loop) while ``tasks``
    tasks call it on the current loop; returns every answer, checked against its prompt."""
    results: dict[str, str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def thread_main(t: int) -> None:
        try:
            for i in range(calls_per_thread):
                prompt = f"thread {t} call {i}"
                text = lm.sync(prompt).text
                with lock:
                    results[prompt] = text
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    async def task_main(i: int) -> None:
        prompt = f"task {i}"
        text = (await lm(prompt)).text
        with lock:
            results[prompt] = text

    workers = [threading.Thread(target=thread_main, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    async with anyio.create_task_group() as tg:
        for i in range(tasks):
            tg.start_soon(task_main, i)
    for w in workers:
        await anyio.to_thread.run_sync(w.join)
    assert not errors, errors
    assert len(results) == threads * calls_per_thread + tasks
    assert all(text == f"echo: {prompt}" for prompt, text in results.items())
    return list(results)


async def test_max_concurrency_holds_across_64_threads_and_256_tasks(server: FakeOpenAIServer) -> None:
    server.set_responses(echo)
    server.latency = 0.01
    lm = make_lm(server, max_concurrency=8)
    await run_mixed(lm, threads=64, calls_per_thread=2, tasks=256)
    assert server.requests == 64 * 2 + 256
    assert server.max_in_flight <= 8
    assert lm.peak_concurrency == 8  # reached, never exceeded


async def test_rpm_holds_across_64_threads_and_256_tasks(server: FakeOpenAIServer) -> None:
    sends: list[float] = []

    class StampingTransport:
        """The default transport, noting when each request leaves the limiter (measured at the
        client: server-side arrival times bunch up whenever the in-process server is starved)."""

        def __init__(self) -> None:
            self.inner = HTTP11Transport()

        async def post(self, *args: Any, **kwargs: Any) -> Any:
            sends.append(time.monotonic())
            return await self.inner.post(*args, **kwargs)

        async def post_stream(self, *args: Any, **kwargs: Any) -> Any:
            sends.append(time.monotonic())
            return await self.inner.post_stream(*args, **kwargs)

        async def aclose(self) -> None:
            await self.inner.aclose()

    server.set_responses(echo)
    rpm = 12_000  # 200 per second, burst 200
    lm = make_lm(server, rpm=rpm, http_client_factory=StampingTransport)
    await run_mixed(lm, threads=64, calls_per_thread=2, tasks=256)
    sends.sort()
    n = len(sends)
    assert n == 384 == server.requests
    rate, burst = rpm / 60, rpm / 60
    # In every window [t_i, t_j] at most burst + rate * (t_j - t_i) requests leave (+1 for clock
    # granularity between threads).
    worst = max((j - i + 1) - (burst + rate * (sends[j] - sends[i])) for i in range(n) for j in range(i, n))
    assert worst <= 1
    # and the rate was really enforced: 384 requests at 200/s after a burst of 200 take >= 0.9 s
    assert sends[-1] - sends[0] >= 0.9


async def test_tpm_spaces_requests_by_their_token_estimate(server: FakeOpenAIServer) -> None:
    server.set_responses(echo)
    # each request reserves ~len(body)/4 + max_tokens ≈ 1020 tokens; 60 000 tpm = 1000/s
    lm = make_lm(server, tpm=60_000, max_tokens=1000)
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(lm, f"p{i}")
    # burst 1000 tokens: the first goes at once, each later one waits for ~1 s of refill minus
    # what the previous calls gave back (the fake server reports few tokens)
    assert time.monotonic() - start >= 0.2
    assert server.requests == 4


def test_one_lm_from_8_portals_a_trio_loop_and_an_asyncio_loop(fake_openai_server: FakeOpenAIServer) -> None:
    server = fake_openai_server
    server.set_responses(echo)
    server.latency = 0.005
    lm = make_lm(server, max_concurrency=4)
    errors: list[BaseException] = []
    done: list[str] = []
    lock = threading.Lock()

    def record(kind: str, n: int) -> None:
        with lock:
            done.extend([kind] * n)

    def portal_thread(t: int) -> None:
        try:
            for i in range(10):
                assert lm.sync(f"portal {t} {i}").text == f"echo: portal {t} {i}"
            record("portal", 10)
        except BaseException as exc:
            errors.append(exc)

    async def on_loop(kind: str) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(40):

                async def one(i: int = i) -> None:
                    assert (await lm(f"{kind} {i}")).text == f"echo: {kind} {i}"

                tg.start_soon(one)
        record(kind, 40)

    def loop_thread(kind: str) -> None:
        try:
            if kind == "trio":
                trio.run(on_loop, kind)
            else:
                asyncio.run(on_loop(kind))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=portal_thread, args=(t,)) for t in range(8)]
    threads += [threading.Thread(target=loop_thread, args=(k,)) for k in ("trio", "asyncio")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(set(done)) == ["asyncio", "portal", "trio"] and len(done) == 160
    assert server.requests == 160
    assert server.max_in_flight <= 4
