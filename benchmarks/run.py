"""`make bench`: every benchmark beside its baseline in the same run; one table of figures and
ratios, also written to bench/results/<date>.json and docs/performance.md.

    python -m benchmarks.run                 # the full run (about 15-25 minutes on 2 cores)
    python -m benchmarks.run --smoke --out D # tiny sizes, results under D (what CI runs)
    python -m benchmarks.run --only ceiling,batch
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from benchmarks.common import ROOT, Row

# each runs in its own process (see isolated); latency last, as before
BENCHES = ("ceiling", "batch", "llama", "gateway", "latency")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def benches(smoke: bool, peers: bool) -> dict[str, Callable[[], list[Row]]]:
    from benchmarks import batch_scale, ceiling, gateway, latency, llama

    if smoke:
        sizes = latency.Sizes(rounds=1, serial=10, parallel=64, failover=10)
        return {
            "ceiling": lambda: ceiling.run(jobs=300, window=64, frames_per_job=(10,)),
            "latency": lambda: latency.run(sizes, peers=peers),
            "gateway": lambda: gateway.run(sizes, peers=peers),
            "batch": lambda: batch_scale.run((200, 400)),
            "llama": lambda: llama.run(llama.default_models(smoke=True), rounds=1),
        }
    return {
        "ceiling": lambda: ceiling.run(),
        "latency": lambda: latency.run(latency.Sizes(serial=200, parallel=1000), peers=peers),
        "gateway": lambda: gateway.run(latency.Sizes(serial=200, parallel=1000), peers=peers),
        "batch": lambda: batch_scale.run(),
        "llama": lambda: llama.run(llama.default_models(smoke=False)),
    }


def cpu_text(cpu: dict[str, float]) -> str:
    return " / ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def table(rows: list[Row]) -> str:
    head = "| bench | measure | path | value | baseline | ratio | added | target | CPU ms/job |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        added = f"{r.value - r.baseline:+.2f}" if not r.higher_is_better else ""
        same = r.path == r.baseline_path
        lines.append(
            f"| {r.bench} | {r.measure} | {r.path} | {r.value:,.2f} | "
            f"{'(baseline)' if same else f'{r.baseline:,.2f} ({r.baseline_path})'} | "
            f"{'' if same else f'{r.ratio:.3f}'} | {'' if same else added} | {r.target} | "
            f"{cpu_text(r.cpu_ms_per_job)} |"
        )
    return "\n".join(lines)


NOTES = "## What changed"  # from here on docs/performance.md is written by hand, and kept


def kept_notes(path: Path) -> str:
    """The hand-written part of the doc (before/after figures of each change), if any."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    at = text.find(f"\n{NOTES}")
    return text[at:] if at >= 0 else ""


def write_doc(path: Path, facts: dict[str, Any], text: str, command: str) -> None:
    m = facts["machine"]
    notes = kept_notes(path)
    path.write_text(
        "# Performance\n\n"
        "Figures from the latest `make bench` (written by `benchmarks/run.py`; every row was "
        "measured beside its baseline in the same run, so read the ratios, not the absolute "
        "numbers). `ratio` is value / baseline: above 1 is faster for rates and slower for "
        "latencies and sizes; `added` is value - baseline for latencies. CPU ms/job is the "
        "kernel's count of user + system time of each process over the row's run, per job.\n\n"
        f"- run: {facts['date']}, commit {m['commit']}, {facts['seconds']:.0f} s\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['system']}; "
        f"load average {m['load_average_at_start']} at the start and "
        f"{m.get('load_average_at_end', '?')} at the end (a load near or above the "
        "core count means other work shared the machine: read such figures as noisy)\n"
        "- the fake OpenAI server (benchmarks/sse_fake.py, uvicorn) is pinned to core 0 and "
        "everything measured to the other cores\n\n"
        f"Reproduce: `{command}` (raw figures: `bench/results/<date>.json`).\n\n"
        f"{text}\n{notes}"
    )


def isolated(name: str, smoke: bool, no_peers: bool) -> list[Row]:
    """Run one benchmark in a fresh interpreter and read its rows back.

    The clients of each benchmark run inside its own process, so a fresh one per benchmark
    keeps any row from depending on what the benchmarks before it left behind.
    (It did not explain the slow direct-httpx baseline next to the LiteLLM peers:
    docs/performance.md, round 4.)
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks.run", "--only", name, "--rows-to", str(out)]
        cmd += ["--smoke"] * smoke + ["--no-peers"] * no_peers
        done = subprocess.run(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
        return [Row.from_json(r) for r in json.loads(out.read_text())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmrelay benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks they run")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"subset of {BENCHES}")
    parser.add_argument("--no-peers", action="store_true", help="skip the LiteLLM rows")
    parser.add_argument("--out", type=Path, default=ROOT, help="where bench/ and docs/ go")
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)  # see isolated()
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    wanted = [b for b in args.only.split(",") if b]
    unknown = set(wanted) - set(BENCHES)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {BENCHES}")
    if args.rows_to is not None:  # a child of the run below: one benchmark, rows to a file
        (name,) = wanted
        got = benches(args.smoke, peers=not args.no_peers)[name]()
        args.rows_to.write_text(json.dumps([r.to_json() for r in got]))
        return 0
    started = time.monotonic()
    facts: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "smoke": args.smoke,
    }
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in wanted:
        print(f"## {name}", file=sys.stderr, flush=True)
        try:
            got = isolated(name, args.smoke, args.no_peers)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
            continue
        rows += got
        print(table(got), file=sys.stderr, flush=True)
    facts["errors"] = errors
    facts["seconds"] = time.monotonic() - started
    facts["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = table(rows)
    for name, error in errors.items():
        text += f"\n\n**{name} did not finish**: {error}"
    print(text)
    stamp = facts["date"].replace(":", "").replace("+0000", "Z")
    results = args.out / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stamp}.json").write_text(
        json.dumps({**facts, "rows": [r.to_json() for r in rows]}, indent=1) + "\n"
    )
    docs = args.out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    command = "make bench" if not args.smoke else "python -m benchmarks.run --smoke"
    if wanted != list(BENCHES):
        command = f"python -m benchmarks.run --only {','.join(wanted)}"
    write_doc(docs / "performance.md", facts, text, command)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
