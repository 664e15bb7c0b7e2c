"""Request handlers for disks, disk groups, volumes, attachments and leases, and
remote I/O. Each takes ``(server, session, args, payload)`` and returns ``(result,
payload)``; domain errors travel back as error replies. The table and the role
checks are in vserver.registry; coordinator, fence and reservation handlers in
vserver.fencing_ops."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from fencevol import directio, modes, ondisk
from fencevol.coord import format_key, key_node
from fencevol.errors import (
    AlreadyExists,
    ChecksumError,
    Conflict,
    Fenced,
    FencevolError,
    InUse,
    InvalidArgument,
    NoSpace,
    NotFound,
    ReservationConflict,
    Revoked,
    Unavailable,
)
from fencevol.protocol.messages import (
    AttachReply,
    AttachRequest,
    DetachRequest,
    RenewReply,
    RenewRequest,
    RenewResult,
    RevokeAckRequest,
)
from fencevol.units import format_size, parse_size

from . import allocator, storage
from .delegations import ACTIVE, RESTORED, REVOKED, REVOKING, Delegation
from .model import GroupConfig, Volume
from .membership import check_registration_key
from .registry import arg, op
from .storage import Disk, Group, volume_read, volume_write, write_pr_all

if TYPE_CHECKING:
    from .server import Session, VolumeServer

log = logging.getLogger("vserver")

MAX_IO = 8 << 20
MAX_ATTACH_WAIT = 600.0


# --- descriptions ---------------------------------------------------------------
def _disk_info(srv: VolumeServer, d: Disk) -> dict:
    lab = d.label
    group = srv.groups.get(lab.dg_name) if lab and lab.dg_name else None
    if group is not None and d.id in group.disks:
        free = allocator.free_bytes(allocator.free_map(group.config), d.id)
    else:
        free = max(0, d.size - ondisk.PRIVATE_SIZE)
    problems = list(d.problems)
    used = len(json.dumps(d.pr.to_json(), separators=(",", ":")))
    if used > 0.8 * ondisk.slot_capacity(ondisk.PR):
        problems.append(f"reservation table {100 * used // ondisk.slot_capacity(ondisk.PR)}% full "
                        f"({len(d.pr.registrations)} keys, {len(d.pr.preempted)} preempted)")
    return {"name": d.name, "id": d.id, "path": d.path, "size": d.size,
            "public_size": max(0, d.size - (lab.public_offset if lab else ondisk.PRIVATE_SIZE)),
            "free": free, "group": lab.dg_name if lab else "",
            "state": "error" if problems else "ok", "problems": problems}


def _group_info(srv: VolumeServer, g: Group) -> dict:
    fm = allocator.free_map(g.config)
    probs = g.problems()
    return {"name": g.name, "id": g.config.id, "generation": g.config.generation,
            "disks": [r.name for r in g.config.disks],
            "size": sum(r.size - r.public_offset for r in g.config.disks),
            "free": sum(allocator.free_bytes(fm, d) for d in fm),
            "volumes": len(g.config.volumes),
            "state": "degraded" if probs else "ok", "problems": probs}


def _attachments(srv: VolumeServer, key: str) -> list[dict]:
    now = trio.current_time()
    out = []
    for d in srv.table.on_volume(key):
        out.append({"node": d.node, "mode": d.mode, "state": d.state, "delegation": d.id,
                    "connected": d.connected, "reason": d.reason,
                    "lease_remaining": round(srv.terms.server_expiry(d.granted_at) - now, 3)})
    return sorted(out, key=lambda a: a["node"])


def volume_info(srv: VolumeServer, g: Group, v: Volume, detail: bool = False) -> dict:
    key = f"{g.name}/{v.name}"
    info = {"name": key, "dg": g.name, "volume": v.name, "id": v.id, "size": v.size,
            "layout": v.layout, "columns": v.columns, "mirrors": len(v.plexes),
            "stripe_unit": v.stripe_unit, "kind": v.kind,
            "extents": sum(1 for _ in v.subdisks()),
            "attached": _attachments(srv, key)}
    if v.cluster_id:
        info["cluster_id"] = v.cluster_id
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
        info["plexes"] = plexes
    return info


# --- server and disks -----------------------------------------------------------
@op("status", role="any")
async def op_status(srv: VolumeServer, sess, args, payload):
    now = trio.current_time()
    restored = [d for d in srv.table.by_id.values() if d.state == RESTORED]
    grace_left = srv.table.next_deadline(restored) - now if restored else 0.0
    return {
        "server": {"id": srv.server_id, "listen": srv.listen_address,
                   "state_dir": srv.settings.state_dir, "pid": os.getpid(),
                   "uptime": round(now - srv.started_at, 3),
                   "grace_remaining": round(max(0.0, grace_left), 3),
                   "lease": srv.lease_terms_wire()},
        "disks": [_disk_info(srv, d) for d in srv.disks.values()]
                 + [{"name": "", "id": e["id"], "path": e["path"], "state": "missing",
                     "problems": [e["error"]]} for e in srv.disk_errors],
        "groups": [_group_info(srv, g) for g in srv.groups.values()],
        "attachments": [a | {"volume": d_key} for d_key in sorted({d.volume for d in srv.table.by_id.values()})
                        for a in _attachments(srv, d_key)],
        "nodes": sorted(({"node": s.node, "peer": s.peer, "since": s.connected_at}
                         for s in srv.sessions.values()), key=lambda n: n["node"]),
    }, b""


def _known_disk_by_path(srv: VolumeServer, path: str) -> Disk | None:
    real = os.path.realpath(path)
    for d in srv.disks.values():
        if os.path.realpath(d.path) == real:
            return d
    return None


def _require_abs(path: object) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidArgument(f"disk path must be absolute, got {path!r}")
    return os.path.normpath(path)


@op("disk_init")
async def op_disk_init(srv: VolumeServer, sess, args, payload):
    path = _require_abs(args.get("path"))
    size = args.get("size")
    name = arg(args, "name", str, None)
    force = bool(args.get("force", False))
    async with srv.config_lock:
        created = False
        if size is not None:
            size = parse_size(size, align=1 << 20, what="disk size")
            if size < ondisk.MIN_DISK_SIZE:
                raise InvalidArgument(f"disk size {format_size(size)} is too small "
                                      f"(at least {format_size(ondisk.MIN_DISK_SIZE)})")
            if not os.path.exists(path):
                storage.create_sparse_image(path, size)
                created = True
            elif os.path.isfile(path) and os.path.getsize(path) != size:
                raise InvalidArgument(f"{path} exists with size {format_size(os.path.getsize(path))}; "
                                      "--size only applies when creating an image")
        known = _known_disk_by_path(srv, path)
        disk = known or Disk.open(path)
        try:
            if not known and disk.id in srv.disks:
                raise AlreadyExists(f"{path} holds disk {disk.id}, already known at "
                                    f"{srv.disks[disk.id].path}")
            if disk.label and disk.label.dg_name in srv.groups:
                raise InUse(f"{path} belongs to disk group {disk.label.dg_name}")
            old_id = disk.id
            await trio.to_thread.run_sync(storage.init_disk, disk, name, force)
        except BaseException:
            if not known:
                disk.close()
            if created:
                os.unlink(path)
            raise
        srv.disks.pop(old_id, None)
        srv.disks[disk.id] = disk
        srv.save_state()
    log.info("initialized disk %s (%s) at %s", disk.name, disk.id, path)
    return _disk_info(srv, disk), b""


@op("disk_list")
async def op_disk_list(srv: VolumeServer, sess, args, payload):
    result, _ = await op_status(srv, sess, args, payload)
    return {"disks": result["disks"]}, b""


# --- disk groups ------------------------------------------------------------------
def resolve_disk(srv: VolumeServer, ref: object) -> Disk:
    if not isinstance(ref, str) or not ref:
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
    known = _known_disk_by_path(srv, ref)
    if known:
        return known
    disk = Disk.open(ref)
    if disk.label is None:
        disk.close()
        raise InvalidArgument(f"{ref} is not initialized; run `vctl disk init {ref}`")
    if disk.id in srv.disks:
        disk.close()
        raise AlreadyExists(f"{ref} holds disk {disk.id}, already known at {srv.disks[disk.id].path}")
    srv.disks[disk.id] = disk
    return disk


@op("dg_create")
async def op_dg_create(srv: VolumeServer, sess, args, payload):
    name = arg(args, "name")
    refs = args.get("disks")
    if not isinstance(refs, list) or not refs:
        raise InvalidArgument("dg create needs at least one disk")
    async with srv.config_lock:
        if name in srv.groups:
            raise AlreadyExists(f"disk group {name} already exists")
        before = set(srv.disks)
        try:
            disks = [resolve_disk(srv, r) for r in refs]
            cfg = storage.make_group_config(name, disks)
        except BaseException:
            for extra in set(srv.disks) - before:
                srv.disks.pop(extra).close()
            raise
        group = Group(cfg, {d.id: d for d in disks})
        await trio.to_thread.run_sync(storage.join_disks, group, cfg)
        await trio.to_thread.run_sync(srv.ensure_reservations, group)
        srv.groups[name] = group
        srv.save_state()
    log.info("created disk group %s on %s", name, ", ".join(d.name for d in disks))
    return _group_info(srv, group), b""


@op("dg_list")
async def op_dg_list(srv: VolumeServer, sess, args, payload):
    return {"groups": [_group_info(srv, g) for g in srv.groups.values()]}, b""


@op("dg_import")
async def op_dg_import(srv: VolumeServer, sess, args, payload):
    name = arg(args, "name")
    paths = args.get("paths") or []
    scan = args.get("scan") or []
    if not isinstance(paths, list) or not isinstance(scan, list):
        raise InvalidArgument("paths and scan must be lists")
    async with srv.config_lock:
        if name in srv.groups:
            raise AlreadyExists(f"disk group {name} is already imported")
        candidates = [_require_abs(p) for p in paths]
        if not candidates:
            patterns = list(scan) or list(srv.settings.scan)
            candidates = storage.scan_paths(patterns)
            candidates += [d.path for d in srv.disks.values() if d.path not in candidates]
        found: dict[str, Disk] = {}
        opened: list[Disk] = []
        try:
            for path in candidates:
                disk = _known_disk_by_path(srv, path)
                if disk is None:
                    try:
                        disk = Disk.open(path)
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
        srv.save_state()
    for p in group.problems():
        log.error("disk group %s: %s", name, p)
    log.info("imported disk group %s (generation %d, %d disks)", name, group.config.generation,
             len(group.disks))
    return _group_info(srv, group), b""


@op("dg_repair")
async def op_dg_repair(srv: VolumeServer, sess, args, payload):
    """Rewrite damaged metadata slots of a group from its newest valid configuration."""
    name = arg(args, "name")
    async with srv.config_lock:
        group = srv.groups.get(name)
        if group is None:
            raise NotFound(f"no disk group {name}")
        if group.missing:
            raise InvalidArgument(f"disk group {name} is missing disks; cannot repair")
        cfg = next_config(group.config, group.config.volumes)
        repaired = await trio.to_thread.run_sync(_repair_group, group, cfg)
        srv.install_config(group, cfg)
    log.warning("repaired disk group %s: %s", name, "; ".join(repaired) or "nothing to do")
    return {"repaired": repaired, "group": _group_info(srv, group)}, b""


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


# --- volumes --------------------------------------------------------------------------
def next_config(cfg: GroupConfig, volumes: list[Volume]) -> GroupConfig:
    return GroupConfig(id=cfg.id, name=cfg.name, generation=cfg.generation + 1,
                       disks=cfg.disks, volumes=volumes)


async def commit_config(srv: VolumeServer, group: Group, cfg: GroupConfig) -> None:
    cfg.validate()
    await trio.to_thread.run_sync(storage.write_config, group, cfg)
    srv.install_config(group, cfg)


def _opt_size(args: dict, name: str, align: int, what: str) -> int | None:
    v = args.get(name)
    return None if v is None else parse_size(v, align=align, what=what)


def _opt_int(args: dict, name: str) -> int | None:
    v = args.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"argument {name!r} must be an integer")
    return v


@op("vol_create")
async def op_vol_create(srv: VolumeServer, sess, args, payload):
    dg = arg(args, "dg")
    name = arg(args, "name")
    size = parse_size(args.get("size", ""), what="volume size")
    layout = arg(args, "layout", str, "concat")
    kind = arg(args, "kind", str, "data")
    if kind not in ("data", "coordinator"):
        raise InvalidArgument(f"unknown volume kind {kind!r}")
    async with srv.config_lock:
        group = srv.groups.get(dg)
        if group is None:
            raise NotFound(f"no disk group {dg}")
        group.check_writable()
        vol = allocator.create_volume(
            group.config, name, size, layout, columns=_opt_int(args, "columns"),
            mirrors=_opt_int(args, "mirrors"),
            stripe_unit=_opt_size(args, "stripe_unit", 4096, "stripe unit"),
            max_subdisk=_opt_size(args, "max_subdisk", allocator.ALLOC_UNIT, "subdisk size"),
            kind=kind, cluster_id=arg(args, "cluster_id", str, ""))
        await commit_config(srv, group, next_config(group.config, group.config.volumes + [vol]))
    log.info("created volume %s/%s: %s %s", dg, name, format_size(size), layout)
    return volume_info(srv, group, vol, detail=True), b""


@op("vol_list")
async def op_vol_list(srv: VolumeServer, sess, args, payload):
    dg = arg(args, "dg", str, None)
    if dg is not None and dg not in srv.groups:
        raise NotFound(f"no disk group {dg}")
    return {"volumes": [volume_info(srv, g, v) for g in srv.groups.values()
                        if dg in (None, g.name) for v in g.config.volumes]}, b""


@op("vol_show")
async def op_vol_show(srv: VolumeServer, sess, args, payload):
    group, vol = srv.find_volume(args.get("volume"))
    return volume_info(srv, group, vol, detail=True), b""


@op("vol_remove")
async def op_vol_remove(srv: VolumeServer, sess, args, payload):
    group, vol = srv.find_volume(args.get("volume"))
    key = f"{group.name}/{vol.name}"
    async with srv.vol_locks[key], srv.config_lock:
        group, vol = srv.find_volume(key)
        await srv.expire_now()
        holders = srv.table.on_volume(key)
        if holders:
            raise InUse(f"volume {key} is attached by node(s) "
                        f"{', '.join(str(d.node) for d in holders)}; detach first")
        group.check_writable()
        await commit_config(srv, group, next_config(
            group.config, [v for v in group.config.volumes if v.id != vol.id]))
    log.info("removed volume %s", key)
    return {"removed": key}, b""


@op("vol_resize")
async def op_vol_resize(srv: VolumeServer, sess, args, payload):
    """Grow (live: revoke, change the map, reinstate) or shrink (detached only)."""
    group, vol = srv.find_volume(args.get("volume"))
    key = f"{group.name}/{vol.name}"
    size = parse_size(args.get("size", ""), what="volume size")
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
            sess = srv.sessions.get(d.node)
            if sess is not None:
                await sess.push({"push": "reinstate", "delegation": d.id, "volume": d.volume,
                                 "map": wire_map})
    srv.notify()


# --- registrations -------------------------------------------------------------------
def registered_everywhere(srv: VolumeServer, d: Delegation) -> bool:
    """Is the delegation's key still registered on every disk of its volume?"""
    try:
        group, vol = srv.find_volume(d.volume)
    except FencevolError:
        return False
    return all(d.key in group.disks[i].pr.registrations for i in vol.disk_ids() if i in group.disks)


