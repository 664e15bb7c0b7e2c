"""The volume server process: listener, authenticated sessions, delegation waits
and persistence. It runs each request through the ``dispatch`` it is given
(vserver.main wires in vserver.handlers); the operations live there."""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Awaitable, Callable
from collections import defaultdict
from dataclasses import dataclass, field

import trio

import fencevol
from fencevol import auth, ondisk, tls, wire
from fencevol.protocol.handshake import ServerHandshake
from fencevol.protocol.messages import Message, RevokePush, push_to_wire
from fencevol.ratelimit import RateLimitedLog
from fencevol.coord import format_key, key_node
from fencevol.crc import crc32c
from fencevol.errors import (
    AuthError,
    FencevolError,
    InUse,
    InvalidArgument,
    NotFound,
    ProtocolError,
    Unavailable,
)
from fencevol.extents import ExtentMap
from fencevol.lease import LeaseTerms
from fencevol.rpc import ConnectionClosed, FramedConnection

from . import limits, mirrors, ownership, statefile
from .leader import HaSettings, Leadership
from .delegations import REVOKING, Delegation, DelegationTable
from .model import Volume, extent_map_wire
from .storage import Disk, Group, group_from_disks, write_config

log = logging.getLogger("vserver")

DEFAULT_STATE_DIR = "/var/lib/fencevol"
DEFAULT_PORT = 7745
DEFAULT_LISTEN = ("127.0.0.1", DEFAULT_PORT)
MAX_INFLIGHT_PER_CONNECTION = 64
EXPIRY_TICK = 0.2
KEEPALIVE = (5, 2, 3)       # idle s, probe interval s, probes: a dead host's session ends in ~11 s


def set_keepalive(stream: trio.SocketStream) -> None:
    """TCP keepalive, so the session of a host that died (no FIN, no RST) ends and a
    restarted client can take its node id again."""
    idle, interval, count = KEEPALIVE
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except OSError as exc:
        log.debug("keepalive not set: %s", exc)


@dataclass
class Settings:
    state_dir: str = DEFAULT_STATE_DIR
    listen: tuple[str, int] = DEFAULT_LISTEN
    key_file: str = ""                   # default: <state_dir>/cluster.key
    lease: LeaseTerms = field(default_factory=LeaseTerms)
    scan: list[str] = field(default_factory=list)
    max_payload: int = wire.MAX_PAYLOAD
    session_memory: int = limits.SESSION_MEMORY     # request bytes one session may hold
    server_memory: int = limits.SERVER_MEMORY       # ... all sessions together
    frame_timeout: float = limits.FRAME_TIMEOUT
    max_connections: int = limits.MAX_CONNECTIONS
    require_node_credentials: bool = False          # refuse node sessions on the cluster key
    tls_cert: str = ""                              # PEM; TLS on every connection when set
    tls_key: str = ""
    owner: ownership.OwnerTerms = field(default_factory=ownership.OwnerTerms)  # disk-group lease
    ha: HaSettings | None = None                    # --etcd: one of several servers (vserver.leader)
    resync_rate: int = 0                            # bytes/s a mirror resync copies at most (0: no limit)
    metrics: tuple[str, int] | None = None          # serve Prometheus metrics here

    @property
    def key_path(self) -> str:
        return self.key_file or os.path.join(self.state_dir, "cluster.key")


class Session:
    """One authenticated connection."""

    _ids = iter(range(1, 1 << 62))

    def __init__(self, conn: FramedConnection, role: str, node: int | None, peer: str,
                 instance: str | None = None):
        self.id = next(self._ids)
        self.instance = instance
        self.conn = conn
        self.role = role
        self.node = node
        self.peer = peer
        self.connected_at = time.time()
        self.cancel_scope: trio.CancelScope | None = None
        self.gone = trio.Event()        # the reader stopped: nobody waits for replies
        self.credential = "cluster"     # what it proved: "cluster" key or its "node" credential

    async def push(self, message: Message) -> bool:
        """Send a push message (revoke, reinstate); False if the client is gone."""
        try:
            await self.conn.send(push_to_wire(message))
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False


