"""The request-handler table: handlers register with ``@op(name, role)``;
``dispatch`` checks the caller's role and the request's shape and runs one.
Handler modules (vserver.ops, vserver.fencing_ops) import this; vserver.handlers
imports them all and is what the server dispatches through."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fencevol.errors import AuthError, InvalidArgument, ProtocolError

if TYPE_CHECKING:
    from .server import Session, VolumeServer

OPS: dict[str, tuple] = {}


def op(name: str, role: str = "admin"):
    """Register a request handler; ``role``: who may call it -- "admin" sessions,
    "node" sessions (vclient), or "any"."""
    def register(fn):
        OPS[name] = (fn, role)
        return fn
    return register


async def dispatch(srv: VolumeServer, sess: Session, msg: dict, payload: bytes):
    name = msg.get("op")
    entry = OPS.get(name)
    if entry is None:
        raise ProtocolError(f"unknown operation {name!r}")
    fn, role = entry
    if role == "node" and sess.role != "node":
        raise InvalidArgument(f"{name} needs a node session (vclient)")
    if role == "admin" and sess.role != "admin":
        raise AuthError(f"{name} is an admin operation; a node session may not use it")
    args = msg.get("args")
    if not isinstance(args, dict):
        raise ProtocolError("request args must be an object")
    return await fn(srv, sess, args, payload)


def arg(args: dict, name: str, kind=str, default=...):
    """Argument ``name`` of a request, of type ``kind``; missing -> ``default``
    (required when not given), one-line errors."""
    v = args.get(name, default)
    if v is ...:
        raise InvalidArgument(f"missing argument {name!r}")
    if v is None and default is None:
        return None
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise InvalidArgument(f"argument {name!r} must be {kind.__name__}")
    return v