def keys_in_use(srv: VolumeServer) -> set[int]:
    """Registration keys some delegation still holds."""
    return {d.key for d in srv.table.by_id.values() if d.key}


async def release_keys(srv: VolumeServer, disks: list[Disk], keys: set[int]) -> None:
    """UNREGISTER ``keys`` from ``disks`` where no delegation holds them any more
    (after a detach, a failed attach, or for a node's earlier incarnations): the
    table would otherwise grow with every attach and rejoin until it no longer fits
    its slot."""
    keys = keys - keys_in_use(srv)
    changed = []
    for disk in disks:
        stale = [k for k in keys if k in disk.pr.registrations]
        for k in stale:
            disk.pr.unregister(k)
        if stale:
            changed.append(disk)
    if changed:
        await trio.to_thread.run_sync(write_pr_all, changed)


async def register_key(srv: VolumeServer, group: Group, vol: Volume, key: int, node: int) -> list[Disk]:
    """REGISTER ``key`` on every disk of ``vol``; return the disks it was new on. A
    preempted key is refused, and so is any key on a disk whose reservation table
    is damaged or missing a copy (it may have rolled back past a preemption). The
    node's other keys that no delegation holds (earlier incarnations: restarted,
    rejoined) are unregistered on the way."""
    for i in sorted(vol.disk_ids()):
        disk = group.disks[i]
        if any(s.problem for s in disk.areas[ondisk.PR].slots):
            raise ChecksumError(f"disk {disk.name}: its reservation table is damaged or missing a "
                                "copy, so a fenced node's key might be honoured again; nothing is "
                                f"attached until `vctl dg repair {group.name}` confirms a copy")
    for disk in srv.disks.values():        # fencing is per incarnation, on every disk
        if key in disk.pr.preempted:
            raise ReservationConflict(f"key {format_key(key)} of node {node} was preempted (on disk "
                                      f"{disk.name}); the node must rejoin the cluster for a new key")
    todo = [group.disks[i] for i in sorted(vol.disk_ids()) if key not in group.disks[i].pr.registrations]
    if not todo:
        return []
    now = time.time()
    in_use = keys_in_use(srv)
    for disk in todo:
        disk.pr.register(key, node, now)     # ReservationConflict if tombstoned
        for old in [k for k, v in disk.pr.registrations.items()
                    if v["node"] == node and k != key and k not in in_use]:
            disk.pr.unregister(old)
    await trio.to_thread.run_sync(write_pr_all, todo)
    log.info("node %d registered key %s on %s", node, format_key(key),
             ", ".join(disk.name for disk in todo))
    return todo


