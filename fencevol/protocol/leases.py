"""Messages of the lease operations a node runs: attach, renew, detach, revoke_ack
(patent Figures 5-6: a node is granted an extent map and a time-limited delegation,
keeps it by renewing, and gives it back)."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import Message, message


@message
class AttachRequest(Message):
    """Ask for a delegation on ``volume``. ``key``: the node's registration key (data
    volumes); ``wait``: seconds to wait for a conflicting live holder."""
    OP: ClassVar[str] = "attach"
    volume: str
    mode: str = "rw"
    key: int = 0
    wait: float = 0.0


@message
class AttachReply(Message):
    """The delegation (id, mode, volume, lease terms), the extent map
    (docs/PROTOCOL.md) and the volume's description."""
    OP: ClassVar[str] = "attach"
    KIND: ClassVar[str] = "reply"
    delegation: dict[str, Any]
    map: dict[str, Any]
    volume: dict[str, Any]


@message
class RenewRequest(Message):
    OP: ClassVar[str] = "renew"
    delegations: list[str]


@message
class RenewResult(Message):
    """One delegation's renewal: ``state`` says why it failed ("fenced", "revoking",
    "revoked", "expired", "unknown")."""
    KIND: ClassVar[str] = "reply"
    ok: bool
    state: str = ""
    error: dict[str, Any] | None = None


@message
class RenewReply(Message):
    OP: ClassVar[str] = "renew"
    KIND: ClassVar[str] = "reply"
    results: dict[str, RenewResult]
    lease: dict[str, Any]

    def result(self, delegation: str) -> RenewResult:
        return self.results.get(delegation) or RenewResult(False, "unknown")


@message
class DetachRequest(Message):
    OP: ClassVar[str] = "detach"
    delegation: str


@message
class DetachReply(Message):
    OP: ClassVar[str] = "detach"
    KIND: ClassVar[str] = "reply"
    detached: str


@message
class RevokeAckRequest(Message):
    """The holder closed its gate and drained its writes for ``delegation``."""
    OP: ClassVar[str] = "revoke_ack"
    delegation: str


@message
class RevokeAckReply(Message):
    OP: ClassVar[str] = "revoke_ack"
    KIND: ClassVar[str] = "reply"
    acknowledged: bool


@message
class RevokePush(Message):
    """Server -> holder: close the gate on ``delegation``, drain, acknowledge."""
    OP: ClassVar[str] = "revoke"
    KIND: ClassVar[str] = "push"
    delegation: str
    volume: str
    reason: str


@message
class ReinstatePush(Message):
    """Server -> holder: a revoked-for-reconfiguration delegation is valid again,
    with the volume's new extent map."""
    OP: ClassVar[str] = "reinstate"
    KIND: ClassVar[str] = "push"
    delegation: str
    volume: str
    map: dict[str, Any]


# -- mirror plexes (docs/MIRRORS.md) ------------------------------------------------------------
@message
class MapPush(Message):
    """Server -> holder: the volume's extent map changed (a plex detached, began or
    finished a resync, moved to another disk); install it and acknowledge with
    ``map_ack``. A holder that does not acknowledge is not renewed again."""
    OP: ClassVar[str] = "map"
    KIND: ClassVar[str] = "push"
    delegation: str
    volume: str
    map: dict[str, Any]


@message
class MapAckRequest(Message):
    """The holder of ``delegation`` installed the map of configuration ``generation``."""
    OP: ClassVar[str] = "map_ack"
    delegation: str
    generation: int


@message
class MapAckReply(Message):
    OP: ClassVar[str] = "map_ack"
    KIND: ClassVar[str] = "reply"
    acknowledged: bool


@message
class PlexDetachRequest(Message):
    """A write under ``delegation`` failed on ``plexes`` (and reached every other
    writable plex): mark them stale before the write is acknowledged. ``generation``:
    the map the write used; ``reason``: the I/O error."""
    OP: ClassVar[str] = "plex_detach"
    delegation: str
    plexes: list[int]
    generation: int
    reason: str = ""


@message
class PlexDetachReply(Message):
    """The map with those plexes stale, installed by every other holder."""
    OP: ClassVar[str] = "plex_detach"
    KIND: ClassVar[str] = "reply"
    map: dict[str, Any]
