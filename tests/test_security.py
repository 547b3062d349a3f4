"""CURVE end to end over a real network path, and keys that never show anywhere.

The remote worker runs in its own network namespace joined to the host by a veth pair, so
its traffic to the broker crosses a non-loopback interface, as from another machine. Needs
root (CAP_NET_ADMIN); without it the test is skipped and says why.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.errors import ErrorCategory, ProviderError
from protocol.transport import CLIENT_PUBLIC_ENV as PUBLIC_ENV
from protocol.transport import CLIENT_SECRET_ENV as SECRET_ENV
from protocol.transport import SocketOptions
from tests.fakes.server import FakeServer, Reply
from tests.harness import ROOT, BrokerProcess, free_port, kill_tree
from workers.procutil import die_with_parent_preexec

pytestmark = pytest.mark.timeout(180)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, host address, namespace address) on a fresh veth pair."""
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"lr-{tag}", f"lrh{tag}", f"lrn{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        run("ip", "netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"network namespaces unavailable ({exc}); the CURVE test needs root")
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", name)
        run("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_if)
        run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)


def keypair(directory: Path, role: str) -> tuple[str, str]:
    return (
        (directory / f"{role}.public").read_text().strip(),
        (directory / f"{role}.secret").read_text().strip(),
    )


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *argv],
        capture_output=True, text=True, timeout=90, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def in_namespace(
    ns: str, argv: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, *argv],
            stdout=out, stderr=out, cwd=ROOT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "LLMRELAY_LOG_LEVEL": "debug", **env},
            preexec_fn=die_with_parent_preexec(),
        )  # fmt: skip


# Run inside the namespace: one DEALER with the given keys, and the handshake's verdict.
PROBE = """
import sys, zmq
from zmq.utils.monitor import recv_monitor_message
server, public, secret, endpoint = sys.argv[1:5]
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
    server.encode(), public.encode(), secret.encode())
monitor = sock.get_monitor_socket()
sock.connect(endpoint)
verdicts = {zmq.EVENT_HANDSHAKE_SUCCEEDED: "admitted", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused"}
while monitor.poll(20000):
    event = recv_monitor_message(monitor)["event"]
    if event in verdicts:
        print(verdicts[event])
        break
else:
    print("no verdict")
"""


def probe(ns: str, server: str, public: str, secret: str, endpoint: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, server, public, secret, endpoint],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr[-300:]