# --- attach and delegations ------------------------------------------------------------
def _delegation_reply(srv: VolumeServer, d: Delegation, group: Group, vol: Volume) -> dict:
    wire_map = srv.map_wire(group, vol)
    if vol.kind == "coordinator":      # ¶0050: nodes reach it only through the server
        for disk in wire_map["disks"]:
            disk["path"] = ""
    return AttachReply(
        delegation={"id": d.id, "mode": d.mode, "volume": d.volume, "lease": srv.lease_terms_wire()},
        map=wire_map,
        volume={"name": d.volume, "id": vol.id, "size": vol.size, "layout": vol.layout,
                "kind": vol.kind}).to_wire()


@op("attach", role="node")
async def op_attach(srv: VolumeServer, sess: Session, args, payload):
    """Grant a delegation. Conflicts with a live holder fail at once (or after
    ``wait`` seconds); conflicts with holders that may still be valid but are not
    live (being revoked, disconnected, restored after a restart) are waited out."""
    req = AttachRequest.from_wire(args)
    group, vol = srv.find_volume(req.volume)
    key = f"{group.name}/{vol.name}"
    mode = modes.parse_mode(req.mode)
    if not 0 <= req.wait <= MAX_ATTACH_WAIT:
        raise InvalidArgument(f"wait must be 0-{MAX_ATTACH_WAIT:g} seconds")
    give_up = trio.current_time() + req.wait
    node = sess.node
    pr_key = 0
    if vol.kind == "data":
        pr_key = req.key
        if not 0 < pr_key < (1 << 64):
            raise InvalidArgument("attach of a data volume needs the node's registration key")
        if key_node(pr_key) != node:
            raise InvalidArgument(f"registration key {format_key(pr_key)} is not node {node}'s")
        check_registration_key(srv, node, pr_key)
        fresh = await register_key(srv, group, vol, pr_key, node)
        try:
            return await _grant(srv, sess, group, vol, key, mode, give_up, pr_key)
        except BaseException:
            with trio.CancelScope(shield=True):     # a refused attach leaves no key behind
                await release_keys(srv, fresh, {pr_key})
            raise
    return await _grant(srv, sess, group, vol, key, mode, give_up, pr_key)


