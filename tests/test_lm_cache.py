"""The response cache: memory hits, the SQLite file across processes (and free of secrets),
single-flight across tasks and threads, leader cancellation, rollout_id, off-loop disk I/O."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
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


# -- issue 15: the endpoint in the key, a view per cache directory, modes, failures, processes ----


async def test_one_model_name_on_two_servers_never_shares_entries(cache_dir: Path) -> None:
    # A new user pointed the same model name at a second server and got the first one's answers.
    prompt = unique("two-servers")
    with FakeOpenAIServer("from A") as a, FakeOpenAIServer("from B") as b:
        lm_a, lm_b = make_lm(a), make_lm(b)
        first_a, first_b = await lm_a(prompt), await lm_b(prompt)
        assert (first_a.text, first_a.cache_hit) == ("from A", False)
        assert (first_b.text, first_b.cache_hit) == ("from B", False)
        again_a, again_b = await lm_a(prompt), await lm_b(prompt)
        assert (again_a.text, again_a.cache_hit) == ("from A", True)
        assert (again_b.text, again_b.cache_hit) == ("from B", True)
        for mode in ("memory", True):  # memory-only entries are keyed the same way
            p = unique("two-servers-" + str(mode))
            assert (await lm_a(p, cache=mode)).text == "from A"
            assert (await lm_b(p, cache=mode)).text == "from B"
        # from the file too, with the memory layer forgotten
        _cache.disk_cache(str(cache_dir)).flush()
        _cache.memory_of(str(cache_dir)).clear()
        assert (await lm_b(prompt)).text == "from B" and (await lm_a(prompt)).text == "from A"
        assert (a.requests, b.requests) == (3, 3)


async def test_the_api_key_is_not_part_of_the_key(server: FakeOpenAIServer, cache_dir: Path) -> None:
    prompt = unique()
    await make_lm(server)(prompt)
    other_key = LM("openai/fake-model", base_url=server.base_url, api_key="sk-another-key")
    assert (await other_key(prompt)).cache_hit
    assert server.requests == 1


async def test_switching_the_cache_directory_switches_the_whole_view(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    answers = (f"answer {i}" for i in itertools.count(1))
    server.set_responses(lambda req: next(answers))
    lm = make_lm(server)
    prompt = unique("view")
    dir_a, dir_b = str(tmp_path / "a"), str(tmp_path / "b")
    asynclm.configure(cache_dir=dir_a)
    assert (await lm(prompt)).text == "answer 1"
    asynclm.configure(cache_dir=dir_b)  # nothing of A answers here, not even from memory
    under_b = await lm(prompt)
    assert (under_b.text, under_b.cache_hit) == ("answer 2", False)
    asynclm.configure(cache_dir=dir_a)  # and back: A's entries again
    back = await lm(prompt)
    assert (back.text, back.cache_hit) == ("answer 1", True)
    with asynclm.context(cache_dir=dir_b):  # a context() block is a view as well
        assert (await lm(prompt)).text == "answer 2"
    asynclm.configure(cache_dir=str(tmp_path / "c"))
    assert (await lm(prompt)).text == "answer 3"
    assert server.requests == 3
    # cache="memory" is its own process-wide layer, whatever the directory
    p = unique("memory-layer")
    await lm(p, cache="memory")
    asynclm.configure(cache_dir=dir_a)
    assert (await lm(p, cache="memory")).cache_hit
    assert server.requests == 4


async def test_cache_refresh_skips_the_lookup_and_stores_the_new_answer(
    server: FakeOpenAIServer, cache_dir: Path
) -> None:
    answers = iter(["old", "new", "newer"])
    server.set_responses(lambda req: next(answers))
    lm = make_lm(server)
    prompt = unique("refresh")
    assert (await lm(prompt)).text == "old"
    refreshed = await lm(prompt, cache="refresh")
    assert (refreshed.text, refreshed.cache_hit) == ("new", False)
    hit = await lm(prompt)
    assert (hit.text, hit.cache_hit) == ("new", True)  # memory holds the new answer
    _cache.disk_cache(str(cache_dir)).flush()
    _cache.memory_of(str(cache_dir)).clear()
    assert (await lm(prompt)).text == "new"  # and so does the file
    always = make_lm(server, cache="refresh")  # as the LM's default: every call asks
    assert (await always(prompt)).text == "newer"
    assert (await lm(prompt)).text == "newer"
    assert server.requests == 3


async def test_cache_modes_are_validated(server: FakeOpenAIServer, cache_dir: Path) -> None:
    for bad in ("yes", "disk", 1, None, "REFRESH"):
        with pytest.raises(ValueError, match="refresh"):
            make_lm(server, cache=bad)
    lm = make_lm(server)
    with pytest.raises(ValueError, match=r"call\(cache='sometimes'\).*'refresh'"):
        await lm("x", cache="sometimes")
    for bad_setting in (True, "redis://localhost:6379/0", 3):
        with pytest.raises(TypeError, match="RedisCache"):
            asynclm.configure(cache=bad_setting)
    with asynclm.context(cache=object()):  # the runtime holds any object; the LM says what it needs
        with pytest.raises(TypeError, match=r"not a cache backend.*RedisCache"):
            await lm(unique())
    assert server.requests == 0


def cache_warnings(record: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, asynclm.CacheWarning)]


async def calls_survive_a_broken_directory(server: FakeOpenAIServer, directory: Path) -> list[str]:
    """Calls under ``directory`` succeed, hit memory, and warn once; returns the warnings."""
    lm = make_lm(server)
    p1, p2 = unique("broken"), unique("broken")
    with pytest.warns(asynclm.CacheWarning) as record, asynclm.context(cache_dir=str(directory)):
        assert (await lm(p1)).text == "ok"
        assert (await lm(p2)).text == "ok"
        _cache.disk_cache(str(directory)).flush()
        assert (await lm(p1)).cache_hit and (await lm(p2)).cache_hit  # memory still serves
        assert (await lm(unique("broken"))).text == "ok"
        _cache.disk_cache(str(directory)).flush()
    messages = cache_warnings(record)
    assert len(messages) == 1, messages  # once per directory
    assert str(directory) in messages[0] and "memory only" in messages[0]
    assert server.requests == 3
    return messages


async def test_a_cache_directory_that_cannot_be_created(server: FakeOpenAIServer, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    (message,) = await calls_survive_a_broken_directory(server, blocker / "cache")  # works as root too
    assert "cannot be read" in message


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a directory root cannot write)")
async def test_a_read_only_cache_directory(server: FakeOpenAIServer) -> None:
    # an existing directory that nobody can write into, root included; the warning is once per
    # directory and process, so the store of the previous run (the other backend) is forgotten
    _cache._by_dir.pop("/proc/self", None)
    _cache._by_setting.pop("/proc/self", None)
    await calls_survive_a_broken_directory(server, Path("/proc/self"))


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="permission bits do not stop root",
)
async def test_a_cache_directory_without_write_permission(server: FakeOpenAIServer, read_only_dir: Path) -> None:
    await calls_survive_a_broken_directory(server, read_only_dir)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o500)
    try:
        yield tmp_path
    finally:
        tmp_path.chmod(0o700)


async def test_a_corrupt_cache_file(server: FakeOpenAIServer, tmp_path: Path) -> None:
    (tmp_path / _cache.FILE_NAME).write_bytes(b"this is not a database\x00\xff" * 500)
    (message,) = await calls_survive_a_broken_directory(server, tmp_path)
    assert "DatabaseError" in message and "delete" in message
    assert (tmp_path / _cache.FILE_NAME).read_bytes().startswith(b"this is not")  # left as found


async def test_a_cache_file_locked_by_another_program(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setattr(_cache, "BUSY_TIMEOUT", 0.3)
    monkeypatch.setattr(_cache, "READ_BUSY_TIMEOUT", 0.3)
    holder = sqlite3.connect(tmp_path / _cache.FILE_NAME, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")  # held until the end of the test
    try:
        (message,) = await calls_survive_a_broken_directory(server, tmp_path)
        assert "locked" in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_file_another_process_keeps_write_locked_is_still_read(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setattr(_cache, "BUSY_TIMEOUT", 0.3)
    lm = make_lm(server)
    stored, new = unique("stored"), unique("new")
    with asynclm.context(cache_dir=str(tmp_path)):
        await lm(stored)
        _cache.disk_cache(str(tmp_path)).flush()
        _cache.memory_of(str(tmp_path)).clear()
        holder = sqlite3.connect(tmp_path / _cache.FILE_NAME, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write transaction that never ends
        try:
            with pytest.warns(asynclm.CacheWarning) as record:
                assert (await lm(stored)).cache_hit  # WAL: reads go on beside a writer
                assert not (await lm(new)).cache_hit
                _cache.disk_cache(str(tmp_path)).flush()
                assert (await lm(new)).cache_hit  # from memory
                _cache.memory_of(str(tmp_path)).clear()
                assert (await lm(stored)).cache_hit  # the file is still read after the warning
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    (message,) = cache_warnings(record)
    assert "cannot be written" in message and "locked" in message and "still read" in message
    assert server.requests == 2


_FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys, warnings
    import asynclm
    from asynclm.lm import _cache
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    asynclm.configure(cache_dir=sys.argv[1])
    lm = asynclm.LM("openai/fake-model", base_url=sys.argv[2], api_key="k")
    lm.sync("warm-up")  # the file exists, with its table
    _cache.disk_cache(sys.argv[1]).flush()
    limit = 96 * 1024  # the "disk" is full at 96 KiB per file (RLIMIT_FSIZE holds for root too)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = [len(lm.sync(f"big {i}").text) for i in range(12)]
        _cache.disk_cache(sys.argv[1]).flush()
        texts += [len(lm.sync(f"big {i}").text) for i in range(12, 24)]
        _cache.disk_cache(sys.argv[1]).flush()
        hits = [lm.sync(f"big {i}").cache_hit for i in range(24)]
    messages = [str(w.message) for w in caught if issubclass(w.category, asynclm.CacheWarning)]
    print(json.dumps({"texts": texts, "hits": hits, "warnings": messages}))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_a_full_disk(fake_openai_server: FakeOpenAIServer, tmp_path: Path) -> None:
    server = fake_openai_server
    server.set_responses(lambda req: "x" * 20_000)
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path), server.base_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["texts"] == [20_000] * 24  # every call answered
    assert result["hits"] == [True] * 24  # from memory
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "cannot be written" in result["warnings"][0] and "full" in result["warnings"][0]
    assert server.requests == 25


_WRITER_CHILD = textwrap.dedent(
    """
    import hashlib, json, sys, warnings
    warnings.simplefilter("always")
    import anyio
    import asynclm
    from asynclm.lm import _cache
    cache_dir, base_url, index, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asynclm.configure(cache_dir=cache_dir)
    lm = asynclm.LM("openai/fake-model", base_url=base_url, api_key="k")
    disk = _cache.disk_cache(cache_dir)
    print("ready", flush=True)
    sys.stdin.readline()  # all four start together

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(lm, f"shared {i}")
                tg.start_soon(lm, f"own {index} {i}")
        for batch in range(20):  # many small commits, racing the other processes' commits
            for i in range(25):
                for name in (f"direct shared {batch} {i}", f"direct own {index} {batch} {i}"):
                    disk.put(hashlib.sha256(name.encode()).hexdigest(), json.dumps(name).encode())
            await anyio.sleep(0.01)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anyio.run(main)
        disk.flush()
    print(json.dumps([str(w.message) for w in caught]))
    """
)


def test_four_processes_share_one_directory_without_losing_writes(
    fake_openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    import hashlib
    import sqlite3

    server = fake_openai_server
    server.set_responses(lambda req: f"echo: {req.last_user_message}")
    n = 40
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_CHILD, str(tmp_path), server.base_url, str(index), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
        assert "locked" not in stderr and "Traceback" not in stderr, stderr
        assert json.loads(stdout.strip().splitlines()[-1]) == []  # no warning at all
    with sqlite3.connect(tmp_path / _cache.FILE_NAME) as conn:
        values = {str(v) for (v,) in conn.execute("SELECT value FROM responses")}
        keys = {str(k) for (k,) in conn.execute("SELECT key FROM responses")}
    texts = {json.loads(v)["choices"][0]["message"]["content"] for v in values if v.startswith("{")}
    expected = {f"echo: shared {i}" for i in range(n)} | {f"echo: own {k} {i}" for k in range(4) for i in range(n)}
    assert expected <= texts
    direct = {f"direct shared {b} {i}" for b in range(20) for i in range(25)}
    direct |= {f"direct own {k} {b} {i}" for k in range(4) for b in range(20) for i in range(25)}
    assert {hashlib.sha256(name.encode()).hexdigest() for name in direct} <= keys
    assert len(keys) == len(expected) + len(direct)


def test_first_writes_from_many_threads_start_one_writer(tmp_path: Path) -> None:
    # The first put() of each thread racing to start the writer must start exactly one: two
    # writers would share one SQLite connection (seen as a segfault at exit in examples/threads.py,
    # ~1 run in 10, after "cannot start a transaction within a transaction").
    import sqlite3

    threads_per_round, rounds = 16, 40
    for round_ in range(rounds):
        disk = _cache.DiskCache(tmp_path / f"r{round_}")
        barrier = threading.Barrier(threads_per_round)

        def first_write(index: int, disk: _cache.DiskCache = disk, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            disk.put(f"k{index}", b'"v"')

        workers = [threading.Thread(target=first_write, args=(i,)) for i in range(threads_per_round)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        writers = [t for t in threading.enumerate() if t.name == f"asynclm-cache-writer {disk.path}"]
        disk.close()
        assert len(writers) == 1, f"round {round_}: {len(writers)} writer threads for one file"
        assert disk.writable
        with sqlite3.connect(disk.path) as conn:
            assert conn.execute("SELECT count(*) FROM responses").fetchone()[0] == threads_per_round
