"""Messages of coordinator volumes, fencing and the persistent-reservation admin
verbs (patent Figures 5 and 7-10: create the coordinator, compare-and-swap its
membership, preempt and abort the losers)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import InvalidArgument
from .admin import Size
from .base import Message, message

Key = int | str              # a registration key: an integer, or hex text


# -- coordinator -----------------------------------------------------------------------------
@message
class CoordCreateRequest(Message):
    OP: ClassVar[str] = "coord_create"
    dg: str
    name: str
    cluster_id: str
    nodes: list[int]
    size: Size = "1M"
    layout: str = "concat"


@message
class CoordShowRequest(Message):
    OP: ClassVar[str] = "coord_show"
    volume: str


@message
class CoordClearRequest(Message):
    OP: ClassVar[str] = "coord_clear"
    volume: str
    force: bool = False


@message
class CoordClearReply(Message):
    OP: ClassVar[str] = "coord_clear"
    KIND: ClassVar[str] = "reply"
    membership: dict[str, Any]
    forced_live: list[int]


@message
class CoordWriteRequest(Message):
    """Compare-and-swap: the payload (an encoded membership block) replaces the
    coordinator's content if its generation is ``expected_generation``."""
    OP: ClassVar[str] = "coord_write"
    delegation: str
    expected_generation: int


@message
class CoordWriteReply(Message):
    OP: ClassVar[str] = "coord_write"
    KIND: ClassVar[str] = "reply"
    generation: int


# -- fencing ---------------------------------------------------------------------------------
@message
class Victim(Message):
    """A node to fence, up to and including ``incarnation``."""
    node: int
    incarnation: int


@message
class FenceRequest(Message):
    """Fence ``victims`` (a bare node id means every incarnation) in the cluster of
    ``coordinator``."""
    OP: ClassVar[str] = "fence"
    coordinator: str
    victims: list[int | Victim]


@message
class FenceReply(Message):
    OP: ClassVar[str] = "fence"
    KIND: ClassVar[str] = "reply"
    fenced: list[int]
    preempted: int
    acknowledged: list[int]
    lease_expired: list[int]
    seconds: float


# -- persistent reservations -------------------------------------------------------------------
@message
class KeyInfo(Message):
    KIND: ClassVar[str] = "reply"
    key: str
    node: int
    owner: str


@message
class Reservation(Message):
    KIND: ClassVar[str] = "reply"
    key: str
    type: str
    type_name: str


@message
class DiskKeys(Message):
    """One disk's reservation table."""
    KIND: ClassVar[str] = "reply"
    disk: str
    path: str
    generation: int
    keys: list[KeyInfo]
    reservation: Reservation | None
    preempted: list[str]


@message
class DiskKeysReply(Message):
    """The reply of every ``pr_*`` verb: the tables it read or changed."""
    KIND: ClassVar[str] = "reply"
    disks: list[DiskKeys]


@message
class PrReadKeysRequest(Message):
    """``disk``: one disk (name, id or path); all disks in groups when omitted."""
    OP: ClassVar[str] = "pr_read_keys"
    disk: str | None = None


@message
class PrReadReservationRequest(Message):
    OP: ClassVar[str] = "pr_read_reservation"
    disk: str | None = None


@message
class PrPreemptRequest(Message):
    """Preempt ``key``, or every key of ``node`` (exactly one of them)."""
    OP: ClassVar[str] = "pr_preempt"
    disk: str | None = None
    key: Key | None = None
    node: int | None = None

    def check(self) -> None:
        if (self.key is None) == (self.node is None):
            raise InvalidArgument("give exactly one of key or node")


@message
class PrClearRequest(Message):
    OP: ClassVar[str] = "pr_clear"
    disk: str | None = None

    def check(self) -> None:
        if self.disk in (None, "", "all"):
            raise InvalidArgument("pr clear needs one disk")


@message
class PrForgetRequest(Message):
    OP: ClassVar[str] = "pr_forget"
    key: Key
    disk: str | None = None