async def _grant(srv: VolumeServer, sess: Session, group: Group, vol: Volume, key: str, mode: str,
                 give_up: float, pr_key: int):
    """Attach's second half: wait out conflicting holders that may still be valid,
    then grant (or renew this holder's own delegation)."""
    node = sess.node
    async with srv.vol_locks[key]:
        while True:
            if sess.gone.is_set():         # nobody would get the delegation: stop waiting
                raise Unavailable(f"attach of {key} by node {node}: the client went away")
            group, vol = srv.find_volume(key)
            now = trio.current_time()
            mine = srv.table.held(key, node, pr_key)
            if mine is not None:
                if mine.mode != mode:
                    raise InUse(f"node {node} already holds {key} in mode {mine.mode}; detach first")
                if mine.state in (REVOKING, REVOKED):
                    raise Revoked(f"node {node}'s delegation on {key} is being revoked ({mine.reason})")
                try:
                    srv.table.renew(mine.id, node, now, sess.id)   # idempotent re-attach / reclaim
                    return _delegation_reply(srv, mine, group, vol), b""
                except Revoked:
                    # Its lease ran out and the holder itself asks again: start afresh.
                    srv.table.release(mine.id)
            blockers = srv.table.blockers(key, node, mode, now, pr_key)
            if not blockers:
                break
            live = [b for b in blockers if srv.table.live(b, now)]
            if live and now >= give_up:
                b = live[0]
                raise Conflict(f"{key} is attached {modes.MODE_NAMES[b.mode]} by node {b.node}; "
                               f"{modes.MODE_NAMES[mode]} access conflicts")
            until = srv.table.next_deadline(blockers)
            if live:
                until = min(until, give_up)
            log.info("attach %s %s by node %d waits for %s", key, mode, node,
                     ", ".join(f"node {b.node} ({b.state})" for b in blockers))
            await srv.wait_change(until)
            await srv.expire_now()
        d = srv.table.grant(key, node, mode, now, key=pr_key, session_id=sess.id)
        try:
            await srv.persist_delegations()
        except BaseException:
            srv.table.release(d.id)
            raise
    log.info("node %d attached %s (%s), delegation %s", node, key, mode, d.id)
    return _delegation_reply(srv, d, group, vol), b""