def test_remote_curve_worker_over_veth_and_no_key_ever_shows(
    netns: tuple[str, str, str],
    broker_factory: Any,
    openai_fake: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns, host_ip, ns_ip = netns
    keys_dir = tmp_path / "keys"
    outputs: list[str] = []
    generated = cli("keys", "generate", str(keys_dir))
    assert generated.returncode == 0, generated.stderr
    outputs += [generated.stdout, generated.stderr]
    broker_pub, broker_sec = keypair(keys_dir, "broker")
    client_pub, client_sec = keypair(keys_dir, "client")
    worker_pub, worker_sec = keypair(keys_dir, "worker")
    cli("keys", "generate", str(tmp_path / "other"))
    stranger_pub, stranger_sec = keypair(tmp_path / "other", "worker")
    api_key = "sk-proj-" + secrets.token_urlsafe(36)  # shaped like a real OpenAI key
    openai_fake.handler.api_key = api_key  # type: ignore[attr-defined]
    openai_fake.default = Reply(tokens=["over ", "curve"])
    monkeypatch.setenv("TEST_BROKER_SECRET", broker_sec)
    monkeypatch.setenv("TEST_OPENAI_KEY", api_key)
    every_secret = [broker_sec, client_sec, worker_sec, stranger_sec, api_key]

    worker_endpoint = f"tcp://{host_ip}:{free_port()}"
    broker: BrokerProcess = broker_factory(
        {
            "remote": {"kind": "mock", "models": ["echo"], "spawn": False, "capacity": 2},
            "openai": {
                "kind": "openai",
                "capacity": 2,
                "options": {"base_url": openai_fake.url + "/v1", "api_key_env": "TEST_OPENAI_KEY"},
            },
        },
        worker_endpoint=worker_endpoint,
        curve_public_key=broker_pub,
        curve_secret_key_env="TEST_BROKER_SECRET",
        curve_allowed_clients=[client_pub, worker_pub],
    )
    curve_env = {"LLMRELAY_CURVE_SERVER_KEY": broker_pub}
    worker_argv = ["-m", "dispatcher.cli", "worker", "--provider", "remote"]
    worker_argv += ["--config", str(broker.config), "--connect", worker_endpoint]
    good = in_namespace(
        ns,
        worker_argv,
        {
            **curve_env,
            "LLMRELAY_CURVE_PUBLIC_KEY": worker_pub,
            "LLMRELAY_CURVE_SECRET_KEY": worker_sec,
        },
        tmp_path / "remote-worker.log",
    )
    stranger = in_namespace(
        ns,
        worker_argv,
        {
            **curve_env,
            "LLMRELAY_CURVE_PUBLIC_KEY": stranger_pub,
            "LLMRELAY_CURVE_SECRET_KEY": stranger_sec,
        },
        tmp_path / "stranger-worker.log",
    )
    options = SocketOptions(
        server_public_key=broker_pub, client_public_key=client_pub, client_secret_key=client_sec
    )
    try:
        with broker.client(socket_options=options) as client:
            deadline = time.monotonic() + 90
            while True:
                status = client.status(timeout=10)
                remote = [w for w in status["workers"] if w["provider"] == "remote"]
                if remote and any(w["provider"] == "openai" for w in status["workers"]):
                    break
                assert time.monotonic() < deadline, f"remote worker never registered: {status}"
                time.sleep(0.2)
            # Admitted: the hand-started worker in the namespace, with its own key pair.
            assert [w["pid"] for w in remote] == [good.pid]
            result = client.complete(model="remote:echo", prompt="across the veth", timeout=60)
            assert result.text == "across the veth " and result.provider == "remote"
            # Its connection really crosses the veth pair, not loopback.
            sockets = subprocess.run(
                ["ip", "netns", "exec", ns, "ss", "-tnH", "state", "established"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            assert f"{ns_ip}:" in sockets and worker_endpoint.removeprefix("tcp://") in sockets
            # Refused: an unknown key fails the handshake; a known one passes it.
            assert probe(ns, broker_pub, stranger_pub, stranger_sec, worker_endpoint) == "refused"
            assert probe(ns, broker_pub, worker_pub, worker_sec, worker_endpoint) == "admitted"
            status = client.status(timeout=10)
            assert [w["pid"] for w in status["workers"] if w["provider"] == "remote"] == [good.pid]
            assert stranger.poll() is None  # still trying, never let in
            ok = client.complete(model="openai:gpt-x", prompt="y", timeout=60)
            assert ok.text == "over curve"  # the real-looking key was sent and accepted
            # An API key echoed back by the provider is scrubbed from the caller's error
            # (the auth failure then holds the provider's circuit open: it comes last).
            openai_fake.script(
                Reply(
                    status=401,
                    body={
                        "error": {
                            "message": f"Incorrect API key provided: {api_key}.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                )
            )
            with pytest.raises(ProviderError) as caught:
                client.complete(model="openai:gpt-x", prompt="x", timeout=60)
            assert caught.value.category is ErrorCategory.AUTH
            outputs += [str(caught.value), repr(caught.value.attempts)]
            outputs.append(repr(client.status(timeout=10)))
        # The CLI, as an operator would run it, with keys in its environment.
        client_env = {
            **curve_env,
            PUBLIC_ENV: client_pub,
            SECRET_ENV: client_sec,
        }
        for argv in (
            ["submit", "--endpoint", broker.client_endpoint, "--model", "remote:echo", "hi"],
            ["status", "--endpoint", broker.client_endpoint],
            ["config", "check", str(broker.config)],
        ):
            done = cli(*argv, env=client_env)
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
        argvs = []
        for proc in [
            *psutil.Process(broker.proc.pid).children(recursive=True),
            psutil.Process(broker.proc.pid),
        ]:  # type: ignore[union-attr]
            argvs.append(" ".join(proc.cmdline()))
        argvs += [" ".join(psutil.Process(good.pid).cmdline())]
    finally:
        kill_tree(good)
        kill_tree(stranger)
        broker.stop()
    logs = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    logs += [broker.config.read_text()]
    assert len(logs) >= 4 and all(logs)
    for text in outputs + argvs + logs:
        for secret in every_secret:
            assert secret not in text
