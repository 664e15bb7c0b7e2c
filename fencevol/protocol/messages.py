"""Every typed message of the volume-server protocol, and ``OPERATIONS``: for each
operation, its request and reply classes. The server's handler table is checked
against it (every handler has its types, every type has a handler); clients read
replies through it (``reply_of``).

The classes live by resource: ``leases`` (attach, renew, detach, revoke_ack and
the server's pushes), ``admin`` (status, disks, groups, volumes), ``remote_io``
(read, write, sync), ``fencing`` (coordinator, fence, reservations); the
machinery in ``base``."""

from __future__ import annotations

from ..errors import InvalidArgument
from .admin import (
    DiskInfo, GroupInfo, Attachment, VolumeInfo, ServerInfo, NodeSession, StatusRequest,
    StatusReply, PingRequest, PingReply, DiskInitRequest, DiskListRequest, DiskListReply,
    DgCreateRequest, DgListRequest, DgListReply, DgImportRequest, DgRepairRequest,
    DgRepairReply, VolCreateRequest, VolListRequest, VolListReply, VolShowRequest,
    VolRemoveRequest, VolRemoveReply, VolResizeRequest, VolResyncRequest, DiskReplaceRequest,
    DgAddDiskRequest, DiskEvacuateRequest, DiskEvacuateReply,
)
from .base import Message
from .fencing import (
    CoordCreateRequest, CoordShowRequest, CoordClearRequest, CoordClearReply, CoordWriteRequest,
    CoordWriteReply, Victim, FenceRequest, FenceReply, KeyInfo, Reservation, DiskKeys,
    DiskKeysReply, PrReadKeysRequest, PrReadReservationRequest, PrPreemptRequest,
    PrClearRequest, PrForgetRequest,
)
from .leases import (
    AttachRequest, AttachReply, RenewRequest, RenewResult, RenewReply, DetachRequest,
    DetachReply, RevokeAckRequest, RevokeAckReply, RevokePush, ReinstatePush, MapPush,
    MapAckRequest, MapAckReply, PlexDetachRequest, PlexDetachReply,
)
from .remote_io import (
    ReadRequest, ReadReply, WriteRequest, WriteReply, SyncRequest, SyncReply,
)

__all__ = [
    "AttachReply", "AttachRequest", "Attachment", "CoordClearReply", "CoordClearRequest",
    "CoordCreateRequest", "CoordShowRequest", "CoordWriteReply", "CoordWriteRequest",
    "DetachReply", "DetachRequest", "DgCreateRequest", "DgImportRequest", "DgListReply",
    "DgListRequest", "DgRepairReply", "DgRepairRequest", "DiskInfo", "DiskInitRequest",
    "DiskKeys", "DiskKeysReply", "DiskListReply", "DiskListRequest", "FenceReply",
    "FenceRequest", "GroupInfo", "KeyInfo", "Message", "NodeSession", "PingReply",
    "PingRequest", "PrClearRequest", "PrForgetRequest", "PrPreemptRequest", "PrReadKeysRequest",
    "PrReadReservationRequest", "ReadReply", "ReadRequest", "ReinstatePush", "RenewReply",
    "RenewRequest", "RenewResult", "Reservation", "RevokeAckReply", "RevokeAckRequest",
    "RevokePush", "ServerInfo", "StatusReply", "StatusRequest", "SyncReply", "SyncRequest",
    "Victim", "VolCreateRequest", "VolListReply", "VolListRequest", "VolRemoveReply",
    "VolRemoveRequest", "VolResizeRequest", "VolShowRequest", "VolResyncRequest", "DiskReplaceRequest",
    "DgAddDiskRequest", "DiskEvacuateRequest", "DiskEvacuateReply", "MapPush", "MapAckRequest", "MapAckReply", "PlexDetachRequest",
    "PlexDetachReply", "VolumeInfo", "WriteReply",
    "WriteRequest", "OPERATIONS", "PUSHES", "REQUESTS", "push_from_wire", "push_to_wire",
    "reply_of",
]

OPERATIONS: dict[str, tuple[type[Message], type[Message]]] = {
    cls.OP: (cls, reply) for cls, reply in [
        (StatusRequest, StatusReply), (PingRequest, PingReply),
        (DiskInitRequest, DiskInfo), (DiskListRequest, DiskListReply),
        (DgCreateRequest, GroupInfo), (DgListRequest, DgListReply),
        (DgImportRequest, GroupInfo), (DgRepairRequest, DgRepairReply),
        (VolCreateRequest, VolumeInfo), (VolListRequest, VolListReply),
        (VolShowRequest, VolumeInfo), (VolRemoveRequest, VolRemoveReply),
        (VolResizeRequest, VolumeInfo), (VolResyncRequest, VolumeInfo),
        (DiskReplaceRequest, GroupInfo), (DgAddDiskRequest, GroupInfo),
        (DiskEvacuateRequest, DiskEvacuateReply),
        (MapAckRequest, MapAckReply), (PlexDetachRequest, PlexDetachReply),
        (AttachRequest, AttachReply), (RenewRequest, RenewReply),
        (DetachRequest, DetachReply), (RevokeAckRequest, RevokeAckReply),
        (ReadRequest, ReadReply), (WriteRequest, WriteReply), (SyncRequest, SyncReply),
        (CoordCreateRequest, VolumeInfo), (CoordShowRequest, VolumeInfo),
        (CoordClearRequest, CoordClearReply), (CoordWriteRequest, CoordWriteReply),
        (FenceRequest, FenceReply),
        (PrReadKeysRequest, DiskKeysReply), (PrReadReservationRequest, DiskKeysReply),
        (PrPreemptRequest, DiskKeysReply), (PrClearRequest, DiskKeysReply),
        (PrForgetRequest, DiskKeysReply),
    ]}

REQUESTS: dict[str, type[Message]] = {op: req for op, (req, _) in OPERATIONS.items()}
PUSHES: dict[str, type[Message]] = {cls.OP: cls for cls in (RevokePush, ReinstatePush, MapPush)}


def reply_of(op: str, result: object) -> Message:
    """The typed reply of ``op`` from a reply's ``result`` object."""
    return OPERATIONS[op][1].from_wire(result)


def push_to_wire(push: Message) -> dict:
    return {"push": push.OP} | push.to_wire()


def push_from_wire(msg: dict) -> Message:
    """A push (``{"push": kind, ...}``) as its typed message; InvalidArgument if
    unknown or malformed."""
    cls = PUSHES.get(msg.get("push"))
    if cls is None:
        raise InvalidArgument(f"unknown push {msg.get('push')!r}")
    return cls.from_wire({k: v for k, v in msg.items() if k != "push"})
