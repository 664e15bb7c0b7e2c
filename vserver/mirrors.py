"""Mirror plexes after a fault: detach, map updates every holder acknowledges, and
resync (docs/MIRRORS.md has the argument).

* **Detach.** A node whose write failed on some plexes but reached an active one
  asks (``plex_detach``) before it acknowledges the write: the plexes become
  ``stale`` in the group configuration (written to every disk still working), and
  every other holder installs the new map before the node gets its answer. From
  then on nobody reads a stale plex, so no node can read data older than a write
  that was acknowledged.
* **Map updates** (``update_maps``). The server pushes the map and waits until each
  holder acknowledged it -- a node acknowledges once no write under an older map is
  in flight -- or can no longer be valid. A holder that has not acknowledged is
  not renewed (``op_renew``): it attaches again and gets the new map, so a frozen
  node cannot resume writing under an old map.
* **Resync.** Stale plexes whose disks work become ``syncing``: once every holder
  writes them (a map update), a task copies the volume from an active plex, chunk
  by chunk, checkpointing its position in the configuration, and makes them
  ``active`` at the end. While a plex syncs, nodes write the active plexes first and
  the syncing ones after those completed; the copy re-reads the source after
  writing a chunk and copies again if it changed. So any node write either is in
  the source the copy read, or changes the source after the read (copied again),
  or reaches the syncing plex after the copy's write of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from fencevol import directio
from fencevol.errors import FencevolError, IOFailure, NotFound
from fencevol.protocol import messages as m

from . import allocator, storage
from .model import ACTIVE, DETACHING, STALE, SYNCING, GroupConfig, Volume
from .storage import Disk, Group

if TYPE_CHECKING:
    from .delegations import Delegation
    from .server import VolumeServer

log = logging.getLogger("vserver.mirrors")

CHUNK = 1 << 20                 # bytes copied per step
CHECKPOINT_SECONDS = 2.0        # how often the position is written to the configuration
MAX_COPIES = 16                 # a chunk written this often while its source kept changing: pause


@dataclass
class Resync:
    """A running (or failed) resync of one volume, for status output."""
    volume: str
    size: int
    done: int
    started: float = 0.0        # wall clock
    copied: int = 0             # bytes copied by this run
    error: str = ""
    running: bool = True
    restart: bool = False       # plexes joined: update every holder's map, copy from 0
    finished: trio.Event = field(default_factory=trio.Event)

    def describe(self) -> dict:
        elapsed = max(time.time() - self.started, 1e-6)
        return {"done": self.done, "size": self.size,
                "percent": round(100.0 * self.done / self.size, 1) if self.size else 100.0,
                "rate": int(self.copied / elapsed), "running": self.running, "error": self.error}


def volume_with(vol: Volume, **changes) -> Volume:
    changes.setdefault("plex_states", list(vol.plex_states))
    return dataclasses.replace(vol, **changes)


def next_config(cfg: GroupConfig, vol: Volume, new: Volume) -> GroupConfig:
    return GroupConfig(id=cfg.id, name=cfg.name, generation=cfg.generation + 1, disks=cfg.disks,
                       volumes=[new if v.id == vol.id else v for v in cfg.volumes])


async def commit(srv: VolumeServer, group: Group, cfg: GroupConfig) -> None:
    async with srv.config_lock:
        cfg.validate()
        await srv.check_owner(group)
        await trio.to_thread.run_sync(storage.write_config, group, cfg)
        srv.install_config(group, cfg)


# -- map updates --------------------------------------------------------------------------------
def node_map(srv: VolumeServer, group: Group, vol: Volume) -> dict:
    wire = srv.map_wire(group, vol)
    if vol.kind == "coordinator":      # nodes reach it only through the server
        for disk in wire["disks"]:
            disk["path"] = ""
    return wire


async def update_maps(srv: VolumeServer, group: Group, vol: Volume, skip: str = "") -> None:
    """Push ``vol``'s map to every holder but ``skip`` and wait until each
    acknowledged it or can no longer be valid."""
    key = f"{group.name}/{vol.name}"
    gen = group.config.generation
    wire = node_map(srv, group, vol)
    delegs = [d for d in srv.table.on_volume(key) if d.id != skip and d.map_gen < gen]
    for d in delegs:
        d.map_want = max(d.map_want, gen)
        sess = srv.sessions.get(d.node)
        if sess is not None and d.connected:
            await sess.push(m.MapPush(delegation=d.id, volume=key, map=wire))
    while True:
        now = trio.current_time()
        pending = [d for d in delegs if srv.table.by_id.get(d.id) is d and d.map_gen < gen
                   and srv.table.may_be_valid(d, now)]
        if not pending:
            return
        await srv.wait_change(srv.table.next_deadline(pending))
        await srv.expire_now()


def acknowledge_map(srv: VolumeServer, d: Delegation, generation: int) -> None:
    if generation > d.map_gen:
        d.map_gen = generation
        srv.notify()


# -- detach -------------------------------------------------------------------------------------
async def detach_plexes(srv: VolumeServer, d: Delegation, plexes: list[int], reason: str) -> dict:
    """Detach ``plexes`` of ``d``'s volume in two steps, each installed by every
    other holder before the next: ``detaching`` (still written, no longer read),
    then ``stale``. Between the steps a holder that has not installed the first
    map may read the plex, but every write acknowledged so far is on it: the only
    writes missing there are the ones waiting for this detach. Return the map.
    IOFailure if no plex would stay active."""
    async with srv.mirror_locks[d.volume]:
        group, vol = srv.find_volume(d.volume)
        if any(not 0 <= p < len(vol.plexes) for p in plexes):
            raise IOFailure(f"{d.volume} has no plex {plexes}")
        todo = [p for p in plexes if vol.plex_states[p] != STALE]
        if todo:
            if ACTIVE not in [DETACHING if p in todo else st for p, st in enumerate(vol.plex_states)]:
                raise IOFailure(f"{d.volume}: plex(es) {', '.join(map(str, todo))} cannot be "
                                "detached: no other plex is active")
            vol = await set_states(srv, group, vol, todo, DETACHING, skip=d.id)
            vol = await set_states(srv, group, vol, todo, STALE, skip=d.id)
            srv.counters["plex_detaches"] += 1
            log.error("%s: plex(es) %s detached (stale) after a failed write on node %d: %s",
                      d.volume, ", ".join(map(str, todo)), d.node, reason)
        else:
            await update_maps(srv, group, vol, skip=d.id)
        group, vol = srv.find_volume(d.volume)
        d.map_gen = max(d.map_gen, group.config.generation)
        return node_map(srv, group, vol)


async def set_states(srv: VolumeServer, group: Group, vol: Volume, plexes: list[int], state: str,
                      skip: str = "") -> Volume:
    """Commit ``plexes`` in ``state`` (a no-op where they are) and have every holder
    but ``skip`` install the map. The caller holds the volume's mirror lock."""
    key = f"{group.name}/{vol.name}"
    group, vol = srv.find_volume(key)
    states = [state if p in plexes else st for p, st in enumerate(vol.plex_states)]
    if states != vol.plex_states:
        new = volume_with(vol, plex_states=states,
                          resync_done=vol.resync_done if SYNCING in states else 0)
        await commit(srv, group, next_config(group.config, vol, new))
        vol = new
    await update_maps(srv, group, vol, skip=skip)
    return vol


