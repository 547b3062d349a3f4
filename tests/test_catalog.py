"""The catalog's parts in process: schemas, shipped data, cost, detection, routing decisions,
strategies, and live discovery against the fake provider servers (real HTTP on loopback)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from catalog.capabilities import CatalogError, parse_shipped, shipped
from catalog.cost import job_cost
from catalog.detect import Configured, detect
from catalog.discovery import DiscoveryCache, Source
from catalog.registry import Catalog, ProviderInfo
from catalog.schemas import SCHEMAS, check_params
from dispatcher.catalog_service import build_catalog
from dispatcher.config import ROUTE_STRATEGIES, ConfigError, parse_config
from dispatcher.health import CircuitPolicy, HealthBook
from dispatcher.routing import (
    BEST_EFFORT,
    FIRST_AVAILABLE,
    FIRST_HEALTHY,
    STRATEGIES,
    Candidate,
    CandidateView,
    Unavailable,
    explain_unavailable,
    order,
    resolve,
)
from protocol.client import build_job
from protocol.errors import ErrorCategory, ProviderError
from tests.fakes.drive import API_ROOT, FAKE_KEY, make_backend
from tests.fakes.server import FakeServer

# --- parameter schemas: one row per parameter and provider -----------------------------------

# (kind, parameter, value, expected): expected is the provider's name for an accepted
# parameter (a dotted name is nested: options.num_predict), or ("rejected", fragment).
ROWS: list[tuple[str, str, Any, Any]] = [
    ("openai", "max_tokens", 10, "max_completion_tokens"),
    ("openai", "temperature", 1.5, "temperature"),
    ("openai", "top_p", 1.0, "top_p"),
    ("openai", "stop", ["a", "b", "c", "d"], "stop"),
    ("openai", "stop", ["a", "b", "c", "d", "e"], ("rejected", "at most 4 items")),
    ("openai", "top_k", 5, ("rejected", "OpenAI has no top_k")),
    ("openai", "repeat_penalty", 1.1, ("rejected", "OpenAI has no repeat_penalty")),
    ("openai", "seed", 7, "seed"),
    ("openai", "presence_penalty", -1.0, "presence_penalty"),
    ("openrouter", "max_tokens", 10, "max_tokens"),
    ("openrouter", "repeat_penalty", 1.1, "repetition_penalty"),
    ("openrouter", "repeat_penalty", 3.0, ("rejected", "expected float in (0, 2]")),
    ("openrouter", "top_k", 40, "top_k"),
    ("anthropic", "max_tokens", 10, "max_tokens"),
    ("anthropic", "temperature", 0.7, "temperature"),
    ("anthropic", "temperature", 1.5, ("rejected", "expected float in [0, 1]")),
    ("anthropic", "stop", ["END"], "stop_sequences"),
    ("anthropic", "top_k", 40, "top_k"),
    ("anthropic", "seed", 1, ("rejected", "Anthropic has no seed")),
    ("anthropic", "frequency_penalty", 0.5, ("rejected", "Anthropic has no frequency_penalty")),
    ("anthropic", "repeat_penalty", 1.1, ("rejected", "Anthropic has no repeat_penalty")),
    (
        "anthropic",
        "response_format",
        {"type": "json_object"},
        ("rejected", "'json_object' is not valid; expected object one of ['text', 'json_schema']"),
    ),
    ("ollama", "max_tokens", 10, "options.num_predict"),
    ("ollama", "repeat_penalty", 1.1, "options.repeat_penalty"),
    ("ollama", "stop", ["x"], "options.stop"),
    ("ollama", "seed", 3, "options.seed"),
    ("ollama", "response_format", {"type": "json_object"}, "format"),
    ("ollama", "tool_choice", "auto", ("rejected", "Ollama cannot force or forbid a tool call")),
    ("llamacpp", "repeat_penalty", 1.1, "repeat_penalty"),
    ("llamacpp", "top_k", 40, "top_k"),
    ("llamacpp", "max_tokens", 10, "max_tokens"),
]


def _lookup(body: dict[str, Any], dotted: str) -> Any:
    node: Any = body
    for key in dotted.split("."):
        node = node[key]
    return node


@pytest.mark.parametrize(("kind", "name", "value", "expected"), ROWS)
def test_parameter_schema_rows(kind: str, name: str, value: Any, expected: Any) -> None:
    job = build_job(model="m", prompt="hi", **{name: value})
    if isinstance(expected, tuple):
        with pytest.raises(ProviderError) as info:
            check_params(SCHEMAS[kind], "prov", job.params)
        err = info.value
        assert err.category is ErrorCategory.UNSUPPORTED
        assert f"parameter {name!r} for prov ({kind})" in err.message
        assert expected[1] in err.message
        return
    assert check_params(SCHEMAS[kind], "prov", job.params).params == {name: value}
    if kind == "llamacpp":
        return  # its backend needs a running server; tests/test_llamacpp_backend.py covers it
    # The worker builds its request from the same table: the value is there, renamed.
    body = make_backend(kind, "http://127.0.0.1:9", api_key="k").build_body(job, "m")
    sent = _lookup(body, expected)
    if name == "response_format":
        assert sent == "json"  # Ollama's own form of a JSON-object response
    else:
        assert sent == value
    if expected != name and "." not in expected:
        assert name not in body, f"{kind}: {name} sent under its canonical name too"


def test_the_worker_refuses_what_the_schema_refuses() -> None:
    job = build_job(model="m", prompt="hi", repeat_penalty=1.1)
    with pytest.raises(ProviderError, match="OpenAI has no repeat_penalty"):
        make_backend("openai", "http://127.0.0.1:9", api_key="k").build_body(job, "m")


def test_repeat_penalty_to_openai_is_rejected_or_dropped_and_reported() -> None:
    config = _route_config()
    catalog = build_catalog(config)
    job = build_job(model="oai:gpt-4o-mini", prompt="hi", repeat_penalty=1.1)
    with pytest.raises(ProviderError) as info:
        resolve(job, config, catalog)
    assert "oai:gpt-4o-mini: parameter 'repeat_penalty' for oai (openai)" in info.value.message
    assert "drop_unsupported" in info.value.message
    job = build_job(model="oai:gpt-4o-mini", prompt="hi", repeat_penalty=1.1, drop_unsupported=True)
    resolved = resolve(job, config, catalog)
    assert resolved.candidates == [Candidate("oai", "gpt-4o-mini")]
    assert resolved.notes()["dropped"] == [
        {"candidate": "oai:gpt-4o-mini", "params": ["repeat_penalty"]}
    ]
    # ... and the worker sends the request without it, because the job allowed that
    body = make_backend("openai", "http://127.0.0.1:9", api_key="k").build_body(job, "m")
    assert "repeat_penalty" not in json.dumps(body)


# --- shipped data ---------------------------------------------------------------------------


def test_shipped_data_is_dated_and_priced() -> None:
    data = shipped()
    assert data.written == "2026-12-02"
    caps = data.lookup("openai", "gpt-4o-2024-08-06")  # a dated variant: priced as gpt-4o
    assert (caps.input_price, caps.output_price, caps.cached_input_price) == (2.5, 10.0, 1.25)
    assert caps.context_window == 128000 and caps.vision and caps.json_object
    assert not data.lookup("anthropic", "claude-sonnet-4-20250514").json_object
    assert data.lookup("llamacpp", "anything").input_price == 0.0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"kinds": {}}, "`written`"),
        ({"written": "x", "kinds": {"openai": {"vison": True}}}, "unknown key 'vison'"),
        ({"written": "x", "models": {"openai": {"m": {"input_price": -1}}}}, "cannot be negative"),
        ({"written": "x", "models": {"openai": {"m": {"context_window": "big"}}}}, "expected int"),
        ({"written": "x", "kinds": {"k": {"token_counting": "magic"}}}, "'magic' is not one of"),
    ],
)
def test_bad_catalog_data_is_named(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CatalogError, match=fragment):
        parse_shipped(data)


# --- cost -----------------------------------------------------------------------------------


def test_cost_counts_cached_and_cache_creation_tokens() -> None:
    openai = shipped().lookup("openai", "gpt-4o")
    # OpenAI: 1000 prompt tokens of which 400 cached, 200 out
    cost = job_cost(openai, {"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 200})
    assert cost.source == "priced"
    assert cost.usd == pytest.approx((600 * 2.5 + 400 * 1.25 + 200 * 10.0) / 1e6)
    claude = shipped().lookup("anthropic", "claude-3-5-sonnet-latest")
    usage = {
        "prompt_tokens": 1000,
        "cached_tokens": 300,
        "cache_creation_tokens": 500,
        "completion_tokens": 100,
    }
    expected = (200 * 3.0 + 300 * 0.30 + 500 * 3.75 + 100 * 15.0) / 1e6
    assert job_cost(claude, usage).usd == pytest.approx(expected)
    reported = job_cost(openai, {"prompt_tokens": 10, "completion_tokens": 1, "cost": 0.123})
    assert (reported.usd, reported.source) == (0.123, "reported")
    unknown = job_cost(shipped().lookup("openrouter", "vendor/new"), {"prompt_tokens": 5})
    assert (unknown.usd, unknown.source) == (None, "unknown")


# --- name detection -------------------------------------------------------------------------

PROVIDERS = [
    Configured("oai", "openai", ["gpt-4o-mini"]),
    Configured("oai2", "openai", []),
    Configured("claude", "anthropic", []),
    Configured("router", "openrouter", []),
    Configured("local", "ollama", ["qwen:7b"]),
]


@pytest.mark.parametrize(
    ("model", "candidates", "how"),
    [
        ("gpt-4o-mini", [("oai", "gpt-4o-mini")], "config"),
        ("gpt-4o", [("oai", "gpt-4o"), ("oai2", "gpt-4o")], "pattern"),
        ("o3-mini", [("oai", "o3-mini"), ("oai2", "o3-mini")], "pattern"),
        (
            "chatgpt-4o-latest",
            [("oai", "chatgpt-4o-latest"), ("oai2", "chatgpt-4o-latest")],
            "pattern",
        ),
        ("claude-3-5-sonnet-latest", [("claude", "claude-3-5-sonnet-latest")], "pattern"),
        (
            "meta-llama/llama-3.1-8b-instruct",
            [("router", "meta-llama/llama-3.1-8b-instruct")],
            "pattern",
        ),
        ("ollama/llama3.2", [("local", "llama3.2")], "pattern"),
        ("qwen:7b", [("local", "qwen:7b")], "config"),
    ],
)
def test_bare_names_are_detected(model: str, candidates: list[Any], how: str) -> None:
    found = detect(model, PROVIDERS)
    assert found is not None
    assert (found.candidates, found.how) == (candidates, how)
    if len(candidates) > 1:
        assert "tried in config order" in found.note


def test_detection_prefers_live_lists_and_only_configured_providers() -> None:
    found = detect("gpt-4o", PROVIDERS, lambda p, m: p == "oai2")
    assert found is not None and (found.candidates, found.how) == ([("oai2", "gpt-4o")], "live")
    assert detect("claude-3-opus", [Configured("oai", "openai", [])]) is None
    assert detect("mystery", PROVIDERS) is None


# --- routing decisions at submit ------------------------------------------------------------


def _route_config(**routes: Any) -> Any:
    return parse_config(
        {
            "providers": {
                "oai": {"kind": "openai", "spawn": False},
                "text": {"kind": "mock", "catalog": {"*": {"vision": False, "tools": False}}},
                "seeing": {"kind": "mock"},
                "claude": {"kind": "anthropic", "spawn": False},
            },
            "routes": {
                "images": ["text:m", "seeing:m"],
                "blind": ["text:m", "claude:claude-3-5-haiku"],
                **routes,
            },
        }
    )


IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
]


def test_images_go_only_to_vision_candidates_and_none_is_a_clear_rejection() -> None:
    config = _route_config()
    catalog = build_catalog(config)
    resolved = resolve(build_job(route="images", messages=IMAGE), config, catalog)
    assert resolved.candidates == [Candidate("seeing", "m")]
    assert resolved.skipped == [
        {"candidate": "text:m", "reason": "text:m does not take images (no vision)"}
    ]
    with pytest.raises(ProviderError) as info:
        resolve(build_job(route="blind", messages=IMAGE), config, catalog)
    assert info.value.category is ErrorCategory.UNSUPPORTED
    assert "text:m: text:m does not take images" in info.value.message
    assert "claude:claude-3-5-haiku: claude:claude-3-5-haiku does not take images" in (
        info.value.message
    )


def test_tools_and_json_modes_go_to_candidates_that_honour_them() -> None:
    config = _route_config(json=["claude:claude-sonnet-4", "oai:gpt-4o"])
    catalog = build_catalog(config)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    resolved = resolve(build_job(route="images", prompt="x", tools=[tool]), config, catalog)
    assert resolved.candidates == [Candidate("seeing", "m")]
    assert "does not support tools" in resolved.skipped[0]["reason"]
    job = build_job(route="json", prompt="x", response_format={"type": "json_object"})
    resolved = resolve(job, config, catalog)
    assert resolved.candidates == [Candidate("oai", "gpt-4o")]
    assert resolved.skipped[0]["candidate"] == "claude:claude-sonnet-4"


def test_context_window_pre_check_uses_only_exact_counts() -> None:
    config = parse_config(
        {
            "providers": {
                "small": {"kind": "mock", "catalog": {"*": {"context_window": 50}}},
                "big": {"kind": "mock", "catalog": {"*": {"context_window": 100_000}}},
            },
            "routes": {"r": ["small:m", "big:m"]},
        }
    )
    # The mock has no tokenizer: an estimate never removes a candidate (the worker, which
    # can count exactly, refuses with context_length and the job fails over).
    resolved = resolve(build_job(route="r", prompt="word " * 500), config, build_catalog(config))
    assert resolved.candidates == [Candidate("small", "m"), Candidate("big", "m")]
    assert resolved.prompt_tokens is not None and not resolved.prompt_tokens.exact


# --- config ---------------------------------------------------------------------------------


def test_route_keys_and_strategies_are_validated() -> None:
    providers = {"m": {"kind": "mock"}}
    config = parse_config(
        {
            "providers": providers,
            "routes": {"r": {"candidates": ["m:x"], "strategy": "best_effort"}},
        }
    )
    assert config.strategies == {"r": "best_effort"}
    with pytest.raises(
        ConfigError, match=re.escape("routes.r.strategy: must be one of first_available")
    ):
        parse_config(
            {
                "providers": providers,
                "routes": {"r": {"candidates": ["m:x"], "strategy": "fastest"}},
            }
        )
    with pytest.raises(
        ConfigError, match=re.escape("routes.r.stratgy: unknown key; did you mean 'strategy'")
    ):
        parse_config(
            {"providers": providers, "routes": {"r": {"candidates": ["m:x"], "stratgy": "x"}}}
        )
    with pytest.raises(ConfigError, match=re.escape("candidate 'm' is not \"provider:model\"")):
        parse_config({"providers": providers, "routes": {"r": ["m"]}})
    with pytest.raises(
        ConfigError, match=re.escape("providers.m.catalog.\"x\": unknown key 'prise'")
    ):
        parse_config({"providers": {"m": {"kind": "mock", "catalog": {"x": {"prise": 1}}}}})
    with pytest.raises(
        ConfigError, match=re.escape('providers.m.catalog."x".vision: expected bool')
    ):
        parse_config({"providers": {"m": {"kind": "mock", "catalog": {"x": {"vision": 1}}}}})
    assert ROUTE_STRATEGIES == STRATEGIES  # the config's copy of the names agrees


# --- strategies -----------------------------------------------------------------------------

CANDS = [Candidate(p, "m") for p in ("a", "b", "c", "d", "e")]


def _views(now: float) -> dict[str, CandidateView]:
    """Health set explicitly: a healthy but slow, b open circuit, c degraded, d healthy and
    fast, e has no worker."""
    book = HealthBook(CircuitPolicy(failures=2, cooldown=30.0))
    book.get("a").record_success(2.0)
    book.get("b").record_failure(now, "server_error")
    book.get("b").record_failure(now, "server_error")
    book.get("c").record_success(0.1)
    book.get("c").record_failure(now, "network")
    book.get("d").record_success(0.5)
    views = {}
    for cand in CANDS:
        health = book.get(cand.provider)
        views[cand.provider] = CandidateView(
            has_worker=cand.provider != "e",
            state=health.state,
            circuit_allows=health.allows(now),
            latency=health.latency_ewma,
        )
    assert [views[p].state for p in "abcd"] == ["healthy", "unhealthy", "degraded", "healthy"]
    return views


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (FIRST_AVAILABLE, ["a", "b", "c", "d"]),
        (FIRST_HEALTHY, ["a", "c", "d"]),
        (BEST_EFFORT, ["d", "a", "c", "b"]),
    ],
)
def test_each_strategy_orders_by_the_states_it_sees(strategy: str, expected: list[str]) -> None:
    views = _views(now=100.0)
    got = order(strategy, CANDS, lambda c: views[c.provider])
    assert [c.provider for c in got] == expected


def test_nothing_available_says_why_and_when() -> None:
    message, retry_after = explain_unavailable(
        [
            Unavailable("a:m", "circuit open", 12.0),
            Unavailable("b:m", "held after rate_limited", 3.5),
            Unavailable("c:m", "no worker", None),
        ]
    )
    assert retry_after == 3.5
    assert message == (
        "no candidate available: a:m: circuit open, recovers in 12.0s; "
        "b:m: held after rate_limited, recovers in 3.5s; c:m: no worker, no recovery known"
    )


# --- live discovery against the fakes -------------------------------------------------------


def _source(kind: str, fake: FakeServer, name: str | None = None) -> Source:
    options = {"base_url": fake.url + API_ROOT[kind], "api_key": FAKE_KEY}
    source = Source.of(name or kind, kind, options)
    assert source is not None
    return source


def test_discovery_fills_the_registry_from_each_fake(
    tmp_path: Path,
    openrouter_fake: FakeServer,
    ollama_fake: FakeServer,
    anthropic_fake: FakeServer,
    openai_fake: FakeServer,
) -> None:
    openrouter_fake.models.ids = ["vendor/seeing-model", "meta-llama/llama-3.1-8b-instruct"]
    ollama_fake.models.ids = ["llava:7b", "qwen-fake:7b"]
    infos = [
        ProviderInfo(kind, kind, [], {"base_url": fake.url + API_ROOT[kind], "api_key": FAKE_KEY})
        for kind, fake in (
            ("openrouter", openrouter_fake),
            ("ollama", ollama_fake),
            ("anthropic", anthropic_fake),
            ("openai", openai_fake),
        )
    ]
    catalog = Catalog(infos, DiscoveryCache(directory=tmp_path))
    before = catalog.capabilities("openrouter", "meta-llama/llama-3.1-8b-instruct")
    assert before.sources == ("shipped",) and before.caps.input_price == 0.02
    snaps = catalog.discover()  # replaces what was looked up before
    assert [s.stale for s in snaps] == [False] * 4
    router = catalog.capabilities("openrouter", "meta-llama/llama-3.1-8b-instruct")
    assert router.sources == ("shipped", "live")
    # the fake's pricing is per token: 0.000001 and 0.000002 -> 1 and 2 dollars per million
    assert (router.caps.input_price, router.caps.output_price) == (1.0, 2.0)
    assert (router.caps.context_window, router.caps.max_output_tokens) == (8192, 1024)
    assert router.caps.tools and not router.caps.vision
    llava = catalog.capabilities("ollama", "llava:7b")
    assert llava.caps.vision and llava.caps.context_window == 8192 and llava.sources[-1] == "live"
    assert not catalog.capabilities("ollama", "qwen-fake:7b").caps.vision
    names = {e.model for e in catalog.models()}
    assert {"vendor/seeing-model", "llava:7b", "qwen-fake:7b"} <= names
    assert set(anthropic_fake.models.ids) <= names and set(openai_fake.models.ids) <= names
    seeing = {f"{e.provider}:{e.model}" for e in catalog.find_providers("vision")}
    assert "ollama:llava:7b" in seeing and "ollama:qwen-fake:7b" not in seeing
    assert not any(name.startswith("openrouter:") for name in seeing)  # text-only fakes
    big = catalog.find_providers("tools", min_context=8192)
    # OpenAI's list says nothing of windows and the fakes' names are not in the shipped data
    assert {e.provider for e in big} == {"openrouter", "ollama", "anthropic"}
    claude = catalog.capabilities("anthropic", "claude-fake-1").caps
    assert (claude.context_window, claude.max_output_tokens) == (200000, 64000)


def test_a_fake_down_serves_cached_data_marked_stale_and_refresh_refetches(
    tmp_path: Path, openrouter_fake: FakeServer
) -> None:
    clock = [1000.0]
    cache = DiscoveryCache(ttl=60.0, directory=tmp_path, clock=lambda: clock[0])
    source = _source("openrouter", openrouter_fake)
    first = cache.get(source)
    assert not first.stale and set(first.models) == set(openrouter_fake.models.ids)
    fetched = len(openrouter_fake.model_requests)
    assert cache.get(source).fetched_at == 1000.0  # within the TTL: no new request
    assert len(openrouter_fake.model_requests) == fetched
    openrouter_fake.models.status = 503
    clock[0] += 61.0  # past the TTL: refetch fails, the last good data stays, marked stale
    stale = cache.get(source)
    assert stale.stale and stale.models == first.models and "HTTP 503" in (stale.error or "")
    # a new process (empty memory) still has the data from disk, and says it is stale
    reborn = DiscoveryCache(ttl=60.0, directory=tmp_path, clock=lambda: clock[0])
    again = reborn.get(source)
    assert again.stale and again.models == first.models
    openrouter_fake.models.status = 200
    openrouter_fake.models.ids = ["vendor/brand-new"]
    before = len(openrouter_fake.model_requests)
    fresh = reborn.get(source, refresh=True)
    assert len(openrouter_fake.model_requests) > before
    assert not fresh.stale and list(fresh.models) == ["vendor/brand-new"]


def test_tiktoken_without_its_files_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache miss used to fetch the encoding inside the broker's loop, on every job."""
    tiktoken_load = pytest.importorskip("tiktoken.load")
    from catalog import tokens

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty: every file is a miss
    tokens._encoding.cache_clear()
    messages = [{"role": "user", "content": "hello there"}]
    try:
        assert tokens.tiktoken_count("gpt-4o", messages) is None
        assert tokens.local_count("openai", "gpt-4o", messages).method == "estimate"
        with pytest.raises(OSError, match="not downloading"):
            tiktoken_load.read_file("https://example.invalid/o200k_base.tiktoken")
    finally:
        tokens._encoding.cache_clear()


