"""The client library applications import: `AsyncClient` (asyncio) and `Client` (blocking).

    from protocol.client import AsyncClient, Client, build_job

The parts live in their own modules: the asyncio client and its connection
(protocol/async_client.py), one job's ordered event stream (protocol/job_stream.py), the
catalog calls (protocol/catalog_calls.py), the blocking wrapper (protocol/sync_client.py)
and job building from keywords (`build_job`, protocol/job.py). Events and results are in
protocol/results.py.
"""

from __future__ import annotations

from protocol.async_client import CONNECT_TIMEOUT, DEADLINE_GRACE, DEFAULT_ENDPOINT, AsyncClient
from protocol.job import JOB_OPTIONS, build_job
from protocol.sync_client import Client

__all__ = [
    "CONNECT_TIMEOUT",
    "DEADLINE_GRACE",
    "DEFAULT_ENDPOINT",
    "JOB_OPTIONS",
    "AsyncClient",
    "Client",
    "build_job",
]
