"""The batch runner's library API against a real broker and mock workers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from openai.types.chat import ChatCompletion

from batch.runner import BatchOptions, BatchReport, BatchUsageError, run_batch
from protocol.client import AsyncClient
from tests.batch_support import (
    anthropic_request,
    calls_per_id,
    ids_in,
    mock_broker,
    openai_file,
    openai_line,
    read_lines,
    write_jsonl,
)
from tests.harness import BrokerProcess

pytestmark = pytest.mark.timeout(120)


def run(
    broker: BrokerProcess,
    source: Any,
    out: Path,
    errors: Path | None = None,
    cancel_after: int | None = None,
    **options: Any,
) -> BatchReport:
    async def go() -> BatchReport:
        async with AsyncClient(broker.client_endpoint, heartbeat_interval=0.5) as client:
            cancel = asyncio.Event()

            def progress(stats: Any) -> None:
                if cancel_after is not None and stats.done >= cancel_after:
                    cancel.set()

            return await run_batch(
                source,
                out,
                errors,
                client=client,
                options=BatchOptions(**options),
                progress=progress,
                cancel=cancel,
            )

    return asyncio.run(go())


def test_openai_file_runs_unchanged_and_the_sdk_parses_every_line(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    lines = [
        openai_line("a", "hello there", max_tokens=16, temperature=0.2),
        openai_line("b", "second prompt", model="default", max_completion_tokens=8),
        openai_line("c", "bare model name", model="echo", seed=3, stop=["zzz"]),
        openai_line("d", "fails", model="broken:echo"),
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    report = run(broker, source, tmp_path / "out.jsonl")
    assert (report.stats.succeeded, report.stats.failed, report.exit_code) == (3, 1, 1)
    ok = read_lines(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in ok) == ["a", "b", "c"]
    for line in ok:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content
        assert line["llmrelay"]["provider"] == "mock"
        assert line["llmrelay"]["attempts"][0]["outcome"] == "ok"
    by_id = {line["custom_id"]: line for line in ok}
    assert by_id["a"]["response"]["body"]["choices"][0]["message"]["content"] == "hello there "
    (failed,) = read_lines(tmp_path / "out.errors.jsonl")
    # As OpenAI writes an HTTP-level failure: status and error body in `response`.
    assert failed["custom_id"] == "d" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    # The body the gateway answers for the same failure (protocol.http_errors): OpenAI's
    # ErrorResponse, whose code is null for a plain invalid request.
    assert failed["response"]["body"] == {
        "error": {
            "message": failed["response"]["body"]["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert failed["llmrelay"]["category"] == "invalid_request"


def test_anthropic_document_and_jsonl_parse_as_sdk_results(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    requests = [anthropic_request(f"q{i}", f"question number {i}") for i in range(20)]
    requests.append(anthropic_request("bad", "x", model="broken:echo"))
    document = tmp_path / "requests.json"
    document.write_text(json.dumps({"requests": requests}, indent=2))
    report = run(broker, document, tmp_path / "out.jsonl", tmp_path / "out.jsonl")
    assert report.format == "anthropic"
    assert (report.stats.succeeded, report.stats.failed) == (20, 1)
    lines = read_lines(tmp_path / "out.jsonl")  # one results file, as the API gives
    assert len(lines) == 21
    kinds = set()
    for line in lines:
        parsed = MessageBatchIndividualResponse.model_validate(
            {k: v for k, v in line.items() if k != "llmrelay"}
        )
        kinds.add(parsed.result.type)
        if parsed.result.type == "errored":
            assert parsed.result.error.error.type == "invalid_request_error"
        if parsed.result.type == "succeeded":
            text = parsed.result.message.content[0]
            assert text.type == "text" and text.text.startswith("question number")
    assert kinds == {"succeeded", "errored"}

    jsonl = write_jsonl(tmp_path / "requests.jsonl", requests[:5])
    report = run(broker, jsonl, tmp_path / "out2.jsonl")
    assert report.format == "anthropic" and report.stats.succeeded == 5


def test_malformed_lines_of_each_kind_name_line_and_field(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    good = [openai_line(f"ok{i}", f"fine {i}") for i in range(5)]
    no_messages = openai_line("m", "x")
    del no_messages["body"]["messages"]
    bad_role = openai_line("r", "y")
    bad_role["body"]["messages"][0]["role"] = "robot"
    lines: list[dict[str, Any] | str] = [
        good[0],
        "{not json",  # line 2
        {k: v for k, v in openai_line("x", "y").items() if k != "custom_id"},  # 3
        good[1],
        openai_line("ok0", "duplicate"),  # 5
        {**openai_line("u", "y"), "url": "/v1/embeddings"},  # 6
        no_messages,  # 7
        openai_line("p", "y", logit_bias={"1": 2}),  # 8: unknown parameter
        openai_line("v", "y", temperature=7),  # 9: bad value
        bad_role,  # 10
        good[2],
        good[3],
        good[4],
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    report = run(broker, source, tmp_path / "out.jsonl")
    assert report.stats.succeeded == 5 and report.stats.bad_lines == 8
    errors = {line["llmrelay"]["line"]: line for line in read_lines(tmp_path / "out.errors.jsonl")}
    expected = {
        2: ("invalid_json_line", "line"),
        3: ("missing_custom_id", "custom_id"),
        5: ("duplicate_custom_id", "custom_id"),
        6: ("url_mismatch", "url"),
        7: ("invalid_request", "body.messages"),
        8: ("invalid_request", "body.logit_bias"),
        9: ("invalid_request", "body.temperature"),
        10: ("invalid_request", "body.messages[0].role"),
    }
    assert set(errors) == set(expected)
    for number, (code, field) in expected.items():
        error = errors[number]["error"]
        assert (error["code"], error["param"], error["line"]) == (code, field, number)
        assert error["message"].startswith(f"line {number}: {field}")
    assert sorted(ids_in(tmp_path / "out.jsonl")) == [f"ok{i}" for i in range(5)]


def test_five_thousand_prompts_each_custom_id_exactly_once(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    source = openai_file(tmp_path / "in.jsonl", 5000)
    report = run(broker, source, tmp_path / "out.jsonl", concurrency=256)
    assert report.exit_code == 0 and report.stats.succeeded == 5000
    counts = ids_in(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"req-{i}" for i in range(5000)}
    assert set(counts.values()) == {1}
    assert set(calls_per_id(tmp_path / "calls.log").values()) == {1}


def test_cancel_leaves_files_resumable_and_resume_runs_only_the_rest(
    batch_broker: BrokerProcess, tmp_path: Path
) -> None:
    broker = batch_broker
    source = openai_file(tmp_path / "in.jsonl", 600)
    out = tmp_path / "out.jsonl"
    first = run(broker, source, out, cancel_after=200, concurrency=32)
    assert first.interrupted and first.exit_code == 1
    done_first = set(ids_in(out))
    assert 200 <= len(done_first) < 600 and first.not_run == 600 - len(done_first)
    with pytest.raises(BatchUsageError, match="--resume"):
        run(broker, source, out)
    second = run(broker, source, out, resume=True)
    assert second.stats.skipped == len(done_first) and second.exit_code == 0
    counts = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"req-{i}" for i in range(600)} and set(counts.values()) == {1}
    calls = calls_per_id(tmp_path / "calls.log")
    assert all(calls[cid] == 1 for cid in done_first)  # nothing finished was redone


def test_resume_cuts_a_torn_last_line(batch_broker: BrokerProcess, tmp_path: Path) -> None:
    broker = batch_broker
    source = openai_file(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    run(broker, source, out, cancel_after=10, concurrency=4)
    kept = read_lines(out)
    with open(out, "ab") as f:
        f.write(b'{"id":"batch_req_torn","custom_id":"req-29","resp')  # a half-written line
    report = run(broker, source, out, resume=True)
    assert report.torn_bytes > 0
    counts = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"req-{i}" for i in range(30)} and set(counts.values()) == {1}
    assert read_lines(out)[: len(kept)] == kept


def test_retry_failed_reruns_only_rerunnable_failures(broker_factory: Any, tmp_path: Path) -> None:
    providers = {
        "mock": {"kind": "mock", "models": ["echo"], "capacity": 16},
        "flaky": {
            "kind": "mock",
            "models": ["echo"],
            "capacity": 16,
            "options": {"fail": [{"category": "quota_exhausted", "status_code": 429}]},
        },
    }
    broker = broker_factory(providers)
    broker.wait_workers(2)
    lines: list[dict[str, Any] | str] = [openai_line(f"r{i}", f"x {i}") for i in range(10)]
    lines.append("{broken")
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    out, err = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    # quota_exhausted opens flaky's circuit; the deadline ends the jobs that then wait for it.
    first = run(broker, source, out, model="flaky:echo", timeout=3.0)
    assert first.stats.failed == 10 and first.stats.bad_lines == 1
    failures = [e for e in read_lines(err) if e["llmrelay"]["category"] != "invalid_input"]
    assert len(failures) == 10 and all(e["llmrelay"]["retryable"] for e in failures)
    second = run(broker, source, out, retry_failed=True, model="mock:echo")
    assert second.retried == 10 and second.stats.succeeded == 10
    assert second.failures_before == 1  # the bad line stays, and is not rerun
    assert ids_in(out) == {f"r{i}": 1 for i in range(10)}
    (bad,) = read_lines(err)
    assert bad["llmrelay"]["category"] == "invalid_input"


def test_broker_killed_and_restarted_mid_batch_completes_each_id_once(
    broker_factory: Any, tmp_path: Path
) -> None:
    broker = mock_broker(broker_factory, tmp_path)
    source = tmp_path / "in.jsonl"
    lines = [
        {
            "custom_id": f"j{i}",
            "model": "mock:echo",
            "prompt": f"slow prompt {i}",
            "metadata": {"mock": {"first_token_delay": 0.02}},
        }
        for i in range(1500)
    ]
    write_jsonl(source, lines)
    out = tmp_path / "out.jsonl"
    restarted: list[int] = []

    async def go() -> BatchReport:
        loop = asyncio.get_running_loop()
        async with AsyncClient(broker.client_endpoint) as client:  # default heartbeats

            def restart() -> None:
                broker.kill()  # SIGKILL the broker and its workers
                # Back within ZeroMQ's reconnect, well inside the client's liveness window:
                # only the new run's instance id tells the client its jobs are gone.
                time.sleep(0.3)
                # A new instance on the same endpoints, started from the main thread: its
                # die-with-parent signal follows the thread that spawned it.
                loop.call_soon_threadsafe(broker.start)

            def progress(stats: Any) -> None:
                if stats.done >= 300 and not restarted:
                    restarted.append(stats.done)
                    threading.Thread(target=restart, daemon=True).start()

            return await run_batch(
                source,
                out,
                client=client,
                options=BatchOptions(concurrency=64),
                progress=progress,
            )

    report = asyncio.run(go())
    assert restarted and report.exit_code == 0, report.to_json()
    counts = ids_in(out, tmp_path / "out.errors.jsonl")
    assert set(counts) == {f"j{i}" for i in range(1500)} and set(counts.values()) == {1}
