"""Per-provider parameter schemas, as data: canonical name -> provider name, type, range, enum.

`protocol.job.PARAMS` says what a canonical parameter may be at all; these tables say what
each provider kind accepts and under which name. The broker checks a job against every
candidate's table at submit (so a bad value fails before any request is sent) and the
workers build their requests from the same tables. A parameter missing from a provider's
table is unsupported there: the job is rejected for that candidate, unless it opted into
`drop_unsupported`, and then the drop is reported. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCategory, ProviderError


@dataclass(frozen=True, slots=True)
class Param:
    name: str  # the provider's name for it; "options.num_predict" means body["options"][...]
    type: str  # int | float | str_list | object | list
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    max_items: int | None = None  # for str_list
    enum: tuple[str, ...] = ()  # allowed values (for object params: of its "type" key)
    required: bool = False  # the provider needs it; the worker sends `default` (or its
    # provider option) when the job has none
    default: Any = None

    def describe(self) -> str:
        parts = [self.type]
        if self.lo is not None or self.hi is not None:
            left = "(" if self.lo_open else "["
            parts.append(f"in {left}{_num(self.lo)}, {_num(self.hi)}]")
        if self.max_items is not None:
            parts.append(f"at most {self.max_items} items")
        if self.enum:
            parts.append(f"one of {list(self.enum)}")
        return " ".join(parts)


def _num(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


@dataclass(frozen=True, slots=True)
class Schema:
    kind: str
    params: Mapping[str, Param]
    notes: Mapping[str, str] = field(default_factory=dict)  # why a canonical one is absent

    def renames(self) -> dict[str, str]:
        return {canonical: p.name for canonical, p in self.params.items()}


def _openai_like(
    max_tokens_name: str, extra: Mapping[str, Param] | None = None
) -> dict[str, Param]:
    return {
        "max_tokens": Param(max_tokens_name, "int", lo=1),
        "temperature": Param("temperature", "float", 0.0, 2.0),
        "top_p": Param("top_p", "float", 0.0, 1.0),
        "seed": Param("seed", "int"),
        "presence_penalty": Param("presence_penalty", "float", -2.0, 2.0),
        "frequency_penalty": Param("frequency_penalty", "float", -2.0, 2.0),
        "stop": Param("stop", "str_list"),
        "response_format": Param(
            "response_format", "object", enum=("text", "json_object", "json_schema")
        ),
        "tools": Param("tools", "list"),
        "tool_choice": Param("tool_choice", "object"),
        **(extra or {}),
    }


_OPENAI = _openai_like("max_completion_tokens")
_OPENAI["stop"] = Param("stop", "str_list", max_items=4)

SCHEMAS: dict[str, Schema] = {
    "openai": Schema(
        "openai",
        _OPENAI,
        {
            "top_k": "OpenAI has no top_k",
            "repeat_penalty": "OpenAI has no repeat_penalty (use frequency_penalty)",
        },
    ),
    "openrouter": Schema(
        "openrouter",
        _openai_like(
            "max_tokens",
            {
                "top_k": Param("top_k", "int", lo=0),
                "repeat_penalty": Param("repetition_penalty", "float", 0.0, 2.0, lo_open=True),
            },
        ),
    ),
    "anthropic": Schema(
        "anthropic",
        {
            "max_tokens": Param("max_tokens", "int", lo=1, required=True, default=4096),
            "temperature": Param("temperature", "float", 0.0, 1.0),
            "top_p": Param("top_p", "float", 0.0, 1.0),
            "top_k": Param("top_k", "int", lo=0),
            "stop": Param("stop_sequences", "str_list"),
            # json_object has no Anthropic form (it needs a schema): refused, never faked
            "response_format": Param("output_config", "object", enum=("text", "json_schema")),
            "tools": Param("tools", "list"),
            "tool_choice": Param("tool_choice", "object"),
        },
        {
            "seed": "Anthropic has no seed",
            "presence_penalty": "Anthropic has no presence_penalty",
            "frequency_penalty": "Anthropic has no frequency_penalty",
            "repeat_penalty": "Anthropic has no repeat_penalty",
        },
    ),
    "ollama": Schema(
        "ollama",
        {
            "max_tokens": Param("options.num_predict", "int", lo=1),
            "temperature": Param("options.temperature", "float", 0.0, 2.0),
            "top_p": Param("options.top_p", "float", 0.0, 1.0),
            "top_k": Param("options.top_k", "int", lo=0),
            "stop": Param("options.stop", "str_list"),
            "seed": Param("options.seed", "int"),
            "repeat_penalty": Param("options.repeat_penalty", "float", 0.0, 10.0),
            "presence_penalty": Param("options.presence_penalty", "float", -2.0, 2.0),
            "frequency_penalty": Param("options.frequency_penalty", "float", -2.0, 2.0),
            "response_format": Param(
                "format", "object", enum=("text", "json_object", "json_schema")
            ),
            "tools": Param("tools", "list"),
        },
        {"tool_choice": "Ollama cannot force or forbid a tool call"},
    ),
    "llamacpp": Schema(
        "llamacpp",
        {
            **{
                k: v
                for k, v in _openai_like("max_tokens").items()
                if k not in ("tools", "tool_choice")
            },
            "top_k": Param("top_k", "int", lo=0),
            "repeat_penalty": Param("repeat_penalty", "float", 0.0, 10.0),
        },
        {
            "tools": "tools need enable_tools (a chat template that supports them)",
            "tool_choice": "tools need enable_tools (a chat template that supports them)",
        },
    ),
    # Tools are an opt-in of one llama.cpp provider: `with_tools` adds them.
    "mock": Schema(
        "mock",
        {
            **_openai_like("max_tokens"),
            "top_k": Param("top_k", "int", lo=0),
            "repeat_penalty": Param("repeat_penalty", "float", 0.0, 10.0),
        },
    ),
}

LLAMA_TOOLS = {"tools": Param("tools", "list"), "tool_choice": Param("tool_choice", "object")}


def schema_features(schema: Schema, *, vision: bool = True) -> frozenset[str]:
    """The canonical parameters a schema accepts (plus "vision"): what a backend honours."""
    return frozenset(schema.params) | ({"vision"} if vision else set())


def schema_for(kind: str, *, tools_enabled: bool = False) -> Schema:
    try:
        schema = SCHEMAS[kind]
    except KeyError:
        raise ValueError(
            f"no parameter schema for kind {kind!r}; known: {sorted(SCHEMAS)}"
        ) from None
    if kind == "llamacpp" and tools_enabled:
        return Schema(kind, {**schema.params, **LLAMA_TOOLS})
    return schema


@dataclass(slots=True)
class Checked:
    params: dict[str, Any]  # canonical name -> value, what the provider will get
    dropped: list[str] = field(default_factory=list)  # unsupported ones the job let go


def _bad(provider: str, kind: str, name: str, why: str) -> ProviderError:
    return ProviderError(
        ErrorCategory.UNSUPPORTED,
        f"parameter {name!r} for {provider} ({kind}): {why}",
        provider=provider,
    )


def _check_value(provider: str, kind: str, name: str, spec: Param, value: Any) -> None:
    if spec.type in ("int", "float"):
        number = float(value)
        low_bad = spec.lo is not None and (number <= spec.lo if spec.lo_open else number < spec.lo)
        high_bad = spec.hi is not None and number > spec.hi
        if low_bad or high_bad:
            raise _bad(provider, kind, name, f"{value!r} is not valid; expected {spec.describe()}")
    elif spec.type == "str_list" and spec.max_items is not None and len(value) > spec.max_items:
        raise _bad(provider, kind, name, f"{len(value)} items given; expected {spec.describe()}")
    elif spec.type == "object" and spec.enum:
        kind_of = value.get("type") if isinstance(value, dict) else value
        if kind_of not in spec.enum:
            raise _bad(
                provider, kind, name, f"{kind_of!r} is not valid; expected {spec.describe()}"
            )


def check_params(
    schema: Schema, provider: str, params: Mapping[str, Any], *, drop_unsupported: bool = False
) -> Checked:
    """The job's canonical parameters as `provider` will take them, or a ProviderError naming
    the parameter, the provider and what is valid. Values were type-checked by protocol.job."""
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in params.items():
        spec = schema.params.get(name)
        if spec is None:
            if drop_unsupported:
                dropped.append(name)
                continue
            why = schema.notes.get(name, "not supported")
            raise _bad(
                provider,
                schema.kind,
                name,
                f"{why}; supported: {sorted(schema.params)} (or set drop_unsupported)",
            )
        _check_value(provider, schema.kind, name, spec, value)
        out[name] = value
    return Checked(out, dropped)


def put(body: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `value` at a schema name like "options.num_predict" in a request body."""
    *parents, leaf = dotted.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
