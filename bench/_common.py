"""Plumbing shared by the benchmarks: the request every client sends, the server process,
running one measurement in a fresh interpreter, and summarising repeated runs.

Nothing here imports asynclm at module level except the pure-data pieces used to build the
request (signatures and the ChatAdapter), so the DSPy baseline script can stay independent.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"

SIGNATURE = "question -> answer"
QUESTION = "What is the capital of France? Answer with the city name only."
ANSWER = "Paris"
MODEL = "x"  # the model name every client sends (DSPy: "openai/x")
API_KEY = "k"
HEADERS = {"content-type": "application/json", "accept": "application/json", "authorization": f"Bearer {API_KEY}"}


@cache
def completion_text() -> str:
    """What the fake server answers: ``ANSWER`` in ChatAdapter format (DSPy's format too)."""
    from asynclm.adapters import ChatAdapter

    return ChatAdapter().format_completion(SIGNATURE, {"answer": ANSWER})


@cache
def request_body() -> bytes:
    """The exact bytes ``Predict(SIGNATURE)`` sends for ``question=QUESTION``; the raw-client
    baselines POST the same bytes, so every row moves the same payload."""
    from asynclm.adapters import ChatAdapter

    messages = ChatAdapter().format(SIGNATURE, [], {"question": QUESTION})
    body = {"model": MODEL, "messages": messages}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def spawn_server(latency: float) -> Any:
    """A ``FakeOpenAIServer`` in its own process, answering ``completion_text()`` after ``latency`` s."""
    from asynclm.testing import FakeOpenAIServer

    return FakeOpenAIServer.spawn(latency=latency, text=completion_text(), model=MODEL)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "runs"}`` of repeated measurements."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def run_json(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (a measurement in a fresh interpreter) and return the JSON object on the last
    line of its stdout; raise ``RuntimeError`` with the tail of its stderr if it fails."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONPATH", str(ROOT))
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(cmd[:4])}… timed out after {timeout} s") from exc
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd[:4])}… exited with {out.returncode}:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "executable": sys.executable,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            facts["mem_total_mb"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in ("anyio", "trio", "aiohttp", "httpx", "httpx2", "pydantic"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    facts["versions"] = versions
    return facts


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
