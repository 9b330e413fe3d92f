"""``RedisCache`` against a real ``redis-server`` (started per test on a free port): entries shared by
LM objects and processes, the memory layer in front, TTL, refresh, Redis down or unreachable, on
both backends (trio reaches the asyncio-only client through asynclm's asyncio loop thread)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import asynclm
from asynclm.lm import LM
from asynclm.runtime._asyncio_thread import loop_thread_alive
from asynclm.testing import FakeOpenAIServer

redis = pytest.importorskip("redis", reason="the redis package is not installed: pip install 'asynclm[redis]'")

KEY = "sk-redis-test-SECRET-123"
PASSWORD = "s3cret-redis-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1 (no persistence), stoppable and restartable."""

    def __init__(self, binary: str, password: str | None = None) -> None:
        self.binary = binary
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > give_up:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server); .ci/run installs it")
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary(), password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def unique(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    return LM("openai/fake-model", base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]


def cache_warnings(record: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, asynclm.CacheWarning)]


async def test_lm_calls_share_entries_through_redis(
    server: FakeOpenAIServer, redis_server: RedisServer, anyio_backend: str
) -> None:
    prefix = unique("t") + ":"
    asynclm.configure(cache=asynclm.RedisCache(redis_server.url, prefix=prefix))
    server.set_responses(lambda req: f"echo: {req.last_user_message}")
    prompt = unique()
    first = await make_lm(server)(prompt)
    assert (first.text, first.cache_hit) == (f"echo: {prompt}", False)
    keys = redis_server.client().keys(prefix + "*")
    assert len(keys) == 1
    value = redis_server.client().get(keys[0])
    assert json.loads(value)["choices"][0]["message"]["content"] == f"echo: {prompt}"  # JSON, no pickle
    assert KEY.encode() not in value and b"SECRET" not in value
    # another RedisCache object (its own memory layer: as another process would be) finds it in Redis
    asynclm.configure(cache=asynclm.RedisCache(redis_server.url, prefix=prefix))
    again = await LM("openai/fake-model", base_url=server.base_url, api_key="sk-other")(prompt)
    assert (again.text, again.cache_hit) == (f"echo: {prompt}", True)
    assert server.requests == 1
    if anyio_backend == "trio":  # the asyncio-only client ran on asynclm's loop thread
        assert loop_thread_alive()


