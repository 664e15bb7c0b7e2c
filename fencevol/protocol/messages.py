"""Typed request and reply messages: one dataclass per message, with ``to_wire``
and ``from_wire`` (every field checked against its annotation in one place; a bad
field is a one-line ``InvalidArgument`` naming the operation and the field).

The lease operations a node runs -- attach, renew, detach, revoke_ack -- are typed
here; the server's handlers and the client both build and read them through these
classes. Other operations still pass checked dicts (issue 11 moves them here)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from ..errors import InvalidArgument

REQUESTS: dict[str, type["Message"]] = {}


class Message:
    """Base of every typed message (subclasses are frozen dataclasses)."""

    OP: ClassVar[str] = ""
    KIND: ClassVar[str] = "request"           # or "reply"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("KIND", "request") == "request" and cls.__dict__.get("OP"):
            REQUESTS[cls.OP] = cls

    def to_wire(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls, d: object):
        what = f"{cls.OP} {cls.KIND}" if cls.OP else cls.__name__
        if not isinstance(d, dict):
            raise InvalidArgument(f"{what}: expected an object")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise InvalidArgument(f"{what}: missing argument {f.name!r}")
                continue
            values[f.name] = _check(what, f.name, hints[f.name], d[f.name])
        return cls(**values)


def _check(what: str, name: str, tp, v: Any):
    if tp is Any:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(what, name, inner, v)
    ok = {
        str: lambda: isinstance(v, str),
        bool: lambda: isinstance(v, bool),
        int: lambda: isinstance(v, int) and not isinstance(v, bool),
        float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        dict: lambda: isinstance(v, dict),
    }
    if origin is list:
        if not isinstance(v, list):
            raise InvalidArgument(f"{what}: {name} must be a list")
        return [_check(what, f"{name}[{i}]", args[0], x) for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise InvalidArgument(f"{what}: {name} must be an object")
        return {k: _check(what, f"{name}[{k!r}]", args[1], x) for k, x in v.items()}
    if tp not in ok:
        raise TypeError(f"no wire check for {tp!r}")
    if not ok[tp]():
        kind = {str: "text", bool: "true or false", int: "an integer", float: "a finite number",
                dict: "an object"}[tp]
        raise InvalidArgument(f"{what}: {name} must be {kind}")
    return float(v) if tp is float else v


# -- lease operations --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AttachRequest(Message):
    """Ask for a delegation on ``volume``. ``key``: the node's registration key (data
    volumes); ``wait``: seconds to wait for a conflicting live holder."""
    OP: ClassVar[str] = "attach"
    volume: str
    mode: str = "rw"
    key: int = 0
    wait: float = 0.0


@dataclasses.dataclass(frozen=True)
class AttachReply(Message):
    """The delegation (id, mode, volume, lease terms), the extent map
    (docs/PROTOCOL.md) and the volume's description."""
    OP: ClassVar[str] = "attach"
    KIND: ClassVar[str] = "reply"
    delegation: dict[str, Any]
    map: dict[str, Any]
    volume: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RenewRequest(Message):
    OP: ClassVar[str] = "renew"
    delegations: list[str]


@dataclasses.dataclass(frozen=True)
class RenewResult(Message):
    """One delegation's renewal: ``state`` says why it failed ("fenced", "revoking",
    "revoked", "expired", "unknown")."""
    KIND: ClassVar[str] = "reply"
    ok: bool
    state: str = ""
    error: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class RenewReply(Message):
    OP: ClassVar[str] = "renew"
    KIND: ClassVar[str] = "reply"
    results: dict[str, dict[str, Any]]
    lease: dict[str, Any]

    def result(self, delegation: str) -> RenewResult:
        r = self.results.get(delegation)
        return RenewResult.from_wire(r) if r is not None else RenewResult(False, "unknown")


@dataclasses.dataclass(frozen=True)
class DetachRequest(Message):
    OP: ClassVar[str] = "detach"
    delegation: str


@dataclasses.dataclass(frozen=True)
class RevokeAckRequest(Message):
    """The holder closed its gate and drained its writes for ``delegation``."""
    OP: ClassVar[str] = "revoke_ack"
    delegation: str