async def finish_detaches(srv: VolumeServer, group: Group) -> None:
    """At start: a detach the last server did not finish (plexes left
    ``detaching``) goes on from its first step."""
    for vol in list(group.config.volumes):
        todo = vol.plexes_in(DETACHING)
        if todo:
            key = f"{group.name}/{vol.name}"
            async with srv.mirror_locks[key]:
                group, vol = srv.find_volume(key)
                vol = await set_states(srv, group, vol, todo, DETACHING)
                await set_states(srv, group, vol, todo, STALE)
            log.warning("%s: the detach of plex(es) %s finished", key, ", ".join(map(str, todo)))


async def detach_on_server(srv: VolumeServer, group: Group, vol: Volume, plexes: list[int],
                           reason: str) -> None:
    """The server's own write (a coordinator block) failed on ``plexes``: mark them
    stale. Coordinator volumes are read and written through the server only, so no
    holder's map needs to change first; they get it pushed all the same."""
    key = f"{group.name}/{vol.name}"
    async with srv.mirror_locks[key]:
        group, vol = srv.find_volume(key)
        states = [STALE if p in plexes else st for p, st in enumerate(vol.plex_states)]
        if states == vol.plex_states:
            return
        if ACTIVE not in states:
            raise IOFailure(f"{key}: no plex would stay active")
        new = volume_with(vol, plex_states=states,
                          resync_done=vol.resync_done if SYNCING in states else 0)
        await commit(srv, group, next_config(group.config, vol, new))
        srv.counters["plex_detaches"] += 1
        log.error("%s: plex(es) %s detached (stale) after the server's write failed: %s", key,
                  ", ".join(map(str, plexes)), reason)
    for d in srv.table.on_volume(key):
        sess = srv.sessions.get(d.node)
        if sess is not None and d.connected:
            await sess.push(m.MapPush(delegation=d.id, volume=key, map=node_map(srv, group, new)))


