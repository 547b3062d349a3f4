# ruff: noqa: E501  (tables read best one case per line)
"""The `llmrelay` command as users run it: real processes, one-line errors, documented codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, BrokerProcess, free_port

pytestmark = pytest.mark.timeout(120)


def llmrelay(
    *argv: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *argv],
        input=stdin, capture_output=True, text=True, encoding="utf-8", timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


NOWHERE = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: input errors must come first

# (id, argv, exit code, words the one line must hold)
BAD_INPUT: list[tuple[str, list[str], int, str]] = [
    ("params-wrong-type", ["submit", "--params", '{"temperature":"hot"}', "hi"], 2, "params.temperature: expected a number"),
    ("params-not-json", ["submit", "--params", "notjson", "hi"], 2, "--params: not valid JSON"),
    ("params-not-object", ["submit", "--params", "[1,2]", "hi"], 2, "--params: must be a JSON object"),
    ("params-unknown", ["submit", "--params", '{"temprature":0}', "hi"], 2, "params.temprature: unknown parameter"),
    ("params-out-of-range", ["submit", "--params", '{"top_p":3}', "hi"], 2, "params.top_p: must be in"),
    ("max-tokens-zero", ["submit", "--max-tokens", "0", "hi"], 2, "argument --max-tokens: must be > 0"),
    ("max-tokens-word", ["submit", "--max-tokens", "ten", "hi"], 2, "argument --max-tokens: must be an integer"),
    ("timeout-negative", ["submit", "--timeout", "-1", "hi"], 2, "argument --timeout: must be > 0"),
    ("connect-timeout-word", ["submit", "--connect-timeout", "soon", "hi"], 2, "argument --connect-timeout: must be a number"),
    ("prompt-file-missing", ["submit", "@/nonexistent/prompt.txt"], 2, "prompt: cannot read '/nonexistent/prompt.txt'"),
    ("model-and-route", ["submit", "--model", "a:b", "--route", "r", "hi"], 2, "argument --route: not allowed with argument --model"),
    ("no-prompt", ["submit"], 2, "the following arguments are required: prompt"),
    ("status-interval-zero", ["status", "--watch", "--interval", "0"], 2, "argument --interval: must be > 0"),
    ("log-format", ["--log-format", "xml", "status"], 2, "argument --log-format: invalid choice"),
    ("config-check-missing", ["config", "check", "/nonexistent.toml"], 2, "config error: /nonexistent.toml: cannot read"),
    ("worker-unknown-provider", ["worker", "--provider", "nope"], 2, "--provider: 'nope' is neither in the config nor a known kind"),
    ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "words"), [pytest.param(*r[1:], id=r[0]) for r in BAD_INPUT]
)
def test_bad_input_gives_one_line_naming_the_field(argv: list[str], code: int, words: str) -> None:
    if argv[0] in ("submit", "status"):
        argv = [*argv[:1], "--endpoint", NOWHERE, *argv[1:]]
    done = llmrelay(*argv)
    assert done.returncode == code, done.stderr
    assert words in one_line(done.stderr)


@pytest.mark.parametrize("command", ["submit", "status"])
def test_no_broker_exits_1_within_the_connect_timeout(command: str) -> None:
    # The job's own deadline (3 s + grace) would say `deadline`; the subprocess timeout is
    # the hang guard. The connect watchdog answers first, naming the endpoint and the remedy.
    argv = ["--endpoint", NOWHERE, "--connect-timeout", "2"]
    done = llmrelay(command, *argv, *(["--timeout", "3", "hello"] if command == "submit" else []))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("error: broker_unreachable: no broker answered at " + NOWHERE)
    assert "within 2s" in line and "llmrelay broker" in line


def test_prompt_from_stdin_and_from_a_file(broker_factory: Any, tmp_path: Path) -> None:
    broker: BrokerProcess = broker_factory({"mock": {"kind": "mock", "models": ["echo"]}})
    broker.wait_workers(1, timeout=60)
    big = " ".join(f"w{i}" for i in range(40_000))  # ~260 KiB: more than argv allows
    path = tmp_path / "prompt.txt"
    path.write_text(big)
    common = ["submit", "--endpoint", broker.client_endpoint, "--model", "mock:echo"]
    from_file = llmrelay(*common, f"@{path}")
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.split() == big.split()
    from_stdin = llmrelay(*common, "--stream", "-", stdin="read from stdin")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == "read from stdin \n"


def test_status_watch_redraws_until_interrupted(broker_factory: Any) -> None:
    broker: BrokerProcess = broker_factory({"mock": {"kind": "mock", "models": ["echo"]}})
    broker.wait_workers(1, timeout=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "status", "--endpoint", broker.client_endpoint,
         "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        seen: list[str] = []
        assert proc.stdout is not None
        while sum(line.startswith("queued ") for line in seen) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            seen.append(line)
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()
    assert any(line.startswith("--- ") for line in seen)  # not a tty: one block per redraw
    assert any("worker " in line and " mock " in line for line in seen)


def test_keys_generate_writes_private_pairs_and_prints_no_key(tmp_path: Path) -> None:
    target = tmp_path / "keys"
    done = llmrelay("keys", "generate", str(target))
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in target.iterdir())
    assert files == sorted(
        f"{r}.{k}" for r in ("broker", "client", "worker") for k in ("public", "secret")
    )
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = path.read_text().strip()
        assert len(key) == 40
        assert key not in done.stdout + done.stderr
    again = llmrelay("keys", "generate", str(target))  # never overwrites
    assert again.returncode == 2 and "already holds" in one_line(again.stderr)


def test_log_format_console_is_text(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[broker]\nheartbeat_interval = 1.0\n[providers.mock]\nmodels = ["echo"]\n')
    done = llmrelay("--log-format", "console", "config", "check", str(path))
    assert done.returncode == 0
    assert json.loads(done.stdout)["providers"]["mock"]["kind"] == "mock"
