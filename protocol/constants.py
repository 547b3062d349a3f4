"""Names and defaults that cross process boundaries, each defined once.

Environment variables are how a broker hands a spawned worker its spec and keys (never argv),
and how any process finds its config or its broker; default endpoints are shared by the
broker's config, the CLI and the client stub.
"""

from __future__ import annotations

DEFAULT_CLIENT_ENDPOINT = "tcp://127.0.0.1:5555"  # the broker's ROUTER for clients
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:5556"  # the broker's ROUTER for workers

ENDPOINT_ENV = "LLMRELAY_ENDPOINT"  # a client's broker endpoint
CONFIG_ENV = "LLMRELAY_CONFIG"  # the TOML config file
SPEC_ENV = "LLMRELAY_WORKER_SPEC"  # a spawned worker's ProviderSpec, as JSON
SERVER_KEY_ENV = "LLMRELAY_CURVE_SERVER_KEY"  # the broker's CURVE public key
CLIENT_PUBLIC_ENV = "LLMRELAY_CURVE_PUBLIC_KEY"  # this peer's own pair (ephemeral if unset)
CLIENT_SECRET_ENV = "LLMRELAY_CURVE_SECRET_KEY"
IO_POLICY_ENV = "LLMRELAY_ZMQ_IO_POLICY"  # "batch" (default) or "normal" (protocol/io_threads.py)
