"""``FakeOpenAIServer``: a real OpenAI-compatible HTTP/1.1 server on loopback, for tests and benchmarks.

It is deliberately small and fast: a raw ``asyncio.Protocol`` with a minimal HTTP/1.1 parser
(keep-alive, ``Content-Length`` and chunked request bodies, no pipelining surprises), one event loop
in a daemon thread (or the main thread of a separate process, see ``asynclm.testing.server``).
Non-streaming responses are sent from timer callbacks, without a task per request, so that a
benchmark can push thousands of requests per second through it on a small machine.

Endpoints (any path prefix is accepted, so ``base_url`` with or without ``/v1`` works):

- ``POST .../chat/completions`` — JSON response, or server-sent events when ``"stream": true``
  (``data: {chunk}`` lines, a final usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``).
- ``POST .../messages`` — Anthropic's Messages API: the same scripts and faults, answered in
  Anthropic's format (a ``message`` body, or its stream events ending with ``message_stop``; errors
  as ``{"type": "error", "error": {...}}``), with the request checked as the API checks it.
- ``GET .../models`` — the configured model list.
- ``GET /_fake/stats`` — the counters and the server process's CPU time, as JSON (used by
  ``FakeOpenAIServer.spawn`` handles; not counted as a request).

Layout: ``_types`` (requests, replies, faults), ``_http`` (the protocol), ``_core`` (routing,
scripts, faults, counters on the server's loop), this module (the thread, the child process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from asynclm.runtime import sync_twin

from ._core import ServerCore
from ._types import DEFAULT_FAULTS, FakeRequest, Fault, Fields, Headers, Reply, Responses

__all__ = [
    "DEFAULT_FAULTS",
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "Fields",
    "Headers",
    "Reply",
    "SpawnedFakeServer",
]


# --------------------------------------------------------------------------------------------------
# The public server: its own event loop in a daemon thread
# --------------------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """A real OpenAI-compatible HTTP/1.1 server on 127.0.0.1, with scripted responses and faults.

    It runs its own asyncio event loop in a daemon thread, so it behaves the same from sync tests,
    asyncio tests and trio tests::

        with FakeOpenAIServer(responses=["first", "second"]) as server:
            httpx.post(f"{server.base_url}/chat/completions", json={...})

        async with FakeOpenAIServer(latency=0.05) as server:
            ...

    Args:
        responses: what successful chat completions answer. One of

            - a ``str`` (every choice's text), a ``Reply`` (text, usage, finish reason,
              latency), a ``Fault``, or a ``dict`` sent verbatim as the JSON response (as the
              single ``data:`` event of a stream);
            - a list of those, or an iterator (``itertools.cycle([...])``, a generator), consumed
              one per request in order (a request after the last one gets a 400 whose message says
              the script is exhausted);
            - a function of the ``FakeRequest`` returning one of those (or an awaitable of
              one; it runs on the server's loop, so it must not block). If it raises, the client
              gets a 500 and the exception is kept in ``errors``.
        latency: seconds before each response (and each stream's first event).
        chunk_delay: seconds between stream events (default: ``latency``).
        model: the model reported in responses when the request has none, and listed by
            ``GET /v1/models``.
        models: the list ``GET /v1/models`` returns (default ``[model]``).
        support_n: if false, a request with ``n > 1`` gets a 400 (like servers that only do n=1);
            otherwise ``n`` choices are returned.
        support_tools: if false, a request carrying ``tools`` gets a 400 naming them (like servers
            without function calling: asynclm then falls back to describing the tools in the
            prompt); otherwise ``tools`` are accepted and a ``Reply(tool_calls=[...])`` answers.
        api_key: if given, chat requests without ``Authorization: Bearer <api_key>`` (Anthropic
            requests: ``x-api-key: <api_key>``) get a 401; by default any key, or none, is accepted.
        fault_rate: the fraction of chat requests (0..1) answered by a fault drawn from ``faults``
            instead of the script (faulted requests do not consume scripted responses).
        faults: the faults to draw from (default ``DEFAULT_FAULTS``).
        seed: seeds the fault draw, so a run with the same requests in the same order faults the
            same requests.
        log_size: how many recent requests ``request_log`` keeps.
        host, port: where to listen (default 127.0.0.1, an ephemeral port).
        batch_delay: how long a provider batch (``POST /v1/batches``) takes from its creation to
            its end, answering its lines included (seconds; see "Batch APIs" below).

    Batch APIs: ``POST /v1/files`` (multipart JSONL upload), ``GET /v1/files/{id}/content``,
    ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``. Halfway
    through ``batch_delay`` each line is answered by the normal response logic (script, ``Fields``,
    faults; counted in ``requests``); a scripted ``Fault.error(...)`` makes that line an error
    line. ``batches_created`` and ``batches_cancelled`` count batches.

    Counters (plain attributes, updated on the server's loop; read them from any thread):
    ``requests``, ``in_flight``, ``max_in_flight``, ``client_disconnects``;
    ``reset_counters`` zeroes them. Only chat-completion requests (and Anthropic ``/messages``
    requests) are counted.
    """

    def __init__(
        self,
        responses: Responses = "ok",
        *,
        latency: float = 0.0,
        chunk_delay: float | None = None,
        model: str = "fake-model",
        models: Sequence[str] | None = None,
        support_n: bool = True,
        support_tools: bool = True,
        api_key: str | None = None,
        fault_rate: float = 0.0,
        faults: Sequence[Fault] | None = None,
        seed: int | None = None,
        log_size: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_delay: float = 0.0,
    ) -> None:
        if latency < 0 or (chunk_delay is not None and chunk_delay < 0):
            raise ValueError("latency and chunk_delay must be >= 0 seconds")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        self._core = ServerCore(
            responses,
            latency=latency,
            chunk_delay=chunk_delay,
            model=model,
            models=models,
            support_n=support_n,
            support_tools=support_tools,
            api_key=api_key,
            fault_rate=fault_rate,
            faults=faults,
            seed=seed,
            log_size=log_size,
            batch_delay=batch_delay,
        )
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle = threading.Lock()
        self.port: int | None = None

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the server must be started)."""
        if self.port is None:
            raise RuntimeError("FakeOpenAIServer is not started: use `with FakeOpenAIServer() as server:`")
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``base_url`` to give an OpenAI-compatible client."""
        return f"{self.url}/v1"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Start listening (blocks the calling thread for a few milliseconds). Idempotent."""
        with self._lifecycle:
            if self._thread is not None:
                return self
            started = threading.Event()
            failure: list[BaseException] = []

            def run() -> None:
                loop = asyncio.new_event_loop()
                loop.set_exception_handler(self._core.on_loop_exception)
                self._loop = loop
                try:
                    try:
                        self.port = loop.run_until_complete(self._core.start(self._host, self._port))
                    except BaseException as exc:
                        failure.append(exc)
                        return
                    finally:
                        started.set()
                    loop.run_forever()
                    loop.run_until_complete(self._core.aclose())
                finally:
                    loop.close()

            thread = threading.Thread(target=run, name="FakeOpenAIServer", daemon=True)
            thread.start()
            started.wait()
            if failure:
                thread.join()
                self._loop = None
                raise failure[0]
            self._thread = thread
            return self

    def stop(self) -> None:
        """Stop the server: open connections are closed (hanging requests end), the thread exits.
        Idempotent. The counters keep their values."""
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError(
                    "FakeOpenAIServer.stop() was called from the server's own thread (e.g. in a response "
                    "function); call it from the test instead"
                )
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(loop.stop)
            thread.join()
            self._thread = None
            self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAIServer:
        import anyio.to_thread

        # start()/stop() block for a moment (thread start/join): keep them off the event loop.
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        where = f"{self.url}" if self.port is not None else "not started"
        return f"<FakeOpenAIServer {where} requests={self.requests}>"

    # -- configuration at run time ---------------------------------------------------------------

    def set_responses(self, responses: Responses) -> None:
        """Replace the response script (same forms as the constructor's ``responses``)."""
        self._call_on_loop(self._core.set_responses, responses)

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` chat requests with ``fault``, before the script and any random
        faults (these requests do not consume scripted responses)."""
        if times < 0:
            raise ValueError("times must be >= 0")
        self._call_on_loop(self._core.injected.extend, [fault] * times)

    def reset_counters(self) -> None:
        """Zero ``requests`` and ``client_disconnects``, set ``max_in_flight`` to the
        current ``in_flight``, and clear ``request_log`` and ``errors``."""
        self._call_on_loop(self._core.reset_counters)

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        # Counters and scripts belong to the server's loop: mutate them there, in order with the
        # requests already received, unless the server is not running or we are on its thread.
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            fn(*args)
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop has just closed
            fn(*args)
            return
        while not done.wait(0.05):
            if not self._thread_alive():  # stopped before running our callback
                fn(*args)
                return
        if failure:
            raise failure[0]

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    latency = property(
        lambda self: self._core.latency,
        lambda self, value: setattr(self._core, "latency", float(value)),
        doc="Seconds before each response; settable while running.",
    )
    chunk_delay = property(
        lambda self: self._core.chunk_delay,
        lambda self, value: setattr(self._core, "chunk_delay", value),
        doc="Seconds between stream events (None: ``latency``); settable while running.",
    )
    support_n = property(
        lambda self: self._core.support_n,
        lambda self, value: setattr(self._core, "support_n", bool(value)),
        doc="Whether n > 1 is accepted; settable while running.",
    )
    support_tools = property(
        lambda self: self._core.support_tools,
        lambda self, value: setattr(self._core, "support_tools", bool(value)),
        doc="Whether requests carrying ``tools`` are accepted; settable while running.",
    )
    fault_rate = property(
        lambda self: self._core.fault_rate,
        lambda self, value: setattr(self._core, "fault_rate", float(value)),
        doc="Fraction of chat requests answered by a random fault; settable while running.",
    )

    # -- counters ------------------------------------------------------------------------------------

    batch_expire_after = property(
        lambda self: self._core.batches.expire_after,
        lambda self, value: setattr(self._core.batches, "expire_after", value),
        doc="If set (an int), provider batches expire after answering that many lines: the rest are "
        "error lines with code 'batch_expired' and the batch's status is 'expired'.",
    )

    batch_delay = property(
        lambda self: self._core.batches.delay,
        lambda self, value: setattr(self._core.batches, "delay", float(value)),
        doc="Seconds a provider batch takes from its creation to its end, answering its lines included; "
        "settable while running.",
    )

    batch_queue_limit = property(
        lambda self: self._core.batches.queue_limit,
        lambda self, value: setattr(self._core.batches, "queue_limit", value),
        doc="If set (an int), the most requests of OpenAI-style batches in progress at once: a batch that "
        "would go over it fails at the end of its validation with code 'token_limit_exceeded' and no line "
        "answered, as OpenAI's enqueued-token limit does (counted in requests here).",
    )

    @property
    def batches_refused(self) -> int:
        """Provider batches failed because ``batch_queue_limit`` left no room."""
        return self._core.batches.refused

    @property
    def batches_created(self) -> int:
        """Provider batches created (``POST /v1/batches``)."""
        return self._core.batches.created

    @property
    def batches_cancelled(self) -> int:
        """Provider batches cancelled before they finished (``POST /v1/batches/{id}/cancel``)."""
        return self._core.batches.cancelled

    @property
    def requests(self) -> int:
        """Chat-completion requests received (including faulted and invalid ones)."""
        return self._core.requests

    @property
    def in_flight(self) -> int:
        """Chat-completion requests received whose response is not complete yet."""
        return self._core.in_flight

    @property
    def max_in_flight(self) -> int:
        """The largest ``in_flight`` seen: the client's effective concurrency.

        A request the client abandons (timeout, cancellation) stops counting when the server sees
        its connection close; that is always before the client's next request if the client closed
        the connection before sending it (a client that frees its slot first may be seen over its
        limit)."""
        return self._core.max_in_flight

    @property
    def client_disconnects(self) -> int:
        """Requests whose client closed the connection before the response was complete (e.g. a
        cancelled call, a client timeout on a hang, a stream the client stopped reading)."""
        return self._core.client_disconnects

    @property
    def request_log(self) -> list[FakeRequest]:
        """The most recent chat requests (up to ``log_size``), oldest first, with raw headers."""
        return list(self._core.request_log)

    @property
    def last_request(self) -> FakeRequest:
        """The most recent chat request; raises ``LookupError`` when there is none."""
        try:
            return self._core.request_log[-1]
        except IndexError:
            raise LookupError("FakeOpenAIServer has received no chat-completion request yet") from None

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by scripted responses (each request was answered with a 500), and any
        error escaping the server's own callbacks (a bug in the server; also logged)."""
        return list(self._core.errors)

    @sync_twin
    async def wait_until(self, predicate: Callable[[FakeOpenAIServer], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(server)`` is true (polled every millisecond), e.g.
        ``await server.wait_until(lambda s: s.client_disconnects == 1)``; ``.sync(...)`` from sync
        code. Raises ``TimeoutError`` after ``timeout`` seconds."""
        import anyio

        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"FakeOpenAIServer.wait_until: condition still false after {timeout} s "
                    f"(requests={self.requests}, in_flight={self.in_flight}, "
                    f"max_in_flight={self.max_in_flight}, client_disconnects={self.client_disconnects})"
                )
            await anyio.sleep(0.001)

    # -- separate process ------------------------------------------------------------------------

    @classmethod
    def spawn(
        cls,
        *,
        text: str = "ok",
        latency: float = 0.0,
        chunk_delay: float | None = None,
        model: str = "fake-model",
        support_n: bool = True,
        fault_rate: float = 0.0,
        faults: Sequence[str] | None = None,
        seed: int | None = None,
        batch_delay: float = 0.0,
        python: str | None = None,
        startup_timeout: float = 30.0,
    ) -> SpawnedFakeServer:
        """Run a server in a separate Python process (``python -m asynclm.testing.server``), so a
        benchmark does not share its interpreter (and GIL) with the client under test.

        Responses are the static ``text``; ``faults`` are specs as accepted by ``Fault.parse``
        (e.g. ``["429:0.05", "500", "reset"]``). Returns a ``SpawnedFakeServer`` handle (also
        a context manager) once the server listens.
        """
        args = [
            python or sys.executable,
            "-m",
            "asynclm.testing.server",
            "--port",
            "0",
            "--exit-with-stdin",  # never outlive this process, even if stop() is never called
            f"--latency={latency!r}",
            f"--text={text}",  # the --opt=value form: a value starting with "-" stays a value
            f"--model={model}",
        ]
        if chunk_delay is not None:
            args.append(f"--chunk-delay={chunk_delay!r}")
        if not support_n:
            args.append("--no-n")
        if batch_delay:
            args.append(f"--batch-delay={batch_delay!r}")
        if fault_rate:
            args.append(f"--fault-rate={fault_rate!r}")
        if faults:
            for spec in faults:
                Fault.parse(spec)  # fail here, with a clear message, rather than in the child
            args.append("--faults=" + ",".join(faults))
        if seed is not None:
            args.append(f"--seed={seed}")
        return SpawnedFakeServer(args, startup_timeout)


class SpawnedFakeServer:
    """A ``FakeOpenAIServer`` running in a child process (see ``FakeOpenAIServer.spawn``).

    Attributes: ``port``, ``url``, ``base_url``, ``pid``. ``stats`` fetches the
    counters and the child's CPU time; ``stop`` ends the child and returns its last stats.
    """

    def __init__(self, args: list[str], startup_timeout: float) -> None:
        # stderr goes to a file, not a pipe: nobody reads it while the child runs, and a full pipe
        # would block the child.
        self._stderr = tempfile.TemporaryFile()
        self._stderr_text = ""
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.final_stats: dict[str, Any] | None = None
        port: list[int] = []
        reader = threading.Thread(target=lambda: port.append(self._read_port()), daemon=True)
        reader.start()
        reader.join(startup_timeout)
        if not port or port[0] <= 0:
            self.process.kill()
            self.process.wait()
            err = self.stderr_output()
            self._close_files()
            raise RuntimeError(
                f"the FakeOpenAIServer child process ({' '.join(args)}) did not report its port within "
                f"{startup_timeout} s; its stderr:\n{err}"
            )
        self.port = port[0]
        self.pid = self.process.pid

    def stderr_output(self) -> str:
        """What the child wrote on stderr so far (tracebacks, asyncio warnings)."""
        if self._stderr.closed:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _close_files(self) -> None:
        if not self._stderr.closed:
            self._stderr_text = self.stderr_output()
            self._stderr.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        try:
            return int(line.strip())
        except ValueError:
            return -1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        """The child's counters (``requests``, ``in_flight``, ``max_in_flight``,
        ``client_disconnects``) and ``cpu_time`` (seconds of CPU the child process has used)."""
        if self.final_stats is not None:
            return dict(self.final_stats)
        import urllib.request  # only here: it is slow to import

        with urllib.request.urlopen(f"{self.url}/_fake/stats", timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data

    @property
    def cpu_time(self) -> float:
        """Seconds of CPU used by the child process so far (or at ``stop``). Take differences
        to measure a run: the total includes the child's start-up."""
        stats = self.stats()
        if "cpu_time" not in stats:
            raise RuntimeError(
                "the FakeOpenAIServer child had already exited when stop() asked for its stats; its "
                f"stderr:\n{self.stderr_output()}"
            )
        return float(stats["cpu_time"])

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``); returns its final ``stats``."""
        if self.final_stats is None:
            try:
                self.final_stats = self.stats()
            except OSError:
                self.final_stats = {}
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self._close_files()
        return dict(self.final_stats)

    def __enter__(self) -> SpawnedFakeServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SpawnedFakeServer pid={self.pid} {self.url}>"


async def serve(server: FakeOpenAIServer, stop: asyncio.Event) -> None:
    """Run ``server``'s core on the current asyncio loop until ``stop`` is set (the command line
    uses this instead of the daemon thread)."""
    core = server._core
    server.port = await core.start(server._host, server._port)
    print(server.port, flush=True)
    try:
        await stop.wait()
    finally:
        await core.aclose()
