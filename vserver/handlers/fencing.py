"""Coordinator volumes, fencing and the persistent-reservation admin verbs.

* ``coord_create`` / ``coord_show`` / ``coord_clear`` (admin): Figure 5 and status;
* ``coord_write`` (node, holding the coordinator exclusively): compare-and-swap on
  the generation, done here under the server's lock -- two racers can never both
  win (S5), even if one of them lost its delegation while it was stopped;
* ``fence`` (node): preempt-and-abort the victims' registrations on every disk and
  revoke their delegations; answers only when each victim acknowledged (gate
  closed, writes drained) or its lease plus margin ran out (S3);
* ``pr_*`` (admin): READ KEYS, READ RESERVATION, PREEMPT, CLEAR in the manner of
  sg_persist / vxfenadm."""

from __future__ import annotations

import logging
import time

from typing import TYPE_CHECKING

import trio

from fencevol import coord, directio
from fencevol.coord import format_key, key_node
from fencevol.errors import (
    ChecksumError,
    Conflict,
    FencevolError,
    InUse,
    InvalidArgument,
    NotFound,
)
from fencevol.extents import ExtentMap
from fencevol.protocol import messages as m
from fencevol.units import parse_size

from .. import allocator
from ..delegations import REVOKED
from ..membership import read_membership, write_membership
from ..model import extent_map_wire
from ..pr import TYPE_NAMES
from ..ownership import NotOwner
from ..registry import op
from ..storage import Disk, volume_write, write_pr_all
from .common import commit_config, io_target, next_config, resolve_disk, volume_info, writable_group

if TYPE_CHECKING:
    from ..server import Session, VolumeServer

log = logging.getLogger("vserver.fencing")


def _coordinator(srv: VolumeServer, spec: str):
    group, vol = srv.find_volume(spec)
    if vol.kind != "coordinator":
        raise InvalidArgument(f"{group.name}/{vol.name} is not a coordinator volume")
    return group, vol


def _persist_each(disks: list[Disk]) -> list[tuple[Disk, str]]:
    """Persist each disk's reservation table; the disks it failed on, and why
    (blocking: run it in a worker thread)."""
    failed = []
    for disk in disks:
        try:
            disk.write_pr()
        except (FencevolError, OSError) as exc:
            failed.append((disk, str(exc)))
    return failed


# --- coordinator -----------------------------------------------------------------------------
@op("coord_create")
async def op_coord_create(srv: VolumeServer, sess: Session, req: m.CoordCreateRequest, payload):
    dg, name, nodes, layout = req.dg, req.name, req.nodes, req.layout
    cluster_id = coord.check_cluster_id(req.cluster_id)
    size = parse_size(req.size, what="coordinator size")
    initial = coord.initial(cluster_id, nodes)            # validates before anything is written
    async with srv.config_lock:
        group = writable_group(srv, dg)
        await srv.check_owner(group)    # before the coordinator's content is written
        for v in group.config.volumes:
            if v.kind == "coordinator" and v.cluster_id == cluster_id:
                raise InvalidArgument(f"cluster {cluster_id} already has coordinator {dg}/{v.name}")
        vol = allocator.create_volume(group.config, name, size, layout, kind="coordinator",
                                      cluster_id=cluster_id)
        cfg = next_config(group.config, group.config.volumes + [vol])
        # Write the content first: the volume only appears once it is initialized
        # (64 KiB O_DIRECT on the loop, once per coordinator; the sync in a thread).
        emap = ExtentMap(extent_map_wire(cfg, vol, group.disk_paths()))
        block = coord.encode(initial)
        fds = volume_write(group, emap, emap.plexes, 0,
                           block + bytes(min(vol.size, 64 << 10) - len(block)))
        await trio.to_thread.run_sync(directio.fdatasync_all, fds)
        await commit_config(srv, group, cfg)
    log.info("created coordinator %s/%s for cluster %s, nodes %s", dg, name, cluster_id, sorted(nodes))
    return volume_info(srv, group, vol, membership=initial.to_json()), b""


@op("coord_show")
async def op_coord_show(srv: VolumeServer, sess: Session, req: m.CoordShowRequest, payload):
    group, vol = _coordinator(srv, req.volume)
    try:
        membership = read_membership(srv, group, vol)
    except FencevolError as exc:
        return volume_info(srv, group, vol, checksum_ok=False, error=str(exc)), b""
    return volume_info(srv, group, vol, checksum_ok=True, membership=membership.to_json()), b""