@op("renew", role="node")
async def op_renew(srv: VolumeServer, sess: Session, args, payload):
    ids = RenewRequest.from_wire(args).delegations
    now = trio.current_time()
    results = {}
    for i in ids:
        d = srv.table.by_id.get(i)
        if d is not None and d.node == sess.node and d.key and not registered_everywhere(srv, d):
            results[i] = RenewResult(False, "fenced", Fenced(
                f"node {d.node}'s registration on {d.volume} was preempted").to_wire()).to_wire()
            continue
        try:
            srv.table.renew(i, sess.node, now, sess.id)
            results[i] = RenewResult(True).to_wire()
        except Revoked as exc:
            d = srv.table.by_id.get(i)
            state = "unknown" if d is None or d.node != sess.node else (
                d.state if d.state in ("revoking", "revoked") else "expired")
            results[i] = RenewResult(False, state, exc.to_wire()).to_wire()
    return RenewReply(results, srv.lease_terms_wire()).to_wire(), b""


@op("detach", role="node")
async def op_detach(srv: VolumeServer, sess: Session, args, payload):
    d = srv.table.by_id.get(DetachRequest.from_wire(args).delegation)
    if d is None or d.node != sess.node:
        raise NotFound("no such delegation held by this node")
    srv.table.release(d.id)
    srv.notify()
    await srv.persist_delegations()
    if d.key:
        try:
            group, vol = srv.find_volume(d.volume)
            await release_keys(srv, [group.disks[i] for i in vol.disk_ids() if i in group.disks],
                               {d.key})
        except FencevolError as exc:              # the detach itself is done
            log.warning("node %d detached %s; its key stays registered: %s", d.node, d.volume, exc)
    log.info("node %d detached %s", d.node, d.volume)
    return {"detached": d.volume}, b""


