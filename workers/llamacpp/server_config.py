"""What a supervised llama-server is started with (ServerConfig, from spec.options), the
states it goes through, and how it fails (ServerFailed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from workers.llamacpp.binary import ServerBinary

# Weight repacking (llama-server's default) picks CPU-specific kernels for quantized weights:
# AMX ones for SmolLM2's Q4_1 where the CPU lists AMX. Where the CPU lists it but cannot run it
# (seen in VMs) the server dies of a signal while loading; it is then started again without.
REPACK_FLAGS = frozenset({"--repack", "-nr", "--no-repack"})
NO_REPACK = "--no-repack"
# Flags the supervisor owns: overriding them could expose the server or break supervision.
MANAGED_FLAGS = frozenset(
    {"--host", "--port", "--api-key", "--api-key-file", "-m", "--model", "-np", "--parallel"}
)


class ServerState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # gave up: bad model, or flapping; needs an operator
    CLOSED = "closed"


class ServerFailed(RuntimeError):
    """llama-server cannot be (re)started; the message carries its last output lines."""

    def __init__(
        self,
        message: str,
        *,
        output: Sequence[str] = (),
        permanent: bool = True,
        missing_model: bool = False,
        killed_by: int | None = None,
    ) -> None:
        self.output = list(output)
        self.killed_by = killed_by  # the signal that ended it while loading (SIGILL...)
        self.permanent = permanent  # retrying cannot help (bad model, flapping)
        self.missing_model = missing_model
        tail = "\n".join(self.output[-12:])
        super().__init__(f"{message}\n--- llama-server output ---\n{tail}" if tail else message)


def _num(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"options.{name} must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(slots=True)
class ServerConfig:
    binary: ServerBinary
    model: Path
    parallel: int = 1  # --parallel: slots = concurrent generations = spec.capacity
    ctx_size: int | None = None  # total context, shared between slots (None: the model's)
    n_gpu_layers: int | str | None = None
    extra_args: list[str] = field(default_factory=list)
    load_timeout: float = 300.0  # seconds /health may answer 503 (model loading)
    health_interval: float = 2.0  # seconds between liveness probes
    health_timeout: float = 2.0  # a probe slower than this counts as a failure (hang)
    health_failures: int = 3  # consecutive failed probes before a restart
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_restarts: int = 5  # more restarts than this within restart_window: give up
    restart_window: float = 60.0
    stop_timeout: float = 5.0  # SIGTERM grace before SIGKILL

    @classmethod
    def from_options(
        cls, binary: ServerBinary, options: dict[str, Any], parallel: int
    ) -> ServerConfig:
        model = options.get("model_path") or options.get("model")
        if not model or not isinstance(model, str):
            raise ValueError("options.model_path (the GGUF file) is required for llamacpp")
        extra = options.get("extra_args", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise ValueError("options.extra_args must be a list of strings")
        managed = sorted({a.split("=", 1)[0] for a in extra} & MANAGED_FLAGS)
        if managed:
            raise ValueError(f"options.extra_args may not set {managed}: the worker manages them")
        ctx = options.get("ctx_size")
        ngl = options.get("n_gpu_layers")
        return cls(
            binary=binary,
            model=Path(model).expanduser(),
            parallel=max(1, int(parallel)),
            ctx_size=None if ctx is None else int(ctx),
            n_gpu_layers=ngl if isinstance(ngl, str) or ngl is None else int(ngl),
            extra_args=list(extra),
            load_timeout=_num(options, "load_timeout", 300.0),
            health_interval=_num(options, "health_interval", 2.0),
            health_timeout=_num(options, "health_timeout", 2.0),
            health_failures=max(1, int(_num(options, "health_failures", 3))),
            backoff_initial=_num(options, "restart_backoff", 0.5),
            backoff_max=_num(options, "restart_backoff_max", 30.0),
            max_restarts=int(_num(options, "max_restarts", 5)),
            restart_window=_num(options, "restart_window", 60.0),
            stop_timeout=_num(options, "stop_timeout", 5.0),
        )