async def register_holders(srv: VolumeServer, group: Group, vol: Volume) -> None:
    """Before a configuration puts ``vol`` on more disks (a resize, a replacement, an
    evacuation): register every holder's key on the disks that lack it, so their
    renewals do not find it missing there (which reads as a fence)."""
    key = f"{group.name}/{vol.name}"
    now = time.time()
    changed: dict[str, Disk] = {}
    for d in srv.table.on_volume(key):
        if not d.key:
            continue
        for disk_id in vol.disk_ids():
            disk = group.disks.get(disk_id)
            if disk is None or disk.failed or d.key in disk.pr.registrations:
                continue
            disk.pr.register(d.key, d.node, now)     # ReservationConflict if tombstoned
            changed[disk.id] = disk
    if changed:
        await srv.check_owner(group)
        await trio.to_thread.run_sync(storage.write_pr_all, list(changed.values()))


# -- disks coming back ----------------------------------------------------------------------------
def reopen_disk(disk: Disk) -> bool:
    """Open a failed disk's path again; on success put the new file behind the old
    descriptor number (nothing holding the number reaches a wrong file) and
    re-read its metadata. Blocking."""
    try:
        fresh = Disk.open(disk.path)
    except (FencevolError, OSError) as exc:
        log.warning("disk %s (%s) is still unusable: %s", disk.name, disk.path, exc)
        return False
    try:
        if fresh.id != disk.id:
            log.warning("disk %s: %s now holds disk %s; not reopened", disk.name, disk.path,
                        fresh.id or "without a label")
            return False
        os.dup2(fresh.fd, disk.fd)
    finally:
        fresh.close()
    table = disk.pr                 # this server's, kept up to date while the disk was dead
    disk.reload()
    if table.to_json() != disk.pr.to_json():
        disk.pr = table             # registrations and fences made meanwhile
        try:
            disk.write_pr()
        except OSError as exc:
            log.warning("disk %s failed again: %s", disk.name, exc)
            return False
    disk.failed = ""
    log.warning("disk %s (%s) is back", disk.name, disk.path)
    return True


async def reopen_failed(srv: VolumeServer, group: Group) -> list[str]:
    """Reopen the group's failed disks that came back. Reopening writes this
    server's reservation table to the disk: only while the group is still ours."""
    if not group.failed:
        return []
    await srv.check_owner(group)
    back = []
    for disk_id, disk in list(group.disks.items()):
        if disk.failed and await trio.to_thread.run_sync(reopen_disk, disk):
            back.append(disk.name)
    return back


# -- resync -------------------------------------------------------------------------------------
def syncable(group: Group, vol: Volume, p: int) -> bool:
    return all(sd.disk in group.disks and not group.disks[sd.disk].failed
               for col in vol.plexes[p] for sd in col)


async def start_resync(srv: VolumeServer, group: Group, vol: Volume) -> Volume:
    """Make the stale plexes of ``vol`` whose disks work ``syncing`` and start (or
    resume) the copy. Returns the volume as configured now."""
    key = f"{group.name}/{vol.name}"
    async with srv.mirror_locks[key]:
        group, vol = srv.find_volume(key)
        stale = [p for p in vol.plexes_in(STALE) if syncable(group, vol, p)]
        if stale:
            states = list(vol.plex_states)
            for p in stale:
                states[p] = SYNCING
            new = volume_with(vol, plex_states=states, resync_done=0)
            await commit(srv, group, next_config(group.config, vol, new))
            log.warning("%s: resync of plex(es) %s starts", key, ", ".join(map(str, stale)))
            vol = new
        if not vol.plexes_in(SYNCING):
            return vol
        running = srv.resyncs.get(key)
        if running is not None and running.running and stale:
            running.restart = True      # a plex joined: the copy updates the maps, starts over
        if running is None or not running.running:
            srv.start_background(_resync_task, srv, key)      # runs once this returns
            srv.resyncs[key] = Resync(key, vol.size, vol.resync_done, time.time())
        return vol