Dispatch = Callable[["VolumeServer", Session, dict, bytes], Awaitable[tuple[dict, bytes]]]


class VolumeServer:
    def __init__(self, settings: Settings, dispatch: Dispatch | None = None):
        """``dispatch`` runs one request (vserver.handlers.dispatch); a server
        without one can be driven in-process but not serve."""
        self.settings = settings
        self.dispatch = dispatch
        self.terms = settings.lease
        # The owner stops granting and renewing delegations a lease + margin before
        # its owner lease could lapse: a delegation it renewed then has ended before
        # another server can take the group over (docs/OPERATIONS.md).
        need = settings.lease.duration + settings.lease.margin
        if settings.owner.guard < need:
            o = settings.owner
            if 2 * o.renew > o.expiry - need:
                raise InvalidArgument(
                    f"owner lease {o.expiry:g}s is too short for the delegation lease: it must be "
                    f"at least lease + margin + 2 x its renewal interval "
                    f"({need + 2 * o.renew:g}s)")
            settings.owner = dataclasses.replace(o, guard=need)
        self.table = DelegationTable(self.terms)
        self.server_id = ""
        self.key = b""
        self.disks: dict[str, Disk] = {}          # disk id -> open disk
        self.disk_errors: list[dict] = []         # known disks that could not be opened
        self.group_errors: dict[str, str] = {}    # known groups not loaded: name -> why
        self.groups: dict[str, Group] = {}
        self.sessions: dict[int, Session] = {}    # node id -> session
        self.admin_sessions: set[Session] = set()
        self.config_lock = trio.Lock()
        self.vol_locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self.mirror_locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)  # vserver/mirrors.py
        self.resyncs: dict[str, Any] = {}         # volume -> mirrors.Resync
        self.evacuations: dict[str, dict] = {}    # disk id -> {running, volumes, error}
        self.background: trio.Nursery | None = None
        self.counters: collections.Counter = collections.Counter()  # for vserver/metrics.py
        self.metrics_address = ""
        self._persist_lock = trio.Lock()
        self._changed = trio.Event()
        self._maps: dict[str, ExtentMap] = {}
        self.fence_lock = trio.Lock()
        self.server_key = 0
        self.started_at = 0.0
        self.listen_address = ""
        self._lock_fd = -1
        self.memory = limits.MemoryBudget(settings.server_memory)
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise InvalidArgument("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        self.tls = (tls.server_context(settings.tls_cert, settings.tls_key)
                    if settings.tls_cert or settings.tls_key else None)
        self.connections = 0
        self._log_limited = RateLimitedLog(log)
        self.leader: Leadership | None = None      # HA mode: set once elected

    # -- start-up ------------------------------------------------------------------
    @property
    def state_path(self) -> str:
        return os.path.join(self.settings.state_dir, "state.json")

    @property
    def deleg_path(self) -> str:
        return os.path.join(self.settings.state_dir, "delegations.json")

    def open_state(self) -> None:
        """Lock the state directory, load the key, reopen known disks and groups,
        restore delegations. Problems with single disks are logged and reported, not
        fatal."""
        state = self.open_local()
        self.load_shared(state, statefile.read(self.deleg_path, default=[]) or [])
        self._write_state_file()

    def open_local(self) -> dict:
        """Lock the state directory, load the key and this server's id; the state
        file's content."""
        sd = self.settings.state_dir
        os.makedirs(sd, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(sd, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidArgument(f"another vserver is using state directory {sd}") from None
        kp = self.settings.key_path
        if os.path.exists(kp) or self.settings.key_file:
            self.key = auth.load_key_file(kp)
        else:
            self.key = auth.create_key_file(kp)
            log.info("created cluster key %s (copy it to every node, see docs/SECURITY.md)", kp)
        state = statefile.read(self.state_path, default={}) or {}
        self.server_id = state.get("server_id") or uuid.uuid4().hex
        # The server's own registration key: node field 0 marks a server.
        self.server_key = (0x4653 << 48) | (crc32c(self.server_id.encode()) & 0xFFFFFFFF)
        if self.settings.ha is not None:
            statefile.write(self.state_path, {"server_id": self.server_id})   # the rest is in etcd
        return state

    def load_shared(self, state: dict, delegations: list) -> None:
        """Reopen the known disks and groups of ``state`` and restore ``delegations``
        (from the state directory, or from etcd when this server was elected)."""
        for rec in state.get("disks", []):
            try:
                disk = Disk.open(rec["path"])
            except FencevolError as exc:
                self.disk_errors.append({"id": rec["id"], "path": rec["path"], "error": str(exc)})
                log.error("known disk %s: %s", rec["path"], exc)
                continue
            if disk.id != rec["id"]:
                self.disk_errors.append({"id": rec["id"], "path": rec["path"],
                                         "error": f"{rec['path']} now holds disk {disk.id or 'none'}"})
                log.error("known disk %s at %s was replaced (found %s)", rec["id"], rec["path"],
                          disk.id or "no label")
                disk.close()
                continue
            if disk.problems:
                log.error("%s", disk.describe_problems())
            self.disks[disk.id] = disk
        for name in state.get("groups", []):
            members = [d for d in self.disks.values() if d.label and d.label.dg_name == name]
            try:
                group = group_from_disks(name, members)
            except FencevolError as exc:
                log.error("disk group %s not loaded: %s", name, exc)
                self.group_errors[name] = str(exc)
                continue
            for p in group.problems():
                log.error("disk group %s: %s", name, p)
            self.groups[name] = group         # claimed (and reservations ensured) by serve()
        now = trio.current_time()
        self.table.restore(delegations, now)
        if self.table.by_id:
            log.info("restored %d delegation(s); grace period %.1fs for reclaims",
                     len(self.table.by_id), self.terms.duration + self.terms.margin)
        self.started_at = now

    def ensure_reservations(self, group: Group) -> None:
        """Register the server's key and hold a Write Exclusive Registrants Only
        reservation on every disk of ``group`` (¶0071); take over a reservation
        left by another server. Synchronous (call from a worker thread)."""
        for disk in group.disks.values():
            if disk.problems or disk.failed:
                continue
            t = disk.pr
            before = t.generation
            if self.server_key in t.preempted:
                # Another server took the group over and preempted our key. Servers are
                # kept apart by the owner lease, which we hold again now, not by PR.
                t.forget_tombstone(self.server_key)
            if self.server_key not in t.registrations:
                t.register(self.server_key, 0, time.time())
            res = t.reservation
            if res is None:
                t.reserve(self.server_key, "WERO")
            elif res[0] != self.server_key and key_node(res[0]) == 0:
                log.warning("disk %s: taking over the reservation of server key %s", disk.name,
                            format_key(res[0]))
                t.preempt(self.server_key, res[0])
            if t.generation != before:
                disk.write_pr()

    def _shared_state(self) -> dict:
        return {"disks": [{"id": d.id, "path": d.path} for d in self.disks.values()]
                         + [{"id": e["id"], "path": e["path"]} for e in self.disk_errors],
                # A group that did not load stays known: a later start may load it.
                "groups": sorted(set(self.groups) | set(self.group_errors))}

    def _write_state_file(self) -> None:
        statefile.write(self.state_path, {"server_id": self.server_id, **self._shared_state()})

    async def save_state(self) -> None:
        """Known disks and groups: to the state directory, or to etcd (HA)."""
        if self.leader is not None:
            await self.leader.save("state", self._shared_state())
        else:
            self._write_state_file()

    async def persist_delegations(self) -> None:
        """Write the delegation table; called before a grant is acknowledged. In HA
        mode a transaction that succeeds only while this server leads."""
        async with self._persist_lock:
            records = self.table.persistent_records()
            if self.leader is not None:
                await self.leader.save("delegations", records)
            else:
                await trio.to_thread.run_sync(statefile.write, self.deleg_path, records)

    def close(self, release: bool = True) -> None:
        """``release``: hand the disk groups back (a clean stop); not after losing
        the leadership, when the next leader may already own them."""
        for g in self.groups.values():
            if release and g.ownership is not None:
                ownership.release(g.fds, g.ownership)
        for d in self.disks.values():
            d.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- disk-group ownership (vserver/ownership.py) -------------------------------
    @property
    def me(self) -> ownership.Me:
        owner = self.leader.owner_id if self.leader is not None else self.server_id
        return ownership.Me(owner, self.listen_address)

    async def claim(self, group: Group) -> None:
        """Become the group's owner (NotOwner naming the owner if a live server
        holds it). After taking it over from another server, write the
        configuration with a generation jump into both copies of every disk."""
        for d in group.disks.values():
            pr_a = d.areas[ondisk.PR].slots[0]
            if pr_a.payload is not None and len(pr_a.payload) > ondisk.slot_capacity(ondisk.PR):
                raise InvalidArgument(f"disk {d.name}: its reservation table is too large for "
                                      "format 3's owner block; forget preempted keys first")
        own = await self.owner_io(group, ownership.acquire, group.config.id, group.name, self.me,
                                      self.settings.owner)
        group.ownership = own
        if own.took_over:
            cfg = group.config
            new = dataclasses.replace(cfg, generation=cfg.generation + ownership.TAKEOVER_JUMP)
            await trio.to_thread.run_sync(write_config, group, new)
            self.install_config(group, new)
        log.info("disk group %s: owned by this server (epoch %d%s)", group.name, own.epoch,
                 ", taken over from another server" if own.took_over else "")

    def start_background(self, fn, *args) -> None:
        """Run a long job (a resync, an evacuation) beside the requests, for as long
        as the server serves."""
        if self.background is None:
            raise Unavailable("the server is not serving yet; try again")
        self.background.start_soon(fn, *args)

    async def owner_io(self, group: Group, fn, *args):
        """Run an owner-lease step on the group's working disks; a disk whose owner
        block fails is marked failed (a dead mirror disk must not cost the group)
        and the step runs again on the others."""
        while True:
            try:
                return await fn(group.fds, *args)
            except ownership.DiskFailed as exc:
                disk = next((d for d in group.disks.values() if d.fd == exc.fd and not d.failed), None)
                if disk is None:
                    raise
                disk.fail(exc.error)
                if not group.fds:
                    raise ownership.NotOwner(f"disk group {group.name}: no disk works ({exc})") from None

    async def check_owner(self, group: Group) -> None:
        """Before a metadata write or a grant: the group must still be ours."""
        if group.ownership is None:
            raise ownership.NotOwner(f"disk group {group.name} is not owned by this server")
        await self.owner_io(group, ownership.confirm, group.ownership, group.name)
        self._check_config_not_newer(group)

    def _check_config_not_newer(self, group: Group) -> None:
        """A newer configuration on a disk than this server's means another server
        managed the group since -- even if our own record is back on the disks (a
        renewal of ours, frozen before its write, landed after a takeover): we lost
        it. One small O_DIRECT read per slot, on the loop."""
        for d in group.live_disks():
            try:
                gen = ondisk.read_area(d.fd, ondisk.CONFIG).generation
            except OSError as exc:
                d.fail(exc)
                continue
            if gen > group.config.generation:
                group.ownership.lost = (f"disk {d.name} holds configuration generation {gen}, "
                                        f"newer than this server's {group.config.generation}: "
                                        "another server managed the group since")
                raise ownership.NotOwner(f"disk group {group.name}: {group.ownership.lost}")

    def owner_is_fresh(self, group: Group) -> bool:
        """May this server renew delegations on ``group`` without re-reading its
        owner lease? Yes while its last renewal is recent enough (guard)."""
        own = group.ownership
        if own is None:              # an in-process server that never claimed (tests)
            return True
        return not own.lost and trio.current_time() - own.renewed_at < own.terms.expiry - own.terms.guard

    async def check_disk_owner(self, disk: Disk) -> None:
        """Before writing ``disk``'s reservation table: its group must be ours."""
        group = self.groups.get(disk.label.dg_name) if disk.label else None
        if group is None or group.disks.get(disk.id) is not disk:
            raise ownership.NotOwner(f"disk {disk.name} is in no disk group this server manages")
        await self.check_owner(group)

    async def claim_loaded_groups(self) -> None:
        """At start: claim every group open_state loaded; a group another live
        server manages is dropped (logged; `vctl dg import` later)."""
        for name, group in list(self.groups.items()):
            try:
                await self.claim(group)
            except FencevolError as exc:
                log.error("disk group %s not loaded: %s", name, exc)
                self.group_errors[name] = str(exc)
                del self.groups[name]
                continue
            try:
                await trio.to_thread.run_sync(self.ensure_reservations, group)
            except (FencevolError, OSError) as exc:      # owned and served all the same
                log.error("disk group %s: server reservation not ensured: %s", name, exc)

    async def _ownership_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.owner.renew)
            if self.leader is not None and not self.leader.valid():
                continue        # a leader that may be deposed writes nothing to the disks
            for group in list(self.groups.values()):
                own = group.ownership
                if own is None or own.lost:
                    continue
                try:
                    await self.owner_io(group, ownership.renew, own, group.name)
                    if not self.config_lock.locked():
                        # A commit under way has written a newer generation to some
                        # disks and not yet installed it here: not another server's.
                        self._check_config_not_newer(group)
                except ownership.NotOwner as exc:
                    log.error("%s", exc)
                except (OSError, FencevolError) as exc:
                    log.warning("disk group %s: owner lease renewal failed: %s", group.name, exc)

    # -- change notification ----------------------------------------------------
    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self, until: float) -> None:
        with trio.move_on_at(until):
            await self._changed.wait()

    async def expire_now(self) -> None:
        gone = self.table.expire(trio.current_time())
        if gone:
            for d in gone:
                log.info("delegation %s (%s, node %d, %s) %s", d.id, d.volume, d.node, d.mode,
                         "dropped after revoke timeout" if d.state == REVOKING else "expired")
            self.notify()
            try:
                await self.persist_delegations()
            except Unavailable as exc:      # HA: etcd unreachable, or deposed (NotLeader)
                log.warning("expired delegations not saved: %s", exc)

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_TICK)
            await self.expire_now()

    async def revoke(self, delegs: list[Delegation], reason: str) -> None:
        """Ask holders to stop and wait until each acknowledged or can no longer be
        valid (lease + margin). Afterwards none of ``delegs`` grants access (S2)."""
        for d in delegs:
            if d.id in self.table.by_id and d.state != "revoked":
                self.table.begin_revoke(d, reason)
                sess = self.sessions.get(d.node)
                if sess is not None and d.connected:
                    await sess.push(RevokePush(delegation=d.id, volume=d.volume, reason=reason))
        while True:
            pending = [d for d in delegs if self.table.by_id.get(d.id) is d and d.state == REVOKING]
            if not pending:
                return
            await self.wait_change(self.table.next_deadline(pending))
            await self.expire_now()

    # -- lookups ------------------------------------------------------------------
    def find_volume(self, spec: object) -> tuple[Group, Volume]:
        if not isinstance(spec, str) or spec.count("/") != 1:
            raise InvalidArgument(f"bad volume {spec!r}: expected DG/VOLUME")
        dg, name = spec.split("/")
        group = self.groups.get(dg)
        if group is None:
            raise NotFound(f"no disk group {dg}")
        return group, group.config.volume(name)

    def extent_map(self, group: Group, vol: Volume) -> ExtentMap:
        key = f"{group.name}/{vol.name}"
        m = self._maps.get(key)
        if m is None:
            m = self._maps[key] = ExtentMap(self.map_wire(group, vol))
        return m

    def map_wire(self, group: Group, vol: Volume) -> dict:
        return extent_map_wire(group.config, vol, group.disk_paths())

    def install_config(self, group: Group, cfg) -> None:
        group.config = cfg
        for key in [k for k in self._maps if k.startswith(group.name + "/")]:
            del self._maps[key]

    # -- network --------------------------------------------------------------------
    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.dispatch is None:
            raise RuntimeError("VolumeServer.serve needs a dispatch function (vserver.handlers)")
        host, port = self.settings.listen
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock = listeners[0].socket
        bound = sock.getsockname()
        self.listen_address = f"{bound[0]}:{bound[1]}"
        info = os.path.join(self.settings.state_dir, "vserver.json")
        with open(info + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "listen": self.listen_address,
                       "key_file": self.settings.key_path, "server_id": self.server_id}, f)
        os.replace(info + ".tmp", info)
        await self.claim_loaded_groups()
        log.info("serving on %s (state %s, lease %.1fs + margin %.1fs)", self.listen_address,
                 self.settings.state_dir, self.terms.duration, self.terms.margin)
        print(f"vserver listening on {self.listen_address}", flush=True)
        try:
            async with trio.open_nursery() as nursery:
                self.background = nursery
                if self.settings.metrics is not None:
                    from fencevol import metrics as prometheus

                    from . import metrics
                    self.metrics_address = await nursery.start(
                        prometheus.serve, self.settings.metrics,
                        prometheus.registry_for(lambda: metrics.collect(self)))
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self._ownership_loop)
                for group in list(self.groups.values()):
                    nursery.start_soon(mirrors.resume_all, self, group)
                await nursery.start(trio.serve_listeners, self._handle_connection, listeners)
                task_status.started(self.listen_address)
        finally:
            try:
                os.unlink(info)
            except OSError:
                pass

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            peer = "?"
        if self.connections >= self.settings.max_connections:
            self._log_limited("connections", trio.current_time(),
                              "refusing connection from %s: %d connections open (the limit)",
                              peer, self.connections)
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await self._serve_connection(stream, peer)
        finally:
            self.connections -= 1

    async def _serve_connection(self, stream: trio.SocketStream, peer: str) -> None:
        set_keepalive(stream)
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
            try:
                with trio.fail_after(10):
                    await stream.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError) as exc:
                self._log_limited("tls", trio.current_time(), "connection from %s: TLS handshake "
                                  "failed (%s); a client without --tls-ca?", peer,
                                  exc.__cause__ or type(exc).__name__)
                await trio.aclose_forcefully(stream)
                return
        conn = FramedConnection(stream, max_json=wire.PREAUTH_MAX_JSON, max_payload=0)
        session = None
        try:
            with trio.fail_after(10):
                session = await self._handshake(conn, peer)
            conn.decoder.max_json = limits.MAX_REQUEST_JSON
            conn.decoder.max_payload = self.settings.max_payload
            await self._session_loop(session)
        except trio.TooSlowError:
            log.warning("connection from %s: handshake timed out", peer)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.error("connection from %s closed: %s", peer, exc)
            await self._send_error_quietly(conn, exc)
        except (AuthError, InUse) as exc:
            log.warning("connection from %s refused: %s", peer, exc)
            await self._send_error_quietly(conn, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("connection from %s lost: %s", peer, exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            if session is not None:
                self._end_session(session)
            await conn.aclose()

    async def _send_error_quietly(self, conn: FramedConnection, exc: FencevolError) -> None:
        with trio.move_on_after(1):
            try:
                await conn.send({"ok": False, "error": exc.to_wire()})
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _handshake(self, conn: FramedConnection, peer: str) -> Session:
        hs = ServerHandshake(self.key, fencevol.__version__, self.settings.require_node_credentials)
        await conn.send(hs.hello())
        msg, _ = await conn.receive()
        who = hs.receive_auth(msg)
        role, node, instance, credential = who.role, who.node, who.instance, who.credential
        session = Session(conn, role, node, peer, instance)
        session.credential = credential
        if role == "node":
            old = self.sessions.get(node)
            if old is not None and (instance is None or old.instance != instance):
                # Another process claims a node id whose session is alive (a process
                # that died closed its socket; a host that died is found by keepalive).
                raise InUse(f"node id {node} is already connected from {old.peer} by another "
                            "vclient process: two nodes configured with one --node-id?")
        await conn.send(who.reply({"id": self.server_id, "version": fencevol.__version__,
                                   "lease": self.lease_terms_wire()}))
        if role == "node":
            if old is not None:
                log.warning("node %d reconnected from %s; closing its old session from %s",
                            node, peer, old.peer)
                self._end_session(old)
                if old.cancel_scope:
                    old.cancel_scope.cancel()
            self.sessions[node] = session
            log.info("node %d connected from %s (%s)", node, peer,
                     "its node credential" if credential == "node" else "the cluster key")
        else:
            self.admin_sessions.add(session)
        return session

    def lease_terms_wire(self) -> dict:
        return self.terms.to_wire()

    def _end_session(self, session: Session) -> None:
        if session.role == "node":
            if self.sessions.get(session.node) is session:
                del self.sessions[session.node]
                log.info("node %d disconnected", session.node)
            for d in self.table.of_node(session.node):
                if d.session_id == session.id:
                    d.connected = False
            self.notify()
        else:
            self.admin_sessions.discard(session)

    async def _session_loop(self, session: Session) -> None:
        """Read requests and run each in its own task. When the reader stops
        (EOF, garbage, replaced session) requests already running finish: a
        configuration commit is never cut in half by a client going away."""
        limiter = trio.Semaphore(MAX_INFLIGHT_PER_CONNECTION)
        budget = limits.MemoryBudget(self.settings.session_memory, parent=self.memory)
        reader = limits.ChargedReader(session.conn, budget, self.settings.frame_timeout)
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    session.cancel_scope = scope
                    try:
                        while True:
                            await limiter.acquire()
                            try:
                                msg, payload, charge = await reader.receive()
                            except BaseException:
                                limiter.release()
                                raise
                            nursery.start_soon(self._run_request, self.dispatch, session, msg, payload,
                                               limiter, budget, charge)
                    except (ConnectionClosed, ProtocolError, trio.BrokenResourceError,
                            trio.ClosedResourceError, OSError) as exc:
                        error = exc
                # Nobody reads replies any more: requests that only wait (an attach
                # waiting out a conflict) give up; running ones finish.
                session.gone.set()
                self.notify()
        finally:
            reader.close()
        if error is not None and not isinstance(error, ConnectionClosed):
            raise error

    async def _run_request(self, dispatch, session, msg, payload, limiter, budget, charge) -> None:
        try:
            await self._answer(dispatch, session, msg, payload, limiter)
        finally:
            budget.give(charge)

    async def _answer(self, dispatch, session, msg, payload, limiter) -> None:
        rid = msg.get("id")
        try:
            if self.leader is not None:
                self.leader.check()         # after the request arrived: see vserver.leader
            result, out = await dispatch(self, session, msg, payload)
            reply = {"id": rid, "ok": True, "result": result}
        except FencevolError as exc:
            reply, out = {"id": rid, "ok": False, "error": exc.to_wire()}, b""
        except Exception as exc:  # one bad request never takes the server down
            log.exception("request %r from %s failed", msg.get("op"), session.peer)
            reply, out = {"id": rid, "ok": False,
                          "error": {"code": "internal", "message": f"internal error: {exc!r}"}}, b""
        finally:
            limiter.release()
        try:
            await session.conn.send(reply, out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
