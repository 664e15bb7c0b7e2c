"""The request-handler table: handlers register with ``@op(name, role)``;
``dispatch`` checks the caller's role, reads the request into its typed message
(fencevol.protocol.messages.OPERATIONS: one place checks every field), runs the
handler and checks that it answered with the operation's reply type. Handler
modules (vserver.handlers.*) import this; vserver.handlers gathers them and
vserver.main hands ``dispatch`` to the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, NamedTuple

from fencevol.errors import AuthError, InvalidArgument, ProtocolError
from fencevol.protocol.messages import OPERATIONS, Message

if TYPE_CHECKING:
    from .server import Session, VolumeServer

Handler = Callable[["VolumeServer", "Session", Message, bytes], Awaitable[tuple[Message, bytes]]]


class Entry(NamedTuple):
    fn: Handler
    role: str                       # "admin", "node" or "any"
    request: type[Message]
    reply: type[Message]


OPS: dict[str, Entry] = {}


def op(name: str, role: str = "admin"):
    """Register the handler of operation ``name`` (its message types come from
    OPERATIONS); ``role``: who may call it -- "admin" sessions, "node" sessions
    (vclient), or "any"."""
    request, reply = OPERATIONS[name]

    def register(fn):
        OPS[name] = Entry(fn, role, request, reply)
        return fn
    return register


async def dispatch(srv: VolumeServer, sess: Session, msg: dict, payload: bytes) -> tuple[dict, bytes]:
    """Run one request frame's operation: (the reply's result object, payload)."""
    name = msg.get("op")
    entry = OPS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ProtocolError(f"unknown operation {name!r}")
    if entry.role == "node" and sess.role != "node":
        raise InvalidArgument(f"{name} needs a node session (vclient)")
    if entry.role == "admin" and sess.role != "admin":
        raise AuthError(f"{name} is an admin operation; a node session may not use it")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("request args must be an object")
    reply, out = await entry.fn(srv, sess, entry.request.from_wire(args), payload)
    if type(reply) is not entry.reply:
        raise TypeError(f"{name} answered with {type(reply).__name__}, not {entry.reply.__name__}")
    return reply.to_wire(), out