async def resume_all(srv: VolumeServer, group: Group) -> None:
    """At start, after a repair or a disk came back: finish detaches, then resync
    every volume of the group that has syncing plexes, or stale ones whose disks
    work."""
    try:
        await finish_detaches(srv, group)
    except FencevolError as exc:
        log.error("disk group %s: detaches not finished: %s", group.name, exc)
    for vol in list(group.config.volumes):
        if vol.plexes_in(SYNCING) or any(syncable(group, vol, p) for p in vol.plexes_in(STALE)):
            try:
                await start_resync(srv, group, vol)
            except FencevolError as exc:
                log.error("%s/%s: resync not started: %s", group.name, vol.name, exc)


async def _resync_task(srv: VolumeServer, key: str) -> None:
    state = srv.resyncs[key]
    try:
        await _resync(srv, key, state)
    except (FencevolError, OSError) as exc:
        state.error = str(exc)
        log.error("%s: resync stopped at %d of %d bytes: %s", key, state.done, state.size, exc)
    finally:
        state.running = False
        state.finished.set()


async def _resync(srv: VolumeServer, key: str, state: Resync) -> None:
    group, vol = srv.find_volume(key)
    # Every holder must write the syncing plexes before anything is copied (also
    # after a restart: an update may have been under way when the server stopped).
    await update_maps(srv, group, vol)
    rate = srv.settings.resync_rate
    checkpoint = trio.current_time()
    t0, copied0 = trio.current_time(), 0
    while True:
        try:
            group, vol = srv.find_volume(key)
        except NotFound:
            return                       # removed meanwhile
        targets = vol.plexes_in(SYNCING)
        if not targets:
            return                       # detached meanwhile
        if state.restart:
            state.restart = False
            state.done = 0
            await update_maps(srv, group, vol)
            continue
        if state.done >= vol.size:
            break
        if not srv.owner_is_fresh(group):
            await srv.check_owner(group)     # NotOwner: another server runs it now
        emap = srv.extent_map(group, vol)
        source = vol.plexes_in(ACTIVE)[0]
        n = min(CHUNK, vol.size - state.done)
        failed = await trio.to_thread.run_sync(_copy_chunk, group, emap, source, targets,
                                               state.done, n)
        if failed:
            await _detach_targets(srv, key, failed)
            continue
        state.done += n
        state.copied += n
        now = trio.current_time()
        if now - checkpoint >= CHECKPOINT_SECONDS:
            await _checkpoint(srv, key, state.done)
            checkpoint = now
        if rate:
            ahead = t0 + (state.copied - copied0) / rate - trio.current_time()
            if ahead > 0:
                await trio.sleep(ahead)
    async with srv.mirror_locks[key]:
        group, vol = srv.find_volume(key)
        await trio.to_thread.run_sync(fdatasync_targets, group, srv.extent_map(group, vol),
                                      vol.plexes_in(SYNCING))
        states = [ACTIVE if st == SYNCING else st for st in vol.plex_states]
        new = volume_with(vol, plex_states=states, resync_done=0)
        await commit(srv, group, next_config(group.config, vol, new))
        log.warning("%s: resync complete (%d bytes); plex(es) %s active", key, vol.size,
                    ", ".join(map(str, vol.plexes_in(SYNCING))))
        await update_maps(srv, group, new)


async def _checkpoint(srv: VolumeServer, key: str, done: int) -> None:
    """Record the position, once what was copied before it is on the disks."""
    async with srv.mirror_locks[key]:
        group, vol = srv.find_volume(key)
        if vol.plexes_in(SYNCING):
            await trio.to_thread.run_sync(fdatasync_targets, group, srv.extent_map(group, vol),
                                          vol.plexes_in(SYNCING))
            await commit(srv, group, next_config(group.config, vol, volume_with(vol, resync_done=done)))


async def _detach_targets(srv: VolumeServer, key: str, plexes: list[int]) -> None:
    async with srv.mirror_locks[key]:
        group, vol = srv.find_volume(key)
        states = [STALE if p in plexes else st for p, st in enumerate(vol.plex_states)]
        new = volume_with(vol, plex_states=states, resync_done=0)
        await commit(srv, group, next_config(group.config, vol, new))
        log.error("%s: resync could not write plex(es) %s; detached again", key,
                  ", ".join(map(str, plexes)))
        await update_maps(srv, group, new)


