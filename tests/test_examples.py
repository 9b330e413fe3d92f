"""Every example in examples/ runs end to end against a FakeOpenAIServer on loopback.

Examples run as subprocesses, exactly as a user runs them (`python examples/x.py --model ...
--base-url ...`); the FastAPI app runs under real uvicorn and gets concurrent requests over HTTP.
The fake server answers in ChatAdapter format as a function of the request, so each test can check
that every answer reached the question it belongs to.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import asynclm as alm
from asynclm.testing import FakeOpenAIServer, FakeRequest, Fields, Reply

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = "openai/fake-model"

def question_of(request: FakeRequest) -> str:
    question = request.inputs.get("question")
    assert question is not None, f"no question in {request.last_user_message!r}"
    return question


def answer_for(question: str) -> str:
    return f"A({question})"


def chat_reply(request: FakeRequest, answer: str) -> str:
    """The completion in the requesting adapter's format, with a reasoning field when the program
    asks for one (ChainOfThought)."""
    if "`reasoning`" in request.messages[0]["content"]:
        return Fields(reasoning="Thinking it over.", answer=answer).render(request)
    return Fields(answer=answer).render(request)


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCLM_", "OPENAI_"))}
    # A private cache directory: runs never read answers cached by another test or by the user.
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), OPENAI_API_KEY="sk-test", PYTHONUNBUFFERED="1", **extra)
    return env


def run_example(name: str, *args: str, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def load_example(name: str) -> Any:
    """Import an example as a module (its `main` only runs under `if __name__ == "__main__"`)."""
    spec = importlib.util.spec_from_file_location(f"asynclm_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_use_only_the_public_api() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert names == ["fastapi_app.py", "mcp_agent.py", "optimize_qa.py", "threads.py", "trio_app.py"]
    for name in names:
        tree = ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("asynclm"):
                assert not any(part.startswith("_") for part in node.module.split(".")), (name, node.module)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "alm":
                assert node.attr in alm.__all__, f"{name}: alm.{node.attr} is not a public name"


def test_threads_example(tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []

    def respond(request: FakeRequest) -> str:
        question = question_of(request)
        seen.append((question, request.json["temperature"]))
        return chat_reply(request, answer_for(question))

    with FakeOpenAIServer(respond, latency=0.2) as server:
        out = run_example(
            "threads.py", "--model", MODEL, "--base-url", server.base_url, "--workers", "4", env=example_env(tmp_path)
        )
        max_in_flight = server.max_in_flight

    questions = load_example("threads").QUESTIONS
    for question, style in questions:
        assert f"[{style:8}] {question} -> {answer_for(question)}\n" in out
    assert "6 questions on 4 threads" in out
    assert f"batch: 6 answers, first: {answer_for(questions[0][0])}" in out
    # Each worker's context(lm=...) reached its own request, whatever the other workers did at the time.
    temperature = {"precise": 0.0, "creative": 1.0}
    threaded = {(q, temperature[style]) for q, style in questions}
    # The batch runs with the configured default (precise): the precise questions are cache hits.
    batched = {(q, 0.0) for q, style in questions if style == "creative"}
    assert sorted(seen) == sorted(threaded | batched)
    assert max_in_flight >= 2, "the worker threads' calls did not overlap"


def test_trio_example(tmp_path: Path) -> None:
    def respond(request: FakeRequest) -> Any:
        question = question_of(request)
        if "essay" in question:  # answered only after the example's deadline: it must cancel it
            return Reply(text=chat_reply(request, "..."), latency=60)
        return chat_reply(request, answer_for(question))

    trio_app = load_example("trio_app")
    with FakeOpenAIServer(respond) as server:
        out = run_example(
            "trio_app.py",
            "--model",
            MODEL,
            "--base-url",
            server.base_url,
            "--deadline",
            "0.5",
            env=example_env(tmp_path),
        )
        # The cancelled request's connection was closed by the client, not left to finish.
        server.wait_until.sync(lambda s: s.client_disconnects == 1)
        streamed = [r for r in server.request_log if r.stream]

    first, *_ = trio_app.QUESTIONS
    assert f"answer: {answer_for(first)}\n" in out
    assert f"{[answer_for(q) for q in trio_app.QUESTIONS]}" in out
    stream_question = "Describe trio in one sentence."
    assert f"streamed: {answer_for(stream_question)}\n" in out
    chunks = re.findall(r"^  \[answer\] '(.*)'$", out, re.M)
    assert "".join(chunks).strip() == answer_for(stream_question)
    assert len(streamed) == 1
    assert "essay: cancelled after 0.5 s\n" in out
    for question in trio_app.QUESTIONS[:2]:
        assert f"legacy: {question} {answer_for(question)}\n" in out


def test_mcp_agent_example(tmp_path: Path) -> None:
    """The example starts its own MCP server (stdio) and runs a ReAct over its tools; the fake
    model asks for both tools in turn, then finishes, and answers from what the tools said."""
    pytest.importorskip("mcp")

    def respond(request: FakeRequest) -> str:
        text = request.last_user_message
        if "next_tool_name" not in request.messages[0]["content"]:
            answer = "39.2 °F, cloudy" if "39.2" in text and "cloudy" in text else "unknown"
            return Fields(reasoning="read the observations", answer=answer).render(request)
        # the server's tools, with their descriptions, are in the agent's instructions
        assert "weather, whose description is <desc>Today's weather in a city" in request.messages[0]["content"]
        if "[[ ## observation_1 ## ]]" in text:
            return Fields(next_thought="done", next_tool_name="finish", next_tool_args={}).render(request)
        if "[[ ## observation_0 ## ]]" in text:
            celsius = float(re.search(r"(-?[\d.]+) °C", text).group(1))  # type: ignore[union-attr]
            return Fields(
                next_thought="convert", next_tool_name="to_fahrenheit", next_tool_args={"celsius": celsius}
            ).render(request)
        return Fields(next_thought="look it up", next_tool_name="weather", next_tool_args={"city": "Oslo"}).render(
            request
        )

    with FakeOpenAIServer(respond, support_tools=False) as server:
        out = run_example("mcp_agent.py", "--model", MODEL, "--base-url", server.base_url, env=example_env(tmp_path))
    assert "tool: weather {'city': {'title': 'City', 'type': 'string'}} required=['city']\n" in out
    assert "tool: to_fahrenheit" in out
    assert "  observation_0: 4 °C and cloudy\n" in out
    assert "  observation_1: 39.2\n" in out
    assert "  tool_name_2: finish\n" in out
    assert out.endswith("answer: 39.2 °F, cloudy\n")


def test_optimize_example(tmp_path: Path) -> None:
    optimize_qa = load_example("optimize_qa")
    answers = dict(optimize_qa.TRAIN + optimize_qa.DEV)

    def respond(request: FakeRequest) -> str:
        # A model that knows every answer but follows the expected form only when shown demos
        # (the system message and the question are 2 messages; demos add more).
        answer = answers[question_of(request)]
        if len(request.messages) == 2:
            answer = f"The answer is {answer}."
        return chat_reply(request, answer)

    saved = tmp_path / "qa.json"
    with FakeOpenAIServer(respond) as server:
        out = run_example(
            "optimize_qa.py",
            "--model",
            MODEL,
            "--base-url",
            server.base_url,
            "--save",
            str(saved),
            env=example_env(tmp_path),
        )
    assert "zero-shot: 0.0%\n" in out
    assert "demos per predictor: [3]\n" in out
    assert "few-shot:  100.0%\n" in out
    # The saved program loads into a fresh predictor with the bootstrapped demos, no LM or key.
    text = saved.read_text(encoding="utf-8")
    assert "sk-test" not in text and server.base_url not in text
    program = alm.Predict("question -> answer").load(saved)
    train = dict(optimize_qa.TRAIN)
    assert [train[d.question] == d.answer for d in program.demos] == [True] * 3


async def test_fastapi_example(tmp_path: Path) -> None:
    def respond(request: FakeRequest) -> str:
        return chat_reply(request, answer_for(question_of(request)))

    async with FakeOpenAIServer(respond, latency=0.3) as server:
        env = example_env(tmp_path, ASYNCLM_MODEL=MODEL, ASYNCLM_BASE_URL=server.base_url)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_app:app",
            "--app-dir",
            str(EXAMPLES),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-access-log",
        ]
        async with await anyio.open_process(command, env=env) as process:
            try:
                url = await _uvicorn_url(process)
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    results: dict[str, Any] = {}

                    async def ask(route: str, question: str) -> None:
                        response = await client.get(route, params={"question": question})
                        assert response.status_code == 200, response.text
                        results[f"{route} {question}"] = response.json()

                    async def batch(questions: list[str]) -> None:
                        response = await client.post("/batch", json=questions)
                        assert response.status_code == 200, response.text
                        results["batch"] = response.json()

                    # 16 requests on each kind of route, all at once, plus a batch.
                    async with anyio.create_task_group() as tg:
                        for i in range(16):
                            tg.start_soon(ask, "/ask", f"async question {i}?")
                            tg.start_soon(ask, "/ask-sync", f"sync question {i}?")
                        tg.start_soon(batch, [f"batch question {i}?" for i in range(5)])
            finally:
                process.terminate()

    for route, kind in (("/ask", "async"), ("/ask-sync", "sync")):
        for i in range(16):
            question = f"{kind} question {i}?"
            body = results[f"{route} {question}"]
            assert body["question"] == question
            assert body["answer"] == answer_for(question)
            assert body["reasoning"] == "Thinking it over."
            assert body["tokens"] > 0
    assert [b["answer"] for b in results["batch"]] == [answer_for(f"batch question {i}?") for i in range(5)]
    assert server.requests == 37
    # Sync and async routes were served at the same time, not one after another.
    assert server.max_in_flight >= 4


async def _uvicorn_url(process: anyio.abc.Process) -> str:
    """Read uvicorn's log until it says where it listens (the port is chosen by the OS)."""
    assert process.stderr is not None
    log = b""
    with anyio.fail_after(30):
        async for chunk in process.stderr:
            log += chunk
            match = re.search(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)", log)
            if match:
                return match.group(1).decode()
    raise AssertionError(f"uvicorn exited before listening:\n{log.decode(errors='replace')}")


