"""The response cache: memory hits, the SQLite file across processes (and free of secrets),
single-flight across tasks and threads, leader cancellation, rollout_id, off-loop disk I/O."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import anyio
import pytest

import asynclm
from asynclm.lm import LM, BadRequestError, _cache, track_usage
from asynclm.testing import FakeOpenAIServer, Fault

KEY = "sk-cache-test-SECRET-987654321"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


@pytest.fixture
def cache_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    with asynclm.context(cache_dir=str(tmp_path)):
        yield tmp_path


def unique(prefix: str = "q") -> str:
    # the memory cache is process-wide: every test asks its own questions
    return f"{prefix}-{uuid.uuid4().hex}"


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    return LM("openai/fake-model", base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]


async def test_a_repeated_call_is_a_hit_with_zero_usage(server: FakeOpenAIServer, cache_dir: Path) -> None:
    lm = make_lm(server)
    prompt = unique()
    first = await lm(prompt)
    with track_usage() as usage:
        second = await lm(prompt)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.text == first.text and second.raw == first.raw
    assert second.raw is not first.raw  # each caller gets its own dict
    assert second.usage.total_tokens == 0 and first.usage.total_tokens > 0
    assert (usage.calls, usage.cache_hits, usage.total_tokens) == (1, 1, 0)
    assert lm.history[-1]["cache_hit"] is True
    assert server.requests == 1


async def test_what_keys_the_cache(server: FakeOpenAIServer, cache_dir: Path) -> None:
    lm = make_lm(server, temperature=0.5)
    prompt = unique()
    await lm(prompt)
    await lm(prompt, temperature=0.6)  # another parameter: another entry
    await lm(prompt, rollout_id=1)  # another sample of the same request
    await lm(prompt, rollout_id=2)
    assert server.requests == 4
    assert (await lm(prompt, rollout_id=1)).cache_hit
    assert (await lm(messages=[{"role": "user", "content": prompt}])).cache_hit  # same body
    # the API key is not in the key, and the endpoint is normalized (trailing slash, host case,
    # default port): another LM object for the same model on the same server hits
    other = LM("openai/fake-model", base_url=server.url + "/v1/", api_key="sk-other", temperature=0.5)
    assert (await other(prompt)).cache_hit
    assert server.requests == 4
    assert all("rollout_id" not in req.json for req in server.request_log)  # never sent


async def test_cache_false_per_lm_and_per_call(server: FakeOpenAIServer, cache_dir: Path) -> None:
    prompt = unique()
    cached = make_lm(server)
    await cached(prompt)
    assert not (await cached(prompt, cache=False)).cache_hit
    assert not (await make_lm(server, cache=False)(prompt)).cache_hit
    assert server.requests == 3


async def test_errors_are_not_cached(server: FakeOpenAIServer, cache_dir: Path) -> None:
    server.fail_next(Fault.error(400))
    lm = make_lm(server)
    prompt = unique()
    with pytest.raises(BadRequestError):
        await lm(prompt)
    assert not (await lm(prompt)).cache_hit
    assert server.requests == 2


async def test_single_flight_100_identical_calls_make_one_request(server: FakeOpenAIServer, cache_dir: Path) -> None:
    server.latency = 0.2
    lm = make_lm(server)
    prompt = unique()
    responses = []

    async def call() -> None:
        responses.append(await lm(prompt))

    with track_usage() as usage:
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)
    assert server.requests == 1
    assert len(responses) == 100 and {r.text for r in responses} == {"ok"}
    assert sum(not r.cache_hit for r in responses) == 1
    assert usage.calls == 100 and usage.cache_hits == 99
    leader = next(r for r in responses if not r.cache_hit)
    assert usage.total_tokens == leader.usage.total_tokens > 0  # the hits cost nothing
    assert len(_cache.flights) == 0  # nothing left behind


async def test_single_flight_across_threads_and_loops(server: FakeOpenAIServer, cache_dir: Path) -> None:
    # configure(), not only the fixture's context(): plain threads do not inherit a context, and
    # calls under another cache directory are another cache (its own memory layer and flights)
    asynclm.configure(cache_dir=str(cache_dir))
    server.latency = 0.3
    lm = make_lm(server)
    prompt = unique()
    texts: list[str] = []
    lock = threading.Lock()

    def in_thread() -> None:
        text = lm.sync(prompt).text  # each thread: its own portal loop
        with lock:
            texts.append(text)

    async def in_task() -> None:
        text = (await lm(prompt)).text
        with lock:
            texts.append(text)

    threads = [threading.Thread(target=in_thread) for _ in range(8)]
    for t in threads:
        t.start()
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(in_task)
    for t in threads:
        await anyio.to_thread.run_sync(t.join)
    assert texts == ["ok"] * 28
    assert server.requests == 1


async def test_a_cancelled_leader_hands_the_request_to_a_waiter(server: FakeOpenAIServer, cache_dir: Path) -> None:
    server.fail_next(Fault.hang())  # the leader's request never completes on its own
    lm = make_lm(server)
    prompt = unique()
    got: list[str] = []

    async def follower() -> None:
        got.append((await lm(prompt)).text)

    async with anyio.create_task_group() as tg:
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await lm(prompt)

        tg.start_soon(leader)
        await server.wait_until(lambda s: s.requests == 1)
        tg.start_soon(follower)
        tg.start_soon(follower)
        await anyio.sleep(0.05)
        leader_scope.cancel()
    assert got == ["ok", "ok"]
    assert server.requests == 2  # the leader's request was abandoned; one follower made another
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_identical_waiters_share_the_leaders_error(server: FakeOpenAIServer, cache_dir: Path) -> None:
    server.latency = 0.2
    server.fail_next(Fault.error(422))
    lm = make_lm(server)
    prompt = unique()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await lm(prompt)
        except BadRequestError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(call)
    assert len(errors) == 10 and server.requests == 1
    assert len({id(e) for e in errors}) == 10  # each its own exception object
    assert all(e.status == 422 for e in errors)


async def test_disk_reads_never_run_on_the_event_loop(
    server: FakeOpenAIServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = make_lm(server)
    prompt = unique()
    await lm(prompt)
    _cache.disk_cache(str(cache_dir)).flush()
    _cache.memory_of(str(cache_dir)).clear()  # force the disk lookup
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real_get = _cache.DiskCache.get

    def spy(self: _cache.DiskCache, key: str) -> bytes | None:
        seen.append(threading.get_ident())
        return real_get(self, key)

    monkeypatch.setattr(_cache.DiskCache, "get", spy)
    resp = await lm(prompt)
    assert resp.cache_hit and server.requests == 1
    assert seen and loop_thread not in seen


async def test_memory_only_cache_writes_no_file(server: FakeOpenAIServer, cache_dir: Path) -> None:
    lm = make_lm(server, cache="memory")
    prompt = unique()
    await lm(prompt)
    assert (await lm(prompt)).cache_hit
    assert not (cache_dir / _cache.FILE_NAME).exists()


_CHILD = textwrap.dedent(
    """
    import json, sys
    import asynclm
    asynclm.configure(cache_dir=sys.argv[1])
    lm = asynclm.LM("openai/fake-model", base_url=sys.argv[2], api_key=sys.argv[3])
    resp = lm.sync(sys.argv[4], temperature=0.0)
    print(json.dumps({"text": resp.text, "cache_hit": resp.cache_hit}))
    """
)


def run_child(cache_dir: Path, server: FakeOpenAIServer, prompt: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cache_dir), server.base_url, KEY, prompt],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_cache_persists_across_processes_and_holds_no_secret(
    fake_openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server = fake_openai_server
    server.set_responses(lambda req: f"echo: {req.last_user_message}")
    prompt = unique("persist")
    first = run_child(tmp_path, server, prompt)
    second = run_child(tmp_path, server, prompt)
    assert first == {"text": f"echo: {prompt}", "cache_hit": False}
    assert second == {"text": f"echo: {prompt}", "cache_hit": True}
    assert server.requests == 1
    assert server.last_request.headers["authorization"] == f"Bearer {KEY}"  # the key was used...
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == _cache.FILE_NAME for p in files)
    for path in files:  # ...and is in no cache file (nor the base URL)
        data = path.read_bytes()
        assert KEY.encode() not in data and b"SECRET" not in data
        assert server.base_url.encode() not in data
    assert prompt.encode() in (tmp_path / _cache.FILE_NAME).read_bytes()  # it is the right file


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_uses_the_cache_afresh(fake_openai_server: FakeOpenAIServer, tmp_path: Path) -> None:
    import os

    server = fake_openai_server
    prompt = unique("fork")
    with asynclm.context(cache_dir=str(tmp_path)):
        make_lm(server).sync(prompt)
        _cache.disk_cache(str(tmp_path)).flush()
        memory = _cache.memory_of(str(tmp_path))
        memory._lock.acquire()  # as if another thread held it at the fork
        try:
            pid = os.fork()
            if pid == 0:  # the child: must not deadlock, and finds the parent's entries
                code = 1
                try:
                    memory.clear()
                    hit = make_lm(server).sync(prompt).cache_hit
                    code = 0 if hit else 2
                finally:
                    os._exit(code)
        finally:
            memory._lock.release()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.requests == 1
