"""CURVE authentication for the broker's sockets (ZAP handler in a background thread)."""

from __future__ import annotations

import os
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from protocol.transport import (
    CLIENT_PUBLIC_ENV,
    CLIENT_SECRET_ENV,
    SERVER_KEY_ENV,
    SocketOptions,
)


class _AllowList:
    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def start_authenticator(
    ctx: zmq.Context[Any], opts: SocketOptions, allowed: list[str] | None
) -> ThreadAuthenticator | None:
    """Admit the given client keys (or any key when None) plus the broker's own workers.

    The workers the broker spawns inherit the server's public key and, with an allow-list,
    a keypair made here for them, through the environment (never argv).
    """
    if not opts.curve:
        return None
    auth = ThreadAuthenticator(ctx)
    auth.start()
    if allowed is None:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        public, secret = zmq.curve_keypair()
        os.environ[CLIENT_PUBLIC_ENV] = public.decode()
        os.environ[CLIENT_SECRET_ENV] = secret.decode()
        keys = {k.encode() for k in allowed} | {public}
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(keys))
    assert opts.server_public_key is not None
    os.environ[SERVER_KEY_ENV] = opts.server_public_key
    return auth
