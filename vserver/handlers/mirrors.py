"""Mirror handlers (vserver/mirrors.py does the work): a node's plex detach and map
acknowledgement, and the admin's resync, disk replacement and group growth."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fencevol.errors import FencevolError, InvalidArgument, NoSpace
from fencevol.protocol import messages as m

from .. import allocator, mirrors, ownership, storage
from ..model import ACTIVE, DETACHING, STALE, SYNCING, DiskRecord, GroupConfig, Subdisk
from ..registry import op
from ..storage import Disk, Group
from .common import group_info, io_target, resolve_disk, volume_info

if TYPE_CHECKING:
    from ..server import Session, VolumeServer

log = logging.getLogger("vserver")


@op("plex_detach", role="node")
async def op_plex_detach(srv: VolumeServer, sess: Session, req: m.PlexDetachRequest, payload):
    d, _, _, _ = io_target(srv, sess, req.delegation, 0, write=True)
    wire = await mirrors.detach_plexes(srv, d, list(req.plexes), req.reason or "I/O error")
    return m.PlexDetachReply(map=wire), b""


@op("map_ack", role="node")
async def op_map_ack(srv: VolumeServer, sess: Session, req: m.MapAckRequest, payload):
    d = srv.table.by_id.get(req.delegation)
    if d is None or d.node != sess.node:
        return m.MapAckReply(acknowledged=False), b""
    mirrors.acknowledge_map(srv, d, req.generation)
    return m.MapAckReply(acknowledged=True), b""


@op("vol_resync")
async def op_vol_resync(srv: VolumeServer, sess: Session, req: m.VolResyncRequest, payload):
    group, vol = srv.find_volume(req.volume)
    back = await mirrors.reopen_failed(srv, group)
    if back:
        log.warning("disk group %s: disk(s) %s back", group.name, ", ".join(back))
    if not vol.plexes_in(STALE, SYNCING):
        raise InvalidArgument(f"{req.volume}: every plex is active; nothing to resync")
    stuck = [p for p in vol.plexes_in(STALE) if not mirrors.syncable(group, vol, p)]
    vol = await mirrors.start_resync(srv, group, vol)
    if stuck and not vol.plexes_in(SYNCING):
        raise InvalidArgument(f"{req.volume}: plex(es) {', '.join(map(str, stuck))} sit on a failed "
                              "disk; bring it back or `vctl disk replace` it")
    return volume_info(srv, group, vol, detail=True), b""


def _group_of(srv: VolumeServer, disk: Disk) -> Group:
    group = srv.groups.get(disk.label.dg_name) if disk.label and disk.label.dg_name else None
    if group is None or disk.id not in group.disks:
        raise InvalidArgument(f"disk {disk.name} is in no disk group this server manages")
    return group


def _free_disk(srv: VolumeServer, ref: str) -> Disk:
    disk = resolve_disk(srv, ref)
    if disk.label.dg_id:
        raise InvalidArgument(f"disk {disk.name} already belongs to disk group {disk.label.dg_name}")
    disk.check_writable()
    return disk


async def _adopt_disk(srv: VolumeServer, group: Group, disk: Disk) -> None:
    """Make ``disk`` part of ``group`` on this server before the configuration names
    it: the owner lease (every disk of the group carries it) and the server's
    reservation."""
    own = group.ownership
    if own is None:
        raise ownership.NotOwner(f"disk group {group.name} is not owned by this server")
    await srv.check_owner(group)
    await trio.to_thread.run_sync(ownership.write_all, [disk.fd], own.record())
    group.disks[disk.id] = disk
    await trio.to_thread.run_sync(srv.ensure_reservations, group)


def _record(disk: Disk) -> DiskRecord:
    return DiskRecord(disk.id, disk.name, disk.label.size, disk.label.public_offset)


@op("dg_add_disk")
async def op_dg_add_disk(srv: VolumeServer, sess: Session, req: m.DgAddDiskRequest, payload):
    async with srv.config_lock:
        group = srv.groups.get(req.name)
        if group is None:
            raise InvalidArgument(f"no disk group {req.name}")
        group.check_writable()
        disks = [_free_disk(srv, r) for r in req.disks]
        if len({d.id for d in disks}) != len(disks):
            raise InvalidArgument("a disk is named twice")
        cfg = GroupConfig(id=group.config.id, name=group.name, generation=group.config.generation + 1,
                          disks=group.config.disks + [_record(d) for d in disks],
                          volumes=group.config.volumes)
        cfg.validate()
        for d in disks:
            await _adopt_disk(srv, group, d)
        await trio.to_thread.run_sync(storage.join_disks, group, cfg)
        srv.install_config(group, cfg)
        await srv.save_state()
    log.info("disk group %s: added %s", group.name, ", ".join(d.name for d in disks))
    return group_info(srv, group), b""


@op("disk_replace")
async def op_disk_replace(srv: VolumeServer, sess: Session, req: m.DiskReplaceRequest, payload):
    """Detach the plexes on OLD (every holder stops using them), move their subdisks
    to NEW as syncing plexes, and resync them from the plexes that stayed active."""
    old = resolve_disk(srv, req.old)
    group = _group_of(srv, old)
    new = _free_disk(srv, req.new)
    if new.id == old.id:
        raise InvalidArgument("OLD and NEW are the same disk")
    affected = [v for v in group.config.volumes if old.id in v.disk_ids()]
    need = sum(sd.length for v in affected for sd in v.subdisks() if sd.disk == old.id)
    room = new.label.size - new.label.public_offset
    if need > room:
        raise NoSpace(f"disk {new.name} has {room} bytes for data; the subdisks on {old.name} "
                      f"need {need}")
    for v in affected:
        on_old = _plexes_on(v, old.id)
        if not [p for p in v.plexes_in(ACTIVE) if p not in on_old]:
            raise InvalidArgument(f"volume {group.name}/{v.name} has no active copy off disk "
                                  f"{old.name}: a replacement would lose its data; nothing changed")
    # 1. Nobody reads or writes the plexes on OLD any more (detached in two steps).
    for v in affected:
        key = f"{group.name}/{v.name}"
        async with srv.mirror_locks[key]:
            group, vol = srv.find_volume(key)
            on_old = _plexes_on(vol, old.id)
            live = [p for p in on_old if vol.plex_states[p] != STALE]
            if live:
                vol = await mirrors.set_states(srv, group, vol, live, DETACHING)
            await mirrors.set_states(srv, group, vol, on_old, STALE)
    # 2. Their subdisks move to NEW, as syncing plexes (nobody writes them yet: the
    #    resync updates every holder's map before it copies anything).
    async with srv.config_lock:
        group.check_writable()
        cursor = new.label.public_offset
        volumes = []
        for v in group.config.volumes:
            if old.id not in v.disk_ids():
                volumes.append(v)
                continue
            plexes = []
            for plex in v.plexes:
                cols = []
                for col in plex:
                    sds = []
                    for sd in col:
                        if sd.disk == old.id:
                            sds.append(Subdisk(new.id, cursor, sd.length))
                            cursor += sd.length
                        else:
                            sds.append(sd)
                    cols.append(sds)
                plexes.append(cols)
            states = [SYNCING if p in _plexes_on(v, old.id) else st for p, st in enumerate(v.plex_states)]
            volumes.append(mirrors.volume_with(v, plexes=plexes, plex_states=states, resync_done=0))
        cfg = GroupConfig(id=group.config.id, name=group.name, generation=group.config.generation + 1,
                          disks=[_record(new) if r.id == old.id else r for r in group.config.disks],
                          volumes=volumes)
        cfg.validate()
        await _adopt_disk(srv, group, new)
        for v in volumes:
            if old.id in {sd.disk for sd in v.subdisks()} or new.id in v.disk_ids():
                await mirrors.register_holders(srv, group, v)
        del group.disks[old.id]
        try:
            await srv.check_owner(group)
            await trio.to_thread.run_sync(storage.join_disks, group, cfg)
        except BaseException:
            group.disks[old.id] = old
            del group.disks[new.id]
            raise
        srv.install_config(group, cfg)
        srv.disks.pop(old.id, None)
        old.close()
        await srv.save_state()
    log.warning("disk group %s: disk %s replaced by %s; resyncing %s", group.name, old.name,
                new.name, ", ".join(v.name for v in affected))
    for v in affected:
        _, vol = srv.find_volume(f"{group.name}/{v.name}")
        await mirrors.start_resync(srv, group, vol)
    return group_info(srv, group), b""


@op("disk_evacuate")
async def op_disk_evacuate(srv: VolumeServer, sess: Session, req: m.DiskEvacuateRequest, payload):
    disk = resolve_disk(srv, req.disk)
    group = _group_of(srv, disk)
    keys = [f"{group.name}/{v.name}" for v in group.config.volumes if disk.id in v.disk_ids()]
    busy = [k for k in keys if (r := srv.resyncs.get(k)) is not None and r.running]
    if busy or srv.evacuations.get(disk.id, {}).get("running"):
        raise InvalidArgument(f"disk {disk.name}: {', '.join(busy) or 'an evacuation'} is under way; "
                              "wait for it to end")
    for key in keys:                # fail early when there is clearly no room
        _, vol = srv.find_volume(key)
        for p in mirrors.plexes_on(vol, disk.id):
            allocator.relocate_plex(group.config, vol, p, disk.id)
    srv.start_background(_evacuate, srv, disk, keys)
    srv.evacuations[disk.id] = {"running": True, "volumes": keys, "error": ""}
    return m.DiskEvacuateReply(disk=disk.name, volumes=keys), b""


async def _evacuate(srv: VolumeServer, disk: Disk, keys: list[str]) -> None:
    """One volume after another: each allocation sees the space the last one took."""
    state = srv.evacuations[disk.id]
    try:
        for key in keys:
            await mirrors.evacuate(srv, key, disk.id)
        log.warning("disk %s evacuated: %s", disk.name, ", ".join(keys) or "nothing on it")
    except (FencevolError, OSError) as exc:
        state["error"] = str(exc)
        log.error("evacuation of disk %s stopped: %s", disk.name, exc)
    finally:
        state["running"] = False


def _plexes_on(vol, disk_id: str) -> list[int]:
    return mirrors.plexes_on(vol, disk_id)
