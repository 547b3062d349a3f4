"""The wire form every message shares: the `Message` base, its per-class field table, and
`decode`, which turns one header frame into the checked message of its type.

The message types themselves, and the checkers of their fields, are in protocol/messages.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import msgpack

from protocol import validate as v
from protocol.errors import ProtocolViolation
from protocol.job import Job

VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20  # socket MAXMSGSIZE: a peer sending more is disconnected
MAX_HEADER_BYTES = 48 << 20


Checker = Callable[[Any, str], Any]
REGISTRY: dict[str, type[Message]] = {}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    required: bool
    check: Checker
    label: str  # "type.name", as errors name the field


# Per message class: its fields in order, and the keys a body may hold. Computed once per
# class: dataclasses.fields() and a label per field per message are too slow for the hot path.
_SHAPES: dict[type, tuple[tuple[_Field, ...], frozenset[str]]] = {}


def _shape(cls: type[Message]) -> tuple[tuple[_Field, ...], frozenset[str]]:
    shape = _SHAPES.get(cls)
    if shape is None:
        specs = tuple(
            _Field(
                f.name,
                f.default is MISSING and f.default_factory is MISSING,
                cls.CHECKS[f.name],
                f"{cls.TYPE}.{f.name}",
            )
            for f in fields(cls)  # type: ignore[arg-type]
        )
        shape = _SHAPES[cls] = (specs, frozenset({"v", "t", *(f.name for f in specs)}))
    return shape


class Message:
    """Base of every wire message. Subclasses are dataclasses with a CHECKS table."""

    TYPE: ClassVar[str]
    CHECKS: ClassVar[dict[str, Checker]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            REGISTRY[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": VERSION, "t": self.TYPE}
        for spec in _shape(type(self))[0]:
            value = getattr(self, spec.name)
            body[spec.name] = value.to_wire() if isinstance(value, Job) else value
        return body

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def parse(cls, body: dict[Any, Any]) -> Message:
        """Check `body` (a decoded map) field by field; unknown keys, non-string keys
        included, are an error."""
        kwargs: dict[str, Any] = {}
        specs, allowed = _shape(cls)
        if not allowed.issuperset(body):
            v.no_extra(body, allowed, cls.TYPE)
        for spec in specs:
            value = body.get(spec.name)
            if value is not None:
                kwargs[spec.name] = spec.check(value, spec.label)
            elif spec.required:
                raise v.fail(spec.label, "missing")
        return cls(**kwargs)


def decode(frame: bytes | memoryview) -> Message:
    """Decode and validate one header frame; raises ProtocolViolation on anything wrong.

    The size is checked before anything is parsed; a memoryview is parsed without a copy.
    """
    size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if size > MAX_HEADER_BYTES:
        raise ProtocolViolation(f"message of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolViolation(f"not valid msgpack: {type(exc).__name__}") from None
    # Its keys are checked by parse(): only the message's own field names (strings) pass.
    if type(body) is not dict:
        raise ProtocolViolation("message: expected a map with string keys")
    if body.get("v") != VERSION:
        raise ProtocolViolation(f"unsupported protocol version {body.get('v')!r}")
    kind = body.get("t")
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"unknown message type {kind!r}")
    return cls.parse(body)
