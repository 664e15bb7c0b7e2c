"""Delegation bookkeeping (sans-IO; the caller passes the monotonic time).

A delegation lets one node access one volume in one mode until its lease ends.
States:

* ``active``   -- granted or renewed; renewable until the lease ends;
* ``revoking`` -- the server asked the holder to stop (reconfiguration or fence)
                  and waits for its acknowledgement;
* ``revoked``  -- the holder acknowledged: it has no access, and may be reinstated
                  (after a reconfiguration) or dropped (after a fence);
* ``restored`` -- reloaded after a server restart; the holder may reclaim it.

S2: a delegation *may be valid* unless it is ``revoked`` or the server's clock is
past ``granted_at + duration + margin``. Conflicting access is granted only when no
conflicting delegation may be valid.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fencevol.errors import Revoked
from fencevol.lease import LeaseTerms
from fencevol.modes import conflicts

ACTIVE, REVOKING, REVOKED, RESTORED = "active", "revoking", "revoked", "restored"


@dataclass
class Delegation:
    id: str
    volume: str          # "DG/VOL"
    node: int
    mode: str
    granted_at: float
    state: str = ACTIVE
    reason: str = ""     # why revoking/revoked: "reconfigure", "fence", "detach"
    connected: bool = True
    key: int = 0         # the node's registration key when granted
    session_id: int = 0  # the server session that last granted/renewed it
    map_gen: int = 0     # the newest map (configuration generation) the holder has
    map_want: int = 0    # a map update waits for it: not renewed until map_gen reaches it

    def to_json(self) -> dict:
        return {"id": self.id, "volume": self.volume, "node": self.node, "mode": self.mode,
                "key": self.key}


class DelegationTable:
    def __init__(self, terms: LeaseTerms):
        self.terms = terms
        self.by_id: dict[str, Delegation] = {}

    # -- queries ---------------------------------------------------------------
    def may_be_valid(self, d: Delegation, now: float) -> bool:
        return d.state != REVOKED and now < self.terms.server_safe_after(d.granted_at)

    def on_volume(self, volume: str) -> list[Delegation]:
        return [d for d in self.by_id.values() if d.volume == volume]

    def of_node(self, node: int) -> list[Delegation]:
        return [d for d in self.by_id.values() if d.node == node]

    def held(self, volume: str, node: int, key: int = 0) -> Delegation | None:
        """The delegation of this holder -- node *and* registration key: a restarted
        node (new incarnation, new key) is another holder than its old self."""
        for d in self.by_id.values():
            if d.volume == volume and d.node == node and d.key == key:
                return d
        return None

    def blockers(self, volume: str, node: int, mode: str, now: float, key: int = 0) -> list[Delegation]:
        """Other holders' delegations that conflict with ``mode`` and may be valid."""
        return [d for d in self.on_volume(volume)
                if (d.node != node or d.key != key) and conflicts(d.mode, mode)
                and self.may_be_valid(d, now)]

    def live(self, d: Delegation, now: float) -> bool:
        """Held by a connected holder that keeps renewing: waiting will not free it."""
        return d.state == ACTIVE and d.connected and now < self.terms.server_expiry(d.granted_at)

    def next_deadline(self, ds: list[Delegation]) -> float:
        """When the first of ``ds`` stops possibly being valid."""
        return min(self.terms.server_safe_after(d.granted_at) for d in ds)

    # -- transitions -------------------------------------------------------------
    def grant(self, volume: str, node: int, mode: str, now: float, key: int = 0,
              session_id: int = 0) -> Delegation:
        d = Delegation(secrets.token_hex(8), volume, node, mode, now, key=key,
                       session_id=session_id)
        self.by_id[d.id] = d
        return d

    def renew(self, deleg_id: str, node: int, now: float, session_id: int = 0) -> Delegation:
        """Extend an ``active`` lease or reclaim a ``restored`` one. Raises ``Revoked``
        when it is unknown, someone else's, being revoked, or past its lease."""
        d = self.by_id.get(deleg_id)
        if d is None or d.node != node:
            raise Revoked(f"delegation {deleg_id} is not held by node {node}")
        if d.state in (REVOKING, REVOKED):
            raise Revoked(f"delegation {deleg_id} on {d.volume} is revoked ({d.reason or 'by server'})")
        if now >= self.terms.server_expiry(d.granted_at):
            raise Revoked(f"delegation {deleg_id} on {d.volume} expired")
        d.state = ACTIVE
        d.granted_at = now
        d.connected = True
        d.session_id = session_id
        return d

    def begin_revoke(self, d: Delegation, reason: str) -> None:
        d.state = REVOKING
        d.reason = reason

    def acknowledge(self, deleg_id: str, node: int) -> Delegation | None:
        d = self.by_id.get(deleg_id)
        if d is None or d.node != node or d.state != REVOKING:
            return None
        d.state = REVOKED
        return d

    def reinstate(self, d: Delegation, now: float) -> None:
        """After a reconfiguration: the holder may renew again (with the new map)."""
        d.state = ACTIVE
        d.reason = ""
        d.granted_at = now

    def release(self, deleg_id: str) -> Delegation | None:
        return self.by_id.pop(deleg_id, None)

    def expire(self, now: float) -> list[Delegation]:
        """Drop delegations that can no longer be valid and are not waiting to be
        reinstated; return them."""
        gone = [d for d in self.by_id.values()
                if now >= self.terms.server_safe_after(d.granted_at)
                and not (d.state == REVOKED and d.reason == "reconfigure")]
        for d in gone:
            del self.by_id[d.id]
        return gone

    def restore(self, records: list[dict], now: float) -> None:
        """After a restart every persisted delegation may still be valid: count its
        lease from now (the restart), conservatively."""
        for r in records:
            d = Delegation(str(r["id"]), str(r["volume"]), int(r["node"]), str(r["mode"]), now,
                           state=RESTORED, connected=False, key=int(r.get("key", 0)))
            self.by_id[d.id] = d

    def persistent_records(self) -> list[dict]:
        return [d.to_json() for d in self.by_id.values()]
