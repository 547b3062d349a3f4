"""CURVE authentication for the broker's sockets (ZAP handler in a background thread)."""

from __future__ import annotations

from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from protocol.constants import CLIENT_PUBLIC_ENV, CLIENT_SECRET_ENV, SERVER_KEY_ENV
from protocol.transport import SocketOptions


class _AllowList:
    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(
    ctx: zmq.Context[Any], opts: SocketOptions, allowed: list[str] | None
) -> tuple[ThreadAuthenticator | None, dict[str, str]]:
    """Admit the given client keys (or any key when None) plus the broker's own workers.

    Returns the authenticator and the environment the workers the broker spawns need: the
    server's public key and, with an allow-list, a keypair made here for them. The caller
    hands it to the supervisor (never argv, and never this process's own os.environ).
    """
    if not opts.curve:
        return None, {}
    auth = ThreadAuthenticator(ctx)
    auth.start()
    assert opts.server_public_key is not None
    worker_env = {SERVER_KEY_ENV: opts.server_public_key}
    if allowed is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        public, secret = zmq.curve_keypair()
        worker_env[CLIENT_PUBLIC_ENV] = public.decode()
        worker_env[CLIENT_SECRET_ENV] = secret.decode()
        keys = {k.encode() for k in allowed} | {public}
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(keys))
    return auth, worker_env
