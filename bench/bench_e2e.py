"""End-to-end measurements: one measurement of one client, printed as a JSON line.

``python -m bench`` runs each of these in a fresh interpreter (so CPU time and peak RSS belong to
that client alone) and repeats them; :func:`run` also works in-process (the CI smoke test).

Clients (every one POSTs the same bytes, see ``bench._common.request_body``, and decodes the
JSON answer; the asynclm rows also parse it into a ``Prediction``):

* ``aiohttp``, ``httpx2``, ``httpx`` — the raw HTTP clients: ``post`` + ``json.loads`` + the
  answer text (``httpx2`` also runs on trio);
* ``asynclm-transport`` — asynclm's own HTTP/1.1 transport, same raw work;
* ``asynclm-lm`` — ``asynclm.LM`` called with the formatted messages;
* ``asynclm`` — ``asynclm.Predict("question -> answer")`` with the default transport;
* ``asynclm-aiohttp`` — the same ``Predict`` on the aiohttp transport (asyncio only).

    python -m bench.bench_e2e '{"scenario": "conc", "client": "asynclm", "url": "http://127.0.0.1:PORT/v1",
                                "n": 2000, "concurrency": 64, "backend": "asyncio"}'
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from bench._common import ANSWER, API_KEY, HEADERS, MODEL, QUESTION, SIGNATURE, request_body

RAW_CLIENTS = ("aiohttp", "httpx2", "httpx", "asynclm-transport")
ASYNCLM_CLIENTS = ("asynclm", "asynclm-aiohttp", "asynclm-lm")

Call = Callable[[], Awaitable[str]]


def _answer(payload: bytes) -> str:
    return str(json.loads(payload)["choices"][0]["message"]["content"])


def _lm(base_url: str, client: str) -> Any:
    import asynclm

    factory = None
    if client == "asynclm-aiohttp":
        from asynclm.lm._transports import AiohttpTransport

        factory = AiohttpTransport
    return asynclm.LM(f"openai/{MODEL}", base_url=base_url, api_key=API_KEY, cache=False, http_client_factory=factory)


def make_predict(base_url: str, client: str = "asynclm") -> Any:
    import asynclm

    return asynclm.Predict(SIGNATURE, lm=_lm(base_url, client))


@contextlib.asynccontextmanager
async def caller(client: str, base_url: str, limit: int = 0) -> AsyncIterator[Call]:
    """An async context yielding ``call()``: one request/answer round trip of ``client``."""
    url = base_url + "/chat/completions"
    body = request_body()
    if client == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:

            async def call() -> str:
                async with session.post(url, data=body, headers=HEADERS) as r:
                    return _answer(await r.read())

            yield call
    elif client in ("httpx", "httpx2"):
        httpx: Any = __import__(client)
        limits = httpx.Limits(max_connections=limit or None, max_keepalive_connections=limit or None)
        async with httpx.AsyncClient(limits=limits, timeout=600) as hclient:

            async def call() -> str:
                r = await hclient.post(url, content=body, headers=HEADERS)
                return _answer(r.content)

            yield call
    elif client == "asynclm-transport":
        from asynclm.lm._transports import HTTP11Transport

        transport = HTTP11Transport()
        try:

            async def call() -> str:
                return _answer((await transport.post(url, body, HEADERS)).body)

            yield call
        finally:
            await transport.aclose()
    elif client == "asynclm-lm":
        from asynclm.adapters import ChatAdapter

        lm = _lm(base_url, client)
        messages = ChatAdapter().format(SIGNATURE, [], {"question": QUESTION})

        async def call() -> str:
            return str((await lm(messages=messages)).texts[0])

        yield call
    elif client == "anyio-sleep":  # the floor of the cancel scenario: a task and nothing else

        async def call() -> str:
            await anyio.sleep(3600)
            return ""

        yield call
    elif client in ("asynclm", "asynclm-aiohttp"):
        predict = make_predict(base_url, client)

        async def call() -> str:
            return str((await predict(question=QUESTION)).answer)

        yield call
    else:
        raise SystemExit(f"unknown client {client!r}")


async def _drive(call: Call, n: int, concurrency: int) -> None:
    """``n`` calls, ``concurrency`` at a time (one worker task per slot)."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, n)):
            tg.start_soon(worker)


def _check(text: str, client: str) -> None:
    expected = ANSWER if client.startswith("asynclm") and client not in ("asynclm-transport", "asynclm-lm") else None
    if expected is not None and text != expected:
        raise RuntimeError(f"{client}: got {text!r}, expected {expected!r}")
    if expected is None and ANSWER not in text:
        raise RuntimeError(f"{client}: the completion {text!r} does not contain {ANSWER!r}")


# -- scenarios ---------------------------------------------------------------------------------


async def _seq(spec: dict[str, Any]) -> dict[str, float]:
    """Sequential calls (the server answers at once): wall and CPU µs per call."""
    n = spec["n"]
    async with caller(spec["client"], spec["url"]) as call:
        for _ in range(min(50, n)):  # warm-up: connection open, caches filled
            _check(await call(), spec["client"])
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await call()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"us_per_call": 1e6 * wall / n, "cpu_us_per_call": 1e6 * cpu / n}


