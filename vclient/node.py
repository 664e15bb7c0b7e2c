"""The node daemon: server link, attached volumes, lease renewal, server pushes,
the FUSE mount and the local control channel."""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

import trio

from fencevol import auth, coord, tls
from fencevol import clock as fvclock
from fencevol.errors import (
    AlreadyExists,
    AuthError,
    FencevolError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from fencevol.lease import LeaseTerms
from fencevol.modes import parse_mode
from fencevol.cli import LOG_CONTEXT
from fencevol.sdnotify import Notifier
from fencevol.protocol.messages import (
    AttachRequest,
    DetachRequest,
    MapAckRequest,
    MapPush,
    Message,
    ReinstatePush,
    RenewRequest,
    RevokeAckRequest,
    RevokePush,
    push_from_wire,
)

from . import control
from .cluster import EJECTED, MEMBER, ClusterOptions, FenceDriver
from .dio import DirectIO
from .disks import BackingDisks
from .gate import CLOSED, FENCED, PAUSED, FenceGate
from .watchdog import Watchdog
from .link import ServerLink
from .volume import AttachedVolume

log = logging.getLogger("vclient")

DEFAULT_RUN_DIR = "/run/fencevol"


@dataclass
class NodeOptions:
    node_id: int
    servers: list[tuple[str, int]]      # one, or the servers of an HA control plane
    key_file: str
    mount: str
    attach: list[tuple[str, str]] = field(default_factory=list)
    pause_timeout: float = 30.0
    control_path: str = ""
    disk_paths: dict[str, str] = field(default_factory=dict)
    remote_disks: set[str] = field(default_factory=set)
    max_tasks: int = 99
    watchdog: bool = True
    watchdog_slack: float = 0.5
    hw_watchdog: str = ""
    cluster: ClusterOptions | None = None
    tls_ca: str = ""
    metrics: tuple[str, int] | None = None     # serve Prometheus metrics here

    def __post_init__(self):
        # Resolved once, before mounting: stat-ing our own mount point from the
        # thread that serves it would deadlock.
        self.mount = os.path.realpath(self.mount)
        if not self.control_path:
            self.control_path = control.default_path(self.node_id)


class Node:
    def __init__(self, opts: NodeOptions):
        self.opts = opts
        self.credential = auth.load_credential(opts.key_file)
        if self.credential.node not in (None, opts.node_id):
            raise AuthError(f"{opts.key_file} is node {self.credential.node}'s credential, "
                            f"not node {opts.node_id}'s")
        self.volumes: dict[str, AttachedVolume] = {}
        self.backing = BackingDisks(opts.disk_paths, opts.remote_disks)
        self.dio = DirectIO()
        self.watchdog = Watchdog(opts.node_id, opts.watchdog_slack, opts.hw_watchdog,
                                 on_down=lambda why: self.pause_all("watchdog"),
                                 on_up=lambda: self.resume_all("watchdog")) if opts.watchdog else None
        self._renew_failures = 0
        self.link = ServerLink(opts.servers, self.credential.key, opts.node_id, self._on_push,
                               self._on_connect,
                               tls.client_context(opts.tls_ca) if opts.tls_ca else None)
        self.mount = None
        self.started = time.time()
        self._nursery: trio.Nursery | None = None
        self._attach_lock = trio.Lock()
        self._reattaching: set[str] = set()
        self._stopping = trio.Event()
        self.systemd = Notifier()         # Type=notify under systemd; does nothing elsewhere
        self.metrics_address = ""
        LOG_CONTEXT.append(self._log_context)
        # Registration key: cluster nodes get their incarnation from the coordinator
        # at join; a standalone node picks a random one per start.
        self.cluster = FenceDriver(self, opts.cluster) if opts.cluster else None
        self._incarnation = secrets.randbits(32) or 1
        self.detached_on_leave: list[tuple[str, str]] = []

    @property
    def key(self) -> int:
        if self.cluster is not None:
            return coord.registration_key(self.cluster.opts.cluster_id, self.opts.node_id,
                                          self.cluster.incarnation)
        return coord.registration_key("", self.opts.node_id, self._incarnation)

    # -- what the fence driver uses (vclient.cluster.NodeServices) ---------------------------
    @property
    def node_id(self) -> int:
        return self.opts.node_id

    async def request(self, msg: Message, payload: bytes = b"",
                      timeout: float = math.inf) -> tuple[Message, bytes]:
        return await self.link.request(msg, payload, timeout)

    # -- lease terms (from the server's hello) -------------------------------------------------
    @property
    def lease(self) -> dict:
        return LeaseTerms.from_wire(self.link.server_info.get("lease")).to_wire()

    def _lease_window(self, sent_at: float) -> tuple[float, float]:
        """(write deadline, lease end) on this node's clock for a lease requested at
        ``sent_at``: writes start before the deadline and finish by the end."""
        lease = self.lease
        end = sent_at + lease["duration"]
        return end - lease["guard"], end

    # -- life cycle ---------------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from fuse_fs.fs import VolumeFS
        from fuse_fs.mount import Mount, prepare_mountpoint
        prepare_mountpoint(self.opts.mount)             # fail early on a bad mount point
        control_listener = await control.listen(self.opts.control_path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_signals)
                nursery.start_soon(self.dio.pump)
                if self.opts.metrics is not None:
                    from fencevol import metrics

                    from . import metrics as node_metrics
                    self.metrics_address = await nursery.start(
                        metrics.serve, self.opts.metrics,
                        metrics.registry_for(lambda: node_metrics.collect(self)))
                if self.watchdog is not None:
                    await self.watchdog.start()
                    nursery.start_soon(self.watchdog.run)
                await nursery.start(self.link.run)
                if self.watchdog is not None:
                    budget = self.watchdog.arm(self.lease)
                    log.info("watchdog armed: kills this agent after %.2fs without progress, "
                             "or when a write outlives its lease", budget)
                if self.cluster is not None:
                    await self.cluster.start(nursery)
                    if self.cluster.opts.auto_join:
                        await self.cluster.join()
                for name, mode in self.opts.attach:
                    await self.attach(name, mode)
                self.mount = Mount(VolumeFS(self), self.opts.mount, self.opts.max_tasks,
                                   io=self.dio)
                self.mount.mount()
                fuse_fd = self.mount.device_fd()
                if fuse_fd is not None:
                    self.dio.linger_with(fuse_fd)
                nursery.start_soon(self._serve_fuse)
                nursery.start_soon(self._renew_loop)
                nursery.start_soon(control.serve, control_listener, self)
                log.info("node %d ready: %d volume(s) under %s", self.opts.node_id,
                         len(self.volumes), self.opts.mount)
                print(f"vclient node {self.opts.node_id} mounted {self.opts.mount}", flush=True)
                self.systemd.ready(f"node {self.opts.node_id}: {len(self.volumes)} volume(s) "
                                   f"under {self.opts.mount}")
                nursery.start_soon(self.systemd.keep_alive, self._healthy)
                task_status.started()
                await self._stopping.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            if self.mount is not None:
                self.mount.close()
            await control_listener.aclose()
            control.remove(self.opts.control_path)
            self.dio.close()
            self.backing.close()
            if self.watchdog is not None:
                self.watchdog.close()

    def _log_context(self) -> dict:
        out = {"node_id": self.opts.node_id}
        if self.cluster is not None:
            out["incarnation"] = self.cluster.incarnation
            out["generation"] = self.cluster.generation
        return out

    def _healthy(self) -> bool:
        """Feed systemd's watchdog only while the node's own fencing watchdog is up:
        without it writes are paused, and a restart brings it back."""
        return self.watchdog is None or not self.watchdog.down_reason

    async def _serve_fuse(self) -> None:
        try:
            await self.mount.serve()
        finally:
            self._stopping.set()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s, unmounting", signal.Signals(signum).name)
                self.systemd.stopping("unmounting")
                self.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        """Unmount, then release every delegation so others need not wait out leases."""
        if self.mount is not None:
            self.mount.terminate()
        with trio.move_on_after(5):
            for name in list(self.volumes):
                try:
                    await self.detach(name)
                except FencevolError as exc:
                    log.warning("detach %s at shutdown: %s", name, exc)

    # -- attach / detach ---------------------------------------------------------------------------
    async def attach(self, name: str, mode: str = "rw") -> AttachedVolume:
        mode = parse_mode(mode)
        async with self._attach_lock:
            vol = self.volumes.get(name)
            if vol is not None:
                if vol.mode != mode:
                    raise AlreadyExists(f"{name} is already attached in mode {vol.mode}; detach first")
                return vol
            if self.cluster is not None and self.cluster.state != MEMBER:
                raise InvalidArgument(f"node {self.opts.node_id} is not a member of cluster "
                                      f"{self.cluster.opts.cluster_id} (state "
                                      f"{self.cluster.state}); run `vclient join` first")
            slot_index, slot = self.watchdog.slot() if self.watchdog else (-1, None)
            vol = AttachedVolume(name, mode, self.link, self.backing, self.dio,
                                 FenceGate(self.opts.pause_timeout, slot=slot))
            vol.watchdog_slot = slot_index
            if self.watchdog is not None and self.watchdog.down_reason:
                vol.gate.pause("watchdog")
            try:
                await self._grant(vol)
            except BaseException:
                self._release_slot(vol)
                raise
            self.volumes[name] = vol
        log.info("attached %s (%s), delegation %s, %d bytes", name, mode, vol.delegation, vol.size)
        await self._fs_changed(name)
        return vol

    async def _grant(self, vol: AttachedVolume) -> None:
        sent = fvclock.now()
        reply, _ = await self.link.request(AttachRequest(vol.name, vol.mode, self.key))
        vol.delegation = reply.delegation["id"]
        vol.install(reply.map, reply.volume)
        vol.gate.renewed(*self._lease_window(sent))

    def _release_slot(self, vol: AttachedVolume) -> None:
        if self.watchdog is not None and vol.watchdog_slot >= 0:
            self.watchdog.release(vol.watchdog_slot)
            vol.watchdog_slot = -1

    async def detach(self, name: str) -> None:
        vol = self.volumes.pop(name, None)
        if vol is None:
            raise NotFound(f"{name} is not attached on this node")
        vol.gate.close()
        await vol.gate.drain()
        self._release_slot(vol)
        try:
            await vol.fsync()
        except FencevolError as exc:
            log.warning("final sync of %s failed: %s", name, exc)
        await self._fs_changed(name)
        try:
            await self.link.request(DetachRequest(vol.delegation), timeout=5)
        except (Unavailable, NotFound) as exc:
            log.warning("detach %s: server did not release the delegation (%s); it expires "
                        "with its lease", name, exc)
        log.info("detached %s", name)

    async def _fs_changed(self, name: str) -> None:
        if self.mount is not None and self.mount.mounted:
            await self.mount.fs.volume_changed(name)

    # -- leases ---------------------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            await trio.sleep(self.lease["renew_interval"])
            await self.renew_all()

    async def renew_all(self) -> None:
        vols = [v for v in self.volumes.values()
                if v.delegation and v.gate.state not in (FENCED, CLOSED)]
        if not vols:
            return
        sent = fvclock.now()
        try:
            reply, _ = await self.link.request(RenewRequest([v.delegation for v in vols]),
                                               timeout=self.lease["renew_interval"])
        except Unavailable as exc:
            log.debug("renewal failed: %s", exc)
            self._renew_failures += 1
            if self._renew_failures >= 2 and self.link.connected:
                # A frozen or cut-off leader keeps the connection up but answers
                # nothing (or NotLeader): another server may be leading by now.
                self._renew_failures = 0
                await self.link.drop(f"{type(exc).__name__}: {exc}")
            return
        self._renew_failures = 0
        window = self._lease_window(sent)
        for v in vols:
            r = reply.result(v.delegation)
            if r.ok:
                v.gate.renewed(*window)
            elif r.state == "fenced":
                self._fenced(f"registration on {v.name} was preempted")
            elif r.state in ("revoking", "revoked") and v.gate.state is PAUSED:
                continue          # reconfiguration in progress: wait for reinstate
            else:
                self._lost(v, (r.error or {}).get("message", "renewal refused"))

    def _lost(self, vol: AttachedVolume, why: str) -> None:
        """The server no longer honours the delegation: stop writes, get a new one."""
        vol.gate.expire()
        if vol.name in self._reattaching or self._nursery is None:
            return
        log.warning("%s: delegation lost (%s); re-attaching", vol.name, why)
        self._reattaching.add(vol.name)
        self._nursery.start_soon(self._reattach, vol)

    async def _reattach(self, vol: AttachedVolume) -> None:
        try:
            while self.volumes.get(vol.name) is vol and vol.gate.state not in (FENCED, CLOSED):
                old_size = vol.size
                try:
                    await vol.gate.drain()
                    await self._grant(vol)
                except FencevolError as exc:
                    log.warning("%s: re-attach failed: %s", vol.name, exc)
                    await trio.sleep(self.lease["renew_interval"])
                    continue
                log.info("%s: re-attached, delegation %s", vol.name, vol.delegation)
                if vol.size != old_size:
                    await self._fs_changed(vol.name)
                return
        finally:
            self._reattaching.discard(vol.name)

    async def _on_connect(self) -> None:
        """After (re)connecting: check the lease terms against the watchdog (the
        server may have restarted with others), then reclaim every delegation
        (server restart grace)."""
        if self.watchdog is not None and self.watchdog.budget:
            try:
                self.watchdog.arm(self.lease)
                self.resume_all("watchdog-terms")
            except InvalidArgument as exc:
                log.critical("the server's lease terms leave the watchdog no time (%s); "
                             "writes are paused", exc)
                self.pause_all("watchdog-terms")
        if self.volumes:
            log.info("reclaiming %d delegation(s)", len(self.volumes))
            await self.renew_all()

    # -- server pushes ------------------------------------------------------------------------------
    def _by_delegation(self, deleg: object) -> AttachedVolume | None:
        for v in self.volumes.values():
            if v.delegation == deleg:
                return v
        return None

    def _on_push(self, msg: dict, payload: bytes) -> None:
        """Called by the link's reader in stream order: state changes happen here,
        follow-up calls run in tasks."""
        try:
            push = push_from_wire(msg)
        except InvalidArgument as exc:
            log.warning("ignoring push %r: %s", msg, exc)
            return
        vol = self._by_delegation(push.delegation)
        if isinstance(push, RevokePush) and push.reason == "fence":
            self._fenced(f"fenced by the server ({vol.name if vol else 'unknown volume'})")
            self._nursery.start_soon(self._ack_revoke, vol, push.delegation)
        elif isinstance(push, RevokePush):
            if vol is not None:
                vol.gate.pause(push.reason)
                log.info("%s: delegation revoked (%s); pausing I/O", vol.name, push.reason)
            self._nursery.start_soon(self._ack_revoke, vol, push.delegation)
        elif isinstance(push, MapPush) and vol is not None:
            vol.adopt(push.map)
            self._nursery.start_soon(self._ack_map, vol, push.delegation,
                                     int(push.map.get("generation", 0)))
        elif isinstance(push, ReinstatePush) and vol is not None:
            old = vol.size
            vol.install(push.map)
            log.info("%s: reinstated with a new map (%d -> %d bytes)", vol.name, old, vol.size)
            self._nursery.start_soon(self._after_reinstate, vol, old != vol.size)
        else:
            log.warning("ignoring push %r", msg)

    def _fenced(self, why: str) -> None:
        """The server fenced this node: close every gate (and leave the cluster)."""
        if self.cluster is not None and self.cluster.state != EJECTED:
            self.cluster.eject(why)
        else:
            self.fence_all(why)

    def fence_all(self, why: str) -> None:
        for v in self.volumes.values():
            if v.gate.state != "fenced":
                log.error("%s: fenced (%s); writes now fail", v.name, why)
            v.gate.fence(why)

    def pause_all(self, reason: str) -> None:
        for v in self.volumes.values():
            v.gate.pause(reason)

    def resume_all(self, reason: str) -> None:
        for v in self.volumes.values():
            v.gate.resume(reason)

    async def rejoin(self) -> dict:
        """Join the cluster (again): new incarnation, new registration key, fresh
        delegations for every volume; only then do the gates reopen (¶0007)."""
        info = await self.cluster.join()
        for name, mode in self.detached_on_leave:
            if name not in self.volumes:
                try:
                    await self.attach(name, mode)
                except FencevolError as exc:
                    log.error("re-attach of %s after join failed: %s", name, exc)
        self.detached_on_leave = []
        for vol in list(self.volumes.values()):
            if vol.gate.state == "fenced":
                await vol.gate.drain()
                await self._grant(vol)
                vol.gate.unfence()
                log.info("%s: re-attached after rejoin, delegation %s", vol.name, vol.delegation)
        return info

    async def leave(self) -> dict:
        """Figure 7: leave the membership, then detach every data volume."""
        info = await self.cluster.leave()
        self.detached_on_leave = [(v.name, v.mode) for v in self.volumes.values()]
        for name in list(self.volumes):
            await self.detach(name)
        return info

    async def _ack_map(self, vol: AttachedVolume, deleg: str, generation: int) -> None:
        """Acknowledge a new map once no write under an older one is in flight: the
        server counts on every write after the acknowledgement following it."""
        await vol.writes_before()
        try:
            await self.link.request(MapAckRequest(deleg, generation))
        except FencevolError as exc:
            log.warning("%s: map acknowledgement failed: %s", vol.name, exc)

    async def _ack_revoke(self, vol: AttachedVolume | None, deleg: str) -> None:
        if vol is not None:
            await vol.gate.drain()
        try:
            await self.link.request(RevokeAckRequest(deleg))
        except FencevolError as exc:
            log.warning("revoke acknowledgement failed: %s", exc)

    async def _after_reinstate(self, vol: AttachedVolume, resized: bool) -> None:
        await self.renew_all()
        if resized:
            await self._fs_changed(vol.name)

    # -- status ----------------------------------------------------------------------------------------
    def status(self) -> dict:
        st = {
            "node": self.opts.node_id, "pid": os.getpid(), "mount": self.opts.mount,
            "control": self.opts.control_path, "started": self.started,
            "server": {"address": self.link.where, "connected": self.link.connected,
                       "connects": self.link.connects, "last_error": self.link.last_error,
                       "lease": self.lease, "credential": self.credential.kind,
                       "tls": self.link.tls is not None},
            "volumes": [v.describe() for v in sorted(self.volumes.values(), key=lambda v: v.name)],
            "key": coord.format_key(self.key),
            "fuse": self.mount.stats() if self.mount is not None else None,
            "io": self.dio.describe(),
            "watchdog": self.watchdog.describe() if self.watchdog else {"enabled": False},
            "metrics": self.metrics_address,
        }
        if self.cluster is not None:
            st["cluster"] = self.cluster.describe()
        return st

    async def control_request(self, op: str, args: dict) -> dict:
        if op == "status":
            return self.status()
        if op == "attach":
            vol = await self.attach(str(args.get("volume", "")), str(args.get("mode", "rw")))
            return vol.describe()
        if op == "detach":
            await self.detach(str(args.get("volume", "")))
            return {"detached": args.get("volume")}
        if op in ("join", "leave"):
            if self.cluster is None:
                raise InvalidArgument("this vclient runs without a cluster (--cluster-id)")
            return await (self.rejoin() if op == "join" else self.leave())
        raise InvalidArgument(f"unknown control operation {op!r}")
