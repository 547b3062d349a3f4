"""`llmrelay batch` as users run it: a real process against a real broker and mock workers."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.batch_support import (
    calls_per_id,
    ids_in,
    openai_file,
    openai_line,
    read_lines,
    write_jsonl,
)
from tests.harness import ROOT, BrokerProcess, kill_tree
from workers.procutil import die_with_parent_preexec

pytestmark = pytest.mark.timeout(180)


def batch_cmd(broker: BrokerProcess, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dispatcher.cli",
        "batch",
        *map(str, args),
        "--endpoint",
        broker.client_endpoint,
    ]


def start(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        preexec_fn=die_with_parent_preexec(),
        **kwargs,
    )


def run_cli(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def slow_jobs(path: Path, count: int, delay: float) -> Path:
    lines = [
        {
            "custom_id": f"s{i}",
            "model": "mock:echo",
            "prompt": f"prompt {i}",
            "metadata": {"mock": {"first_token_delay": delay}},
        }
        for i in range(count)
    ]
    return write_jsonl(path, lines)  # type: ignore[arg-type]


def wait_lines(path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert proc.poll() is None, "the batch ended before it was interrupted"
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not reach {count} lines")


def test_sigkill_halfway_then_resume_redoes_nothing_that_finished(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    source = slow_jobs(tmp_path / "in.jsonl", 2000, 0.01)
    out = tmp_path / "out.jsonl"
    proc = start(
        batch_cmd(broker, source, "-o", out, "--concurrency", "32"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_lines(out, 1000, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        kill_tree(proc)
    finished = set(ids_in(out))  # every line whole, even after kill -9
    assert 1000 <= len(finished) < 2000
    resumed = run_cli(batch_cmd(broker, source, "-o", out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} already done" in resumed.stdout
    counts = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"s{i}" for i in range(2000)} and set(counts.values()) == {1}
    calls = calls_per_id(tmp_path / "calls.log")
    assert {cid: calls[cid] for cid in finished} == dict.fromkeys(finished, 1)


def test_ctrl_c_stops_cleanly_and_resume_finishes(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    source = slow_jobs(tmp_path / "in.jsonl", 1000, 0.02)
    out = tmp_path / "out.jsonl"
    proc = start(
        batch_cmd(broker, source, "-o", out, "--concurrency", "16"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_lines(out, 100, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert proc.returncode == 1
    assert b"stopping" in stderr and b"interrupted:" in stdout and b"--resume" in stdout
    done = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(done.values()) == {1} and len(done) < 1000
    assert not (tmp_path / "out.errors.jsonl").exists() or not ids_in(tmp_path / "out.errors.jsonl")
    resumed = run_cli(batch_cmd(broker, source, "-o", out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    counts = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"s{i}" for i in range(1000)} and set(counts.values()) == {1}


def test_exit_codes_and_summary_json(batch_broker: BrokerProcess, tmp_path: Path) -> None:
    broker = batch_broker
    good = openai_file(tmp_path / "good.jsonl", 20)
    ok = run_cli(
        batch_cmd(broker, good, "-o", tmp_path / "o1.jsonl", "--summary-json", tmp_path / "s.json")
    )
    assert ok.returncode == 0, ok.stderr
    assert "batch summary" in ok.stdout and "20 succeeded" in ok.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    (row,) = summary["by_provider_model"]
    assert (row["provider"], row["model"], row["jobs"], row["succeeded"]) == (
        "mock",
        "echo",
        20,
        20,
    )
    assert row["latency_p50"] is not None and row["ttft_p95"] is not None
    lines = read_lines(tmp_path / "o1.jsonl")
    costs = [line["llmrelay"]["cost"] for line in lines]
    assert all(line["llmrelay"]["cost_source"] != "unknown" for line in lines)
    assert summary["cost"] == pytest.approx(sum(costs)) == row["cost"]  # the broker's prices

    mixed = write_jsonl(
        tmp_path / "mixed.jsonl", [openai_line("a", "x"), openai_line("b", "y", "broken:echo")]
    )
    some_failed = run_cli(batch_cmd(broker, mixed, "-o", tmp_path / "o2.jsonl"))
    assert some_failed.returncode == 1
    assert "invalid_request 1" in some_failed.stdout  # failures by category in the table

    again = run_cli(batch_cmd(broker, good, "-o", tmp_path / "o1.jsonl"))
    assert again.returncode == 2 and "--resume" in again.stderr
    missing = run_cli(batch_cmd(broker, tmp_path / "nope.jsonl", "-o", tmp_path / "o3.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_flag = run_cli(batch_cmd(broker, good, "-o", tmp_path / "o4.jsonl", "--concurrency", "0"))
    assert bad_flag.returncode == 2 and "--concurrency" in bad_flag.stderr


def test_dry_run_validates_and_sends_nothing(batch_broker: BrokerProcess, tmp_path: Path) -> None:
    broker = batch_broker
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [openai_line("a", "x"), "{oops", openai_line("b", "y", "default"), openai_line("a", "z")],
    )
    result = run_cli(batch_cmd(broker, source, "-o", tmp_path / "out.jsonl", "--dry-run"))
    assert result.returncode == 1
    assert "2 valid, 2 malformed; nothing sent" in result.stdout
    assert "line 2: line: not valid JSON" in result.stderr
    assert "line 4: custom_id: duplicate" in result.stderr
    assert "mock:echo: 1 jobs; candidates mock:echo; prompt tokens" in result.stdout
    assert "route:default: 1 jobs; candidates mock:echo;" in result.stdout
    assert not (tmp_path / "out.jsonl").exists()
    assert not calls_per_id(tmp_path / "calls.log")


def read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break  # the child closed the terminal
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_progress_bar_on_a_pty_plain_lines_without(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    source = slow_jobs(tmp_path / "in.jsonl", 400, 0.01)
    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        batch_cmd(broker, source, "-o", tmp_path / "tty.jsonl", "--concurrency", "8"),
        cwd=ROOT,
        env=env,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
        preexec_fn=die_with_parent_preexec(),
    )
    os.close(secondary)
    try:
        screen = read_pty(primary, proc, 120).decode("utf-8", "replace")
        proc.wait(30)
    finally:
        os.close(primary)
        kill_tree(proc)
    assert proc.returncode == 0, screen[-2000:]
    assert "━" in screen and "400/400" in screen  # rich's bar, redrawn to the end
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "batch: " not in screen  # no plain progress lines on a terminal

    plain = run_cli(
        batch_cmd(
            broker,
            source,
            "-o",
            tmp_path / "plain.jsonl",
            "--concurrency",
            "8",
            "--progress-interval",
            "0.2",
        )
    )
    assert plain.returncode == 0, plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.startswith("batch: ")]
    assert len(lines) >= 2 and lines[-1].startswith("batch: 400/400 done, 0 failed")
    assert "━" not in plain.stderr and "\x1b[" not in plain.stderr
