"""The typed-message machinery: ``Message``, the base of every request, reply and
push on the wire. A message is a frozen dataclass; ``to_wire`` gives its JSON object
and ``from_wire`` checks every field against its annotation in one place -- a bad
field is a one-line ``InvalidArgument`` naming the operation and the field.

Wire rules (docs/PROTOCOL.md):

* a field whose default is ``None`` is left out while it is ``None``;
* nested messages are objects, checked by their own class;
* a request with an argument its class does not know is refused (a typo such as
  ``forse`` must not silently mean "not forced"); replies and pushes ignore unknown
  fields, so a newer server can add some;
* a union (``int | str``) accepts the first alternative that checks."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from ..errors import InvalidArgument

_UNIONS = (typing.Union, types.UnionType)


class Message:
    """Base of every typed message (subclasses are frozen dataclasses)."""

    OP: ClassVar[str] = ""
    KIND: ClassVar[str] = "request"           # "request", "reply" or "push"

    def check(self) -> None:
        """Cross-field validation beyond the annotations (raise InvalidArgument)."""

    def to_wire(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            out[f.name] = _wire_value(v)
        return out

    @classmethod
    def from_wire(cls, d: object):
        what = f"{cls.OP} {cls.KIND}" if cls.OP else cls.__name__
        if not isinstance(d, dict):
            raise InvalidArgument(f"{what}: expected an object")
        spec = field_spec(cls)
        if cls.KIND == "request":
            unknown = sorted(k for k in d if k not in spec)
            if unknown:
                raise InvalidArgument(f"{what}: unknown argument {unknown[0]!r}")
        values = {}
        for name, (tp, required) in spec.items():
            if name not in d:
                if required:
                    raise InvalidArgument(f"{what}: missing argument {name!r}")
                continue
            values[name] = _check(what, name, tp, d[name])
        msg = cls(**values)
        msg.check()
        return msg


def field_spec(cls) -> dict[str, tuple[Any, bool]]:
    """{field: (annotation, required)}, resolved once per class."""
    spec = cls.__dict__.get("_wire_spec")
    if spec is None:
        hints = typing.get_type_hints(cls)
        spec = {f.name: (hints[f.name], f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(cls)}
        cls._wire_spec = spec
    return spec


def _wire_value(v):
    if isinstance(v, Message):
        return v.to_wire()
    if isinstance(v, list):
        return [_wire_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _wire_value(x) for k, x in v.items()}
    return v


_KIND_NAMES = {str: "text", bool: "true or false", int: "an integer", float: "a finite number",
               dict: "an object", list: "a list"}


def _simple(tp, v) -> bool:
    if tp is str:
        return isinstance(v, str)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if tp is dict:
        return isinstance(v, dict)
    raise TypeError(f"no wire check for {tp!r}")


def describe(tp) -> str:
    """How a field of annotation ``tp`` is spelled in an error."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNIONS:
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    if isinstance(tp, type) and issubclass(tp, Message):
        return "an object"
    return _KIND_NAMES.get(tp, repr(tp))


def _check(what: str, name: str, tp, v: Any):
    if tp is Any:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNIONS:
        if v is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:
            return _check(what, name, alternatives[0], v)
        for a in alternatives:
            try:
                return _check(what, name, a, v)
            except InvalidArgument as exc:
                if isinstance(v, dict) and isinstance(a, type) and issubclass(a, Message):
                    raise exc from None     # the object's own complaint says more
        raise InvalidArgument(f"{what}: {name} must be {describe(tp)}")
    if origin is list:
        if not isinstance(v, list):
            raise InvalidArgument(f"{what}: {name} must be a list")
        return [_check(what, f"{name}[{i}]", args[0], x) for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise InvalidArgument(f"{what}: {name} must be an object")
        return {k: _check(what, f"{name}[{k!r}]", args[1], x) for k, x in v.items()}
    if isinstance(tp, type) and issubclass(tp, Message):
        if not isinstance(v, dict):
            raise InvalidArgument(f"{what}: {name} must be an object")
        try:
            return tp.from_wire(v)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {name}: {exc}") from None
    if not _simple(tp, v):
        raise InvalidArgument(f"{what}: {name} must be {_KIND_NAMES[tp]}")
    return float(v) if tp is float else v


def message(cls):
    """Class decorator: a frozen dataclass message."""
    return dataclasses.dataclass(frozen=True)(cls)
