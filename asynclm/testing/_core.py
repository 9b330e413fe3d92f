"""The fake server's request handling, on one asyncio event loop: routing, scripts, faults,
counters, response and stream building."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from . import _anthropic
from ._embeddings import fake_embedding
from ._http import (
    Connection,
    Exchange,
    JSONDecodeError,
    RawRequest,
    dumps,
    error_body,
    frame_chunk,
    loads,
    response_head,
)
from ._types import (
    DEFAULT_ERRORS,
    DEFAULT_FAULTS,
    FAULT_REPLY,
    FakeRequest,
    Fault,
    Fields,
    Reply,
    ResponseFunction,
    ResponseItem,
    Responses,
    content_text,
)


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


_WORDS = re.compile(r"\s*\S+|\s+")


def _split_stream(text: str) -> list[str]:
    # Word-sized pieces with their leading whitespace, like the deltas real servers send.
    return _WORDS.findall(text) or [""]


# --------------------------------------------------------------------------------------------------
# The server core: lives on one event loop
# --------------------------------------------------------------------------------------------------


class ServerCore:
    """The state and request handling of one fake server, used only from its event loop's thread
    (except plain attribute reads and writes, which are atomic). ``FakeOpenAIServer`` wraps it."""

    def __init__(
        self,
        responses: Responses,
        *,
        latency: float,
        chunk_delay: float | None,
        model: str,
        models: Sequence[str] | None,
        support_n: bool,
        api_key: str | None,
        support_tools: bool = True,
        fault_rate: float,
        faults: Sequence[Fault] | None,
        seed: int | None,
        log_size: int,
        batch_delay: float = 0.0,
    ) -> None:
        from ._batches import FakeBatches

        self.batches = FakeBatches(self, batch_delay)
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.model = model
        self.models = list(models) if models is not None else [model]
        self.support_n = support_n
        self.support_tools = support_tools
        self.api_key = api_key
        self.fault_rate = fault_rate
        self.faults: tuple[Fault, ...] = tuple(faults) if faults is not None else DEFAULT_FAULTS
        self.rng = random.Random(seed)
        self.injected: deque[Fault] = deque()
        self.request_log: deque[FakeRequest] = deque(maxlen=log_size)
        self.errors: list[BaseException] = []
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.fifo: deque[tuple[float, Callable[..., None], tuple[Any, ...]]] = deque()
        self.fifo_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.call_soon: Callable[..., Any] = lambda fn, *args: fn(*args)  # replaced by start()
        self.server: asyncio.Server | None = None
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.client_disconnects = 0
        self.set_responses(responses)

    # -- configuration -----------------------------------------------------------------------------

    def set_responses(self, responses: Responses) -> None:
        function: ResponseFunction | None = None
        items: Iterator[ResponseItem] | None = None
        static: ResponseItem | None = None
        if isinstance(responses, (str, Reply, Fault, Fields, dict)):
            static = responses
        elif callable(responses):
            function = responses
        elif isinstance(responses, Sequence):
            items = iter(list(responses))  # a copy: the caller's list is left alone
        elif isinstance(responses, Iterator):
            items = responses  # e.g. itertools.cycle([...]) or a generator
        else:
            raise TypeError(
                "responses must be a str, Reply, Fields, Fault or response dict, a list or iterator of those "
                f"(one per request, in order), or a function of the FakeRequest; got {type(responses).__name__}"
            )
        self.script_function = function
        self.script_items = items
        self.script_static = static
        self.script_used = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self.loop = asyncio.get_running_loop()
        self.call_soon = self.loop.call_soon
        self.server = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=2048, reuse_address=True
        )
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.fifo_timer is not None:
            self.fifo_timer.cancel()
            self.fifo_timer = None
        self.fifo.clear()
        for conn in list(self.connections):
            if conn.exchange is not None:
                conn.exchange.finish()  # the server stops: not a client disconnect
            conn.close(now=True)  # a client that does not read must not delay stop()
        self.batches.stop()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def reset_counters(self) -> None:
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.client_disconnects = 0
        self.request_log.clear()
        self.errors.clear()

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An error escaped a callback on the server's loop (a bug): log it as usual, and keep it in
        ``errors`` so that a test can see it."""
        exc = context.get("exception")
        self.errors.append(exc if isinstance(exc, BaseException) else RuntimeError(str(context.get("message"))))
        loop.default_exception_handler(context)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "client_disconnects": self.client_disconnects,
            "batches_created": self.batches.created,
            "batches_cancelled": self.batches.cancelled,
            "cpu_time": time.process_time(),
        }

    # -- request handling ------------------------------------------------------------------------

    def dispatch(self, conn: Connection, raw: RawRequest) -> None:
        route = raw.path.split("?", 1)[0].rstrip("/")
        if ("/files" in route or "/batches" in route) and self.batches.dispatch(conn, raw, route):
            return
        if route.endswith("/chat/completions"):
            if raw.method != "POST":
                self._simple(
                    conn,
                    raw,
                    405,
                    error_body(f"{raw.method} is not allowed on {route}; use POST", "invalid_request_error"),
                )
            else:
                self._chat(conn, raw, "openai")
        elif route.endswith("/messages"):
            if raw.method != "POST":
                self._simple(
                    conn,
                    raw,
                    405,
                    _anthropic.error_body(f"{raw.method} is not allowed on {route}; use POST", "invalid_request_error"),
                )
            else:
                self._chat(conn, raw, "anthropic")
        elif route.endswith("/embeddings") and raw.method == "POST":
            self._embeddings(conn, raw)
        elif route.endswith("/models") and raw.method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "asynclm"} for m in self.models]
            self._simple(conn, raw, 200, dumps({"object": "list", "data": data}))
        elif route == "/_fake/stats" and raw.method == "GET":
            self._simple(conn, raw, 200, dumps(self.stats()))
        else:
            self._simple(
                conn,
                raw,
                404,
                error_body(
                    f"FakeOpenAIServer has no route {raw.method} {route}; it serves POST "
                    "/v1/chat/completions, POST /v1/messages (Anthropic), POST /v1/embeddings "
                    "and GET /v1/models",
                    "invalid_request_error",
                    "unknown_url",
                ),
            )

    def _embeddings(self, conn: Connection, raw: RawRequest) -> None:
        """``POST /v1/embeddings``: each input's ``fake_embedding``, after the server's latency.
        Counted, logged and faulted (``fail_next``, ``fault_rate``) like a chat request."""
        exchange, request, _ = self._begin(conn, raw, "openai")
        body = request.json
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            exchange.send_error(400, "'input' must be a non-empty string or list of strings", "invalid_request_error")
            return
        if self.api_key is not None and raw.headers.get("authorization") != f"Bearer {self.api_key}":
            exchange.send_error(401, "Incorrect API key provided (FakeOpenAIServer).", "invalid_request_error")
            return
        fault: Any = None
        if self.injected:
            fault = self.injected.popleft()
        elif self.fault_rate > 0 and self.faults and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(self.faults)
        if isinstance(fault, Fault):
            self._fault(exchange, request, fault)
            return
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 64
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(text, dims)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(max(1, len(text) // 4) for text in inputs)
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._later(exchange, None, exchange.send, 200, dumps(payload))

    def _simple(self, conn: Connection, raw: RawRequest, status: int, body: bytes) -> None:
        exchange = Exchange(conn, raw.keep_alive, "req_fake_0")
        conn.exchange = exchange
        exchange.send(status, body)

    def _begin(self, conn: Connection, raw: RawRequest, api: str) -> tuple[Exchange, FakeRequest, str | None]:
        """Count a request (``requests``, ``in_flight``), log it and parse its JSON body; the
        error says why the body is not JSON (``None`` when it is)."""
        self.requests += 1
        index = self.requests
        exchange = Exchange(conn, raw.keep_alive, f"req_fake_{index}", api)
        conn.exchange = exchange
        exchange.counted = True
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            body = loads(raw.body)
        except JSONDecodeError as exc:
            body = None
            error: str | None = f"the request body is not valid JSON ({exc})"
        else:
            error = None
        request = FakeRequest(index, raw.method, raw.path, raw.headers, raw.body, body, api)
        self.request_log.append(request)
        return exchange, request, error

    def _chat(self, conn: Connection, raw: RawRequest, api: str) -> None:
        exchange, request, error = self._begin(conn, raw, api)
        body = request.json
        anthropic = api == "anthropic"
        if error is None:
            error = _anthropic.validate(body, raw.headers) if anthropic else self._validate(body)
        if error is not None:
            exchange.send_error(400, error, "invalid_request_error")
            return
        if anthropic:
            if self.api_key is not None and raw.headers.get("x-api-key") != self.api_key:
                exchange.send_error(
                    401,
                    "invalid x-api-key (FakeOpenAIServer expects 'x-api-key: <api_key>' with the api_key it was given)",
                    "authentication_error",
                )
                return
        elif self.api_key is not None and raw.headers.get("authorization") != f"Bearer {self.api_key}":
            exchange.send(
                401,
                error_body(
                    "Incorrect API key provided (FakeOpenAIServer expects 'Authorization: Bearer <api_key>' "
                    "with the api_key it was given).",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
            return
        if request.n > 1 and not self.support_n:
            exchange.send(
                400,
                error_body(
                    f"n={request.n} is not supported by this server (FakeOpenAIServer(support_n=False)); "
                    "only n=1 is accepted",
                    "invalid_request_error",
                    "unsupported_parameter",
                    "n",
                ),
            )
            return
        if not self.support_tools and isinstance(body, dict) and body.get("tools"):
            message = "tools are not supported by this server (FakeOpenAIServer(support_tools=False))"
            if anthropic:
                exchange.send_error(400, f"tools: {message}", "invalid_request_error")
            else:
                exchange.send(400, error_body(message, "invalid_request_error", "unsupported_parameter", "tools"))
            return
        item: ResponseItem | Awaitable[ResponseItem]
        if self.injected:
            item = self.injected.popleft()
        elif self.fault_rate > 0 and self.faults and self.rng.random() < self.fault_rate:
            item = self.rng.choice(self.faults)
        else:
            try:
                item = self._scripted(request)
            except Exception as exc:
                self._function_failed(exchange, exc)
                return
        if inspect.isawaitable(item):
            self._spawn(exchange, self._await_then_respond(exchange, request, item))
        else:
            self._respond(exchange, request, item)

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return f"the request body must be a JSON object, got {type(body).__name__}"
        if not isinstance(body.get("messages"), list):
            return "'messages' is a required property and must be a list of message objects"
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            return f"'n' must be a positive integer, got {n!r}"
        return None

    def _scripted(self, request: FakeRequest) -> ResponseItem | Awaitable[ResponseItem]:
        if self.script_function is not None:
            return self.script_function(request)
        if self.script_items is not None:
            item = next(self.script_items, None)
            if item is None:
                return Fault.error(
                    400,
                    message=(
                        f"FakeOpenAIServer: the scripted responses are exhausted ({self.script_used} given, "
                        f"this is chat request #{request.index}); pass more responses, a function, or call "
                        "set_responses()"
                    ),
                    error_type="invalid_request_error",
                    code="fake_server_script_exhausted",
                )
            self.script_used += 1
            return item
        assert self.script_static is not None
        return self.script_static

    def _function_failed(self, exchange: Exchange, exc: BaseException) -> None:
        self.errors.append(exc)
        exchange.send_error(
            500,
            f"FakeOpenAIServer: the scripted response failed: {exc!r} (see server.errors)",
            "server_error",
            "fake_server_function_error",
        )

    def _spawn(self, exchange: Exchange, coro: Any) -> None:
        assert self.loop is not None
        task: asyncio.Task[None] = self.loop.create_task(coro)
        exchange.task = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, exchange))

    def _task_done(self, exchange: Exchange, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug in a response path: keep it for the test to see, and never leave the client hanging.
            self.errors.append(exc)
            if not exchange.finished:
                exchange.abort(False)

    async def _await_then_respond(
        self, exchange: Exchange, request: FakeRequest, item: Awaitable[ResponseItem]
    ) -> None:
        try:
            result = await item
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._function_failed(exchange, exc)
            return
        exchange.task = None  # the response below may start its own task
        self._respond(exchange, request, result)

    def _respond(self, exchange: Exchange, request: FakeRequest, item: Any) -> None:
        if exchange.finished:
            return
        if isinstance(item, Fields):
            try:
                item = Reply(item.render(request))
            except Exception as exc:  # a Fields function that failed: a 500, kept for the test to see
                self._function_failed(exchange, exc)
                return
        if isinstance(item, str):
            item = Reply(item)
        if isinstance(item, Reply):
            texts = list(item.texts) if item.texts is not None else None
            if texts is not None and len(texts) < request.n:
                self._function_failed(
                    exchange,
                    ValueError(f"Reply.texts has {len(texts)} texts but the request asked for n={request.n}"),
                )
                return
            if request.stream:
                self._stream(exchange, request, item, None)
            else:
                self._later(exchange, item.latency, exchange.send, 200, self._completion(request, item))
        elif isinstance(item, Fault):
            self._fault(exchange, request, item)
        elif isinstance(item, dict):
            if request.stream:
                self._later(exchange, None, self._stream_raw, exchange, item)
            else:
                self._later(exchange, None, exchange.send, 200, dumps(item))
        else:
            self._function_failed(
                exchange,
                TypeError(
                    "a scripted response must be a str, Reply, Fields, Fault or response dict (or an awaitable of "
                    f"one), got {type(item).__name__}"
                ),
            )

    def _later(self, exchange: Exchange, delay: float | None, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` after ``delay`` seconds (``None``: the server's latency).

        With a constant latency, deadlines arrive in order, so they wait in a FIFO served by a
        single timer: far cheaper than one heap-ordered ``TimerHandle`` per request at thousands
        of requests per second. An out-of-order deadline gets its own timer. ``fn`` must do
        nothing once the exchange is finished (a client disconnect does not unqueue it).
        """
        delay = self.latency if delay is None else delay
        if delay <= 0:
            fn(*args)
            return
        loop = self.loop
        assert loop is not None
        when = loop.time() + delay
        fifo = self.fifo
        if fifo and when < fifo[-1][0]:
            exchange.timer = loop.call_at(when, fn, *args)
            return
        fifo.append((when, fn, args))
        if self.fifo_timer is None:
            self.fifo_timer = loop.call_at(when, self._drain)

    def _drain(self) -> None:
        assert self.loop is not None
        self.fifo_timer = None
        fifo = self.fifo
        now = self.loop.time() + 1e-4  # the loop may wake a hair early
        while fifo and fifo[0][0] <= now:
            _, fn, args = fifo.popleft()
            fn(*args)
        if fifo:
            self.fifo_timer = self.loop.call_at(fifo[0][0], self._drain)

    # -- building responses ------------------------------------------------------------------------

    def _texts(self, request: FakeRequest, reply: Reply) -> list[str]:
        if reply.texts is not None:
            return list(reply.texts[: request.n])
        text = reply.text if reply.text is not None else ("" if reply.tool_calls else "ok")
        return [text] * request.n

    def _usage(self, request: FakeRequest, reply: Reply, texts: list[str]) -> dict[str, int]:
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = max(
                1,
                sum(_estimate_tokens(content_text(m.get("content"))) for m in request.messages if isinstance(m, dict)),
            )
        completion = reply.completion_tokens
        if completion is None:
            completion = sum(_estimate_tokens(t) for t in texts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, request: FakeRequest, reply: Reply) -> bytes:
        texts = self._texts(request, reply)
        if request.api == "anthropic":
            usage = _anthropic.usage(request, reply.prompt_tokens, reply.completion_tokens, texts[0])
            calls = reply.openai_tool_calls(request.index) if reply.tool_calls else None
            return _anthropic.message(request, self.model, texts[0], reply.finish, usage, calls)
        return dumps(
            {
                "id": f"chatcmpl-fake-{request.index}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model or self.model,
                "choices": [
                    {
                        "index": i,
                        "message": self._message(request, reply, text),
                        "logprobs": None,
                        "finish_reason": reply.finish,
                    }
                    for i, text in enumerate(texts)
                ],
                "usage": self._usage(request, reply, texts),
            }
        )

    @staticmethod
    def _message(request: FakeRequest, reply: Reply, text: str) -> dict[str, Any]:
        if not reply.tool_calls:
            return {"role": "assistant", "content": text}
        return {"role": "assistant", "content": text or None, "tool_calls": reply.openai_tool_calls(request.index)}

    def _stream_events(self, request: FakeRequest, reply: Reply) -> list[tuple[bytes | None, bytes]]:
        """``(event name or None, data)`` of each server-sent event of the stream."""
        texts = self._texts(request, reply)
        if request.api == "anthropic":
            usage = _anthropic.usage(request, reply.prompt_tokens, reply.completion_tokens, texts[0])
            return _anthropic.stream_events(request, self.model, _split_stream(texts[0]), reply.finish, usage)
        include_usage = bool(
            isinstance(request.json.get("stream_options"), dict) and request.json["stream_options"].get("include_usage")
        )
        base = {
            "id": f"chatcmpl-fake-{request.index}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model or self.model,
        }

        def event(choices: list[dict[str, Any]]) -> tuple[bytes | None, bytes]:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = None
            return None, dumps(chunk)

        events = [
            event(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for i in range(len(texts))
                ]
            )
        ]
        for i, text in enumerate(texts):
            for piece in _split_stream(text):
                if piece:
                    events.append(
                        event(
                            [
                                {
                                    "index": i,
                                    "delta": {"content": piece},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
        if reply.tool_calls:
            calls = [{"index": j, **call} for j, call in enumerate(reply.openai_tool_calls(request.index))]
            events.extend(
                event([{"index": i, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}])
                for i in range(len(texts))
            )
        events.append(
            event(
                [
                    {"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish}
                    for i in range(len(texts))
                ]
            )
        )
        if include_usage:
            events.append((None, dumps({**base, "choices": [], "usage": self._usage(request, reply, texts)})))
        return events

    def _stream(self, exchange: Exchange, request: FakeRequest, reply: Reply, fault: Fault | None) -> None:
        """Stream ``reply`` as server-sent events, or break the stream as ``fault`` says.

        A chain of timer callbacks rather than a task: streams are as cheap as plain responses.
        """
        chunk_delay = reply.latency if reply.latency is not None else self.chunk_delay
        if chunk_delay is None:
            chunk_delay = self.latency
        self._later(exchange, reply.latency, self._stream_begin, exchange, request, reply, fault, chunk_delay)

    def _stream_begin(
        self, exchange: Exchange, request: FakeRequest, reply: Reply, fault: Fault | None, chunk_delay: float
    ) -> None:
        if exchange.finished:
            return
        events = self._stream_events(request, reply)
        kind = fault.kind if fault is not None else None
        cut = fault.after_chunks if fault is not None and kind in ("hang", "truncated", "stream_error") else len(events)
        if kind == "hang" and cut <= 0:
            return  # nothing is sent; the exchange stays open until a disconnect or stop()
        if kind == "malformed_json":
            name, data = events[0]
            events[0] = (name, data[: len(data) // 2])
        events = events[:cut]
        if fault is not None and kind == "stream_error":
            error_type = fault.error_type or "overloaded_error"
            message = fault.message or "Overloaded"
            if request.api == "anthropic":
                events.append(_anthropic.error_event(error_type, message))
            else:
                events.append((None, dumps({"error": {"message": message, "type": error_type, "code": None}})))
        head = exchange.chunked_head(200, "text/event-stream")
        # OpenAI-style streams end with [DONE]; Anthropic's with their message_stop event
        tail = b"" if request.api == "anthropic" or kind == "stream_error" else b"data: [DONE]\n\n"
        self._stream_step(exchange, events, 0, fault, chunk_delay, [head], tail)

    def _stream_step(
        self,
        exchange: Exchange,
        events: list[tuple[bytes | None, bytes]],
        i: int,
        fault: Fault | None,
        chunk_delay: float,
        out: list[bytes],
        tail: bytes,
    ) -> None:
        if exchange.finished:
            return
        # Events due at the same time go out in one write (one syscall).
        while i < len(events):
            name, data = events[i]
            if name is None:
                out.append(frame_chunk(b"data: %b\n\n" % data))
            else:
                out.append(frame_chunk(b"event: %b\ndata: %b\n\n" % (name, data)))
            i += 1
            if i < len(events) and chunk_delay > 0:
                exchange.conn.write(b"".join(out))
                self._later(exchange, chunk_delay, self._stream_step, exchange, events, i, fault, chunk_delay, [], tail)
                return
        kind = fault.kind if fault is not None else None
        if kind == "hang":
            exchange.conn.write(b"".join(out))  # then nothing more, as above
        elif kind == "truncated":
            exchange.conn.write(b"".join(out))
            if fault is not None and fault.clean:
                exchange.end_chunked()
            else:
                exchange.abort(False)
        else:
            if tail:
                out.append(frame_chunk(tail))
            exchange.end_chunked(b"".join(out))

    def _stream_raw(self, exchange: Exchange, chunk: dict[str, Any]) -> None:
        if exchange.finished:
            return
        head = exchange.chunked_head(200, "text/event-stream")
        if exchange.api == "anthropic":
            body = b"".join(
                b"event: %b\ndata: %b\n\n" % (name, data) if name is not None else b"data: %b\n\n" % data
                for name, data in _anthropic.raw_events(chunk)
            )
            exchange.end_chunked(head + frame_chunk(body))
            return
        exchange.end_chunked(head + frame_chunk(b"data: %b\n\ndata: [DONE]\n\n" % dumps(chunk)))

    def _fault(self, exchange: Exchange, request: FakeRequest, fault: Fault) -> None:
        kind = fault.kind
        if kind == "status":
            body = fault.body
            if body is None and request.api == "anthropic":
                data = _anthropic.fault_body(fault, exchange.request_id)
            elif body is None:
                default_type, default_code, default_message = DEFAULT_ERRORS.get(
                    fault.status,
                    (
                        "server_error",
                        None,
                        "The server had an error while processing your request (injected by FakeOpenAIServer).",
                    ),
                )
                data = error_body(
                    fault.message or default_message,
                    fault.error_type or default_type,
                    fault.code if fault.code is not None else default_code,
                    fault.param,
                )
            elif isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = dumps(body)
            extra = list(fault.headers)
            if fault.retry_after is not None:
                value = fault.retry_after
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                extra.append(("Retry-After", str(value)))
            if fault.retry_after_ms is not None:
                extra.append(("retry-after-ms", str(fault.retry_after_ms)))
            self._later(exchange, fault.delay, exchange.send, fault.status, data, "application/json", extra)
        elif kind == "reset":
            self._later(exchange, fault.delay, exchange.abort, True)
        elif kind == "stream_error":
            if request.stream:
                self._stream(exchange, request, FAULT_REPLY, fault)
            else:
                error_type = fault.error_type or "overloaded_error"
                status = _anthropic.STATUS_OF.get(error_type, 500)
                self._fault(exchange, request, Fault.error(status, message=fault.message, error_type=error_type))
        elif kind == "hang":
            if request.stream and fault.after_chunks > 0:
                self._stream(exchange, request, FAULT_REPLY, fault)
            # else: nothing at all; the exchange stays open until a disconnect or stop()
        elif kind == "malformed_json":
            if request.stream:
                self._stream(exchange, request, FAULT_REPLY, fault)
            else:
                data = self._completion(request, FAULT_REPLY)
                self._later(exchange, fault.delay, exchange.send, 200, data[: len(data) // 2])
        elif kind == "truncated":
            if request.stream:
                self._stream(exchange, request, FAULT_REPLY, fault)
            else:
                data = self._completion(request, FAULT_REPLY)
                self._later(exchange, None, self._send_truncated, exchange, data)

    @staticmethod
    def _send_truncated(exchange: Exchange, data: bytes) -> None:
        if exchange.finished:
            return
        headers = exchange.base_headers("application/json")
        headers.append(("Content-Length", str(len(data))))
        exchange.finish()  # before the write, as in send()
        exchange.conn.write(response_head(200, headers) + data[: len(data) // 2])
        exchange.abort(False)
