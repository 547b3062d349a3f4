"""Small field checkers used by every message and job definition.

Each raises ProtocolViolation naming the field, so a bad peer learns exactly what was wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from protocol.errors import ProtocolViolation

T = TypeVar("T")

_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+-]{1,128}$")


def fail(field: str, why: str) -> ProtocolViolation:
    return ProtocolViolation(f"{field}: {why}")


def need_map(value: Any, field: str) -> dict[str, Any]:
    if type(value) is dict:
        # The common case (what msgpack decodes): a plain loop over exact-str keys is a
        # third of isinstance(Mapping) plus a generator (every job field goes through here).
        for key in value:
            if type(key) is not str:
                break
        else:
            return value.copy()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise fail(field, "expected a map with string keys")
    return dict(value)


def need_str(value: Any, field: str, *, max_len: int = 1 << 20, min_len: int = 0) -> str:
    if not isinstance(value, str):
        raise fail(field, f"expected a string, got {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        raise fail(field, f"length must be in [{min_len}, {max_len}]")
    return value


def need_id(value: Any, field: str) -> str:
    text = need_str(value, field, max_len=128, min_len=1)
    if not _ID_RE.match(text):
        raise fail(field, "only letters, digits and ._:@/+- are allowed")
    return text


def need_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise fail(field, "expected a boolean")
    return value


def need_int(value: Any, field: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"expected an integer, got {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise fail(field, f"must be in [{lo}, {hi}]")
    return value


def need_float(value: Any, field: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(field, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise fail(field, "must be finite")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise fail(field, f"must be in [{lo}, {hi}]")
    return number


def need_enum(value: Any, field: str, allowed: Collection[str]) -> str:
    text = need_str(value, field, max_len=64)
    if text not in allowed:
        raise fail(field, f"must be one of {sorted(allowed)}")
    return text


def need_list(value: Any, field: str, *, max_len: int, min_len: int = 0) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise fail(field, "expected a list")
    if not min_len <= len(value) <= max_len:
        raise fail(field, f"must hold between {min_len} and {max_len} items")
    return list(value)


def opt(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key)


def no_extra(data: Mapping[str, Any], allowed: Collection[str], field: str) -> None:
    if isinstance(allowed, frozenset) and allowed.issuperset(data):
        return  # one C call for the common case; callers on hot paths pass a frozenset
    extra = data.keys() - allowed
    if extra:  # repr: a key may be bytes (a msgpack bin key), and bytes and str do not sort
        raise fail(field, f"unknown field(s) {sorted(extra, key=repr)}")
