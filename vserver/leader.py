"""Leadership of an HA control plane on etcd (``vserver serve --etcd``), and the
leader's state in etcd.

Several servers share one etcd cluster and one cluster name. Each holds an etcd
lease of ``ttl`` seconds and keeps it alive; the one whose transaction creates
the key ``/fencevol/<cluster>/leader`` (attached to its lease) is the leader. The
key's create revision is the leader's **epoch**, its fencing token: every state
write is a transaction that succeeds only while the leader key still has that
create revision. The others stand by and retry every ``poll`` seconds; the key
disappears when the leader's lease runs out (kill -9, partition) or is revoked
(clean stop).

When may the leader act? It sends a keep-alive at ``t0`` (its own clock); etcd
processes it later, so the lease cannot end at etcd before ``t0 + ttl``. The
leader counts itself certain until ``t0 + ttl - margin`` (``margin`` covers
clock-rate skew) and refuses every request after that (``check``; NotLeader)
until a keep-alive succeeds again. A new leader is elected only after the old
lease ended at etcd, so the old leader has stopped granting before the new one
starts -- even if it was frozen: it checks *after* the request arrived, so a
client's lease, counted from when it sent the request, began before the old
leader's lease ended and before the new leader loaded the delegation table
(which counts every delegation from its own load). A keep-alive answered with
TTL 0, or a state transaction whose leader check fails, means the lease is gone:
``lost`` is set and the process starts over as a standby (vserver.main).

State kept in etcd: ``state`` (known disks and groups) and ``delegations`` (the
table a restart would reload). Disk-group configuration, coordinator volumes
(membership, incarnations) and reservation tables live on the shared disks,
where every leader reads them."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass

import trio

from fencevol.errors import InvalidArgument, NotLeader, Unavailable

from . import etcd

log = logging.getLogger("vserver.leader")

STATE_FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class HaTerms:
    ttl: int = 2             # etcd lease TTL, seconds (etcd's minimum: 1.5 x its election timeout)
    margin: float = 0.5      # stop acting this long before the lease could end at etcd
    poll: float = 0.25       # a standby looks for a vacant leader key this often

    def __post_init__(self):
        if not (self.ttl >= 2 and 0 <= self.margin < self.ttl / 2 and self.poll > 0):
            raise InvalidArgument("etcd lease: need ttl >= 2 s and 0 <= margin < ttl / 2")

    @property
    def keepalive_interval(self) -> float:
        return self.ttl / 4


@dataclass(frozen=True)
class HaSettings:
    endpoints: tuple[str, ...]
    cluster: str = "default"
    terms: HaTerms = HaTerms()

    def __post_init__(self):
        if not NAME_RE.fullmatch(self.cluster):
            raise InvalidArgument(f"bad HA cluster name {self.cluster!r}: "
                                  "1-64 of A-Z a-z 0-9 . _ -")


class Leadership:
    def __init__(self, client: etcd.EtcdClient, settings: HaSettings, me: dict):
        self.client = client
        self.settings = settings
        self.terms = settings.terms
        self.me = me                           # what the leader key says: id, address, host, pid
        self.prefix = f"/fencevol/{settings.cluster}/"
        self.lease = 0
        self.epoch = 0                         # create revision of our leader key; 0: standby
        self.valid_until = -math.inf           # our clock: certain of the lease until here
        self.lost = trio.Event()
        self.lost_reason = ""
        self.elected_at = 0.0
        self._granted = trio.Event()

    @property
    def leader_key(self) -> str:
        return self.prefix + "leader"

    @property
    def owner_id(self) -> str:
        """Who owns the disk groups on disk (vserver.ownership): this leadership."""
        return f"ha:{self.settings.cluster}:{self.epoch}"

    def valid(self) -> bool:
        return self.epoch > 0 and not self.lost.is_set() and trio.current_time() < self.valid_until

    def check(self) -> None:
        """Before acting as the leader (every request): NotLeader unless certain."""
        if self.epoch == 0:
            raise NotLeader("this server is a standby; ask the leader")
        if self.lost.is_set():
            raise NotLeader(f"this server lost the leadership ({self.lost_reason})")
        if trio.current_time() >= self.valid_until:
            raise NotLeader("this server cannot reach etcd to confirm its leadership; "
                            "it has stopped granting")

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            log.error("%s: %s", "leadership lost" if self.epoch else
                      "etcd lease lost while standing by", reason)
            self.lost.set()

    # -- the lease -----------------------------------------------------------------------------
    async def keep_alive(self) -> None:
        """Grant our lease, then refresh it every ``ttl / 4`` for as long as it lives."""
        while not self.lease:
            try:
                self.lease, ttl = await self.client.grant(self.terms.ttl)
                self.valid_until = trio.current_time() + ttl - self.terms.margin
            except Unavailable as exc:
                log.warning("etcd: %s; retrying", exc)
                await trio.sleep(self.terms.keepalive_interval)
        self._granted.set()
        while True:
            t0 = trio.current_time()
            try:
                with trio.move_on_after(self.terms.keepalive_interval):
                    ttl = await self.client.keepalive(self.lease)
                    if ttl <= 0:
                        self._lose("etcd lease expired (this server was cut off or frozen "
                                   "longer than its TTL)")
                        return
                    self.valid_until = t0 + ttl - self.terms.margin
            except Unavailable as exc:
                if self.epoch and trio.current_time() >= self.valid_until:
                    log.warning("etcd unreachable, not granting: %s", exc)
            await trio.sleep_until(t0 + self.terms.keepalive_interval)

    async def campaign(self) -> None:
        """Stand by until this server is the leader, or until its etcd lease ran
        out while it stood by (``lost``: the caller starts over with a new one)."""
        await self._granted.wait()
        seen = None
        while not self.lost.is_set():
            try:
                ok, rev, resp = await self.client.txn(
                    [etcd.cmp_create_revision(self.leader_key, 0)],
                    [etcd.put(self.leader_key, json.dumps(self.me), self.lease)],
                    [etcd.get(self.leader_key)])
            except Unavailable as exc:
                log.warning("etcd: %s; still standing by", exc)
                await trio.sleep(self.terms.poll)
                continue
            if ok:
                self.epoch = rev
                self.elected_at = trio.current_time()
                log.info("elected leader of %s (epoch %d)", self.settings.cluster, rev)
                return
            kvs = etcd.range_kvs(resp[0]) if resp else []
            holder = kvs[0].value.decode(errors="replace") if kvs else "?"
            if holder != seen:
                seen = holder
                log.info("standing by; the leader is %s", holder)
            await trio.sleep(self.terms.poll)

    async def resign(self) -> None:
        """Clean stop: end our lease now, so a standby takes over at once."""
        if self.lease and not self.lost.is_set():
            with trio.move_on_after(2):
                try:
                    await self.client.revoke(self.lease)
                except Unavailable as exc:
                    log.warning("etcd lease not revoked (%s); it runs out in %ds", exc, self.terms.ttl)

    # -- the state -----------------------------------------------------------------------------
    async def load(self) -> tuple[dict | None, list | None]:
        """The state and delegation table the last leader saved (None: never saved)."""
        out = []
        for name in ("state", "delegations"):
            kv = await self.client.get(self.prefix + name)
            if kv is None:
                out.append(None)
                continue
            try:
                doc = json.loads(kv.value)
                if doc.get("format") != STATE_FORMAT:
                    raise ValueError(f"format {doc.get('format')!r}, this server reads {STATE_FORMAT}")
                out.append(doc["data"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InvalidArgument(f"etcd key {self.prefix + name} is unreadable: {exc}") from None
        return out[0], out[1]

    async def save(self, name: str, data) -> None:
        """Write one state key, only while we are still the leader (fencing token:
        the leader key's create revision). NotLeader if we are not."""
        self.check()
        body = json.dumps({"format": STATE_FORMAT, "data": data}, sort_keys=True)
        ok, _, _ = await self.client.txn([etcd.cmp_create_revision(self.leader_key, self.epoch)],
                                         [etcd.put(self.prefix + name, body)])
        if not ok:
            self._lose(f"the leader key is no longer ours (epoch {self.epoch})")
            raise NotLeader(f"this server lost the leadership ({self.lost_reason})")
