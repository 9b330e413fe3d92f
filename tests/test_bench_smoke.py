"""The benchmark harness runs end to end (tiny N, no DSPy), so it cannot rot unnoticed.

No timing is asserted (the machine is shared): only that every scenario produced its rows, that
the JSON file and the markdown report agree, and that skipped baselines say why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (ROOT / "bench" / "__main__.py").exists(), reason="needs the source tree")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    sys.path.insert(0, str(ROOT))
    try:
        import contextlib
        import io

        from bench.__main__ import main

        out = tmp_path_factory.mktemp("bench") / "result.json"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            assert main(["--smoke", "--in-process", "--skip-dspy", "--quiet", "--out", str(out)]) == 0
        return json.loads(out.read_text()), stdout.getvalue()
    finally:
        sys.path.remove(str(ROOT))


def test_every_scenario_measured(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    keys = [s["key"] for s in data["scenarios"]]
    assert keys == ["seq", "conc", "threads", "parallel", "import", "rss", "cancel"]
    for scenario in data["scenarios"]:
        measured = [row for row in scenario["rows"] if "metrics" in row]
        assert measured, scenario["key"]
        for row in scenario["rows"]:
            assert ("metrics" in row) != bool(row.get("skipped")), (scenario["key"], row["label"], row.get("errors"))
            # only the DSPy rows are skipped here (and httpx2's on Python 3.10, where it cannot install)
            if row["kind"] != "dspy" and "not installed" not in row.get("skipped", ""):
                assert "metrics" in row, (scenario["key"], row["label"], row.get("skipped"))
            for metric in row.get("metrics", {}).values():
                assert metric["min"] <= metric["median"] <= metric["max"]
                assert len(metric["runs"]) >= 1


def test_dspy_is_reported_as_skipped_with_the_reason(report: tuple[dict[str, Any], str]) -> None:
    data, text = report
    dspy_rows = [row for s in data["scenarios"] for row in s["rows"] if row["kind"] == "dspy"]
    assert dspy_rows
    assert all(row["skipped"] == "skipped: --skip-dspy" for row in dspy_rows)
    assert "skipped: --skip-dspy" in text


def test_server_cpu_and_goals_reported(report: tuple[dict[str, Any], str]) -> None:
    data, text = report
    conc = next(s for s in data["scenarios"] if s["key"] == "conc")
    row = next(r for r in conc["rows"] if r["label"] == "asynclm Predict" and r["backend"] == "trio")
    assert row["metrics"]["server_cpu_ms_per_request"]["median"] > 0
    assert row["metrics"]["calls_per_s"]["median"] > 0
    goals = {g["goal"]: g for g in data["goals"]}
    assert any(g.startswith("import asynclm") for g in goals)
    assert all(g["met"] is None or isinstance(g["met"], bool) for g in goals.values())
    assert "### Goals" in text and "### 1. Sequential calls" in text
    assert data["markdown"].strip() == text.strip()


def test_the_batch_bench_explains_its_rounds(tmp_path: Path) -> None:
    import os
    import subprocess

    out = tmp_path / "batch.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "bench.bench_batch", "--smoke", "--items", "40", "--backends", "asyncio",
         "--baseline-concurrency", "8", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    batch, plain = json.loads(out.read_text())["rows"]
    assert batch["mode"] == "batch" and plain["mode"] == "plain"
    assert batch["correct"] and plain["correct"] and batch["batch_sizes"] == [40, 40]
    assert len(batch["rounds"]) == 2  # one per program step, each with its phases
    phases = {"build", "window", "submit", "provider", "poll_wait", "download_parse"}
    assert all(phases <= set(r) for r in batch["rounds"])
    assert batch["cpu_us_per_call"] > 0 and plain["cpu_us_per_call"] > 0 and batch["server_cpu_s"] >= 0
    assert "Phases per round" in run.stdout and "plain LM" in run.stdout