@op("coord_clear")
async def op_coord_clear(srv: VolumeServer, sess: Session, req: m.CoordClearRequest, payload):
    """After a whole-cluster crash: mark every node as not a member (like
    vxfenclearpre). Refused while anyone holds the coordinator, and while a member
    is still up here (connected, or holding a delegation) unless ``force``: clearing
    a live cluster's membership lets a partitioned node join beside it."""
    group, vol = _coordinator(srv, req.volume)
    key = f"{group.name}/{vol.name}"
    async with srv.vol_locks[key]:
        await srv.expire_now()
        if srv.table.on_volume(key):
            raise InUse(f"{key} is attached; clear it only when the cluster is down")
        cur = read_membership(srv, group, vol)
        live = sorted(n for n in cur.members if n in srv.sessions or srv.table.of_node(n))
        if live and not req.force:
            raise InUse(f"node(s) {', '.join(map(str, live))} of cluster {cur.cluster_id} are members "
                        "and still up (connected or holding delegations); stop them first, or "
                        "--force if you are sure they are down")
        new = cur.changed({r.node_id: {"is_member": False} for r in cur.records})
        await write_membership(srv, group, vol, new)
    if live:
        log.warning("coordinator %s cleared with --force while members %s were up: they keep "
                    "writing until fenced", key, live)
    log.warning("cleared coordinator %s (generation %d -> %d)", key, cur.generation, new.generation)
    return m.CoordClearReply(membership=new.to_json(), forced_live=live), b""


@op("coord_write", role="node")
async def op_coord_write(srv: VolumeServer, sess: Session, req: m.CoordWriteRequest, payload):
    """Compare-and-swap: write ``payload`` only if the coordinator's generation is
    ``expected_generation``, the caller holds it exclusively, and the new content
    is the next generation of the same cluster and node set."""
    d, group, vol, _ = io_target(srv, sess, req.delegation, 0, write=True)
    if vol.kind != "coordinator":
        raise InvalidArgument("coord_write is for coordinator volumes")
    if d.mode not in ("ew", "ex"):
        raise InvalidArgument("coord_write needs the coordinator attached exclusive-write")
    expected = req.expected_generation
    new = coord.decode(payload, "new coordinator content")
    async with srv.vol_locks[f"{group.name}/{vol.name}:cas"]:
        current = read_membership(srv, group, vol)
        if current.generation != expected:
            raise Conflict(f"coordinator generation is {current.generation}, not {expected}: "
                           "someone else changed the membership")
        if (new.generation != expected + 1 or new.cluster_id != current.cluster_id
                or new.node_ids != current.node_ids):
            raise InvalidArgument("new coordinator content must be the next generation of the "
                                  "same cluster and nodes")
        await write_membership(srv, group, vol, new)
    log.info("node %d wrote coordinator %s/%s generation %d, members %s", sess.node, group.name,
             vol.name, new.generation, sorted(new.members))
    return m.CoordWriteReply(generation=new.generation), b""


# --- fencing ------------------------------------------------------------------------------------
def _victims(req: m.FenceRequest) -> dict[int, int]:
    """{node: highest incarnation to fence}; a bare node id means every incarnation."""
    out: dict[int, int] = {}
    for v in req.victims:
        if isinstance(v, int):
            out[v] = coord.ANY_INCARNATION
        else:
            out[v.node] = max(out.get(v.node, 0), v.incarnation)
    return out


