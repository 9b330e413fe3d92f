"""FakeOpenAIServer: real HTTP on 127.0.0.1, checked with plain httpx clients (sync and async)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings, strategies as st

from asynclm.testing import DEFAULT_FAULTS, FakeOpenAIServer, FakeRequest, Fault, Headers, Reply, SpawnedFakeServer

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": MESSAGES, **extra}


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of a server-sent-events body, in order."""
    events = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events), events
    return [block[len("data: ") :] for block in events]


def stream_texts(payloads: list[str]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for payload in payloads:
        if payload == "[DONE]":
            continue
        for choice in json.loads(payload)["choices"]:
            texts.setdefault(choice["index"], "")
            texts[choice["index"]] += choice["delta"].get("content") or ""
    return texts


# --------------------------------------------------------------------------------------------------
# Plain responses
# --------------------------------------------------------------------------------------------------


def test_static_response_sync_client() -> None:
    with FakeOpenAIServer("four") as server, httpx.Client(base_url=server.base_url) as client:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.url == f"http://127.0.0.1:{server.port}"
        response = client.post("/chat/completions", json=body())
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "req_fake_1"
        data = response.json()
        assert data["object"] == "chat.completion"
        assert data["model"] == "gpt-test"
        assert data["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "four"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
        # the estimate: ~4 characters per token
        usage = data["usage"]
        assert usage == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        # a second request on the same keep-alive connection
        assert client.post("/chat/completions", json=body()).json()["choices"][0]["message"]["content"] == "four"
        assert server.requests == 2


def test_default_response_and_model() -> None:
    with FakeOpenAIServer(model="my-model") as server:
        data = httpx.post(f"{server.base_url}/chat/completions", json={"messages": MESSAGES}).json()
        assert data["choices"][0]["message"]["content"] == "ok"
        assert data["model"] == "my-model"
        models = httpx.get(f"{server.base_url}/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["my-model"]
        # /models is not a chat request
        assert server.requests == 1


def test_paths_without_v1_prefix_work() -> None:
    with FakeOpenAIServer("x") as server:
        response = httpx.post(f"{server.url}/chat/completions", json=body())
        assert response.json()["choices"][0]["message"]["content"] == "x"


async def test_async_context_manager_and_scripted_list() -> None:
    replies = ["first", Reply("second", prompt_tokens=11, completion_tokens=7, finish_reason="length")]
    async with FakeOpenAIServer(replies) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        first = (await client.post("/chat/completions", json=body())).json()
        second = (await client.post("/chat/completions", json=body())).json()
        assert first["choices"][0]["message"]["content"] == "first"
        assert second["choices"][0]["message"]["content"] == "second"
        assert second["choices"][0]["finish_reason"] == "length"
        assert second["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        exhausted = await client.post("/chat/completions", json=body())
        assert exhausted.status_code == 400
        error = exhausted.json()["error"]
        assert error["code"] == "fake_server_script_exhausted"
        assert "2 given" in error["message"] and "#3" in error["message"]
    assert server.port is not None
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.post(f"{server.base_url}/chat/completions", json=body())


def test_response_function_sees_the_request() -> None:
    seen: list[FakeRequest] = []

    def respond(request: FakeRequest) -> str:
        seen.append(request)
        return f"{request.model}: {request.last_user_message.upper()} #{request.index}"

    with FakeOpenAIServer(respond) as server:
        headers = {"Authorization": "Bearer sk-secret", "X-Custom": "1"}
        data = httpx.post(f"{server.base_url}/chat/completions", json=body(), headers=headers).json()
        assert data["choices"][0]["message"]["content"] == "gpt-test: WHAT IS 2+2? #1"
        (request,) = seen
        assert request.messages == MESSAGES
        assert request.json == body()
        assert json.loads(request.body) == body()
        assert request.method == "POST" and request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-secret"
        assert request.headers["AUTHORIZATION"] == "Bearer sk-secret"
        assert ("Authorization", "Bearer sk-secret") in request.headers.raw
        assert server.request_log == [request]
        assert server.last_request is request


def test_response_function_may_return_dicts_faults_and_replies() -> None:
    def respond(request: FakeRequest) -> Any:
        if request.index == 1:
            return {"custom": True, "choices": []}
        if request.index == 2:
            return Fault.error(418 + 4)  # 422
        return Reply(texts=["a", "b"])

    with FakeOpenAIServer(respond) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.post("/chat/completions", json=body()).json() == {"custom": True, "choices": []}
        assert client.post("/chat/completions", json=body()).status_code == 422
        data = client.post("/chat/completions", json=body(n=2)).json()
        assert [c["message"]["content"] for c in data["choices"]] == ["a", "b"]


async def test_async_response_function() -> None:
    async def respond(request: FakeRequest) -> str:
        await asyncio.sleep(0.01)  # response functions run on the server's own asyncio loop
        return "async " + request.last_user_message

    async with FakeOpenAIServer(respond) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        data = (await client.post("/chat/completions", json=body())).json()
        assert data["choices"][0]["message"]["content"] == "async What is 2+2?"


def test_failing_response_function_gives_500_and_is_recorded() -> None:
    def respond(request: FakeRequest) -> str:
        raise ValueError("bug in the test script")

    with FakeOpenAIServer(respond) as server:
        response = httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert response.status_code == 500
        assert "bug in the test script" in response.json()["error"]["message"]
        assert [type(e) for e in server.errors] == [ValueError]

    with FakeOpenAIServer(lambda request: 42) as server:  # type: ignore[arg-type, return-value]
        response = httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert response.status_code == 500
        assert "int" in response.json()["error"]["message"]


def test_set_responses_while_running() -> None:
    with FakeOpenAIServer("before") as server:
        url = f"{server.base_url}/chat/completions"
        assert httpx.post(url, json=body()).json()["choices"][0]["message"]["content"] == "before"
        server.set_responses(["after"])
        assert httpx.post(url, json=body()).json()["choices"][0]["message"]["content"] == "after"
        with pytest.raises(TypeError, match="responses must be"):
            server.set_responses(3)  # type: ignore[arg-type]


def test_n_choices_and_support_n() -> None:
    with FakeOpenAIServer("same") as server:
        data = httpx.post(f"{server.base_url}/chat/completions", json=body(n=3)).json()
        assert [c["index"] for c in data["choices"]] == [0, 1, 2]
        assert {c["message"]["content"] for c in data["choices"]} == {"same"}
        assert data["usage"]["completion_tokens"] == 3
        server.set_responses(Reply(texts=["only one"]))
        too_many = httpx.post(f"{server.base_url}/chat/completions", json=body(n=2))
        assert too_many.status_code == 500 and "n=2" in too_many.json()["error"]["message"]
    with FakeOpenAIServer("x", support_n=False) as server:
        rejected = httpx.post(f"{server.base_url}/chat/completions", json=body(n=2))
        assert rejected.status_code == 400
        assert rejected.json()["error"]["param"] == "n"
        assert httpx.post(f"{server.base_url}/chat/completions", json=body(n=1)).status_code == 200


def test_invalid_requests_get_400_and_are_counted() -> None:
    with FakeOpenAIServer() as server, httpx.Client(base_url=server.base_url) as client:
        bad_json = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad_json.status_code == 400
        assert "not valid JSON" in bad_json.json()["error"]["message"]
        no_messages = client.post("/chat/completions", json={"model": "m"})
        assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]
        bad_n = client.post("/chat/completions", json=body(n=0))
        assert bad_n.status_code == 400
        assert server.requests == 3
        assert server.request_log[0].json is None
        assert client.get("/nothing/here").status_code == 404
        assert client.get("/chat/completions").status_code == 405
        assert server.requests == 3
        # the connection survived all of it
        assert client.post("/chat/completions", json=body()).status_code == 200


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------


def test_stream_format() -> None:
    with FakeOpenAIServer("The answer is four.") as server:
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body(stream=True)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["transfer-encoding"] == "chunked"
            text = response.read().decode()
        payloads = sse_events(text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-test" for c in chunks)
        assert all("usage" not in c for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
        assert pieces == ["The", " answer", " is", " four."]
        assert chunks[-1]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert len({c["id"] for c in chunks}) == 1


async def test_stream_with_usage_and_n() -> None:
    reply = Reply(texts=["one two", "three"], prompt_tokens=9, completion_tokens=4)
    async with FakeOpenAIServer(reply) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        request = body(stream=True, n=2, stream_options={"include_usage": True})
        response = await client.post("/chat/completions", json=request)
        payloads = sse_events(response.text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        assert stream_texts(payloads) == {0: "one two", 1: "three"}


async def test_stream_chunk_delay() -> None:
    async with FakeOpenAIServer("a b c d", latency=0.0, chunk_delay=0.05) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            start = time.monotonic()
            response = await client.post("/chat/completions", json=body(stream=True))
            elapsed = time.monotonic() - start
        # role, 4 words, finish: 6 events, 5 gaps of 50 ms
        assert len(sse_events(response.text)) == 7
        assert elapsed >= 0.25


def test_latency_delays_responses() -> None:
    with FakeOpenAIServer(latency=0.2) as server:
        start = time.monotonic()
        httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert time.monotonic() - start >= 0.2
        server.latency = 0
        assert server.latency == 0.0
        server.set_responses(Reply("slow", latency=0.15))
        start = time.monotonic()
        httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert time.monotonic() - start >= 0.15


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


def test_status_faults_with_retry_after_headers() -> None:
    faults = [
        Fault.rate_limit(retry_after=2, retry_after_ms=1500),
        Fault.server_error(503, retry_after=0.5),
        Fault.error(401),
        Fault.context_window_exceeded(max_tokens=4096, requested=5000),
        Fault.error(409, body={"detail": "custom"}, headers={"X-Extra": "yes"}),
    ]
    with FakeOpenAIServer(faults) as server, httpx.Client(base_url=server.base_url) as client:
        limited = client.post("/chat/completions", json=body())
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "2"
        assert limited.headers["retry-after-ms"] == "1500"
        assert limited.headers["x-request-id"] == "req_fake_1"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert set(limited.json()["error"]) == {"message", "type", "param", "code"}

        unavailable = client.post("/chat/completions", json=body())
        assert unavailable.status_code == 503
        assert unavailable.headers["retry-after"] == "0.5"
        assert unavailable.json()["error"]["type"] == "server_error"

        unauthorized = client.post("/chat/completions", json=body())
        assert unauthorized.status_code == 401
        assert unauthorized.json()["error"]["code"] == "invalid_api_key"

        too_long = client.post("/chat/completions", json=body())
        assert too_long.status_code == 400
        error = too_long.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "maximum context length is 4096 tokens" in error["message"]
        assert "5000" in error["message"]

        custom = client.post("/chat/completions", json=body())
        assert custom.status_code == 409
        assert custom.json() == {"detail": "custom"}
        assert custom.headers["x-extra"] == "yes"


def test_fault_constructors_validate() -> None:
    with pytest.raises(ValueError, match="400-599"):
        Fault.error(200)
    with pytest.raises(ValueError, match="5xx"):
        Fault.server_error(429)


def test_connection_reset() -> None:
    with FakeOpenAIServer([Fault.connection_reset(), "fine"]) as server:
        with httpx.Client(base_url=server.base_url) as client:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                client.post("/chat/completions", json=body())
            # the next request (a new connection) gets the next scripted response
            assert client.post("/chat/completions", json=body()).json()["choices"][0]["message"]["content"] == "fine"
        assert server.requests == 2
        assert server.in_flight == 0
        assert server.client_disconnects == 0  # the server closed it, not the client


async def test_hang_until_client_gives_up_counts_a_disconnect() -> None:
    async with FakeOpenAIServer(Fault.hang()) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/chat/completions", json=body(), timeout=0.2)
        await server.wait_until(lambda s: s.client_disconnects == 1)
        assert server.in_flight == 0
        assert server.requests == 1


async def test_cancelled_request_is_seen_as_a_disconnect() -> None:
    async with FakeOpenAIServer(latency=5) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            with anyio.move_on_after(0.2) as scope:
                await client.post("/chat/completions", json=body())
            assert scope.cancelled_caught
        await server.wait_until(lambda s: s.client_disconnects == 1)
        assert server.in_flight == 0


def test_stop_ends_hanging_requests_without_counting_disconnects() -> None:
    server = FakeOpenAIServer(Fault.hang()).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{server.base_url}/chat/completions", json=body(), timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    server.wait_until.sync(lambda s: s.in_flight == 1)
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert server.in_flight == 0
    assert server.client_disconnects == 0
    server.stop()  # idempotent


def test_hang_mid_stream() -> None:
    with FakeOpenAIServer(Fault.hang(after_chunks=2)) as server:
        received: list[str] = []
        with pytest.raises(httpx.ReadTimeout):
            with httpx.stream(
                "POST", f"{server.base_url}/chat/completions", json=body(stream=True), timeout=0.3
            ) as response:
                for line in response.iter_lines():
                    if line:
                        received.append(line)
        assert len(received) == 2
        server.wait_until.sync(lambda s: s.client_disconnects == 1)


def test_malformed_json() -> None:
    with FakeOpenAIServer(Fault.malformed_json()) as server, httpx.Client(base_url=server.base_url) as client:
        response = client.post("/chat/completions", json=body())
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
        streamed = client.post("/chat/completions", json=body(stream=True))
        payloads = sse_events(streamed.text)
        assert payloads[-1] == "[DONE]"
        with pytest.raises(json.JSONDecodeError):
            json.loads(payloads[0])


def test_truncated_json_body() -> None:
    with FakeOpenAIServer(Fault.truncated()) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert server.client_disconnects == 0
        assert server.in_flight == 0


def test_truncated_stream() -> None:
    with FakeOpenAIServer(Fault.truncated(after_chunks=2)) as server:
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body(stream=True)) as response:
                for line in response.iter_lines():
                    if line:
                        received.append(line)
        assert len(received) == 2
        assert "[DONE]" not in "".join(received)

        # clean: the HTTP body ends properly, the stream simply lacks its end and [DONE]
        server.set_responses(Fault.truncated(after_chunks=3, clean=True))
        response = httpx.post(f"{server.base_url}/chat/completions", json=body(stream=True))
        payloads = sse_events(response.text)
        assert len(payloads) == 3
        assert "[DONE]" not in payloads
        assert all(json.loads(p)["choices"][0]["finish_reason"] is None for p in payloads)


def test_fail_next_takes_precedence_and_keeps_the_script() -> None:
    with FakeOpenAIServer(["a", "b"]) as server, httpx.Client(base_url=server.base_url) as client:
        server.fail_next(Fault.server_error(500), times=2)
        statuses = [client.post("/chat/completions", json=body()).status_code for _ in range(2)]
        assert statuses == [500, 500]
        texts = [
            client.post("/chat/completions", json=body()).json()["choices"][0]["message"]["content"] for _ in range(2)
        ]
        assert texts == ["a", "b"]


def _fault_pattern(seed: int, count: int) -> list[int]:
    with FakeOpenAIServer(fault_rate=0.3, faults=[Fault.error(500)], seed=seed) as server:
        with httpx.Client(base_url=server.base_url) as client:
            return [client.post("/chat/completions", json=body()).status_code for _ in range(count)]


def test_random_faults_are_reproducible_with_a_seed() -> None:
    first = _fault_pattern(seed=7, count=200)
    assert first == _fault_pattern(seed=7, count=200)
    assert first != _fault_pattern(seed=8, count=200)
    assert set(first) == {200, 500}
    assert 30 <= first.count(500) <= 90  # ~30 % of 200


def test_random_faults_default_mix() -> None:
    assert any(f.kind == "reset" for f in DEFAULT_FAULTS)
    assert not any(f.kind == "hang" for f in DEFAULT_FAULTS)
    outcomes: set[str] = set()
    with FakeOpenAIServer(fault_rate=1.0, seed=1) as server, httpx.Client(base_url=server.base_url) as client:
        for _ in range(60):
            try:
                response = client.post("/chat/completions", json=body())
            except httpx.HTTPError as exc:
                outcomes.add(type(exc).__name__)
                continue
            try:
                response.json()
                outcomes.add(str(response.status_code))
            except json.JSONDecodeError:
                outcomes.add("malformed")
        assert server.requests == 60
        assert server.in_flight == 0
    assert {"429", "500", "503", "malformed", "RemoteProtocolError"} <= outcomes
    assert "200" not in outcomes


def test_fault_parse() -> None:
    assert Fault.parse("429:0.5") == Fault.rate_limit(retry_after="0.5", retry_after_ms=500)
    assert Fault.parse("500") == Fault.error(500)
    assert Fault.parse("context").code == "context_length_exceeded"
    assert Fault.parse("reset").kind == "reset"
    assert Fault.parse("hang:2") == Fault.hang(after_chunks=2)
    assert Fault.parse("malformed").kind == "malformed_json"
    assert Fault.parse("truncate:3") == Fault.truncated(after_chunks=3)
    with pytest.raises(ValueError, match="invalid fault spec 'nope'"):
        Fault.parse("nope")
    with pytest.raises(ValueError, match="invalid fault spec"):
        Fault.parse("truncate:x")


# --------------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------------


async def test_max_in_flight_counts_concurrent_requests() -> None:
    arrived = 0
    all_arrived: asyncio.Event | None = None

    async def respond(request: FakeRequest) -> str:
        # A barrier on the server's loop: no response until all 20 requests are in.
        nonlocal arrived, all_arrived
        all_arrived = all_arrived or asyncio.Event()
        arrived += 1
        if arrived == 20:
            all_arrived.set()
        await asyncio.wait_for(all_arrived.wait(), 30)
        return "ok"

    async with FakeOpenAIServer(respond) as server, httpx.AsyncClient(base_url=server.base_url) as client:

        async def call() -> None:
            response = await client.post("/chat/completions", json=body())
            assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(call)
        assert server.max_in_flight == 20
        assert server.in_flight == 0
        assert server.requests == 20
        assert server.client_disconnects == 0
        server.reset_counters()
        assert (server.requests, server.max_in_flight, server.request_log) == (0, 0, [])
        await client.post("/chat/completions", json=body())
        assert server.requests == 1
        assert server.last_request.index == 1


async def test_stream_closed_early_by_the_client_is_a_disconnect() -> None:
    async with FakeOpenAIServer("a b c d e f g h", chunk_delay=0.5) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            async with client.stream("POST", "/chat/completions", json=body(stream=True)) as response:
                async for line in response.aiter_lines():
                    if line:
                        break  # stop reading: leaving the block closes the response
        await server.wait_until(lambda s: s.client_disconnects == 1)
        assert server.in_flight == 0


def test_request_log_is_bounded() -> None:
    with FakeOpenAIServer(log_size=3) as server, httpx.Client(base_url=server.base_url) as client:
        for _ in range(5):
            client.post("/chat/completions", json=body())
        assert [r.index for r in server.request_log] == [3, 4, 5]


def test_wait_until_times_out_with_the_counters_in_the_message() -> None:
    with FakeOpenAIServer() as server:
        with pytest.raises(TimeoutError, match="requests=0"):
            server.wait_until.sync(lambda s: s.requests == 1, timeout=0.05)


def test_last_request_without_requests() -> None:
    with FakeOpenAIServer() as server, pytest.raises(LookupError, match="no chat-completion request"):
        server.last_request  # noqa: B018


# --------------------------------------------------------------------------------------------------
# HTTP details (a raw socket, to control exactly what is sent)
# --------------------------------------------------------------------------------------------------


def _raw_exchange(port: int, data: bytes, responses: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < responses or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_pipelined_requests_and_chunked_request_body() -> None:
    payload = json.dumps(body()).encode()
    plain = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (
        len(payload),
        payload,
    )
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (10, payload[:10], len(payload) - 10, payload[10:])
    )
    with FakeOpenAIServer(["one", "two"]) as server:
        assert server.port is not None
        received = _raw_exchange(server.port, plain + chunked, responses=2)
        assert received.count(b"HTTP/1.1 200 OK") == 2
        assert received.index(b'"one"') < received.index(b'"two"')
        assert server.request_log[1].json == body()


def test_connection_close_and_http_1_0() -> None:
    payload = json.dumps(body()).encode()
    with FakeOpenAIServer() as server:
        assert server.port is not None
        for version, connection in ((b"1.1", b"Connection: close\r\n"), (b"1.0", b"")):
            request = b"POST /v1/chat/completions HTTP/%b\r\n%bContent-Length: %d\r\n\r\n%b" % (
                version,
                connection,
                len(payload),
                payload,
            )
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(request)
                received = b""
                while chunk := sock.recv(65536):  # the server closes after the response
                    received += chunk
            assert b"Connection: close" in received
            assert received.startswith(b"HTTP/1.1 200 OK")


def test_malformed_request_line() -> None:
    with FakeOpenAIServer() as server:
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 400 ")
        assert server.requests == 0


def test_headers_mapping() -> None:
    headers = Headers([("Accept", "a"), ("accept", "b"), ("X-Key", "v")])
    assert headers["ACCEPT"] == "a, b"
    assert headers.get_all("Accept") == ["a", "b"]
    assert "x-key" in headers and "missing" not in headers
    assert headers.get("missing", "d") == "d"
    assert sorted(headers) == ["accept", "x-key"]
    assert len(headers) == 2


def test_start_errors_and_properties_before_start() -> None:
    server = FakeOpenAIServer()
    with pytest.raises(RuntimeError, match="not started"):
        server.base_url  # noqa: B018
    with FakeOpenAIServer() as running:
        taken = FakeOpenAIServer(port=running.port or 0)
        with pytest.raises(OSError):
            taken.start()
    with pytest.raises(ValueError, match="fault_rate"):
        FakeOpenAIServer(fault_rate=2)
    with pytest.raises(ValueError, match="latency"):
        FakeOpenAIServer(latency=-1)


# --------------------------------------------------------------------------------------------------
# A separate process
# --------------------------------------------------------------------------------------------------


def test_spawn_in_a_separate_process() -> None:
    with FakeOpenAIServer.spawn(text="from the child", latency=0.01, support_n=False) as child:
        assert child.pid != 0
        with httpx.Client(base_url=child.base_url) as client:
            for _ in range(5):
                data = client.post("/chat/completions", json=body()).json()
                assert data["choices"][0]["message"]["content"] == "from the child"
            assert client.post("/chat/completions", json=body(n=2)).status_code == 400
        stats = child.stats()
        assert stats["requests"] == 6
        assert stats["max_in_flight"] == 1
        assert child.cpu_time > 0
    final = child.stop()
    assert final["requests"] == 6
    assert child.process.poll() is not None


@pytest.mark.parametrize("run", range(3))
def test_a_spawned_server_stops_cleanly(run: int) -> None:
    """stop() ends the child with exit code 0 (it used to abort, -6: "could not acquire lock for
    <stdin>", a thread still reading stdin at interpreter shutdown)."""
    child = FakeOpenAIServer.spawn(text="x")
    child.stop()
    assert child.process.returncode == 0, child.stderr_output()[-2000:]
    assert "Fatal Python error" not in child.stderr_output()


def test_spawn_with_faults() -> None:
    with FakeOpenAIServer.spawn(fault_rate=1.0, faults=["429:0.25"], seed=3) as child:
        response = httpx.post(f"{child.base_url}/chat/completions", json=body())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "0.25"
        assert response.headers["retry-after-ms"] == "250"
    with pytest.raises(ValueError, match="invalid fault spec"):
        FakeOpenAIServer.spawn(faults=["bogus"])


def test_command_line_prints_the_port_and_rejects_bad_faults() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "asynclm.testing.server", "--faults", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "invalid fault spec 'bogus'" in bad.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "asynclm.testing.server", "--port", "0", "--text", "cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        data = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body()).json()
        assert data["choices"][0]["message"]["content"] == "cli"
    finally:
        process.terminate()
        assert process.wait(10) == 0
        process.stdout.close()  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# The pytest fixture
# --------------------------------------------------------------------------------------------------


def test_fixture_yields_a_started_server(fake_openai_server: FakeOpenAIServer) -> None:
    response = httpx.post(f"{fake_openai_server.base_url}/chat/completions", json=body())
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    assert fake_openai_server.requests == 1


@pytest.mark.fake_openai_server(responses=["configured"], support_n=False)
async def test_fixture_takes_marker_arguments(fake_openai_server: FakeOpenAIServer) -> None:
    async with httpx.AsyncClient(base_url=fake_openai_server.base_url) as client:
        assert (await client.post("/chat/completions", json=body(n=2))).status_code == 400
        data = (await client.post("/chat/completions", json=body())).json()
        assert data["choices"][0]["message"]["content"] == "configured"


def test_spawn_failure_reports_the_child_stderr() -> None:
    script = "import sys; sys.stderr.write('child exploded'); sys.exit(3)"
    with pytest.raises(RuntimeError, match="child exploded"):
        SpawnedFakeServer([sys.executable, "-c", script], startup_timeout=30)


def test_expect_100_continue() -> None:
    payload = json.dumps(body()).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(payload)
    with FakeOpenAIServer("continued") as server:
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head)
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(payload[:5])
            sock.sendall(payload[5:])
            received = b""
            while b'"continued"' not in received:
                received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 OK")


def test_api_key_is_checked_when_given() -> None:
    with FakeOpenAIServer("in", api_key="sk-right") as server, httpx.Client(base_url=server.base_url) as client:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            denied = client.post("/chat/completions", json=body(), headers=headers)
            assert denied.status_code == 401
            assert denied.json()["error"]["code"] == "invalid_api_key"
        allowed = client.post("/chat/completions", json=body(), headers={"Authorization": "Bearer sk-right"})
        assert allowed.json()["choices"][0]["message"]["content"] == "in"
        assert server.requests == 3


def test_spawn_passes_values_that_look_like_options() -> None:
    with FakeOpenAIServer.spawn(text="-1 --not-an-option", model="-m", seed=-3) as child:
        data = httpx.post(f"{child.base_url}/chat/completions", json={"messages": MESSAGES}).json()
        assert data["choices"][0]["message"]["content"] == "-1 --not-an-option"
        assert data["model"] == "-m"


def test_restart_after_stop_and_stop_from_the_server_thread() -> None:
    def respond(request: FakeRequest) -> str:
        try:
            server.stop()
        except RuntimeError as exc:
            return str(exc)
        return "stopped?"

    server = FakeOpenAIServer(respond, latency=0.01)
    with server:
        data = httpx.post(f"{server.base_url}/chat/completions", json=body()).json()
        assert "server's own thread" in data["choices"][0]["message"]["content"]
    with server:  # a stopped server starts again, on a new port, with its counters kept
        httpx.post(f"{server.base_url}/chat/completions", json=body())
        assert server.requests == 2


# --------------------------------------------------------------------------------------------------
# The request parser, fed byte streams cut anywhere (no sockets: the protocol object directly)
# --------------------------------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Core:
    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.seen: list[Any] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def dispatch(self, conn: Any, raw: Any) -> None:
        from asynclm.testing._http import Exchange

        self.seen.append(raw)
        Exchange(conn, raw.keep_alive, "req").send(200, b"{}")


def _requests_bytes(bodies: list[bytes], chunked: list[bool]) -> bytes:
    out = b""
    for body_bytes, is_chunked in zip(bodies, chunked[: len(bodies)], strict=True):
        if is_chunked:
            half = len(body_bytes) // 2
            framed = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body_bytes[:half], body_bytes[half:]) if p)
            out += b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
        else:
            out += b"POST /v1/chat/completions HTTP/1.1\r\nX-A: 1\r\nContent-Length: %d\r\n\r\n%b" % (
                len(body_bytes),
                body_bytes,
            )
    return out


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    chunked=st.lists(st.booleans(), min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_parser_handles_any_split_of_pipelined_requests(
    bodies: list[bytes], chunked: list[bool], cuts: list[int]
) -> None:
    from asynclm.testing._http import Connection

    data = _requests_bytes(bodies, chunked)
    core = _Core()
    conn = Connection(core)  # type: ignore[arg-type]
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        conn.data_received(data[start:end])
    assert [raw.body for raw in core.seen] == bodies
    assert transport.written.count(b"HTTP/1.1 200 OK") == len(bodies)
    assert not transport.closed


def test_importing_the_kit_is_light_and_scripted_lm_loads_lazily() -> None:
    code = (
        "import sys, asynclm.testing as t\n"
        "assert 'asynclm.lm' not in sys.modules, 'the LM client was imported eagerly'\n"
        "assert t.ScriptedLM.__name__ == 'ScriptedLM' and 'asynclm.lm' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.split() == ["State:", "Z", "(zombie)"] for line in status)
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_spawned_server_dies_with_its_parent() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from asynclm.testing import FakeOpenAIServer\n"
            "child = FakeOpenAIServer.spawn()\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert not _process_gone(child_pid)
    parent.kill()  # no stop(), no atexit: only the closed stdin pipe tells the child
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 30
    while not _process_gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(child_pid)


def test_errors_escaping_server_callbacks_are_recorded(caplog: pytest.LogCaptureFixture) -> None:
    with FakeOpenAIServer() as server:
        loop = server._loop
        assert loop is not None
        loop.call_soon_threadsafe(lambda: 1 / 0)
        server.wait_until.sync(lambda s: len(s.errors) == 1)
        assert isinstance(server.errors[0], ZeroDivisionError)
        # the server keeps serving
        assert httpx.post(f"{server.base_url}/chat/completions", json=body()).status_code == 200


@pytest.mark.parametrize("size_line", [b"-5", b"zz", b"", b"1_0"])
def test_malformed_chunk_size_is_a_400(size_line: bytes) -> None:
    with FakeOpenAIServer() as server:
        assert server.port is not None
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%b\r\n" % size_line)
            received = b""
            while chunk := sock.recv(65536):  # the server answers, then closes
                received += chunk
        assert received.startswith(b"HTTP/1.1 400 ")
        assert b"malformed chunk size" in received


def test_abandoned_request_and_next_request_are_not_both_in_flight() -> None:
    # A client gives up on a request (closes its connection) and at once sends its next request on
    # another connection: the server must not count both in flight, whatever order it polls them in.
    request = json.dumps(body()).encode()
    raw_request = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(request), request)
    with FakeOpenAIServer(Fault.hang()) as server:
        assert server.port is not None
        for round_ in range(30):
            abandoned = socket.create_connection(("127.0.0.1", server.port))
            idle = socket.create_connection(("127.0.0.1", server.port))
            abandoned.sendall(raw_request)
            server.wait_until.sync(lambda s: s.in_flight == 1)
            # Keep the server's loop busy meanwhile, so that both events reach it in the same poll.
            loop = server._loop
            assert loop is not None
            busy = threading.Event()
            loop.call_soon_threadsafe(lambda busy=busy: (busy.set(), time.sleep(0.05)))
            busy.wait()
            abandoned.close()
            idle.sendall(raw_request)
            server.wait_until.sync(lambda s: s.client_disconnects == 1 and s.requests == 2)
            assert server.max_in_flight == 1, f"round {round_}"
            idle.close()
            server.wait_until.sync(lambda s: s.in_flight == 0)
            server.reset_counters()
            server.wait_until.sync(lambda s: s.max_in_flight == 0)


def test_spawned_child_that_died_reports_it() -> None:
    child = FakeOpenAIServer.spawn()
    child.process.kill()
    child.process.wait()
    assert child.stop() == {}
    with pytest.raises(RuntimeError, match="already exited"):
        child.cpu_time  # noqa: B018


def test_iterator_scripts() -> None:
    def generate() -> Iterator[str]:
        yield "one"
        yield "two"

    with FakeOpenAIServer(itertools.cycle(["a", "b"])) as server, httpx.Client(base_url=server.base_url) as client:

        def text() -> str:
            return str(client.post("/chat/completions", json=body()).json()["choices"][0]["message"]["content"])

        assert [text() for _ in range(5)] == ["a", "b", "a", "b", "a"]
        server.set_responses(generate())
        assert [text(), text()] == ["one", "two"]
        exhausted = client.post("/chat/completions", json=body())
        assert exhausted.status_code == 400 and "2 given" in exhausted.json()["error"]["message"]
        script = ["x"]
        server.set_responses(script)
        assert text() == "x"
        assert script == ["x"]  # the caller's list is not consumed


# -- answering in a module's format (Fields) -----------------------------------------------------


@pytest.mark.parametrize("adapter", ["chat", "json"])
async def test_fields_answer_in_the_format_of_the_adapter_that_asked(adapter: str) -> None:
    """A plain text reply breaks a module pointed at the fake server (ParseError); ``Fields``
    answers in whichever format the request's adapter expects, from fixed values or from the
    inputs."""
    import asynclm as alm
    from asynclm.testing import Fields

    chosen = alm.ChatAdapter() if adapter == "chat" else alm.JSONAdapter()
    with FakeOpenAIServer(Fields(answer="Paris", confidence=0.9)) as server:
        lm = alm.LM("openai/m", base_url=server.base_url, api_key="k", cache=False)
        qa = alm.Predict("question -> answer, confidence: float", lm=lm, adapter=chosen)
        pred = await qa(question="Capital of France?")
        assert (pred.answer, pred.confidence) == ("Paris", 0.9)
        assert ("response_format" in server.request_log[-1].json) == (adapter == "json")

        server.set_responses(Fields(lambda inputs: {"answer": inputs["question"].upper(), "confidence": 1}))
        pred = await qa(question="two\n\nparagraphs")
        assert (pred.answer, pred.confidence) == ("TWO\n\nPARAGRAPHS", 1.0)
        # what the program sent, read back on the server's side as the adapter rendered it
        assert server.request_log[-1].inputs == {"question": "two\n\nparagraphs"}


def test_fields_usage_errors() -> None:
    from asynclm.testing import Fields

    with pytest.raises(TypeError, match="not both"):
        Fields({"a": 1}, b=2)
    with pytest.raises(TypeError, match="dict of field values or a function"):
        Fields(["answer"])  # type: ignore[arg-type]


async def test_a_failing_fields_function_is_a_500_the_test_can_see() -> None:
    from asynclm.testing import Fields

    def broken(inputs: dict[str, str]) -> dict[str, str]:
        raise KeyError("no such input")

    with FakeOpenAIServer(Fields(broken)) as server:
        async with httpx.AsyncClient() as client:
            request = {"messages": [{"role": "user", "content": "x"}]}
            r = await client.post(server.base_url + "/chat/completions", json=request)
        assert r.status_code == 500
        assert server.errors and isinstance(server.errors[0], KeyError)
