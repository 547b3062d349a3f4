"""`make bench` in miniature: every benchmark runs end to end and writes its results.

Only that they run and report what they claim to (a row per path beside its baseline, CPU per
process for the llmrelay rows); the figures themselves are for `make bench`, never asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, kill_tree

pytestmark = pytest.mark.timeout(600)


def test_bench_smoke_runs_every_benchmark(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=540)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, output.decode(errors="replace")[-4000:]
    [result] = list((tmp_path / "bench" / "results").glob("*.json"))
    facts = json.loads(result.read_text())
    rows = facts["rows"]
    assert {r["bench"] for r in rows} == {
        "broker ceiling",
        "throughput",
        "added latency",
        "failover (1st candidate 500)",
        "gateway throughput",
        "gateway added latency",
        "batch scale",
        "llama.cpp",
    }
    for row in rows:
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert math.isfinite(row["baseline"]) and row["baseline"] > 0, row
    paths = {r["path"] for r in rows}
    for path in (
        "direct httpx",
        "LiteLLM Router",
        "LiteLLM proxy",
        "pyzmq relay",
        "llmrelay gateway, 1 openai worker",
    ):
        assert path in paths
    gateway_rows = [r for r in rows if r["path"].startswith("llmrelay gateway")]
    assert any(r["baseline_path"] == "LiteLLM proxy" for r in gateway_rows)
    assert all("gateway" in r["cpu_ms_per_job"] for r in gateway_rows if r["cpu_ms_per_job"])
    relay_rows = [r for r in rows if r["path"].startswith("llmrelay") and r["cpu_ms_per_job"]]
    assert relay_rows
    for row in relay_rows:
        assert {"client", "broker", "worker"} <= set(row["cpu_ms_per_job"]), row
    doc = (tmp_path / "docs" / "performance.md").read_text()
    assert "| bench | measure |" in doc and facts["machine"]["cpu"] in doc