@op("fence", role="node")
async def op_fence(srv: VolumeServer, sess: Session, req: m.FenceRequest, payload):
    """Fence the given incarnations of ``victims`` in the caller's cluster. The
    coordinator must list the caller as a member; a victim that is a member again
    with a newer incarnation (it rejoined) keeps that incarnation."""
    group, cvol = _coordinator(srv, req.coordinator)
    victims = _victims(req)
    victims.pop(sess.node, None)
    members = read_membership(srv, group, cvol)
    if sess.node not in members.members:
        raise InvalidArgument(f"node {sess.node} is not a member of cluster {members.cluster_id}; "
                              "only members may fence")
    for node in list(victims):
        rec = members.record(node)
        if rec is not None and rec.is_member:
            if rec.incarnation <= victims[node]:
                raise InvalidArgument(f"node {node} (incarnation {rec.incarnation}) is still a member "
                                      f"(generation {members.generation}); remove it first")
            victims[node] = min(victims[node], rec.incarnation - 1)
    t0 = trio.current_time()
    bits = coord.cluster_bits(members.cluster_id)

    def doomed(key: int) -> bool:
        node = key_node(key)
        return (node in victims and coord.key_cluster(key) == bits
                and coord.key_incarnation(key) <= victims[node])

    names = sorted(victims)
    async with srv.fence_lock:
        # 1. PREEMPT AND ABORT those registrations, on every disk of every group --
        #    a disk with a metadata problem elsewhere (a damaged older label copy,
        #    say) included: this server stops honouring the keys at once (memory),
        #    and each changed table is persisted on its own disk.
        changed: list[Disk] = []
        unowned: list[tuple[Disk, str]] = []      # hit, but not ours to persist
        refused: dict[tuple, str] = {}              # (group, disk in it) -> why not ours ("": ours)
        preempted = 0
        for disk in srv.disks.values():
            if not disk.label or not disk.label.dg_name:
                continue
            t = disk.pr
            hit = False
            for key in [k for k in t.registrations if doomed(k)]:
                if srv.server_key not in t.registrations:
                    t.register(srv.server_key, 0, time.time())
                t.preempt(srv.server_key, key)
                preempted += 1
                hit = True
            if not hit:
                continue
            g = srv.groups.get(disk.label.dg_name)
            group = (disk.label.dg_name, g is not None and g.disks.get(disk.id) is disk)
            if group not in refused:      # once per group: a confirm reads all its disks
                try:
                    await srv.check_disk_owner(disk)
                    refused[group] = ""
                except NotOwner as exc:   # honoured no more here, but another server's to write
                    refused[group] = str(exc)
            if refused[group]:
                unowned.append((disk, refused[group]))
            elif disk.failed:             # dead: written when it comes back (mirrors.reopen_disk)
                log.warning("fence: disk %s has failed; its reservation table is written when "
                            "it is back", disk.name)
            else:
                changed.append(disk)
        failed = await trio.to_thread.run_sync(_persist_each, changed) + unowned
        # 2. Abort: revoke the delegations granted to those keys; wait for acks or
        #    lease + margin.
        delegs = [d for d in srv.table.by_id.values() if d.node in victims and (not d.key or doomed(d.key))]
        await srv.revoke(delegs, "fence")
        acked = sorted({d.node for d in delegs if d.state == REVOKED})
        expired = sorted({d.node for d in delegs if d.state != REVOKED})
        for d in delegs:
            srv.table.release(d.id)
        srv.notify()
        await srv.persist_delegations()
    if failed:
        # Never report a fence that another server (after a restart, an import) could
        # undo: the caller keeps its writes paused and retries.
        detail = "; ".join(f"disk {d.name}: {err}" for d, err in failed)
        log.error("fence of nodes %s incomplete: %s", names, detail)
        raise ChecksumError(f"fence of nodes {names} is not on every disk yet ({detail}); their "
                            "keys are refused by this server, and the fence is retried -- repair "
                            "the disk (`vctl dg repair`)")
    seconds = trio.current_time() - t0
    srv.counters["fences"] += 1
    srv.counters["fence_seconds"] += seconds
    log.warning("node %d fenced nodes %s of cluster %s: %d key(s) preempted, acknowledged by %s, "
                "lease expired for %s, %.3fs", sess.node, names, members.cluster_id, preempted, acked,
                expired, seconds)
    return m.FenceReply(fenced=names, preempted=preempted, acknowledged=acked,
                        lease_expired=expired, seconds=round(seconds, 4)), b""


# --- PR admin verbs --------------------------------------------------------------------------------
def _parse_key(value: int | str) -> int:
    """A registration key: hex text (``0x...`` or bare) or an integer, 1 to 2**64-1."""
    try:
        key = int(value, 16) if isinstance(value, str) else value
    except ValueError:
        raise InvalidArgument(f"bad key {value!r}: hex digits or an integer") from None
    if not 0 < key < 1 << 64:
        raise InvalidArgument(f"bad key {value!r}: out of range")
    return key


def _pr_disks(srv: VolumeServer, ref: str | None) -> list[Disk]:
    if ref in (None, "", "all"):
        return [d for d in srv.disks.values() if d.label and d.label.dg_name]
    return [resolve_disk(srv, ref)]


