"""The LM client against a real HTTP server on loopback: requests, retries, typed errors,
Retry-After, the total deadline, cancellation, secrets. Every async test runs on asyncio and trio."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, ClassVar

import anyio
import pytest

import asynclm
from asynclm.lm import (
    LM,
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    LMConnectionError,
    LMError,
    LMTimeoutError,
    RateLimitError,
    ServerError,
)
from asynclm.runtime import SyncInAsyncContextError
from asynclm.testing import FakeOpenAIServer, Fault

from .helpers import run_threads_interleaved

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def server(fake_openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    return fake_openai_server


def make_lm(server: FakeOpenAIServer, **kw: object) -> LM:
    kw.setdefault("cache", False)
    lm = LM("openai/fake-model", base_url=server.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]
    lm.backoff_base = 0.001  # retries at once unless the server says otherwise
    return lm


# -- requests and responses --------------------------------------------------------------------


async def test_prompt_is_one_user_message(server: FakeOpenAIServer) -> None:
    server.set_responses("Paris")
    lm = make_lm(server, temperature=0.3, max_tokens=50)
    resp = await lm("Capital of France?")
    assert resp.text == "Paris"
    assert resp.texts == ["Paris"]
    assert resp.finish_reason == "stop"
    assert resp.cache_hit is False
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.raw["choices"][0]["message"]["content"] == "Paris"
    req = server.last_request
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.json == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "temperature": 0.3,
        "max_tokens": 50,
    }


async def test_messages_params_n_and_removing_a_default(server: FakeOpenAIServer) -> None:
    server.set_responses(
        lambda req: {
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": f"answer {i}"},
                    "finish_reason": "length",
                }
                for i in range(req.n)
            ],
            "model": "served-model",
        }
    )
    lm = make_lm(server, temperature=0.7, seed=1)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    resp = await lm(messages=messages, n=2, temperature=None, top_p=0.5)
    assert resp.texts == ["answer 0", "answer 1"]
    assert resp.finish_reasons == ["length", "length"]
    assert resp.model == "served-model"
    assert resp.usage.total_tokens == 0  # the server reported none
    body = server.last_request.json
    assert body["messages"] == messages and body["n"] == 2 and body["top_p"] == 0.5 and body["seed"] == 1
    assert "temperature" not in body  # None per call removes the LM's default


async def test_model_prefix_and_slashes_in_the_model_name(server: FakeOpenAIServer) -> None:
    lm = LM("openai/org/model-7b", base_url=server.base_url + "/", api_key=KEY, cache=False)
    await lm("x")
    assert server.last_request.json["model"] == "org/model-7b"
    assert server.last_request.path == "/v1/chat/completions"


def test_model_string_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown provider prefix 'mistral'.*'openai/', 'anthropic/'"):
        LM("mistral/large")
    with pytest.raises(asynclm.lm.LocalModelUnavailableError, match=r"unknown local model.*local/gemma-3-270m"):
        LM("local/gemma")
    with pytest.raises(TypeError):
        LM("")
    assert LM("gpt-4o-mini", api_key="k").model_name == "gpt-4o-mini"
    with pytest.raises(ValueError, match="max_concurrency"):
        LM("openai/m", max_concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        LM("openai/m", timeout=-1)
    with pytest.raises(ValueError, match="cache"):
        LM("openai/m", cache="disk")


async def test_bad_call_arguments(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    with pytest.raises(TypeError, match="prompt string or messages"):
        await lm()
    with pytest.raises(TypeError, match="not both"):
        await lm("a", messages=[])
    with pytest.raises(TypeError, match="must be a string"):
        await lm(["not", "a", "string"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON-serializable"):
        await lm("a", logit_bias={1: object()})
    with pytest.raises(TypeError, match=r"lm\.stream"):
        await lm("a", stream=True)
    assert server.requests == 0


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried(server: FakeOpenAIServer, status: int, anyio_backend: str) -> None:
    server.fail_next(Fault.error(status), times=2)
    resp = await make_lm(server)("hi")
    assert resp.text == "ok"
    assert server.requests == 3


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, BadRequestError),
        (422, BadRequestError),
    ],
)
async def test_client_errors_raise_at_once(
    server: FakeOpenAIServer, status: int, error_type: type[LMError], anyio_backend: str
) -> None:
    server.fail_next(Fault.error(status))
    with pytest.raises(error_type) as info:
        await make_lm(server)("hi")
    assert server.requests == 1
    err = info.value
    assert err.status == status and err.request_id == "req_fake_1" and err.model == "fake-model"
    assert str(status) in str(err) and "injected by FakeOpenAIServer" in str(err)


async def test_context_window_exceeded_is_typed(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.context_window_exceeded(8192, 9000))
    with pytest.raises(ContextWindowExceededError, match="context window") as info:
        await make_lm(server)("a very long prompt")
    assert isinstance(info.value, BadRequestError) and info.value.status == 400
    assert server.requests == 1


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault.server_error(500), ServerError),
        (Fault.error(409), ServerError),
        (Fault.rate_limit(), RateLimitError),
        (Fault.error(408), LMTimeoutError),
        (Fault.connection_reset(), LMConnectionError),
        (Fault.malformed_json(), ServerError),
        (Fault.truncated(), LMConnectionError),
    ],
)
async def test_retries_exhausted_raise_the_typed_error(
    server: FakeOpenAIServer, fault: Fault, error_type: type[LMError], anyio_backend: str
) -> None:
    server.fail_next(fault, times=10)
    with pytest.raises(error_type):
        await make_lm(server, max_retries=2)("hi")
    assert server.requests == 3  # the first attempt and two retries


async def test_max_retries_zero_makes_one_attempt(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.server_error(503))
    with pytest.raises(ServerError):
        await make_lm(server, max_retries=0)("hi")
    assert server.requests == 1


async def test_insufficient_quota_429_is_not_retried(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.error(429, code="insufficient_quota", message="You exceeded your quota."))
    with pytest.raises(RateLimitError, match="quota"):
        await make_lm(server)("hi")
    assert server.requests == 1


@pytest.mark.parametrize("header", ["retry_after", "retry_after_ms"])
async def test_retry_after_is_honoured(server: FakeOpenAIServer, header: str, anyio_backend: str) -> None:
    fault = Fault.rate_limit(retry_after=0.4) if header == "retry_after" else Fault.rate_limit(retry_after_ms=400)
    server.fail_next(fault)
    lm = make_lm(server)  # its own backoff is ~1 ms: any longer wait is the server's
    start = time.monotonic()
    resp = await lm("hi")
    assert time.monotonic() - start >= 0.39
    assert resp.text == "ok" and server.requests == 2


async def test_retry_after_on_5xx_is_honoured(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.server_error(503, retry_after=0.3))
    start = time.monotonic()
    await make_lm(server)("hi")
    assert time.monotonic() - start >= 0.29


async def test_retry_after_past_the_deadline_fails_fast_with_the_real_error(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.rate_limit(retry_after=30))
    start = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        await make_lm(server, timeout=5)("hi")
    assert time.monotonic() - start < 4  # did not sleep into the deadline
    assert info.value.retry_after == 30
    assert server.requests == 1


def paused(lm: LM) -> bool:
    if lm._rpm is not None:
        return lm._rpm.paused_for() > 0
    return lm._paused_until > time.monotonic()


@pytest.mark.parametrize("rpm", [None, 60_000])
async def test_a_429_pauses_every_caller_of_the_lm(
    server: FakeOpenAIServer, rpm: int | None, anyio_backend: str
) -> None:
    server.fail_next(Fault.rate_limit(retry_after=0.5))
    lm = make_lm(server, rpm=rpm)  # with rpm the pause goes through the rate limiter
    finished: dict[str, float] = {}
    start = time.monotonic()

    async def call(name: str) -> None:
        await lm(name)
        finished[name] = time.monotonic() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        with anyio.fail_after(10):
            while not paused(lm):  # the 429 has arrived
                await anyio.sleep(0.001)
        tg.start_soon(call, "second")  # a new caller, which never got a 429 itself
    assert finished["second"] >= 0.49
    assert server.requests == 3


# -- the total deadline and cancellation -----------------------------------------------------------


async def test_timeout_is_a_total_deadline_over_retries(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.server_error(500))
    server.fail_next(Fault.hang(), times=5)
    lm = make_lm(server, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(LMTimeoutError) as info:
        await lm("hi")
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 5
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, LMError)
    assert "0.5 s" in str(err) and "2 attempt(s)" in str(err) and "500" in str(err)
    await server.wait_until(lambda s: s.client_disconnects == 1)  # the hung request was closed


class _PlainTransport:
    """A user-supplied transport without ``accepts_deadline``: the LM puts a cancel scope around it."""

    def __init__(self) -> None:
        from asynclm.lm._transports import HTTP11Transport

        self.inner = HTTP11Transport()
        self.posts = 0

    async def post(self, url: str, body: bytes, headers: Any, *, timeout: float | None = None) -> Any:
        self.posts += 1
        return await self.inner.post(url, body, headers, timeout=timeout)

    async def post_stream(self, url: str, body: bytes, headers: Any, *, timeout: float | None = None) -> Any:
        return await self.inner.post_stream(url, body, headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("transport", ["default", "user transport", "httpx"])
@pytest.mark.parametrize("cache", [False, "memory"])
async def test_the_deadline_holds_on_every_transport_and_cache_path(
    server: FakeOpenAIServer, transport: str, cache: object
) -> None:
    """The deadline reaches our transport as a number; any other gets a cancel scope; with the
    cache on it also bounds the single-flight wait. Each way, the same error and a closed request."""
    factory: Any = None
    if transport == "user transport":
        factory = _PlainTransport
    elif transport == "httpx":
        httpx = pytest.importorskip("httpx")
        factory = httpx.AsyncClient
    lm = make_lm(server, timeout=0.5, cache=cache, http_client_factory=factory)
    # a connection made first, so that only the request itself is inside the deadline (on a
    # loaded machine, a first connection can take longer than the deadline to reach the server)
    assert (await lm(f"warms up {transport} {cache}")).texts
    server.fail_next(Fault.hang())
    start = time.monotonic()
    with pytest.raises(LMTimeoutError, match=r"timeout of 0\.5 s \(1 attempt\(s\)\)"):
        await lm(f"hangs {transport} {cache}")
    assert 0.49 <= time.monotonic() - start < 5
    await server.wait_until(lambda s: s.client_disconnects == 1)
    assert (await lm(f"answers {transport} {cache}")).texts  # the LM is fine afterwards


async def test_per_call_timeout_overrides_the_lm_timeout(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang())
    with pytest.raises(LMTimeoutError):
        await make_lm(server, timeout=600)("hi", timeout=0.2)
    with pytest.raises(ValueError, match="timeout"):
        await make_lm(server)("hi", timeout=0)


async def test_cancelling_a_call_closes_its_http_request(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang())
    lm = make_lm(server, max_concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lm, "hi")
        await server.wait_until(lambda s: s.requests == 1)
        tg.cancel_scope.cancel()
    await server.wait_until(lambda s: s.client_disconnects == 1)
    assert server.in_flight == 0
    resp = await lm("again")  # the cancelled caller released its concurrency slot
    assert resp.text == "ok"


async def test_a_move_on_after_around_a_call_cancels_it(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang())
    lm = make_lm(server)
    with anyio.move_on_after(0.2) as scope:
        await lm("hi")
    assert scope.cancelled_caught
    await server.wait_until(lambda s: s.client_disconnects == 1)


async def test_connection_refused_is_lm_connection_error() -> None:
    with FakeOpenAIServer() as server:
        base_url = server.base_url
    lm = LM("openai/m", base_url=base_url, api_key=KEY, cache=False, max_retries=1)
    lm.backoff_base = 0.001
    with pytest.raises(LMConnectionError) as info:
        await lm("hi")
    # the URL once, the phase, the OS's reason, one hint (was: the URL three times)
    reason = "connect failed: Connection refused (is the server running?)"
    assert str(info.value) == f"{base_url}/chat/completions: {reason}"


# -- secrets ---------------------------------------------------------------------------------------


async def test_api_key_never_in_repr_vars_errors_or_history(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    assert KEY not in repr(lm) and KEY not in repr(vars(lm))
    server.fail_next(Fault.error(401, message=f"Incorrect API key provided: {KEY}."))
    with pytest.raises(AuthenticationError) as info:
        await lm("hi")
    assert KEY not in str(info.value) and "***" in str(info.value)
    assert "OPENAI_API_KEY" in str(info.value)
    await lm("hi")
    assert KEY not in json.dumps(list(lm.history))


async def test_api_key_from_environment_and_missing_key(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await LM("openai/m", base_url=server.base_url, cache=False)("hi")
    assert server.last_request.headers["authorization"] == "Bearer sk-from-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        await LM("openai/gpt-4o-mini", cache=False)("hi")  # OpenAI itself, no key: not even sent
    await LM("openai/m", base_url=server.base_url, cache=False)("hi")  # a local server needs none
    assert "authorization" not in server.last_request.headers


# -- the .sync twin --------------------------------------------------------------------------------


async def test_sync_twin_from_a_thread_and_refused_inside_a_loop(server: FakeOpenAIServer) -> None:
    lm = make_lm(server)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(lm.sync("hi").text))
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert results == ["ok"]
    with pytest.raises(SyncInAsyncContextError, match="await"):
        lm.sync("hi")


def test_sync_twin_from_plain_sync_code(server: FakeOpenAIServer) -> None:
    server.set_responses(["one", "two"])
    lm = make_lm(server)
    assert lm.sync("a").text == "one"
    assert lm.sync(messages=[{"role": "user", "content": "b"}]).text == "two"


def test_top_level_exports() -> None:
    for name in [
        "LM",
        "LMResponse",
        "Usage",
        "LMError",
        "RateLimitError",
        "AuthenticationError",
        "BadRequestError",
        "ContextWindowExceededError",
        "ServerError",
        "LMConnectionError",
        "LMTimeoutError",
        "track_usage",
        "inspect_history",
    ]:
        assert getattr(asynclm, name) is getattr(asynclm.lm, name)
    assert issubclass(asynclm.LMTimeoutError, TimeoutError)
    with pytest.raises(ImportError, match=r"asynclm\[local\]|unknown local model"):
        asynclm.LocalLM("gemma")  # an ImportError naming the extra, or the models it knows


def test_deepcopy_shares_the_lm() -> None:
    import copy

    lm = LM("openai/m", api_key=KEY, max_concurrency=2, rpm=60)
    program = {"lm": lm, "demos": [1, 2]}
    clone = copy.deepcopy(program)
    assert clone["lm"] is lm and clone["demos"] is not program["demos"]


async def test_the_deadline_includes_waiting_for_a_concurrency_slot(server: FakeOpenAIServer) -> None:
    server.fail_next(Fault.hang())
    lm = make_lm(server, max_concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lm, "holds the only slot")
        await server.wait_until(lambda s: s.requests == 1)
        with pytest.raises(LMTimeoutError, match=r"0 attempt\(s\)"):
            await lm("waits for the slot", timeout=0.2)
        tg.cancel_scope.cancel()
    assert server.requests == 1


async def test_tpm_reserves_an_estimate_and_gives_back_the_difference(server: FakeOpenAIServer) -> None:
    lm = make_lm(server, tpm=60_000, max_tokens=900)  # 1000 tokens/s, burst 1000
    assert lm._tpm is not None
    resp = await lm("hi")
    # ~925 tokens were reserved; the server reported a handful: the rest is back in the bucket
    left = lm._tpm.reserve(0)
    assert left == 0.0 and lm._tpm._tokens >= 1000 - resp.usage.total_tokens - 5


async def test_http_client_factory_is_called_once_per_loop(server: FakeOpenAIServer) -> None:
    import httpx

    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        client = httpx.AsyncClient(headers={"x-custom": "yes"})
        made.append(client)
        return client

    lm = make_lm(server, http_client_factory=factory)
    for _ in range(3):
        assert (await lm("hi")).text == "ok"
    assert len(made) == 1 and server.last_request.headers["x-custom"] == "yes"
    assert server.last_request.headers["authorization"] == f"Bearer {KEY}"
    await anyio.to_thread.run_sync(lambda: lm.sync("from a worker thread"))
    assert len(made) == 1  # an anyio worker thread's .sync() runs on this loop
    thread = threading.Thread(target=lambda: lm.sync("from a plain thread"))
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert len(made) == 2  # a plain thread's portal is another loop: its own client
    assert server.requests == 5


async def test_retries_are_logged_without_the_key(server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    server.fail_next(Fault.error(503, message=f"overloaded, key {KEY}"))
    with caplog.at_level("INFO", logger="asynclm.lm"):
        await make_lm(server)("hi")
    assert "retrying fake-model" in caplog.text and "503" in caplog.text
    assert KEY not in caplog.text


_COMPLETION = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class _KeyCheckingTransport:
    """Answers every request with a completion; records the ones sent without an API key."""

    unauthenticated: ClassVar[list[str]] = []

    async def post(self, url: str, body: bytes, headers: Any, **kw: Any) -> Any:
        from asynclm.lm._transports import Response

        if "authorization" not in headers:
            self.unauthenticated.append(threading.current_thread().name)
        return Response(200, {"content-type": "application/json"}, _COMPLETION)

    async def post_stream(self, url: str, body: bytes, headers: Any, **kw: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def test_a_key_set_after_the_lm_was_made_reaches_every_first_request(
    portal_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many threads make the first requests of an LM whose key appeared in the environment after
    # it was made: each must send the key. (The key was published before the headers holding
    # it: a thread that saw the key sent the old headers, without it — a 401.) A short switch
    # interval lets threads interleave between any two bytecodes, as they do on a loaded machine.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    threads, rounds = 8, 300
    lms = [LM("openai/gpt-4o-mini", max_retries=0, http_client_factory=_KeyCheckingTransport) for _ in range(rounds)]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    _KeyCheckingTransport.unauthenticated = []
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def calls() -> None:
        for lm in lms:
            barrier.wait()
            try:
                lm.sync("hi", cache=False)
            except Exception as exc:
                failures.append(exc)

    run_threads_interleaved(calls, [() for _ in range(threads)])
    assert _KeyCheckingTransport.unauthenticated == [] and failures == []
