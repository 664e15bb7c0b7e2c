"""Domain errors shared by server, client, CLI and FUSE layer.

Every error carries a stable wire ``code`` (sent to peers), an ``errno`` (used at
the FUSE boundary) and an ``exit_code`` (used by the command-line tools). Messages
are one line, meant for a human.
"""

from __future__ import annotations

import errno as _errno


_BY_CODE: dict[str, type] = {}


class FencevolError(Exception):
    """Base class. ``str(err)`` is the one-line message. A subclass that sets its
    own ``code`` registers it, so a peer rebuilds that class from the wire."""

    code = "error"
    errno = _errno.EIO
    exit_code = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            other = _BY_CODE.setdefault(cls.code, cls)
            if other is not cls:
                raise TypeError(f"error code {cls.code!r} of {cls.__name__} is {other.__name__}'s")

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message}


class InvalidArgument(FencevolError):
    code = "invalid"
    errno = _errno.EINVAL
    exit_code = 2


class NotFound(FencevolError):
    code = "not_found"
    errno = _errno.ENOENT


class AlreadyExists(FencevolError):
    code = "exists"
    errno = _errno.EEXIST


class NoSpace(FencevolError):
    code = "no_space"
    errno = _errno.ENOSPC


class Conflict(FencevolError):
    """Access conflicts with a delegation held by another node."""

    code = "conflict"
    errno = _errno.EBUSY


class Busy(FencevolError):
    """A resource is held and did not become free in time; retrying may help."""

    code = "busy"
    errno = _errno.EBUSY


class InUse(FencevolError):
    """Refused because the object is attached or otherwise in use."""

    code = "in_use"
    errno = _errno.EBUSY


class ChecksumError(FencevolError):
    """On-disk or on-wire data failed its CRC: never used silently (S4)."""

    code = "checksum"
    errno = _errno.EIO


class AuthError(FencevolError):
    code = "auth"
    errno = _errno.EACCES
    exit_code = 3


class ProtocolError(FencevolError):
    code = "protocol"
    errno = _errno.EPROTO


class Unavailable(FencevolError):
    """The peer (usually the server) cannot be reached."""

    code = "unavailable"
    errno = _errno.EIO
    exit_code = 4


class NotLeader(Unavailable):
    """An HA server that is not (or not certainly) the leader: ask another one."""

    code = "not_leader"


class Fenced(FencevolError):
    """The node was ejected or its registration preempted; writes are refused."""

    code = "fenced"
    errno = _errno.EIO


class Revoked(FencevolError):
    """The delegation was revoked or has expired on the server."""

    code = "revoked"
    errno = _errno.EIO


class ReservationConflict(FencevolError):
    """SCSI-3 PR: the initiator is not registered for a write-exclusive reservation."""

    code = "reservation_conflict"
    errno = _errno.EIO


class IOFailure(FencevolError):
    code = "io"
    errno = _errno.EIO


class Internal(FencevolError):
    code = "internal"
    errno = _errno.EIO


class MetadataError(InvalidArgument):
    """A configuration copy passed its checksum but does not describe a valid group."""

    code = "metadata"
    exit_code = 1


_BY_CODE[FencevolError.code] = FencevolError


def from_wire(error: object) -> FencevolError:
    """Rebuild an error sent by a peer; unknown codes become ``FencevolError``."""
    if not isinstance(error, dict):
        return ProtocolError(f"malformed error reply: {error!r}")
    cls = _BY_CODE.get(error.get("code"), FencevolError)
    return cls(str(error.get("message", "unknown error")))
