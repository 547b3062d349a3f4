"""`make bench`: every benchmark, each printing its figures beside its baseline."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["benchmarks.broker_throughput", "benchmarks.llama_throughput"]


def main() -> int:
    for name in BENCHMARKS:
        print(f"\n## {name}", flush=True)
        module = importlib.import_module(name)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
