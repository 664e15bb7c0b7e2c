"""Remote I/O handlers (patent ¶0046): a node without a path to a disk reads,
writes and syncs through the server, under an active delegation within its lease;
writes are checked against the disks' reservations here, on the server's path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from fencevol import directio
from fencevol.coord import format_key
from fencevol.errors import InvalidArgument, IOFailure, NoSpace, ReservationConflict
from fencevol.extents import ExtentMap
from fencevol.protocol import messages as m

from ..registry import op
from ..storage import volume_read, volume_write
from .common import io_target

if TYPE_CHECKING:
    from ..server import Session, VolumeServer

MAX_IO = 8 << 20


def _plexes(emap: ExtentMap, plex: int | None, write: bool):
    """The plexes to read (active ones) or write (active ones first, then those
    being resynced: vserver/mirrors.py), or only ``plex`` (a client sending the
    segments it cannot reach itself)."""
    if plex is None:
        if not write:
            return [emap.plexes[p] for p in emap.readable]
        return [emap.plexes[p] for p in emap.readable] + [
            emap.plexes[p] for p in emap.writable if p not in emap.readable]
    if not 0 <= plex < len(emap.plexes):
        raise InvalidArgument(f"plex must be 0-{len(emap.plexes) - 1}")
    return [emap.plexes[plex]]


@op("read", role="node")
async def op_read(srv: VolumeServer, sess: Session, req: m.ReadRequest, payload):
    _, group, vol, emap = io_target(srv, sess, req.delegation, req.offset, write=False)
    if not 0 <= req.length <= MAX_IO:
        raise InvalidArgument(f"length must be 0-{MAX_IO}")
    length = max(0, min(req.length, vol.size - req.offset))
    # Blocking O_DIRECT read on the event loop: at most MAX_IO bytes, from a node
    # without a path of its own (rare); a worker-thread hop costs more than it saves.
    try:
        data = volume_read(group, emap, _plexes(emap, req.plex, False)[0], req.offset, length)
    except OSError as exc:
        raise IOFailure(f"the server's read of {vol.name} failed: {exc}") from None
    return m.ReadReply(length=length), data


@op("write", role="node")
async def op_write(srv: VolumeServer, sess: Session, req: m.WriteRequest, payload):
    d, group, vol, emap = io_target(srv, sess, req.delegation, req.offset, write=True)
    if vol.kind == "coordinator":
        raise InvalidArgument("coordinator volumes are written with coord_write (compare-and-swap)")
    if req.offset + len(payload) > vol.size:
        raise NoSpace(f"write past the end of {vol.name} ({vol.size} bytes)")
    for ref in emap.disks:     # the reservation is enforced here, on the server's path
        if not group.disks[ref.id].pr.may_write(d.key):
            raise ReservationConflict(f"disk {ref.name}: node {d.node}'s key "
                                      f"{format_key(d.key)} is not registered (fenced)")
    # O_DIRECT write on the event loop, like op_read's read; only the sync goes to a thread.
    try:
        fds = volume_write(group, emap, _plexes(emap, req.plex, True), req.offset, payload)
    except OSError as exc:
        raise IOFailure(f"the server's write to {vol.name} failed: {exc}") from None
    if req.sync:
        await trio.to_thread.run_sync(directio.fdatasync_all, fds)
    return m.WriteReply(length=len(payload)), b""


@op("sync", role="node")
async def op_sync(srv: VolumeServer, sess: Session, req: m.SyncRequest, payload):
    _, group, _, emap = io_target(srv, sess, req.delegation, 0, write=False)
    await trio.to_thread.run_sync(directio.fdatasync_all, {group.disks[r.id].fd for r in emap.disks})
    return m.SyncReply(), b""