def _copy_chunk(group: Group, emap, source: int, targets: list[int], off: int, n: int) -> list[int]:
    """Copy ``[off, off + n)`` from plex ``source`` to ``targets`` until the source
    reads the same after the copy as before it; return the targets that failed.
    IOFailure if the source cannot be read. Blocking."""
    for attempt in range(MAX_COPIES):
        data = _read(group, emap, source, off, n)
        failed = []
        for p in targets:
            try:
                _write(group, emap, p, off, data)
            except OSError as exc:
                failed.append(p)
                for disk, _, _, _ in emap.plexes[p].segments(off, n):
                    group.disks[emap.disks[disk].id].fail(exc)
        if failed:
            return failed
        if _read(group, emap, source, off, n) == data:
            return []
        time.sleep(0.001 * (attempt + 1))    # the source is being written: let it settle
    raise IOFailure(f"offset {off}: the source plex kept changing during {MAX_COPIES} copies")


def _read(group: Group, emap, plex: int, off: int, n: int) -> bytes:
    try:
        return storage.volume_read(group, emap, emap.plexes[plex], off, n)
    except OSError as exc:
        raise IOFailure(f"cannot read source plex {plex}: {exc}") from None


def _write(group: Group, emap, plex: int, off: int, data: bytes) -> None:
    view = memoryview(data)
    for disk, doff, boff, ln in emap.plexes[plex].segments(off, len(data)):
        d = group.disks[emap.disks[disk].id]
        directio.write_range(d.fd, doff, view[boff:boff + ln], d.block)


def fdatasync_targets(group: Group, emap, targets: list[int]) -> None:
    for p in targets:
        for col in emap.plexes[p].columns:
            for disk in col.disks:
                os.fdatasync(group.disks[emap.disks[disk].id].fd)


# -- draining a disk ------------------------------------------------------------------------------
def plexes_on(vol: Volume, disk_id: str) -> list[int]:
    return [p for p, plex in enumerate(vol.plexes) if any(sd.disk == disk_id for col in plex for sd in col)]


async def evacuate(srv: VolumeServer, key: str, disk_id: str) -> None:
    """Move every subdisk of ``key`` off ``disk_id`` without losing a copy on the
    way (LVM's pvmove, through a temporary mirror), one plex at a time:

    1. the plex's copy, relocated (allocator.relocate_plex), is added as a syncing
       plex and resynced;
    2. the old plex is detached (detaching, then stale): every holder stops using it;
    3. it takes the new copy's place (same disk addresses, active) and the
       temporary plex goes. A holder still on step 2's map writes the temporary
       plex: the same disk addresses, so nothing diverges; after its
       acknowledgement the old space is free."""
    while True:
        group, vol = srv.find_volume(key)
        todo = plexes_on(vol, disk_id)
        if not todo:
            return
        p = todo[0]
        async with srv.mirror_locks[key]:
            group, vol = srv.find_volume(key)
            new_plex = allocator.relocate_plex(group.config, vol, p, disk_id)
            n = len(vol.plexes)
            new = volume_with(vol, plexes=vol.plexes + [new_plex],
                              plex_states=vol.plex_states + [SYNCING], resync_done=0)
            await register_holders(srv, group, new)
            await commit(srv, group, next_config(group.config, vol, new))
            log.warning("%s: evacuating plex %d off disk %s through temporary plex %d", key, p,
                        group.disks[disk_id].name if disk_id in group.disks else disk_id, n)
        vol = await start_resync(srv, group, new)
        run = srv.resyncs.get(key)
        if run is not None:
            await run.finished.wait()
        group, vol = srv.find_volume(key)
        if len(vol.plexes) <= n or vol.plex_states[n] != ACTIVE:
            raise IOFailure(f"{key}: the copy off the disk did not complete"
                            + (f" ({run.error})" if run and run.error else ""))
        async with srv.mirror_locks[key]:
            group, vol = srv.find_volume(key)
            if vol.plex_states[p] != STALE:
                vol = await set_states(srv, group, vol, [p], DETACHING)
            await set_states(srv, group, vol, [p], STALE)
            group, vol = srv.find_volume(key)
            plexes = [vol.plexes[n] if q == p else pl for q, pl in enumerate(vol.plexes[:n])]
            states = [ACTIVE if q == p else st for q, st in enumerate(vol.plex_states[:n])]
            moved = volume_with(vol, plexes=plexes, plex_states=states)
            await commit(srv, group, next_config(group.config, vol, moved))
            await update_maps(srv, group, moved)
        log.warning("%s: plex %d moved off the disk", key, p)