@op("revoke_ack", role="node")
async def op_revoke_ack(srv: VolumeServer, sess: Session, args, payload):
    d = srv.table.acknowledge(RevokeAckRequest.from_wire(args).delegation, sess.node)
    if d is not None:
        log.info("node %d acknowledged revoke of %s (%s)", d.node, d.volume, d.reason)
        srv.notify()
    return {"acknowledged": d is not None}, b""


# --- remote I/O ----------------------------------------------------------------------------
def io_target(srv: VolumeServer, sess: Session, args: dict, write: bool):
    d = srv.table.by_id.get(arg(args, "delegation"))
    now = trio.current_time()
    if d is None or d.node != sess.node:
        raise Revoked("remote I/O without a delegation held by this node")
    if d.state != ACTIVE or now >= srv.terms.server_expiry(d.granted_at):
        raise Revoked(f"delegation on {d.volume} is {d.state if d.state != ACTIVE else 'expired'}")
    if write and not modes.can_write(d.mode):
        raise InvalidArgument(f"{d.volume} is attached read-only")
    group, vol = srv.find_volume(d.volume)
    offset = arg(args, "offset", int)
    if not 0 <= offset <= vol.size:
        raise InvalidArgument(f"offset must be 0-{vol.size} (the size of {d.volume})")
    return group, vol, srv.extent_map(group, vol), offset


