"""`llmrelay keys generate DIR`: CURVE key pairs for the broker, a client and a remote worker.

Each role gets `ROLE.public` and `ROLE.secret` (Z85 text, one line), created with mode 0600
and never overwritten. Nothing here prints or logs a key: the CLI names the files only.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from protocol.schema import ConfigError

ROLES = ("broker", "client", "worker")


def _write_private(path: Path, text: str) -> None:
    # O_EXCL: an existing key is never replaced; 0o600 from the first byte (no chmod race).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")


def generate_keys(directory: Path) -> list[Path]:
    """Write one pair per role into `directory`; the paths written, in order."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    targets = [directory / f"{role}.{part}" for role in ROLES for part in ("public", "secret")]
    existing = [p.name for p in targets if p.exists()]
    if existing:
        raise ConfigError("keys generate", f"{directory} already holds {', '.join(existing)}")
    for role in ROLES:
        public, secret = zmq.curve_keypair()
        _write_private(directory / f"{role}.public", public.decode())
        _write_private(directory / f"{role}.secret", secret.decode())
    return targets


def read_key(path: str | os.PathLike[str]) -> str:
    """A key file's Z85 text (40 characters)."""
    text = Path(path).read_text().strip()
    if len(text) != 40:
        raise ConfigError(str(path), "is not a Z85 CURVE key (40 characters)")
    return text