def _describe_keys(srv: VolumeServer, disks: list[Disk]) -> m.DiskKeysReply:
    out = []
    for disk in disks:
        t = disk.pr
        res = t.reservation
        out.append(m.DiskKeys(
            disk=disk.name, path=disk.path, generation=t.generation,
            keys=[m.KeyInfo(key=format_key(k), node=v["node"],
                            owner="server" if k == srv.server_key else
                            ("another server" if key_node(k) == 0 else f"node {v['node']}"))
                  for k, v in sorted(t.registrations.items())],
            reservation=None if res is None else m.Reservation(
                key=format_key(res[0]), type=res[1], type_name=TYPE_NAMES[res[1]]),
            preempted=[format_key(k) for k in t.preempted]))
    return m.DiskKeysReply(disks=out)


@op("pr_read_keys")
async def op_pr_read_keys(srv: VolumeServer, sess: Session, req: m.PrReadKeysRequest, payload):
    return _describe_keys(srv, _pr_disks(srv, req.disk)), b""


@op("pr_read_reservation")
async def op_pr_read_reservation(srv: VolumeServer, sess: Session, req: m.PrReadReservationRequest,
                                 payload):
    return _describe_keys(srv, _pr_disks(srv, req.disk)), b""


@op("pr_preempt")
async def op_pr_preempt(srv: VolumeServer, sess: Session, req: m.PrPreemptRequest, payload):
    """Preempt a key (``key``) or every key of a node (``node``) with the server's
    own registration, and revoke that node's delegations (PREEMPT AND ABORT)."""
    key, node = req.key, req.node
    if key is not None:
        key = _parse_key(key)
        if key == srv.server_key:
            raise InvalidArgument("refusing to preempt the server's own key")
    async with srv.fence_lock:
        hit: list[Disk] = []
        nodes = set()
        for disk in _pr_disks(srv, req.disk):
            await srv.check_disk_owner(disk)
            t = disk.pr
            victims = [k for k in t.registrations if k == key or (node is not None and key_node(k) == node
                                                                   and k != srv.server_key)]
            for k in victims:
                t.preempt(srv.server_key, k)
                nodes.add(key_node(k))
            if victims:
                hit.append(disk)
        if not hit:
            raise NotFound("no such registration on the given disk(s)")
        await trio.to_thread.run_sync(write_pr_all, hit)
        delegs = [d for d in srv.table.by_id.values() if d.node in nodes]
        await srv.revoke(delegs, "fence")
        for d in delegs:
            srv.table.release(d.id)
        srv.notify()
        await srv.persist_delegations()
    log.warning("admin preempted %s on %s", format_key(key) if key is not None else f"node {node}",
                ", ".join(d.name for d in hit))
    return _describe_keys(srv, hit), b""


@op("pr_clear")
async def op_pr_clear(srv: VolumeServer, sess: Session, req: m.PrClearRequest, payload):
    """CLEAR: drop every registration and the reservation, then restore the
    server's own registration and WERO reservation. Tombstones stay."""
    disk = resolve_disk(srv, req.disk)
    await srv.check_disk_owner(disk)
    if srv.table.by_id and any(disk.id in srv.find_volume(d.volume)[1].disk_ids()
                               for d in srv.table.by_id.values()):
        raise InUse(f"disk {disk.name} has attached volumes; detach them first")
    t = disk.pr
    if srv.server_key not in t.registrations:
        t.register(srv.server_key, 0, time.time())
    t.clear(srv.server_key)
    t.register(srv.server_key, 0, time.time())
    t.reserve(srv.server_key, "WERO")
    await trio.to_thread.run_sync(disk.write_pr)
    log.warning("admin cleared the reservations of disk %s", disk.name)
    return _describe_keys(srv, [disk]), b""


@op("pr_forget")
async def op_pr_forget(srv: VolumeServer, sess: Session, req: m.PrForgetRequest, payload):
    """Forget a preempted key so it may register again (after an admin checked
    the node is really gone; normally nodes rejoin with a new key instead)."""
    key = _parse_key(req.key)
    hit = [d for d in _pr_disks(srv, req.disk) if key in d.pr.preempted]
    if not hit:
        raise NotFound(f"key {format_key(key)} is not preempted on the given disk(s)")
    for d in hit:
        await srv.check_disk_owner(d)
    for d in hit:
        d.pr.forget_tombstone(key)
    await trio.to_thread.run_sync(write_pr_all, hit)
    return _describe_keys(srv, hit), b""