def test_the_broker_catalog_refetches_after_its_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openrouter_fake: FakeServer
) -> None:
    import time

    from dispatcher.catalog_service import CatalogService

    monkeypatch.setenv("LLMRELAY_CACHE_DIR", str(tmp_path))
    config = parse_config(
        {
            "providers": {
                "router": {
                    "kind": "openrouter",
                    "options": {"base_url": openrouter_fake.url + "/api/v1"},
                }
            }
        }
    )
    service = CatalogService(config, ttl=30.0)

    def settled() -> None:
        deadline = time.monotonic() + 20
        while service.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not service.running

    service.start()
    settled()
    fetched = len(openrouter_fake.model_requests)
    assert fetched >= 1 and not service.catalog.live["router"].stale
    service.flush(0.0)  # the first tick schedules the next run a TTL later
    service.flush(29.0)
    settled()
    assert len(openrouter_fake.model_requests) == fetched
    openrouter_fake.models.ids = ["vendor/later"]
    service.catalog.cache.clock = lambda: time.time() + 31  # type: ignore[union-attr]
    service.flush(31.0)  # past the TTL: refetched in the background
    settled()
    assert len(openrouter_fake.model_requests) > fetched
    assert "vendor/later" in service.catalog.live["router"].models


def test_models_command_refuses_an_unknown_capability_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dispatcher.cli import main

    with pytest.raises(SystemExit) as info:
        main(["models", "--capability", "x-ray", "--endpoint", "tcp://127.0.0.1:9"])
    assert info.value.code == 2
    assert "argument --capability: invalid choice: 'x-ray'" in capsys.readouterr().err


def test_discovery_asks_the_address_the_worker_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box")
    source = Source.of("local", "ollama", {})
    assert source is not None and source.base_url == make_backend_url("ollama")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert Source.of("oai", "openai", {}) is None  # no key: nothing to ask
    keyed = Source.of("oai", "openai", {"api_key_env": "MY_KEY_VAR", "base_url": "http://h/v1"})
    assert keyed is None
    monkeypatch.setenv("MY_KEY_VAR", "sk-test")
    keyed = Source.of("oai", "openai", {"api_key_env": "MY_KEY_VAR"})
    assert keyed is not None and keyed.base_url == "https://api.openai.com/v1"
    assert keyed.headers() == {"Authorization": "Bearer sk-test"}
    assert "sk-test" not in repr(keyed)


def make_backend_url(kind: str) -> str:
    from workers.registry import backend_class
    from workers.spec import ProviderSpec

    backend = backend_class(kind)(ProviderSpec(name=kind, kind=kind))
    return str(backend.base_url)  # type: ignore[attr-defined]
