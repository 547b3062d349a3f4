"""Typed key tables for settings read from files: types, ranges, unknown keys with a suggestion.

One `Key` per setting says what a value must be; `check_table` applies a table of them to what
TOML gave and raises `ConfigError` naming the dotted key of the first bad value. `keys_of` derives
the table from a dataclass (annotation = type, `field(metadata=limits(...))` = range), so a new
setting is one new field. Booleans are never numbers here (TOML `true` is not `1`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


class ConfigError(ValueError):
    """A bad setting: `<file>: <key>: <message>` when the file is known, else `<key>: <message>`."""

    def __init__(self, key: str, message: str, file: str | None = None) -> None:
        self.key = key
        self.message = message
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"

    def in_file(self, file: str | None) -> ConfigError:
        return self if file is None or self.file else ConfigError(self.key, self.message, file)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class Key:
    """What one setting accepts."""

    expect: str  # in words, for the message: "a number", "a list of strings"
    accepts: Check  # type check
    min: float | None = None
    max: float | None = None
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (only from code defaults; TOML has no null)
    secret: bool = False  # masked when shown

    def problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        wrong = self.accepts(value)
        if wrong is not None:
            return f"{wrong}; got {_type_name(value)} ({_short(value)})"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}; got {value!r}"
        if isinstance(value, int | float):
            if self.min is not None and value < self.min:
                return f"must be >= {self.min:g}; got {value!r}"
            if self.above is not None and value <= self.above:
                return f"must be > {self.above:g}; got {value!r}"
            if self.max is not None and value > self.max:
                return f"must be <= {self.max:g}; got {value!r}"
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is(kind: type | tuple[type, ...], words: str) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
        return None if ok else f"must be {words}"

    return check


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _list_of(kind: type, words: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, list) and all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            return None
        return f"must be a list of {words}"

    return check


def Int(**bounds: Any) -> Key:
    return Key("an integer", _is(int, "an integer"), **bounds)


def Float(**bounds: Any) -> Key:
    return Key("a number", _is((int, float), "a number"), **bounds)


def Str(**bounds: Any) -> Key:
    return Key("a string", _is(str, "a string"), **bounds)


def Bool(**bounds: Any) -> Key:
    return Key("a boolean", _is(bool, "a boolean (true or false)"), **bounds)


def StrList(**bounds: Any) -> Key:
    return Key("a list of strings", _list_of(str, "strings"), **bounds)


def Table(**bounds: Any) -> Key:
    return Key("a table", _is(dict, "a table"), **bounds)


def List(**bounds: Any) -> Key:
    return Key("a list", _is(list, "a list"), **bounds)


def Either(*keys: Key, **bounds: Any) -> Key:
    """Any one of `keys` (e.g. an integer or the string "auto")."""
    words = " or ".join(k.expect for k in keys)

    def check(value: Any) -> str | None:
        return None if any(k.problem(value) is None for k in keys) else f"must be {words}"

    return Key(words, check, **bounds)


def limits(**bounds: Any) -> dict[str, Any]:
    """Dataclass field metadata: `field(default=1.0, metadata=limits(above=0))`."""
    return {"schema": bounds}


_SIMPLE: dict[Any, Callable[..., Key]] = {int: Int, float: Float, str: Str, bool: Bool}


def key_for(annotation: Any, bounds: Mapping[str, Any]) -> Key:
    """The Key for a field's annotation: int, float, str, bool, list[str], dict, or X | None."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return dataclasses.replace(key_for(inner[0], bounds), optional=True)
    if annotation in _SIMPLE:
        return _SIMPLE[annotation](**bounds)
    if origin is list and args and args[0] is str:
        return StrList(**bounds)
    if origin is list:
        return List(**bounds)
    if origin is dict or annotation is dict:
        return Table(**bounds)
    raise TypeError(f"no schema rule for annotation {annotation!r}")


def keys_of(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Key]:
    """The key table of a dataclass: its fields' annotations and `limits` metadata."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: key_for(hints[f.name], f.metadata.get("schema", {}))
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """'; did you mean 'x'?' for a near miss, else the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(known)}" if known else ""


def check_table(where: str, data: Any, keys: Mapping[str, Key]) -> dict[str, Any]:
    """`data` checked against `keys`; the first problem raises ConfigError at `where.key`."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be a table; got {_type_name(data)} ({_short(data)})")
    for name, value in data.items():
        dotted = f"{where}.{name}" if where else str(name)
        rule = keys.get(name)
        if rule is None:
            raise ConfigError(dotted, "unknown key" + suggest(str(name), keys))
        problem = rule.problem(value)
        if problem is not None:
            raise ConfigError(dotted, problem)
    return dict(data)


def masked(data: Any, keys: Mapping[str, Key] | None = None) -> Any:
    """A copy fit to print: values of secret keys, and anything named like a key, hidden."""
    if isinstance(data, dict):
        out = {}
        for name, value in data.items():
            rule = keys.get(name) if keys else None
            secret = (rule is not None and rule.secret) or _secret_name(str(name))
            out[name] = "***" if secret and value else masked(value)
        return out
    if isinstance(data, list):
        return [masked(v) for v in data]
    return data


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith("_env"):  # the name of a variable, not its value
        return False
    return any(word in lowered for word in ("secret", "api_key", "password", "token_value"))