def _plexes(emap, args: dict):
    """All plexes, or only ``args["plex"]`` (a client sending the segments it cannot
    reach itself)."""
    p = args.get("plex")
    if p is None:
        return emap.plexes
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(emap.plexes):
        raise InvalidArgument(f"plex must be 0-{len(emap.plexes) - 1}")
    return [emap.plexes[p]]


@op("read", role="node")
async def op_read(srv: VolumeServer, sess: Session, args, payload):
    group, vol, emap, offset = io_target(srv, sess, args, write=False)
    length = arg(args, "length", int)
    if not 0 <= length <= MAX_IO:
        raise InvalidArgument(f"length must be 0-{MAX_IO}")
    length = max(0, min(length, vol.size - offset))
    return {"length": length}, volume_read(group, emap, _plexes(emap, args)[0], offset, length)


@op("write", role="node")
async def op_write(srv: VolumeServer, sess: Session, args, payload):
    group, vol, emap, offset = io_target(srv, sess, args, write=True)
    if vol.kind == "coordinator":
        raise InvalidArgument("coordinator volumes are written with coord_write (compare-and-swap)")
    if offset + len(payload) > vol.size:
        raise NoSpace(f"write past the end of {vol.name} ({vol.size} bytes)")
    d = srv.table.by_id[args["delegation"]]
    for ref in emap.disks:     # the reservation is enforced here, on the server's path
        if not group.disks[ref.id].pr.may_write(d.key):
            raise ReservationConflict(f"disk {ref.name}: node {d.node}'s key "
                                      f"{format_key(d.key)} is not registered (fenced)")
    fds = volume_write(group, emap, _plexes(emap, args), offset, payload)
    if args.get("sync"):
        await trio.to_thread.run_sync(directio.fdatasync_all, fds)
    return {"length": len(payload)}, b""


@op("sync", role="node")
async def op_sync(srv: VolumeServer, sess: Session, args, payload):
    group, vol, emap, _ = io_target(srv, sess, args | {"offset": 0}, write=False)
    await trio.to_thread.run_sync(directio.fdatasync_all, {group.disks[r.id].fd for r in emap.disks})
    return {}, b""


@op("ping", role="any")
async def op_ping(srv, sess, args, payload):
    return {"time": time.time()}, b""