async def test_the_memory_layer_sits_in_front_of_redis(server: FakeOpenAIServer, redis_server: RedisServer) -> None:
    shared = asynclm.RedisCache(redis_server.url, prefix=unique("t") + ":")
    lm = make_lm(server)
    prompt = unique()
    with asynclm.context(cache=shared):
        await lm(prompt)
        redis_server.client().flushall()
        assert (await lm(prompt)).cache_hit  # from memory
        assert not (await lm(prompt, cache=False)).cache_hit
    assert server.requests == 2


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_the_key_rule_and_refresh_on_both_cache_backends(
    backend: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    if backend == "redis":
        asynclm.configure(cache=asynclm.RedisCache(redis_server.url, prefix=unique("t") + ":"))
    else:
        asynclm.configure(cache_dir=str(tmp_path))
    prompt = unique()
    with FakeOpenAIServer("from A") as a, FakeOpenAIServer("from B") as b:
        assert (await make_lm(a)(prompt)).text == "from A"
        assert (await make_lm(b)(prompt)).text == "from B"  # same model name, another server
        assert (await make_lm(a)(prompt)).cache_hit and (await make_lm(b)(prompt)).cache_hit
        a.set_responses("A, later")
        refreshed = await make_lm(a)(prompt, cache="refresh")
        assert (refreshed.text, refreshed.cache_hit) == ("A, later", False)
        assert (await make_lm(a)(prompt)).text == "A, later"
        assert (a.requests, b.requests) == (2, 1)
    if backend == "redis":  # the refreshed answer reached Redis too
        values = [redis_server.client().get(k) for k in redis_server.client().keys("*")]
        assert any(b"A, later" in v for v in values if v is not None)


async def test_ttl(server: FakeOpenAIServer, redis_server: RedisServer) -> None:
    prefix = unique("t") + ":"
    asynclm.configure(cache=asynclm.RedisCache(redis_server.url, ttl=0.5, prefix=prefix))
    lm = make_lm(server)
    prompt = unique()
    await lm(prompt)
    (key,) = redis_server.client().keys(prefix + "*")
    assert 0 < redis_server.client().pttl(key) <= 500
    assert (await lm(prompt)).cache_hit
    await anyio.sleep(0.7)
    assert redis_server.client().keys(prefix + "*") == []  # Redis expired it...
    assert not (await lm(prompt)).cache_hit  # ...and the memory layer forgot it at the same age
    assert server.requests == 2
    # without a ttl entries do not expire
    asynclm.configure(cache=asynclm.RedisCache(redis_server.url, prefix=prefix + "forever:"))
    await lm(prompt)
    (key,) = redis_server.client().keys(prefix + "forever:*")
    assert redis_server.client().pttl(key) == -1


async def test_redis_going_down_mid_run_never_fails_a_call(
    server: FakeOpenAIServer, redis_with_password: RedisServer
) -> None:
    shared = asynclm.RedisCache(redis_with_password.url, prefix=unique("t") + ":")
    assert PASSWORD not in repr(shared) and "***" in repr(shared)
    shared.retry_after = 0.0  # try Redis again on every call (one warning all the same)
    asynclm.configure(cache=shared)
    lm = make_lm(server)
    before = unique()
    await lm(before)
    assert redis_with_password.client().dbsize() == 1
    redis_with_password.stop()
    with pytest.warns(asynclm.CacheWarning) as record:
        texts = [(await lm(unique("down"))).text for _ in range(5)]
        assert (await lm(before)).cache_hit  # the memory layer still answers
    assert texts == ["ok"] * 5
    messages = cache_warnings(record)
    assert len(messages) == 1, messages
    assert f"127.0.0.1:{redis_with_password.port}" in messages[0] and "***" in messages[0]
    assert PASSWORD not in messages[0]
    # Redis back (empty: no persistence): used again
    redis_with_password.start()
    after = unique("after")
    await lm(after)
    assert redis_with_password.client().dbsize() == 1


async def test_an_unreachable_redis_warns_once_and_calls_go_on(server: FakeOpenAIServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    asynclm.configure(cache=asynclm.RedisCache(url, timeout=1.0))
    lm = make_lm(server)
    prompt = unique()
    with pytest.warns(asynclm.CacheWarning) as record:
        first = await lm(prompt)
        second = await lm(prompt)
        await lm(unique())
    assert (first.text, first.cache_hit, second.cache_hit) == ("ok", False, True)
    (message,) = cache_warnings(record)
    assert "unavailable" in message and PASSWORD not in message and "redis://:***@127.0.0.1" in message


def test_redis_cache_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="redis://localhost"):
        asynclm.RedisCache("http://localhost:6379")
    with pytest.raises(ValueError, match="redis://localhost"):
        asynclm.RedisCache(f"localhost:{PASSWORD}")
    for ttl in (0, -1, True, "60"):
        with pytest.raises(ValueError, match="ttl"):
            asynclm.RedisCache("redis://localhost", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix"):
        asynclm.RedisCache("redis://localhost", prefix=1)  # type: ignore[arg-type]
    shown = repr(asynclm.RedisCache(f"redis://user:{PASSWORD}@localhost:6379/0", ttl=60))
    assert PASSWORD not in shown and "user:***@localhost:6379" in shown


def test_a_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"pip install 'asynclm\[redis\]'"):
        asynclm.RedisCache("redis://localhost:6379/0")


_CHILD = textwrap.dedent(
    """
    import json, sys
    import asynclm
    asynclm.configure(backend=sys.argv[5], cache=asynclm.RedisCache(sys.argv[1], prefix=sys.argv[2]),
                  cache_dir=sys.argv[6])
    lm = asynclm.LM("openai/fake-model", base_url=sys.argv[3], api_key="k")
    resp = lm.sync(sys.argv[4])
    print(json.dumps({"text": resp.text, "cache_hit": resp.cache_hit}))
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_processes_share_entries_through_redis(
    fake_openai_server: FakeOpenAIServer, redis_server: RedisServer, tmp_path: Path, backend: str
) -> None:
    server = fake_openai_server
    server.set_responses(lambda req: f"echo: {req.last_user_message}")
    prefix, prompt = unique("t") + ":", unique("processes")

    def child() -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, redis_server.url, prefix, server.base_url, prompt, backend, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    assert child() == {"text": f"echo: {prompt}", "cache_hit": False}
    assert child() == {"text": f"echo: {prompt}", "cache_hit": True}
    assert server.requests == 1
    assert not any(tmp_path.iterdir())  # Redis in place of the SQLite file, not beside it


def test_sync_calls_from_many_threads_share_redis(
    fake_openai_server: FakeOpenAIServer, redis_server: RedisServer, portal_backend: str
) -> None:
    # each thread's .sync() portal is its own event loop: on asyncio each gets its own client, on
    # trio they all go through asynclm's asyncio loop thread
    import threading

    server = fake_openai_server
    server.latency = 0.05
    prefix = unique("t") + ":"
    asynclm.configure(cache=asynclm.RedisCache(redis_server.url, prefix=prefix))
    shared, lm = unique("shared"), make_lm(server)
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for prompt in (f"{shared} own {i}", shared):
            resp = lm.sync(prompt)
            with lock:
                results.append((resp.text, resp.cache_hit))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and {text for text, _ in results} == {"ok"}
    assert server.requests == 9  # 8 own prompts + the shared one once (single-flight, then Redis)
    assert len(redis_server.client().keys(prefix + "*")) == 9


async def test_a_failed_redis_is_left_alone_for_retry_after_seconds(
    server: FakeOpenAIServer, redis_server: RedisServer
) -> None:
    shared = asynclm.RedisCache(redis_server.url, prefix=unique("t") + ":")
    shared.retry_after = 600.0
    asynclm.configure(cache=shared)
    lm = make_lm(server)
    redis_server.stop()
    with pytest.warns(asynclm.CacheWarning):
        await lm(unique())
    redis_server.start()
    for _ in range(3):  # back up, but within retry_after: not asked (no call waits on a dead Redis)
        assert (await lm(unique())).text == "ok"
    assert redis_server.client().dbsize() == 0
