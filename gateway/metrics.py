"""`/metrics`: the OpenTelemetry GenAI metrics in Prometheus form plus llmrelay's own.

Request-level figures (durations, tokens, cost, outcomes) are observed here as requests end.
Broker-wide figures (queue depth, circuits, workers, pacing) come from the broker's status
reply at scrape time: the broker stays the one source of truth and keeps no exporter of its
own. Each metric is described in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway.pump import Backlog
from protocol.results import Result

# Bucket boundaries from the GenAI semantic conventions (metrics.yaml).
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
GenAi = tuple[str, str, str]  # the values of GEN_AI, in its order
CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}
# llmrelay kinds -> gen_ai.provider.name (the spec lists openai and anthropic; others custom)
PROVIDER_NAME = {"llamacpp": "llama_cpp"}


def provider_name(kind: str | None) -> str:
    if not kind:
        return "none"
    return PROVIDER_NAME.get(kind, kind)


class GatewayMetrics:
    def __init__(self, backlog: Backlog) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.request_duration = Histogram(
            "gen_ai_server_request_duration",
            "Time from a front-door request's arrival to its last byte",
            [*GEN_AI, "error_type"],
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token",
            "Time from a streamed request's arrival to its first generated text",
            GEN_AI,
            unit="seconds",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first, for successful requests",
            GEN_AI,
            unit="seconds",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.client_duration = Histogram(
            "gen_ai_client_operation_duration",
            "Duration of the upstream call that produced the answer (measured by its worker)",
            [*GEN_AI, "error_type"],
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per upstream call, by gen_ai_token_type (input, output)",
            [*GEN_AI, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.http = Counter(
            "llmrelay_http_requests",
            "Front-door HTTP requests by API and status code",
            ["api", "status"],
            registry=r,
        )
        self.jobs = Counter(
            "llmrelay_gateway_jobs",
            "Jobs the gateway ran, by outcome (done, failed) and failure category",
            ["outcome", "category"],
            registry=r,
        )
        self.attempts = Counter(
            "llmrelay_gateway_attempts",
            "Dispatched attempts behind the gateway's jobs, by provider and outcome",
            ["llmrelay_provider", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "llmrelay_failovers",
            "Jobs that moved from one provider to another before answering",
            ["from_provider", "to_provider"],
            registry=r,
        )
        self.cost = Counter(
            "llmrelay_cost_usd",
            "Cost the providers reported for the gateway's jobs, in US dollars",
            ["llmrelay_provider"],
            registry=r,
        )
        self.inflight = Gauge(
            "llmrelay_gateway_inflight_requests",
            "Front-door requests being answered now",
            registry=r,
        )
        backlog_gauge = Gauge(
            "llmrelay_gateway_stream_backlog_bytes",
            "Generated text held for slow SSE readers, all streams together",
            registry=r,
        )
        backlog_gauge.set_function(lambda: backlog.bytes)
        self.broker = BrokerCollector()
        r.register(self.broker)

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """`metric.labels(*values)` (values in the metric's label order), kept once made.

        prometheus_client sorts and checks the label names and takes a lock on every
        `labels()` call; a request asks for the same ten or so children each time (a streamed
        request's metric updates: 28 us before, 14.5 since). The cache holds what the metric
        itself holds: one entry per label combination seen.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_result(self, result: Result, gen_ai: GenAi, kinds: dict[str, str]) -> None:
        """Token usage, upstream duration, attempts, failovers and cost of one finished job."""
        usage = result.usage or {}
        for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            if isinstance(usage.get(key), int | float):
                self.child(self.tokens, *gen_ai, kind).observe(usage[key])
        latency = result.raw.get("worker_latency")
        if isinstance(latency, int | float):
            self.child(self.client_duration, *gen_ai, "").observe(latency)
        self.observe_attempts(result.attempts)
        cost = usage.get("cost")
        if isinstance(cost, int | float) and cost > 0:
            self.child(self.cost, result.provider or "none").inc(cost)
        self.child(self.jobs, "done", "").inc()

    def observe_attempts(self, attempts: list[dict[str, Any]]) -> None:
        previous: str | None = None
        for attempt in attempts:
            provider = str(attempt.get("provider") or "none")
            self.child(self.attempts, provider, str(attempt.get("outcome") or "unknown")).inc()
            if previous is not None and provider != previous:
                self.child(self.failovers, previous, provider).inc()
            previous = provider

    def render(self, status: dict[str, Any] | None) -> bytes:
        self.broker.status = status
        return generate_latest(self.registry)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class BrokerCollector(Collector):
    """The broker's status reply, rendered at scrape time (set `status` before collecting)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None

    def describe(self) -> list[Metric]:
        return []  # the family set depends on the broker's reply

    def collect(self) -> Iterator[Metric]:
        status = self.status
        up = GaugeMetricFamily("llmrelay_broker_up", "1 when the broker answered the last status")
        up.add_metric([], 0.0 if status is None else 1.0)
        yield up
        if status is None:
            return
        totals = status.get("totals") or {}
        jobs = CounterMetricFamily(
            "llmrelay_broker_jobs", "Jobs the broker saw, by outcome", labels=["outcome"]
        )
        for outcome in ("submitted", "done", "failed"):
            jobs.add_metric([outcome], float(totals.get(outcome, 0)))
        yield jobs
        retries = CounterMetricFamily("llmrelay_broker_retries", "Attempts retried by the broker")
        retries.add_metric([], float(totals.get("retries", 0)))
        yield retries
        for name, key, doc in (
            ("llmrelay_queue_depth", "queued", "Jobs waiting in the broker for a worker"),
            ("llmrelay_jobs_running", "running", "Jobs dispatched to workers now"),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(status.get(key, 0)))
            yield gauge
        queues = GaugeMetricFamily(
            "llmrelay_client_queue_depth", "Jobs waiting, per client name", labels=["client"]
        )
        for client, depth in sorted((status.get("queues") or {}).items()):
            queues.add_metric([str(client)], float(depth))
        yield queues
        yield from self._health(status.get("health") or {})
        yield from self._workers(status.get("workers") or [])
        yield from self._providers(status.get("providers") or {})

    def _health(self, health: dict[str, Any]) -> Iterator[Metric]:
        labels = ["llmrelay_provider", "model"]
        circuit = GaugeMetricFamily(
            "llmrelay_circuit_state",
            "Circuit per provider and provider:model: 0 closed, 1 half-open, 2 open",
            labels=labels,
        )
        successes = CounterMetricFamily(
            "llmrelay_upstream_successes", "Successful attempts", labels=labels
        )
        failures = CounterMetricFamily(
            "llmrelay_upstream_failures", "Failed attempts that count against health", labels=labels
        )
        for key, entry in sorted(health.items()):
            provider, _, model = str(key).partition(":")
            circuit.add_metric([provider, model], float(CIRCUIT.get(entry.get("circuit"), 2)))
            successes.add_metric([provider, model], float(entry.get("successes", 0)))
            failures.add_metric([provider, model], float(entry.get("failures", 0)))
        yield from (circuit, successes, failures)

    def _workers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        labels = ["worker", "llmrelay_provider"]
        families = {
            "inflight": GaugeMetricFamily(
                "llmrelay_worker_inflight", "Jobs running on the worker", labels=labels
            ),
            "capacity": GaugeMetricFamily(
                "llmrelay_worker_capacity", "Jobs the worker runs at once", labels=labels
            ),
            "rss": GaugeMetricFamily(
                "llmrelay_worker_rss_bytes",
                "Worker resident memory (last heartbeat)",
                labels=labels,
            ),
            "cpu_percent": GaugeMetricFamily(
                "llmrelay_worker_cpu_percent", "Worker CPU use (last heartbeat)", labels=labels
            ),
        }
        for worker in workers:
            values = [str(worker.get("worker")), str(worker.get("provider"))]
            stats = worker.get("stats") or {}
            for key, family in families.items():
                value = _num(worker.get(key, stats.get(key)))
                if value is not None:
                    family.add_metric(values, value)
        yield from families.values()

    def _providers(self, providers: dict[str, Any]) -> Iterator[Metric]:
        labels = ["llmrelay_provider"]
        workers = GaugeMetricFamily(
            "llmrelay_provider_workers", "Workers registered per provider", labels=labels
        )
        paused = GaugeMetricFamily(
            "llmrelay_pacing_paused_seconds",
            "Seconds until a provider whose rate-limit budget ran out is dispatched to again",
            labels=labels,
        )
        limits = GaugeMetricFamily(
            "llmrelay_pacing_limit_per_minute",
            "Per-minute pacing limit in force (configured or learnt), by unit",
            labels=[*labels, "unit"],
        )
        for name, entry in sorted(providers.items()):
            workers.add_metric([name], float(entry.get("workers", 0)))
            paused.add_metric([name], float(entry.get("paused_for", 0.0)))
            for unit, key in (("requests", "rpm"), ("tokens", "tpm")):
                value = _num(entry.get(key))
                if value is not None:
                    limits.add_metric([name, unit], value)
        yield from (workers, paused, limits)