async def _conc(spec: dict[str, Any]) -> dict[str, float]:
    """``n`` calls, ``concurrency`` in flight: calls/s and client CPU ms per call."""
    n, c = spec["n"], spec["concurrency"]
    async with caller(spec["client"], spec["url"], limit=c) as call:
        _check(await call(), spec["client"])
        await _drive(call, c, c)  # warm-up: open the pool
        cpu0, t0 = time.process_time(), time.perf_counter()
        await _drive(call, n, c)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"calls_per_s": n / wall, "cpu_ms_per_call": 1000 * cpu / n, "wall_s": wall}


def _threads(spec: dict[str, Any]) -> dict[str, float]:
    """``Predict.sync()`` from ``threads`` plain threads (a pool, each thread warmed up with one
    call so it has its portal) vs the same calls awaited by as many tasks in one loop."""
    n, threads, backend = spec["n"], spec["concurrency"], spec["backend"]
    if spec["client"] == "awaited":
        spec = {**spec, "client": "asynclm"}
        return anyio.run(_conc, spec, backend=backend)
    import asynclm

    if backend == "trio":
        # Import trio before the threads start: while one thread imports it, another thread's
        # first .sync() can see the half-imported module (AttributeError: partially initialized
        # module 'trio' has no attribute 'lowlevel', from asynclm.runtime._backends).
        import trio  # noqa: F401
    predict = make_predict(spec["url"])
    per_thread = max(1, n // threads)
    with asynclm.context(backend=backend), ThreadPoolExecutor(threads) as pool:
        barrier = threading.Barrier(threads)

        def prime(_: int) -> None:
            try:
                with asynclm.context(backend=backend):
                    _check(predict.sync(question=QUESTION).answer, "asynclm")
            except BaseException:
                barrier.abort()  # the other threads fail too, instead of waiting forever
                raise
            barrier.wait(timeout=120)  # every pool thread gets (and keeps) its own portal

        list(pool.map(prime, range(threads)))

        def each(_: int) -> None:
            with asynclm.context(backend=backend):
                for _ in range(per_thread):
                    predict.sync(question=QUESTION)

        cpu0, t0 = time.process_time(), time.perf_counter()
        list(pool.map(each, range(threads)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    total = per_thread * threads
    return {"calls_per_s": total / wall, "cpu_ms_per_call": 1000 * cpu / total, "wall_s": wall}


async def _parallel(spec: dict[str, Any]) -> dict[str, float]:
    """``items`` trivial coroutine items: one warm-up run, then one timed run (ms)."""
    from asynclm.runtime import Parallel
    from bench.bench_runtime import trivial

    items, client = spec["n"], spec["client"]
    pairs = [(trivial, (i,)) for i in range(items)]

    async def once() -> None:
        if client.startswith("Parallel"):
            out = await Parallel(concurrency=spec["concurrency"])(pairs)
            assert out[-1] == items - 1
        elif client == "task group":
            async with anyio.create_task_group() as tg:
                for i in range(items):
                    tg.start_soon(trivial, i)
        elif client == "asyncio.gather":
            import asyncio

            await asyncio.gather(*(trivial(i) for i in range(items)))
        else:
            raise SystemExit(f"unknown parallel client {client!r}")

    await once()
    t0 = time.perf_counter()
    await once()
    return {"ms": 1000 * (time.perf_counter() - t0)}


async def _rss(spec: dict[str, Any]) -> dict[str, float]:
    """Peak RSS of the process with ``n`` calls in flight at once (the server holds each answer
    for its latency, so they overlap); the base RSS is measured after one warm-up call."""
    n, client = spec["n"], spec["client"]
    async with caller(client, spec["url"], limit=0) as call:
        _check(await call(), client)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        await _drive(call, n, n)
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": peak / 1024, "base_rss_mb": base / 1024, "wall_s": wall}


async def _in_flight(base_url: str) -> int:
    """The server's requests in flight (its ``/_fake/stats``), read in a worker thread."""
    import urllib.request

    def read() -> int:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_fake/stats", timeout=10) as r:
            return int(json.loads(r.read())["in_flight"])

    return await anyio.to_thread.run_sync(read)


async def _cancel(spec: dict[str, Any]) -> dict[str, float]:
    """Client CPU and wall time to cancel ``n`` calls in flight (the server never answers within
    the run): from ``cancel()`` to the task group's exit, every request's connection closed.
    ``anyio-sleep`` is the floor: tasks in ``anyio.sleep``, no connection at all."""
    n, client = spec["n"], spec["client"]
    async with caller(client, spec["url"], limit=0) as call, anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(call)
        with anyio.fail_after(60):
            if client == "anyio-sleep":
                await anyio.sleep(0.2)
            while client != "anyio-sleep" and await _in_flight(spec["url"]) < n:
                await anyio.sleep(0.05)
        cpu0, t0 = time.process_time(), time.perf_counter()
        tg.cancel_scope.cancel()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"cpu_us_per_cancelled": 1e6 * cpu / n, "cancel_ms": 1000 * wall}


def run(spec: dict[str, Any]) -> dict[str, float]:
    """One measurement described by ``spec`` (``scenario``, ``client``, ``backend``, ``url``,
    ``n``, ``concurrency``)."""
    scenario = spec["scenario"]
    backend = spec.get("backend", "asyncio")
    if scenario == "threads":
        return _threads(spec)
    fn = {"seq": _seq, "conc": _conc, "parallel": _parallel, "rss": _rss, "cancel": _cancel}[scenario]
    result: dict[str, float] = anyio.run(fn, spec, backend=backend)
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