# -- the docs' code blocks ---------------------------------------------------------------------
# In these pages, every ```python block runs, in order, in one namespace per page (```py blocks are
# illustrations with placeholders and are not run). Real LMs (`alm.LM("openai/...")`) are pointed at
# a FakeOpenAIServer that fills each requested output field with a value of its declared type.

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUN_PAGES = ["quickstart.md", "concepts.md", "modules.md", "migration-from-dspy.md"]

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)` \((.*)\):", re.M)
_REAL_LM = re.compile(r"""alm\.LM\(("openai/[^"]*")""")


def _typed_value(type_: str) -> Any:
    literal = re.match(r"Literal\[(['\"])(.*?)\1", type_)
    if literal:
        return literal.group(2)
    defaults = {"float": 0.5, "int": 1, "bool": True}
    if type_ in defaults:
        return defaults[type_]
    if type_.startswith("list"):
        return []
    if type_.startswith("dict"):
        return {}
    return "some text"


def fill_outputs(request: FakeRequest) -> str:
    system = request.messages[0]["content"]
    if "Your output fields are:" not in system:  # a raw LM call, not a module's
        return "Hello!"
    outputs = system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
    return Fields({name: _typed_value(type_) for name, type_ in _OUTPUT_FIELD.findall(outputs)}).render(request)


@pytest.mark.parametrize("page", RUN_PAGES)
def test_doc_snippets_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no ```python block"
    monkeypatch.chdir(tmp_path)  # snippets may write files (program.save)
    defaults = alm.settings.snapshot()  # snippets call alm.configure(): restore the defaults after
    try:
        _run_blocks(page, blocks, tmp_path)
    finally:
        alm.configure(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)})


def _run_blocks(page: str, blocks: list[str], tmp_path: Path) -> None:
    with FakeOpenAIServer(fill_outputs) as server, alm.context(cache_dir=str(tmp_path)):
        namespace: dict[str, Any] = {
            "__name__": f"docs_{page}",
            "_fake_lm": lambda model, **kw: alm.LM(model, base_url=server.base_url, api_key="sk-test", **kw),
        }
        for i, block in enumerate(blocks):
            source = _REAL_LM.sub(r"_fake_lm(\1", block)
            code = compile(source, f"{page}[block {i + 1}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:  # top-level await: run it like a notebook cell
                anyio.run(lambda code=code: eval(code, namespace))
            else:
                exec(code, namespace)
        assert not server.errors
