"""Admin handlers: server status and ping, disks (init, list), disk groups
(create, list, import, repair) and volumes (create, list, show, remove, resize).
Each takes ``(server, session, request, payload)`` and returns ``(reply,
payload)``; domain errors travel back as error replies."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from fencevol import ondisk
from fencevol.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from fencevol.protocol import messages as m
from fencevol.units import format_size, parse_size

from .. import allocator, mirrors, storage
from ..delegations import RESTORED, Delegation
from ..model import GroupConfig, Volume
from ..registry import op
from ..storage import Disk, Group
from .common import (
    all_disk_infos,
    attachments,
    commit_config,
    disk_info,
    group_info,
    known_disk_by_path,
    next_config,
    require_abs,
    resolve_disk,
    resync_info,
    volume_info,
    writable_group,
)

if TYPE_CHECKING:
    from ..server import Session, VolumeServer

log = logging.getLogger("vserver")


# --- server ---------------------------------------------------------------------------------
@op("status", role="any")
async def op_status(srv: VolumeServer, sess: Session, req: m.StatusRequest, payload):
    now = trio.current_time()
    restored = [d for d in srv.table.by_id.values() if d.state == RESTORED]
    grace_left = srv.table.next_deadline(restored) - now if restored else 0.0
    server = m.ServerInfo(id=srv.server_id, listen=srv.listen_address,
                          state_dir=srv.settings.state_dir, pid=os.getpid(),
                          uptime=round(now - srv.started_at, 3),
                          grace_remaining=round(max(0.0, grace_left), 3),
                          lease=srv.lease_terms_wire(), ha=ha_info(srv, now),
                          metrics=srv.metrics_address or None)
    return m.StatusReply(
        server=server, disks=all_disk_infos(srv),
        groups=[group_info(srv, g) for g in srv.groups.values()],
        attachments=[a for key in sorted({d.volume for d in srv.table.by_id.values()})
                     for a in attachments(srv, key, with_volume=True)],
        nodes=sorted((m.NodeSession(node=s.node, peer=s.peer, since=s.connected_at)
                      for s in srv.sessions.values()), key=lambda n: n.node),
        degraded=[{"volume": f"{g.name}/{v.name}", "plex_states": list(v.plex_states),
                   "resync": resync_info(srv, f"{g.name}/{v.name}", v)}
                  for g in srv.groups.values() for v in g.config.volumes
                  if any(st != "active" for st in v.plex_states)]), b""


def ha_info(srv: VolumeServer, now: float) -> dict | None:
    lead = srv.leader
    if lead is None:
        return None
    return {"cluster": lead.settings.cluster, "epoch": lead.epoch,
            "leader_for": round(now - lead.elected_at, 3),
            "certain_for": round(max(0.0, lead.valid_until - now), 3),
            "etcd": list(lead.settings.endpoints), "etcd_calls": lead.client.calls}


@op("ping", role="any")
async def op_ping(srv: VolumeServer, sess: Session, req: m.PingRequest, payload):
    return m.PingReply(time=time.time()), b""


# --- disks ----------------------------------------------------------------------------------
@op("disk_init")
async def op_disk_init(srv: VolumeServer, sess: Session, req: m.DiskInitRequest, payload):
    path = require_abs(req.path)
    async with srv.config_lock:
        created = False
        if req.size is not None:
            size = parse_size(req.size, align=1 << 20, what="disk size")
            if size < ondisk.MIN_DISK_SIZE:
                raise InvalidArgument(f"disk size {format_size(size)} is too small "
                                      f"(at least {format_size(ondisk.MIN_DISK_SIZE)})")
            if not os.path.exists(path):
                storage.create_sparse_image(path, size)     # open + ftruncate: no data written
                created = True
            elif os.path.isfile(path) and os.path.getsize(path) != size:
                raise InvalidArgument(f"{path} exists with size {format_size(os.path.getsize(path))}; "
                                      "--size only applies when creating an image")
        known = known_disk_by_path(srv, path)
        disk = known or Disk.open(path)        # label read on the loop (see vserver.handlers)
        try:
            if not known and disk.id in srv.disks:
                raise AlreadyExists(f"{path} holds disk {disk.id}, already known at "
                                    f"{srv.disks[disk.id].path}")
            if disk.label and disk.label.dg_name in srv.groups:
                raise InUse(f"{path} belongs to disk group {disk.label.dg_name}")
            old_id = disk.id
            await trio.to_thread.run_sync(storage.init_disk, disk, req.name, req.force)
        except BaseException:
            if not known:
                disk.close()
            if created:
                os.unlink(path)
            raise
        srv.disks.pop(old_id, None)
        srv.disks[disk.id] = disk
        await srv.save_state()
    log.info("initialized disk %s (%s) at %s", disk.name, disk.id, path)
    return disk_info(srv, disk), b""


@op("disk_list")
async def op_disk_list(srv: VolumeServer, sess: Session, req: m.DiskListRequest, payload):
    return m.DiskListReply(disks=all_disk_infos(srv)), b""


# --- disk groups ----------------------------------------------------------------------------
@op("dg_create")
async def op_dg_create(srv: VolumeServer, sess: Session, req: m.DgCreateRequest, payload):
    name = req.name
    async with srv.config_lock:
        if name in srv.groups:
            raise AlreadyExists(f"disk group {name} already exists")
        before = set(srv.disks)
        try:
            disks = [resolve_disk(srv, r) for r in req.disks]
            cfg = storage.make_group_config(name, disks)
        except BaseException:
            for extra in set(srv.disks) - before:
                srv.disks.pop(extra).close()
            raise
        group = Group(cfg, {d.id: d for d in disks})
        await srv.claim(group)              # two servers creating a group on one disk
        await trio.to_thread.run_sync(storage.join_disks, group, cfg)
        await trio.to_thread.run_sync(srv.ensure_reservations, group)
        srv.groups[name] = group
        await srv.save_state()
    log.info("created disk group %s on %s", name, ", ".join(d.name for d in disks))
    return group_info(srv, group), b""


@op("dg_list")
async def op_dg_list(srv: VolumeServer, sess: Session, req: m.DgListRequest, payload):
    return m.DgListReply(groups=[group_info(srv, g) for g in srv.groups.values()]), b""


@op("dg_import")
async def op_dg_import(srv: VolumeServer, sess: Session, req: m.DgImportRequest, payload):
    name = req.name
    paths, scan = req.paths or [], req.scan or []
    async with srv.config_lock:
        if name in srv.groups:
            raise AlreadyExists(f"disk group {name} is already imported")
        candidates = [require_abs(p) for p in paths]
        if not candidates:
            patterns = list(scan) or list(srv.settings.scan)
            candidates = storage.scan_paths(patterns)
            candidates += [d.path for d in srv.disks.values() if d.path not in candidates]
        found: dict[str, Disk] = {}
        opened: list[Disk] = []
        try:
            for path in candidates:
                disk = known_disk_by_path(srv, path)
                if disk is None:
                    try:
                        disk = Disk.open(path)     # label read on the loop, per candidate
                    except (NotFound, InvalidArgument):
                        if paths:
                            raise
                        continue
                    opened.append(disk)
                if not (disk.label and disk.label.dg_name == name):
                    if paths:
                        raise InvalidArgument(f"{path} is not a disk of disk group {name}")
                    continue
                if disk.label.size > disk.size:
                    raise InvalidArgument(f"{path}: {disk.truncation()}; not imported")
                if disk.id in found:
                    raise InvalidArgument(f"disk {disk.id} found twice ({found[disk.id].path} and "
                                          f"{path}); is one a copy?")
                found[disk.id] = disk
            if not found:
                where = ", ".join(paths or scan or srv.settings.scan) or "known disks"
                raise NotFound(f"no disk of disk group {name} found (looked at {where}); "
                               "give disk paths or --scan patterns")
            group = storage.group_from_disks(name, list(found.values()))
            if group.missing:
                raise NotFound(f"disk group {name} is incomplete: missing {', '.join(group.missing)}")
            await srv.claim(group)          # refused while another server manages it
        except BaseException:
            for d in opened:
                d.close()
            raise
        for d in opened:
            if d.id in found:
                srv.disks[d.id] = d
            else:
                d.close()
        await trio.to_thread.run_sync(srv.ensure_reservations, group)
        srv.groups[name] = group
        srv.group_errors.pop(name, None)
        await srv.save_state()
    for p in group.problems():
        log.error("disk group %s: %s", name, p)
    log.info("imported disk group %s (generation %d, %d disks)", name, group.config.generation,
             len(group.disks))
    return group_info(srv, group), b""


@op("dg_repair")
async def op_dg_repair(srv: VolumeServer, sess: Session, req: m.DgRepairRequest, payload):
    """Rewrite damaged metadata slots of a group from its newest valid configuration."""
    name = req.name
    async with srv.config_lock:
        group = srv.groups.get(name)
        if group is None:
            raise NotFound(f"no disk group {name}")
        if group.missing:
            raise InvalidArgument(f"disk group {name} is missing disks; cannot repair")
        await srv.check_owner(group)
        back = await mirrors.reopen_failed(srv, group)
        cfg = next_config(group.config, group.config.volumes)
        repaired = [f"disk {b} is back" for b in back]
        repaired += await trio.to_thread.run_sync(_repair_group, group, cfg)
        srv.install_config(group, cfg)
    log.warning("repaired disk group %s: %s", name, "; ".join(repaired) or "nothing to do")
    await mirrors.resume_all(srv, group)        # stale plexes whose disks work: resync
    return m.DgRepairReply(repaired=repaired, group=group_info(srv, group)), b""


def _repair_group(group: Group, cfg: GroupConfig) -> list[str]:
    """Rewrite every damaged or missing copy from the newest valid one, saying which
    generation each area keeps -- a copy that went missing may have been newer."""
    repaired = []
    missing_config = [d for d in group.disks.values()
                      if any(s.problem == ondisk.MISSING_COPY for s in d.areas[ondisk.CONFIG].slots)]
    if missing_config and len(missing_config) == len(group.disks):
        repaired.append(f"configuration: a copy is missing on every disk; the group falls back "
                        f"to generation {cfg.generation - 1} (anything a later generation held -- "
                        "volumes created, resized or removed -- is lost)")
    for disk in group.disks.values():
        label = disk.label          # with a membership recovered from the configuration copy
        pr = disk.pr                # this server's table: newer than any copy it could not write
        for kind, area in list(disk.areas.items()):
            bad = [st for st in area.slots if st.problem]
            if not bad:
                continue
            for st in bad:
                if st.problem != ondisk.MISSING_COPY:
                    ondisk.clear_slot(disk.fd, kind, st.slot)
            os.fdatasync(disk.fd)
            kept = ondisk.read_area(disk.fd, kind)
            what = f"{disk.name}: {ondisk.KIND_NAMES[kind]} slot {'AB'[bad[0].slot]} ({bad[0].problem})"
            if kept.best is not None:
                ondisk.restore_copy(disk.fd, kept)
                what += f": rewritten from generation {kept.best.generation}"
                if kind == ondisk.PR:
                    what += (" -- registrations and preemptions made after it are lost: fence "
                             "again any node fenced since")
            repaired.append(what)
        disk.reload()
        if label is not None:
            disk.write_label(label)
        if pr.to_json() != disk.pr.to_json():
            disk.pr = pr            # e.g. a preemption a fence could not persist before
            disk.write_pr()
    storage.write_config(group, cfg)
    return repaired


# --- volumes --------------------------------------------------------------------------------
def _opt_size(v: int | str | None, align: int, what: str) -> int | None:
    return None if v is None else parse_size(v, align=align, what=what)


@op("vol_create")
async def op_vol_create(srv: VolumeServer, sess: Session, req: m.VolCreateRequest, payload):
    size = parse_size(req.size, what="volume size")
    async with srv.config_lock:
        group = writable_group(srv, req.dg)
        vol = allocator.create_volume(
            group.config, req.name, size, req.layout, columns=req.columns, mirrors=req.mirrors,
            stripe_unit=_opt_size(req.stripe_unit, 4096, "stripe unit"),
            max_subdisk=_opt_size(req.max_subdisk, allocator.ALLOC_UNIT, "subdisk size"),
            kind=req.kind, cluster_id=req.cluster_id)
        await commit_config(srv, group, next_config(group.config, group.config.volumes + [vol]))
    log.info("created volume %s/%s: %s %s", req.dg, req.name, format_size(size), req.layout)
    return volume_info(srv, group, vol, detail=True), b""


@op("vol_list")
async def op_vol_list(srv: VolumeServer, sess: Session, req: m.VolListRequest, payload):
    if req.dg is not None and req.dg not in srv.groups:
        raise NotFound(f"no disk group {req.dg}")
    return m.VolListReply(volumes=[volume_info(srv, g, v) for g in srv.groups.values()
                                   if req.dg in (None, g.name) for v in g.config.volumes]), b""


@op("vol_show")
async def op_vol_show(srv: VolumeServer, sess: Session, req: m.VolShowRequest, payload):
    group, vol = srv.find_volume(req.volume)
    return volume_info(srv, group, vol, detail=True), b""


@op("vol_remove")
async def op_vol_remove(srv: VolumeServer, sess: Session, req: m.VolRemoveRequest, payload):
    group, vol = srv.find_volume(req.volume)
    key = f"{group.name}/{vol.name}"
    async with srv.vol_locks[key], srv.config_lock:
        group, vol = srv.find_volume(key)
        await srv.expire_now()
        holders = srv.table.on_volume(key)
        if holders:
            raise InUse(f"volume {key} is attached by node(s) "
                        f"{', '.join(str(d.node) for d in holders)}; detach first")
        run = srv.resyncs.get(key)
        if run is not None and run.running:
            raise InUse(f"volume {key} is being resynchronized ({run.describe()['percent']}%); "
                        "wait for it to end")
        group.check_writable()
        await commit_config(srv, group, next_config(
            group.config, [v for v in group.config.volumes if v.id != vol.id]))
    log.info("removed volume %s", key)
    return m.VolRemoveReply(removed=key), b""


@op("vol_resize")
async def op_vol_resize(srv: VolumeServer, sess: Session, req: m.VolResizeRequest, payload):
    """Grow (live: revoke, change the map, reinstate) or shrink (detached only)."""
    group, vol = srv.find_volume(req.volume)
    key = f"{group.name}/{vol.name}"
    size = parse_size(req.size, what="volume size")
    async with srv.vol_locks[key]:
        group, vol = srv.find_volume(key)
        await srv.expire_now()
        holders = srv.table.on_volume(key)
        if size < vol.size and holders:
            raise InUse(f"cannot shrink {key} while attached by node(s) "
                        f"{', '.join(str(d.node) for d in holders)}")
        if size == vol.size:
            return volume_info(srv, group, vol, detail=True), b""
        group.check_writable()
        new_vol = allocator.resize_volume(group.config, vol, size)  # NoSpace: nothing changed
        await mirrors.register_holders(srv, group, new_vol)       # new disks: their keys too
        await srv.revoke(holders, "reconfigure")
        try:
            async with srv.config_lock:
                cfg = next_config(group.config,
                                  [new_vol if v.id == vol.id else v for v in group.config.volumes])
                await commit_config(srv, group, cfg)
        finally:
            _, current = srv.find_volume(key)
            await _reinstate(srv, group, current, holders)
    log.info("resized volume %s from %s to %s", key, format_size(vol.size), format_size(size))
    return volume_info(srv, group, new_vol, detail=True), b""


async def _reinstate(srv: VolumeServer, group: Group, vol: Volume, delegs: list[Delegation]) -> None:
    now = trio.current_time()
    wire_map = srv.map_wire(group, vol)
    for d in delegs:
        if srv.table.by_id.get(d.id) is d and d.state == "revoked" and d.reason == "reconfigure":
            srv.table.reinstate(d, now)
            d.map_gen = max(d.map_gen, group.config.generation)
            sess = srv.sessions.get(d.node)
            if sess is not None:
                await sess.push(m.ReinstatePush(delegation=d.id, volume=d.volume, map=wire_map))
    srv.notify()
