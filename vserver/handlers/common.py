"""What several handler modules share: descriptions of disks, groups, volumes and
attachments (as typed reply messages), disk references, committing a new group
configuration, and the checks in front of I/O under a delegation."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import trio

from fencevol import modes, ondisk
from fencevol.errors import AlreadyExists, InvalidArgument, NotFound, Revoked
from fencevol.protocol.messages import Attachment, DiskInfo, GroupInfo, VolumeInfo

from .. import allocator, storage
from ..delegations import ACTIVE
from ..model import SYNCING, GroupConfig, Volume
from ..storage import Disk, Group

if TYPE_CHECKING:
    from ..server import Session, VolumeServer


# --- descriptions -----------------------------------------------------------------------
def disk_info(srv: VolumeServer, d: Disk) -> DiskInfo:
    lab = d.label
    group = srv.groups.get(lab.dg_name) if lab and lab.dg_name else None
    if group is not None and d.id in group.disks:
        free = allocator.free_bytes(allocator.free_map(group.config), d.id)
    else:
        free = max(0, d.size - ondisk.PRIVATE_SIZE)
    problems = list(d.problems) + ([f"failed: {d.failed}"] if d.failed else [])
    evac = srv.evacuations.get(d.id)
    if evac and evac["error"]:
        problems.append(f"evacuation stopped: {evac['error']}")
    used = len(json.dumps(d.pr.to_json(), separators=(",", ":")))
    if used > 0.8 * ondisk.slot_capacity(ondisk.PR):
        problems.append(f"reservation table {100 * used // ondisk.slot_capacity(ondisk.PR)}% full "
                        f"({len(d.pr.registrations)} keys, {len(d.pr.preempted)} preempted)")
    return DiskInfo(name=d.name, id=d.id, path=d.path, size=d.size,
                    public_size=max(0, d.size - (lab.public_offset if lab else ondisk.PRIVATE_SIZE)),
                    free=free, group=lab.dg_name if lab else "",
                    state="failed" if d.failed else "error" if problems else "ok", problems=problems)


def all_disk_infos(srv: VolumeServer) -> list[DiskInfo]:
    """Every disk the server knows, and those it could not open ("missing")."""
    return ([disk_info(srv, d) for d in srv.disks.values()]
            + [DiskInfo(name="", id=e["id"], path=e["path"], state="missing", problems=[e["error"]])
               for e in srv.disk_errors])


def group_info(srv: VolumeServer, g: Group) -> GroupInfo:
    fm = allocator.free_map(g.config)
    probs = g.problems()
    if g.ownership is not None and g.ownership.lost:
        probs.append(f"owner lease: {g.ownership.lost}")
    return GroupInfo(name=g.name, id=g.config.id, generation=g.config.generation,
                     disks=[r.name for r in g.config.disks],
                     size=sum(r.size - r.public_offset for r in g.config.disks),
                     free=sum(allocator.free_bytes(fm, d) for d in fm),
                     volumes=len(g.config.volumes),
                     state="degraded" if probs else "ok", problems=probs)


def attachments(srv: VolumeServer, key: str, with_volume: bool = False) -> list[Attachment]:
    now = trio.current_time()
    out = [Attachment(node=d.node, mode=d.mode, state=d.state, delegation=d.id,
                      connected=d.connected, reason=d.reason,
                      lease_remaining=round(srv.terms.server_expiry(d.granted_at) - now, 3),
                      volume=key if with_volume else None)
           for d in srv.table.on_volume(key)]
    return sorted(out, key=lambda a: a.node)


def volume_info(srv: VolumeServer, g: Group, v: Volume, detail: bool = False, **extra) -> VolumeInfo:
    """``extra``: the coordinator fields (membership, checksum_ok, error)."""
    key = f"{g.name}/{v.name}"
    plexes = None
    if detail:
        names = {r.id: r.name for r in g.config.disks}
        paths = g.disk_paths()
        plexes = []
        for p, plex in enumerate(v.plexes):
            cols = []
            for c, col in enumerate(plex):
                pos, sds = 0, []
                for sd in col:
                    sds.append({"disk": names[sd.disk], "disk_id": sd.disk,
                                "path": paths.get(sd.disk, ""), "column_offset": pos,
                                "disk_offset": sd.offset, "length": sd.length})
                    pos += sd.length
                cols.append({"column": c, "subdisks": sds})
            plexes.append({"plex": p, "columns": cols})
    return VolumeInfo(name=key, dg=g.name, volume=v.name, id=v.id, size=v.size, layout=v.layout,
                      columns=v.columns, mirrors=len(v.plexes), stripe_unit=v.stripe_unit,
                      kind=v.kind, extents=sum(1 for _ in v.subdisks()),
                      attached=attachments(srv, key), cluster_id=v.cluster_id or None,
                      plexes=plexes, plex_states=list(v.plex_states),
                      resync=resync_info(srv, key, v), **extra)


def resync_info(srv: VolumeServer, key: str, v: Volume) -> dict | None:
    """Progress of a resync of ``key`` that runs, failed, or waits (syncing plexes
    and nothing running: e.g. the server is just starting)."""
    run = srv.resyncs.get(key)
    if run is not None and (run.running or (run.error and SYNCING in v.plex_states)):
        return run.describe()
    if SYNCING in v.plex_states:
        return {"done": v.resync_done, "size": v.size, "percent": round(100.0 * v.resync_done / v.size, 1),
                "rate": 0, "running": False, "error": ""}
    return None


# --- disks ----------------------------------------------------------------------------------
def known_disk_by_path(srv: VolumeServer, path: str) -> Disk | None:
    real = os.path.realpath(path)
    for d in srv.disks.values():
        if os.path.realpath(d.path) == real:
            return d
    return None


def require_abs(path: str) -> str:
    if not os.path.isabs(path):
        raise InvalidArgument(f"disk path must be absolute, got {path!r}")
    return os.path.normpath(path)


def resolve_disk(srv: VolumeServer, ref: str) -> Disk:
    """A disk by id, unique name or absolute path (opened and remembered when it is
    an initialized disk the server did not know)."""
    if not ref:
        raise InvalidArgument(f"bad disk reference {ref!r}")
    if ref in srv.disks:
        return srv.disks[ref]
    if not os.path.isabs(ref):
        named = [d for d in srv.disks.values() if d.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise InvalidArgument(f"disk name {ref} is ambiguous; give its path")
        raise NotFound(f"no disk named {ref}; give an absolute path or run `vctl disk list`")
    known = known_disk_by_path(srv, ref)
    if known:
        return known
    disk = Disk.open(ref)        # reads the label on the loop: an admin operation, rare
    if disk.label is None:
        disk.close()
        raise InvalidArgument(f"{ref} is not initialized; run `vctl disk init {ref}`")
    if disk.id in srv.disks:
        disk.close()
        raise AlreadyExists(f"{ref} holds disk {disk.id}, already known at {srv.disks[disk.id].path}")
    srv.disks[disk.id] = disk
    return disk


def writable_group(srv: VolumeServer, name: str) -> Group:
    """The imported group ``name``, refusing one whose metadata may not be written."""
    group = srv.groups.get(name)
    if group is None:
        raise NotFound(f"no disk group {name}")
    group.check_writable()
    return group


# --- configuration ----------------------------------------------------------------------
def next_config(cfg: GroupConfig, volumes: list[Volume]) -> GroupConfig:
    return GroupConfig(id=cfg.id, name=cfg.name, generation=cfg.generation + 1,
                       disks=cfg.disks, volumes=volumes)


async def commit_config(srv: VolumeServer, group: Group, cfg: GroupConfig) -> None:
    cfg.validate()
    await srv.check_owner(group)        # a stale or foreign owner writes nothing
    await trio.to_thread.run_sync(storage.write_config, group, cfg)
    srv.install_config(group, cfg)


# --- I/O under a delegation -----------------------------------------------------------------
def io_target(srv: VolumeServer, sess: Session, delegation: str, offset: int, write: bool):
    """(delegation, group, volume, extent map) for I/O at ``offset``: the caller
    must hold ``delegation``, active and within its lease (S2)."""
    d = srv.table.by_id.get(delegation)
    now = trio.current_time()
    if d is None or d.node != sess.node:
        raise Revoked("remote I/O without a delegation held by this node")
    if d.state != ACTIVE or now >= srv.terms.server_expiry(d.granted_at):
        raise Revoked(f"delegation on {d.volume} is {d.state if d.state != ACTIVE else 'expired'}")
    if write and not modes.can_write(d.mode):
        raise InvalidArgument(f"{d.volume} is attached read-only")
    group, vol = srv.find_volume(d.volume)
    if not 0 <= offset <= vol.size:
        raise InvalidArgument(f"offset must be 0-{vol.size} (the size of {d.volume})")
    return d, group, vol, srv.extent_map(group, vol)
