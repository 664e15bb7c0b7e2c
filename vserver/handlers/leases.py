"""Lease handlers (patent Figures 5-6): attach grants a delegation and registers
the node's key on the volume's disks, renew extends it (refused once the key was
preempted: S3), detach and revoke_ack give it back. Registration-key bookkeeping
lives here too: keys are registered on attach and released when no delegation
holds them."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from fencevol import modes, ondisk
from fencevol.coord import format_key, key_node
from fencevol.errors import (
    ChecksumError,
    Conflict,
    Fenced,
    FencevolError,
    InUse,
    InvalidArgument,
    NotFound,
    ReservationConflict,
    Revoked,
    Unavailable,
)
from fencevol.protocol import messages as m

from ..delegations import REVOKED, REVOKING, Delegation
from ..membership import check_registration_key
from ..model import Volume
from ..ownership import NotOwner
from ..registry import op
from ..mirrors import node_map
from ..storage import Disk, Group, write_pr_all

if TYPE_CHECKING:
    from ..server import Session, VolumeServer

log = logging.getLogger("vserver")

MAX_ATTACH_WAIT = 600.0


# --- registrations -------------------------------------------------------------------------
def registered_everywhere(srv: VolumeServer, d: Delegation) -> bool:
    """Is the delegation's key still registered on every disk of its volume?"""
    try:
        group, vol = srv.find_volume(d.volume)
    except FencevolError:
        return False
    return all(d.key in group.disks[i].pr.registrations for i in vol.disk_ids()
               if i in group.disks and not group.disks[i].failed)


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
        try:
            await srv.check_disk_owner(disk)
        except NotOwner as exc:
            log.warning("keys stay registered on disk %s: %s", disk.name, exc)
            continue
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
    todo = [group.disks[i] for i in sorted(vol.disk_ids())
            if key not in group.disks[i].pr.registrations and not group.disks[i].failed]
    if not todo:
        return []
    await srv.check_owner(group)
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


# --- attach and delegations -----------------------------------------------------------------
def _delegation_reply(srv: VolumeServer, d: Delegation, group: Group, vol: Volume) -> m.AttachReply:
    wire_map = node_map(srv, group, vol)   # ¶0050: coordinator volumes only through the server
    d.map_gen = max(d.map_gen, group.config.generation)
    return m.AttachReply(
        delegation={"id": d.id, "mode": d.mode, "volume": d.volume, "lease": srv.lease_terms_wire()},
        map=wire_map,
        volume={"name": d.volume, "id": vol.id, "size": vol.size, "layout": vol.layout,
                "kind": vol.kind})


@op("attach", role="node")
async def op_attach(srv: VolumeServer, sess: Session, req: m.AttachRequest, payload):
    """Grant a delegation. Conflicts with a live holder fail at once (or after
    ``wait`` seconds); conflicts with holders that may still be valid but are not
    live (being revoked, disconnected, restored after a restart) are waited out."""
    group, vol = srv.find_volume(req.volume)
    await srv.check_owner(group)        # a server that lost the group grants nothing in it
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
        srv.counters["grants"] += 1
        try:
            await srv.persist_delegations()
        except BaseException:
            srv.table.release(d.id)
            raise
    log.info("node %d attached %s (%s), delegation %s", node, key, mode, d.id)
    return _delegation_reply(srv, d, group, vol), b""


async def _owner_problem(srv: VolumeServer, dg: str,
                         cache: dict[str, FencevolError | None]) -> FencevolError | None:
    """Why this server may not extend access to group ``dg`` now, if it may not: its
    owner lease is stale (disk I/O stalled, or the group was lost) and reading it
    back failed. None while the lease is fresh -- the usual case, no I/O."""
    group = srv.groups.get(dg)
    if group is None or srv.owner_is_fresh(group):
        return None
    if dg not in cache:
        try:
            await srv.check_owner(group)
            cache[dg] = None
        except FencevolError as exc:
            cache[dg] = exc
    return cache[dg]


@op("renew", role="node")
async def op_renew(srv: VolumeServer, sess: Session, req: m.RenewRequest, payload):
    now = trio.current_time()
    results = {}
    not_owner: dict[str, FencevolError | None] = {}     # per group, checked once
    for i in req.delegations:
        d = srv.table.by_id.get(i)
        if d is not None and d.node == sess.node:
            problem = await _owner_problem(srv, d.volume.split("/")[0], not_owner)
            if problem is not None:
                results[i] = m.RenewResult(False, "expired", problem.to_wire())
                continue
        if d is not None and d.node == sess.node and d.map_want > d.map_gen:
            results[i] = m.RenewResult(False, "expired", Revoked(
                f"the map of {d.volume} changed and node {d.node} did not acknowledge it; "
                "attach again").to_wire())
            continue
        if d is not None and d.node == sess.node and d.key and not registered_everywhere(srv, d):
            results[i] = m.RenewResult(False, "fenced", Fenced(
                f"node {d.node}'s registration on {d.volume} was preempted").to_wire())
            continue
        try:
            srv.table.renew(i, sess.node, now, sess.id)
            results[i] = m.RenewResult(True)
            srv.counters["renewals"] += 1
        except Revoked as exc:
            srv.counters["renewals_refused"] += 1
            d = srv.table.by_id.get(i)
            state = "unknown" if d is None or d.node != sess.node else (
                d.state if d.state in ("revoking", "revoked") else "expired")
            results[i] = m.RenewResult(False, state, exc.to_wire())
    return m.RenewReply(results, srv.lease_terms_wire()), b""


@op("detach", role="node")
async def op_detach(srv: VolumeServer, sess: Session, req: m.DetachRequest, payload):
    d = srv.table.by_id.get(req.delegation)
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
    return m.DetachReply(detached=d.volume), b""


@op("revoke_ack", role="node")
async def op_revoke_ack(srv: VolumeServer, sess: Session, req: m.RevokeAckRequest, payload):
    d = srv.table.acknowledge(req.delegation, sess.node)
    if d is not None:
        log.info("node %d acknowledged revoke of %s (%s)", d.node, d.volume, d.reason)
        srv.notify()
    return m.RevokeAckReply(acknowledged=d is not None), b""
