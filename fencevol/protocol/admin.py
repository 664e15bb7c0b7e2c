"""Messages of the admin operations (vctl): server status, disks, disk groups and
volumes (patent Figure 5's set-up steps), and their descriptions."""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import InvalidArgument
from .base import Message, message

Size = int | str             # bytes, or text such as "64M" (fencevol.units.parse_size)


# -- descriptions ---------------------------------------------------------------------------
@message
class DiskInfo(Message):
    """A disk as the server sees it (``state``: ok, error or missing)."""
    KIND: ClassVar[str] = "reply"
    name: str
    id: str
    path: str
    state: str
    problems: list[str]
    size: int = 0
    public_size: int = 0
    free: int = 0
    group: str = ""


@message
class GroupInfo(Message):
    KIND: ClassVar[str] = "reply"
    name: str
    id: str
    generation: int
    disks: list[str]
    size: int
    free: int
    volumes: int
    state: str
    problems: list[str]


@message
class Attachment(Message):
    """A delegation on a volume (``volume`` is given in the server's status)."""
    KIND: ClassVar[str] = "reply"
    node: int
    mode: str
    state: str
    delegation: str
    connected: bool
    reason: str
    lease_remaining: float
    volume: str | None = None


@message
class VolumeInfo(Message):
    """A volume; ``plexes`` (its subdisks, column by column) in detailed views;
    the coordinator fields for coordinator volumes where asked."""
    KIND: ClassVar[str] = "reply"
    name: str
    dg: str
    volume: str
    id: str
    size: int
    layout: str
    columns: int
    mirrors: int
    stripe_unit: int
    kind: str
    extents: int
    attached: list[Attachment]
    cluster_id: str | None = None
    plexes: list[dict[str, Any]] | None = None
    plex_states: list[str] | None = None
    resync: dict[str, Any] | None = None            # a resync running or pending
    membership: dict[str, Any] | None = None       # coord_create, coord_show
    checksum_ok: bool | None = None                 # coord_show
    error: str | None = None                        # coord_show, checksum failed


@message
class ServerInfo(Message):
    KIND: ClassVar[str] = "reply"
    id: str
    listen: str
    state_dir: str
    pid: int
    uptime: float
    grace_remaining: float
    lease: dict[str, Any]
    ha: dict[str, Any] | None = None       # HA leader: cluster, epoch, etcd endpoints
    metrics: str | None = None              # where Prometheus metrics are served


@message
class NodeSession(Message):
    KIND: ClassVar[str] = "reply"
    node: int
    peer: str
    since: float


# -- server ----------------------------------------------------------------------------------
@message
class StatusRequest(Message):
    OP: ClassVar[str] = "status"


@message
class StatusReply(Message):
    OP: ClassVar[str] = "status"
    KIND: ClassVar[str] = "reply"
    server: ServerInfo
    disks: list[DiskInfo]
    groups: list[GroupInfo]
    attachments: list[Attachment]
    nodes: list[NodeSession]
    degraded: list[dict[str, Any]] | None = None   # volumes with a plex not active: states, resync


@message
class PingRequest(Message):
    OP: ClassVar[str] = "ping"


@message
class PingReply(Message):
    OP: ClassVar[str] = "ping"
    KIND: ClassVar[str] = "reply"
    time: float


# -- disks -----------------------------------------------------------------------------------
@message
class DiskInitRequest(Message):
    """Label ``path`` (absolute) as a disk; ``size`` creates a sparse image file."""
    OP: ClassVar[str] = "disk_init"
    path: str
    size: Size | None = None
    name: str | None = None
    force: bool = False


@message
class DiskListRequest(Message):
    OP: ClassVar[str] = "disk_list"


@message
class DiskListReply(Message):
    OP: ClassVar[str] = "disk_list"
    KIND: ClassVar[str] = "reply"
    disks: list[DiskInfo]


# -- disk groups -----------------------------------------------------------------------------
@message
class DgCreateRequest(Message):
    """``disks``: names, ids or absolute paths."""
    OP: ClassVar[str] = "dg_create"
    name: str
    disks: list[str]

    def check(self) -> None:
        if not self.disks:
            raise InvalidArgument("dg create needs at least one disk")


@message
class DgListRequest(Message):
    OP: ClassVar[str] = "dg_list"


@message
class DgListReply(Message):
    OP: ClassVar[str] = "dg_list"
    KIND: ClassVar[str] = "reply"
    groups: list[GroupInfo]


@message
class DgImportRequest(Message):
    """Import from the given ``paths``, else from disks matching ``scan`` patterns
    (else the server's scan list) and the disks it knows."""
    OP: ClassVar[str] = "dg_import"
    name: str
    paths: list[str] | None = None
    scan: list[str] | None = None


@message
class DgRepairRequest(Message):
    OP: ClassVar[str] = "dg_repair"
    name: str


@message
class DgRepairReply(Message):
    OP: ClassVar[str] = "dg_repair"
    KIND: ClassVar[str] = "reply"
    repaired: list[str]
    group: GroupInfo


# -- volumes ---------------------------------------------------------------------------------
@message
class VolCreateRequest(Message):
    OP: ClassVar[str] = "vol_create"
    dg: str
    name: str
    size: Size
    layout: str = "concat"
    kind: str = "data"
    columns: int | None = None
    mirrors: int | None = None
    stripe_unit: Size | None = None
    max_subdisk: Size | None = None
    cluster_id: str = ""

    def check(self) -> None:
        if self.kind not in ("data", "coordinator"):
            raise InvalidArgument(f"unknown volume kind {self.kind!r}")


@message
class VolListRequest(Message):
    OP: ClassVar[str] = "vol_list"
    dg: str | None = None


@message
class VolListReply(Message):
    OP: ClassVar[str] = "vol_list"
    KIND: ClassVar[str] = "reply"
    volumes: list[VolumeInfo]


@message
class VolShowRequest(Message):
    OP: ClassVar[str] = "vol_show"
    volume: str


@message
class VolRemoveRequest(Message):
    OP: ClassVar[str] = "vol_remove"
    volume: str


@message
class VolRemoveReply(Message):
    OP: ClassVar[str] = "vol_remove"
    KIND: ClassVar[str] = "reply"
    removed: str


@message
class VolResyncRequest(Message):
    """Resynchronize the stale plexes of ``volume`` (reopening their disks if they
    came back); the copy runs in the background, ``vol_show`` reports progress."""
    OP: ClassVar[str] = "vol_resync"
    volume: str


@message
class DiskReplaceRequest(Message):
    """Move every subdisk of disk ``old`` (name or id, in a group) to the initialized
    disk at ``new`` (path or name, in no group) and resync the plexes moved."""
    OP: ClassVar[str] = "disk_replace"
    old: str
    new: str


@message
class DiskEvacuateRequest(Message):
    """Move every subdisk off ``disk`` (name, id or path) to free space in its group,
    through a temporary mirror plex per plex moved; runs in the background."""
    OP: ClassVar[str] = "disk_evacuate"
    disk: str


@message
class DiskEvacuateReply(Message):
    OP: ClassVar[str] = "disk_evacuate"
    KIND: ClassVar[str] = "reply"
    disk: str
    volumes: list[str]


@message
class DgAddDiskRequest(Message):
    OP: ClassVar[str] = "dg_add_disk"
    name: str
    disks: list[str]


@message
class VolResizeRequest(Message):
    OP: ClassVar[str] = "vol_resize"
    volume: str
    size: Size
