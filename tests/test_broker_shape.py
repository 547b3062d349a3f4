"""The broker's shape: the core reads no clock and holds no socket, the broker process loads no
provider module, and the backend features kept as data agree with the backend classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from workers.registry import FEATURES, KINDS, backend_class, option_schema, static_features

ROOT = Path(__file__).resolve().parent.parent
# The broker core and the pure parts it uses: driven with `now` passed in, answering via outbox.
CORE_MODULES = [
    "attempts",
    "core",
    "health",
    "jobs",
    "outbox",
    "pacing",
    "queues",
    "retry",
    "routing",
    "scheduling",
    "status",
    "worker_book",
]
FORBIDDEN = {"time", "zmq", "socket", "asyncio", "threading", "select", "datetime"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_clock_and_no_sockets(module: str) -> None:
    used = imported_modules(ROOT / "dispatcher" / f"{module}.py") & FORBIDDEN
    assert not used, f"dispatcher/{module}.py imports {sorted(used)}"


def test_no_dispatcher_file_is_over_450_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "dispatcher").glob("*.py")}
    assert max(sizes.values()) <= 450, sizes


def test_importing_the_broker_imports_no_provider_module() -> None:
    code = (
        "import sys, dispatcher.broker, dispatcher.cli\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'anyio', 'aiohttp')"
        " or m.startswith(('workers.providers', 'workers.llamacpp', 'workers.http')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_static_features_agree_with_the_backend_class(kind: str) -> None:
    assert static_features(kind) == backend_class(kind).features


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_option_schema_as_data_agrees_with_the_backend_class(kind: str) -> None:
    assert option_schema(kind) == backend_class(kind).option_schema()


def test_parsing_a_config_of_every_kind_imports_no_provider_module() -> None:
    providers = ", ".join(f"'{k}': {{'kind': '{k}', 'models': ['m']}}" for k in sorted(KINDS))
    code = (
        "import sys\n"
        "from dispatcher.config import parse_config\n"
        f"parse_config({{'providers': {{{providers}}}}})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'anyio', 'aiohttp')"
        " or m.startswith(('workers.providers', 'workers.llamacpp', 'workers.http'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_kind_has_features_and_unknown_kinds_are_named() -> None:
    assert set(FEATURES) == set(KINDS)
    with pytest.raises(ValueError, match="unknown provider kind 'nope'"):
        static_features("nope")
