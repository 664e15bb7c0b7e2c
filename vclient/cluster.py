"""The fence driver: cluster membership through the coordinator volume
(patent Figures 6-10) and fencing of the losers.

States: ``joining`` -> ``member`` -> (``racing``) -> ``member`` | ``ejected``;
``left`` after a graceful leave. While a membership change is resolved every
volume's gate is paused for ``membership`` (writes wait, reads pass); the winner's
side resumes only after the server confirmed the losers are fenced (S3)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fencevol import coord
from fencevol.auth import Credential
from fencevol.errors import (
    ChecksumError,
    Conflict,
    FencevolError,
    InvalidArgument,
    IOFailure,
    Unavailable,
)
from fencevol.protocol.messages import (
    AttachRequest,
    CoordWriteRequest,
    DetachRequest,
    FenceRequest,
    Message,
    ReadRequest,
    Victim,
)

from . import decisions
from .decisions import EJECTED, IDLE, JOINING, LEFT, MEMBER, RACING
from .heartbeat import Heartbeats

log = logging.getLogger("vclient.cluster")

HISTORY = 200


@dataclass
class ClusterOptions:
    cluster_id: str
    coordinator: str                                   # DG/NAME
    links: list[tuple[str, int]]                       # this node's heartbeat addresses
    peers: dict[int, list[tuple[str, int]]]            # node id -> its addresses, per link
    interval: float = 0.25
    timeout: float = 1.25
    join_timeout: float = 15.0
    race_timeout: float = 10.0
    minority_delay: float = 0.5
    auto_join: bool = True

    def __post_init__(self):
        coord.check_cluster_id(self.cluster_id)
        if self.coordinator.count("/") != 1:
            raise InvalidArgument(f"bad coordinator {self.coordinator!r}: expected DG/NAME")
        if not self.links:
            raise InvalidArgument("a cluster node needs at least one --heartbeat address")
        if not 0 < self.interval < self.timeout:
            raise InvalidArgument("heartbeat interval must be positive and below the timeout")


@dataclass
class Stats:
    races: int = 0
    races_won: int = 0
    race_seconds: float = 0.0       # summed over every race, won or lost
    fences_requested: int = 0
    fences_done: int = 0
    fence_seconds: float = 0.0      # summed over the confirmed fences
    last_change: dict = field(default_factory=dict)
    last_fence: dict = field(default_factory=dict)
    history: list = field(default_factory=list)     # bounded event log, wall-clock times

    def record(self, event: str, **fields) -> dict:
        entry = {"event": event, "at": time.time(), **fields}
        self.history.append(entry)
        del self.history[:-HISTORY]
        if event != "fenced":
            self.last_change = entry
        return entry


class NodeServices(Protocol):
    """What the fence driver needs from its node (vclient.node.Node provides it;
    tests pass a fake): call the server, pause, resume or fence every volume's
    gate, and the lease terms and credential it runs under."""

    node_id: int
    credential: Credential

    @property
    def lease(self) -> dict: ...

    async def request(self, msg: Message, payload: bytes = b"",
                      timeout: float = ...) -> tuple[Message, bytes]: ...

    def pause_all(self, reason: str) -> None: ...

    def resume_all(self, reason: str) -> None: ...

    def fence_all(self, why: str) -> None: ...


class FenceDriver:
    def __init__(self, node: NodeServices, opts: ClusterOptions):
        self.node = node
        self.opts = opts
        self.me = node.node_id
        self.state = IDLE
        self.generation = 0
        self.members: frozenset[int] = frozenset()
        self.incarnation = 0
        self.reason = ""
        self.stats = Stats()
        self.hb = Heartbeats(opts.cluster_id, self.me, node.credential, opts.links, opts.peers,
                             opts.interval, opts.timeout, self._snapshot, self._peer_changed)
        self._changed = trio.Event()
        self._busy = trio.Lock()          # one flow (join, leave, race) at a time
        self.left_nodes: set[int] = set()
        self.fencing: list[int] = []      # victims whose fence is in progress
        self.unfenced: dict[int, int] = {}  # victims whose fence failed: writes stay paused
        self._retry_fence_at = 0.0

    # -- heartbeat glue ---------------------------------------------------------------------
    def _snapshot(self) -> dict:
        return {"i": self.incarnation, "st": self.state, "g": self.generation, "m": self.members}

    def _peer_changed(self) -> None:
        self._changed.set()

    def _announce(self) -> None:
        self.hb.kick()

    async def start(self, nursery: trio.Nursery) -> None:
        await self.hb.open()
        nursery.start_soon(self.hb.run)
        nursery.start_soon(self._monitor)

    # -- coordinator access (through the server only, ¶0050) ---------------------------------
    async def _call(self, deadline: float, msg: Message, payload: bytes = b""):
        """A server call that gives up at ``deadline``: a server that is reachable by
        TCP but silent (its packets dropped) must not hold a race or a join past
        its timeout."""
        left = max(0.05, deadline - trio.current_time())
        return await self.node.request(msg, payload, timeout=left)

    async def _attach_coordinator(self, deadline: float) -> str:
        """Exclusive-write attach, retried while someone else holds it."""
        delay = 0.02
        while True:
            try:
                r, _ = await self._call(deadline, AttachRequest(self.opts.coordinator, "ew"))
                return r.delegation["id"]
            except (Conflict, Unavailable) as exc:
                if trio.current_time() + delay > deadline:
                    raise Unavailable(f"could not get the coordinator {self.opts.coordinator} "
                                      f"exclusively in time ({exc})") from None
                await trio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _read(self, deleg: str, deadline: float) -> coord.Membership:
        _, raw = await self._call(deadline, ReadRequest(deleg, offset=0, length=coord.BLOCK))
        return coord.decode(raw, f"coordinator {self.opts.coordinator}")

    async def _cas(self, deleg: str, read: coord.Membership, new: coord.Membership,
                   deadline: float) -> None:
        await self._call(deadline, CoordWriteRequest(deleg, expected_generation=read.generation),
                         coord.encode(new))

    async def _detach(self, deleg: str) -> None:
        try:
            with trio.move_on_after(5):
                await self.node.request(DetachRequest(deleg))
        except FencevolError as exc:
            log.warning("coordinator detach: %s", exc)

    def _adopt(self, m: coord.Membership) -> None:
        self.generation = m.generation
        self.members = m.members
        rec = m.record(self.me)
        if rec is not None:
            self.incarnation = rec.incarnation

    # -- join (Figure 6) ----------------------------------------------------------------------
    async def join(self) -> dict:
        async with self._busy:
            if self.state == MEMBER:
                return self.describe()
            problems = "; ".join(self.hb.problems.values())
            if problems:
                raise decisions.JoinRefused(f"refusing to join: {problems}")
            self.state = JOINING
            self._announce()
            # Hear the cluster for one timeout before judging who is a live member.
            await trio.sleep(self.opts.timeout)
            if self.hb.problems:
                self.state = IDLE
                raise decisions.JoinRefused("refusing to join: " + "; ".join(self.hb.problems.values()))
            deadline = trio.current_time() + self.opts.join_timeout
            while True:
                deleg = await self._attach_coordinator(deadline)
                try:
                    m = await self._read(deleg, deadline)
                    reachable = self.hb.reachable()
                    live = frozenset(p for p in reachable - {self.me}
                                     if self.hb.peers[p].state in (MEMBER, RACING))
                    try:
                        plan = decisions.plan_join(m, self.opts.cluster_id, self.me, live, time.time())
                    except decisions.JoinRefused:
                        # Members we hear but whose heartbeat still says "joining" got in
                        # first: look again once their announcement arrives.
                        pending = m.members - {self.me} - live
                        if pending and pending <= reachable and trio.current_time() < deadline:
                            plan = None
                        else:
                            raise
                    if plan is not None:
                        await self._cas(deleg, m, plan.new, deadline)
                except BaseException:
                    self.state = IDLE
                    raise
                finally:
                    await self._detach(deleg)
                if plan is not None:
                    break
                self.state = JOINING
                await trio.sleep(self.opts.interval * 2)
            if plan.crash_reset:
                log.warning("node %d was still recorded as a member (crashed without leaving); "
                            "reset its record (¶0056-57)", self.me)
            self._adopt(plan.new)
            self.state = MEMBER
            self.reason = ""
            self.left_nodes.clear()
            self._announce()
            self.stats.record("joined", generation=self.generation, incarnation=self.incarnation,
                              members=sorted(self.members))
            log.info("node %d joined cluster %s: generation %d, members %s, incarnation %d",
                     self.me, self.opts.cluster_id, self.generation, sorted(self.members),
                     self.incarnation)
            return self.describe()

    # -- leave (Figure 7) ---------------------------------------------------------------------
    async def leave(self) -> dict:
        async with self._busy:
            if self.state != MEMBER:
                raise InvalidArgument(f"node {self.me} is not a member (state {self.state})")
            deadline = trio.current_time() + self.opts.join_timeout
            deleg = await self._attach_coordinator(deadline)
            try:
                m = await self._read(deleg, deadline)
                new = decisions.plan_leave(m, self.opts.cluster_id, self.me, time.time())
                if new is not None:
                    await self._cas(deleg, m, new, deadline)
                    m = new
            finally:
                await self._detach(deleg)
            self._adopt(m)
            self.state = LEFT
            self._announce()
            self.stats.record("left", generation=self.generation)
            log.info("node %d left cluster %s (generation %d)", self.me, self.opts.cluster_id,
                     self.generation)
            return self.describe()

    # -- ejection -----------------------------------------------------------------------------
    def eject(self, why: str) -> None:
        if self.state == EJECTED:
            return
        log.error("node %d ejects itself from cluster %s: %s", self.me, self.opts.cluster_id, why)
        self.state = EJECTED
        self.reason = why
        self.stats.record("ejected", reason=why, generation=self.generation,
                          incarnation=self.incarnation)
        self.node.fence_all(f"ejected from cluster {self.opts.cluster_id}: {why}")
        self._announce()

    # -- membership change (Figures 8-10) ----------------------------------------------------------
    async def _monitor(self) -> None:
        while True:
            with trio.move_on_after(self.opts.interval / 2):
                await self._changed.wait()
            self._changed = trio.Event()
            if self.state != MEMBER or self._busy.locked():
                continue
            try:
                await self._check()
            except FencevolError as exc:
                log.error("membership check failed: %s", exc)

    def _view(self, node: int) -> decisions.PeerView | None:
        p = self.hb.peers.get(node)
        if p is None:
            return None
        return decisions.PeerView(p.node, p.state, p.generation, p.members, p.member_incarnation)

    def _newer_view(self) -> tuple[int, frozenset[int]] | None:
        return decisions.newer_view(self.generation, [self._view(n) for n in self.hb.peers],
                                    frozenset(self.hb.heard()))

    async def _check(self) -> None:
        if self.unfenced:
            if trio.current_time() < self._retry_fence_at:
                return
            self._retry_fence_at = trio.current_time() + 2.0
            async with self._busy:
                await self._fence(self.unfenced, self.unfenced)
            self.node.resume_all("membership")
            return
        newer = self._newer_view()
        if newer is not None:
            await self._follow(newer)
            return
        lost = self.members - self._participants() - {self.me}
        if lost:
            async with self._busy:
                await self._membership_change(lost)

    def _participants(self) -> frozenset[int]:
        return decisions.participants(self.me, self.hb.reachable(),
                                      {n: p.state for n, p in self.hb.peers.items()})

    async def _follow(self, view: tuple[int, frozenset[int]]) -> None:
        """A peer announces a newer membership (a join, a leave, or our racer won)."""
        gen, members = view
        leavers = frozenset(n for n, p in self.hb.peers.items() if p.state == LEFT)
        plan = decisions.follow(self.me, self.members, view, leavers)
        if plan.eject:
            self.eject(plan.eject)
            return
        self.generation, self.members = gen, members
        self.stats.record("follows", generation=gen, members=sorted(members))
        log.info("node %d follows generation %d: members %s", self.me, gen, sorted(members))
        victims = plan.victims
        if victims:
            self.node.pause_all("membership")
            async with self._busy:
                await self._fence(victims)
            self.node.resume_all("membership")

    async def _membership_change(self, lost: frozenset[int]) -> None:
        t0 = time.monotonic()
        self.node.pause_all("membership")
        # Peers cut at the same instant fall silent up to one heartbeat apart: let the
        # view settle before judging the subcluster (else a racer would count a peer
        # that is already gone and race as the majority).
        await trio.sleep(self.opts.interval * 1.5)
        sub = self._participants() & (self.members | {self.me})
        lost = self.members - sub
        racer = decisions.racer_of(sub)
        log.warning("node %d lost %s; subcluster %s, racer node %d", self.me, sorted(lost),
                    sorted(sub), racer)
        if racer == self.me:
            await self._race(sub)
        else:
            await self._await_racer(racer, lost)
        # Reached only when the fence (if any) was confirmed, or the node ejected
        # itself: an ejected node's gates are fenced, which dominates any pause, and
        # lifting the pause keeps a later rejoin from finding it still set. A fence
        # that failed raised past this: writes stay paused until it is confirmed.
        self.node.resume_all("membership")
        log.info("membership change handled in %.3fs: state %s, generation %d, members %s",
                 time.monotonic() - t0, self.state, self.generation, sorted(self.members))

    async def _race(self, sub: frozenset[int]) -> None:
        t0 = time.monotonic()
        try:
            await self._race_for(sub)
        finally:
            self.stats.race_seconds += time.monotonic() - t0

    async def _race_for(self, sub: frozenset[int]) -> None:
        self.state = RACING
        self.stats.races += 1
        self._announce()
        delay = decisions.race_delay(len(sub), len(self.members), self.opts.minority_delay)
        if delay:
            log.warning("node %d races for a minority (%d of %d members): starting %gs late so "
                        "that a larger side wins", self.me, len(sub), len(self.members), delay)
            await trio.sleep(delay)    # the larger side gets a head start
        deadline = trio.current_time() + self.opts.race_timeout
        try:
            deleg = await self._attach_coordinator(deadline)
        except Unavailable as exc:
            self.eject(f"lost the race: {exc}")
            return
        try:
            while True:
                m = await self._read(deleg, deadline)
                result = decisions.plan_race(m, self.opts.cluster_id, self.me, sub, time.time())
                if not result.won:
                    self._adopt(m)
                    self.eject(f"lost the race ({result.reason})")
                    return
                read = m
                if result.new is None:
                    self._adopt(m)
                    break
                try:
                    await self._cas(deleg, m, result.new, deadline)
                except Conflict:
                    continue          # changed under us: judge again on what is there now
                self._adopt(result.new)
                break
        except ChecksumError as exc:
            self.eject(f"coordinator unusable during the race: {exc}")
            return
        except FencevolError as exc:
            self.eject(f"race failed: {exc}")
            return
        finally:
            await self._detach(deleg)
        self.stats.races_won += 1
        self.state = MEMBER
        self._announce()
        self.stats.record("won race", generation=self.generation, members=sorted(self.members),
                          removed=sorted(result.victims))
        log.warning("node %d won the race: generation %d, members %s, removed %s", self.me,
                    self.generation, sorted(self.members), sorted(result.victims))
        await self._fence(result.victims, {v: read.record(v).incarnation for v in result.victims})

    async def _await_racer(self, racer: int, lost: frozenset[int]) -> None:
        """Figure 10, 1055/1060: follow the racer's result, or eject if it lost or
        went silent."""
        deadline = trio.current_time() + self.opts.race_timeout + self.opts.timeout
        while trio.current_time() < deadline:
            verdict = decisions.await_racer(self.me, self.generation, racer,
                                            racer in self.hb.reachable(), self._view(racer))
            if verdict.eject:
                self.eject(verdict.eject)
                return
            if verdict.view is not None:
                gen, members = verdict.view
                removed = self.members - members
                self.generation, self.members = gen, members
                self.stats.record("follows", generation=self.generation, members=sorted(self.members),
                                  racer=racer)
                log.warning("node %d: racer node %d won; generation %d, members %s", self.me,
                            racer, self.generation, sorted(self.members))
                await self._fence(removed)
                return
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
        self.eject(f"racer node {racer} did not finish the race in time")

    async def _fence(self, victims, incarnations: dict[int, int] | None = None) -> None:
        """Ask the server to fence ``victims`` (every survivor does, in parallel);
        returns once the server confirmed. Only the incarnation that was a member is
        fenced -- a victim that restarted and rejoined keeps its new one. The racer
        knows it from the coordinator; followers from what the victim last
        announced as a member."""
        victims = sorted(set(victims) - {self.me})
        if not victims:
            return
        incarnations = decisions.fence_incarnations(
            victims, incarnations or {},
            {n: p.member_incarnation for n, p in self.hb.peers.items()})
        self.stats.fences_requested += 1
        lease = self.node.lease
        timeout = lease["duration"] + lease.get("margin", 1.0) + 10
        t0 = time.monotonic()
        self.fencing = victims
        delay = 0.5
        try:
            while True:
                try:
                    r, _ = await self.node.request(FenceRequest(
                        self.opts.coordinator, [Victim(v, incarnations[v]) for v in victims]),
                        timeout=timeout)
                    break
                except (Unavailable, ChecksumError, IOFailure) as exc:
                    # Not confirmed: writes stay paused while it is retried.
                    log.warning("fence of nodes %s not confirmed (%s); retrying in %.1fs",
                                victims, exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                except FencevolError as exc:
                    self.unfenced = {v: incarnations[v] for v in victims}
                    log.critical("fence of nodes %s refused (%s): writes stay paused; it is "
                                 "retried", victims, exc)
                    raise
        finally:
            self.fencing = []
        self.unfenced = {}
        self.stats.fences_done += 1
        self.stats.fence_seconds += time.monotonic() - t0
        self.stats.last_fence = self.stats.record(
            "fenced", victims=victims, incarnations={str(v): i for v, i in incarnations.items()},
            seconds=round(time.monotonic() - t0, 3),
            acknowledged=r.acknowledged, lease_expired=r.lease_expired,
            generation=self.generation)
        log.warning("nodes %s fenced (%.3fs; acknowledged by %s, lease ran out for %s)", victims,
                    time.monotonic() - t0, r.acknowledged, r.lease_expired)

    # -- status ---------------------------------------------------------------------------------------
    def describe(self) -> dict:
        now = time.monotonic()
        return {"cluster_id": self.opts.cluster_id, "coordinator": self.opts.coordinator,
                "state": self.state, "reason": self.reason, "generation": self.generation,
                "members": sorted(self.members), "incarnation": self.incarnation,
                "reachable": sorted(self.hb.reachable(now)),
                "problems": sorted(self.hb.problems.values()),
                "peers": [p.describe(now) for p in sorted(self.hb.peers.values(), key=lambda p: p.node)],
                "heartbeat": {"interval": self.opts.interval, "timeout": self.opts.timeout,
                              "links": [f"{h}:{p}" for h, p in self.opts.links],
                              "sent": self.hb.sent, "received": self.hb.received},
                "races": self.stats.races, "races_won": self.stats.races_won,
                "fencing": self.fencing, "unfenced": sorted(self.unfenced),
                "last_fence": self.stats.last_fence,
                "last_change": self.stats.last_change, "history": self.stats.history}

