"""UDP heartbeats on one or more private links (patent ¶0003: redundant links).

Each node sends, every ``interval`` seconds on every link, a datagram to each
peer's address on that link::

    JSON {"v": 3, "c": cluster, "n": node, "i": incarnation, "q": seq,
          "st": state, "g": generation, "m": [members],
          "h": {node heard: the last seq heard from it}, "p": peer-list hash}
          +  16-byte HMAC-SHA256 tag with the key of the pair {sender, receiver}
             (fencevol.auth.pair_key: only those two nodes hold it)

Freshness: ``seq`` grows by one per heartbeat from a start at the sender's wall
clock in microseconds (so it keeps growing across restarts); a receiver drops a
heartbeat whose seq is not above the last it accepted from that sender (a replayed
or reordered datagram never rolls a peer's state back). And a peer is *reachable*
only when a heartbeat from it arrived on any link within ``timeout`` *and* it
echoes a seq this node sent within the last ``timeout``: it hears this node now
(so a one-way cut is seen by both sides, and a datagram captured from a dead node
and replayed later -- even to a receiver that restarted and has no history --
never makes it reachable: its echo is stale). No clocks are compared across hosts.

Forged, foreign-cluster and unknown-node datagrams are dropped and logged at most
once a minute per kind.
Configuration problems (a different peer list) are sticky; a duplicate node id
is reported while the conflicting source was heard within ``DUPLICATE_MEMORY``."""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from fencevol.crc import crc32c
from fencevol.auth import Credential
from fencevol.ratelimit import RateLimitedLog

from .decisions import MEMBER, RACING

log = logging.getLogger("vclient.heartbeat")

TAG = 16
MAX_DATAGRAM = 4096
VERSION = 3
DUPLICATE_MEMORY = 10.0        # seconds a duplicate node id stays reported




def peers_hash(node_ids) -> int:
    return crc32c(",".join(str(n) for n in sorted(node_ids)).encode())


@dataclass
class PeerState:
    node: int
    addresses: list[tuple[str, int]]
    last_heard: float = -1e9
    last_link: int = -1
    heard_on: dict[int, float] = field(default_factory=dict)
    source: dict[int, tuple] = field(default_factory=dict)   # link -> sender address last heard
    incarnation: int = 0
    member_incarnation: int = -1      # the incarnation it last announced as a member
    state: str = ""
    generation: int = 0
    members: frozenset[int] = frozenset()
    hears: dict[int, int] = field(default_factory=dict)   # node -> last seq it heard from it
    peers_hash: int = 0
    last_seq: int = -1                # the highest seq accepted from it

    def describe(self, now: float) -> dict:
        return {"node": self.node, "state": self.state, "generation": self.generation,
                "members": sorted(self.members),
                "last_heard": None if self.last_heard < 0 else round(now - self.last_heard, 3),
                "links": {str(i): round(now - t, 3) for i, t in sorted(self.heard_on.items())}}


class Heartbeats:
    def __init__(self, cluster_id: str, node: int, credential: Credential, links: list[tuple[str, int]],
                 peers: dict[int, list[tuple[str, int]]], interval: float, timeout: float,
                 snapshot: Callable[[], dict], on_change: Callable[[], None]):
        self.cluster_id = cluster_id
        self.node = node
        self.links = links
        self.peers = {n: PeerState(n, addrs) for n, addrs in peers.items()}
        # Tags use the key of the pair {sender, receiver}: a node can only speak for
        # itself, even to a peer that trusts it (docs/SECURITY.md).
        self.keys = {n: credential.pair(node, n) for n in peers}
        self.self_key = credential.pair(node, node)     # a process claiming our id (cluster key)
        missing = sorted(n for n, k in self.keys.items() if k is None)
        if missing:
            from fencevol.errors import AuthError
            raise AuthError(f"the {credential.kind} holds no heartbeat key for peer(s) "
                            f"{', '.join(map(str, missing))}; issue it with those peers")
        self.interval = interval
        self.timeout = timeout
        self.snapshot = snapshot          # -> {"i", "st", "g", "m"} of this node, now
        self.on_change = on_change        # called when a peer's announced view changes
        self.hash = peers_hash(list(peers) + [node])
        self.seq = time.time_ns() // 1000
        self.recent: collections.deque = collections.deque()   # (monotonic time, seq) sent
        self.sockets: list[trio.socket.SocketType] = []
        self._problems: dict[str, tuple[str, float]] = {}    # kind -> (message, last seen)
        self._log = RateLimitedLog(log)
        self._kick = trio.Event()
        self.sent = 0
        self.received = 0
        self.sent_on = [0] * len(links)        # per heartbeat link
        self.received_on = [0] * len(links)

    # -- state ------------------------------------------------------------------------------
    @property
    def problems(self) -> dict[str, str]:
        return self.problems_at(time.monotonic())

    def problems_at(self, now: float) -> dict[str, str]:
        """Configuration problems seen: sticky ones, and duplicates heard lately."""
        return {k: msg for k, (msg, seen) in self._problems.items()
                if not k.startswith("duplicate") or now - seen < DUPLICATE_MEMORY}

    def _problem(self, kind: str, message: str, now: float) -> None:
        self._problems[kind] = (message, now)

    def oldest_fresh_seq(self, now: float) -> int:
        """The smallest seq this node sent within the last ``timeout``: an echo at
        least this recent proves the peer hears this node now."""
        for t, seq in self.recent:
            if now - t < self.timeout:
                return seq
        return self.seq + 1

    def reachable(self, now: float | None = None) -> frozenset[int]:
        """This node plus every peer heard recently that hears it now."""
        now = time.monotonic() if now is None else now
        fresh = self.oldest_fresh_seq(now)
        return frozenset({self.node} | {p.node for p in self.peers.values()
                                        if now - p.last_heard < self.timeout
                                        and p.hears.get(self.node, -1) >= fresh})

    def heard(self, now: float | None = None) -> frozenset[int]:
        now = time.monotonic() if now is None else now
        return frozenset(p.node for p in self.peers.values() if now - p.last_heard < self.timeout)

    def kick(self) -> None:
        """Send a heartbeat now (state changed)."""
        self._kick.set()

    # -- wire -------------------------------------------------------------------------------
    def _encode(self, now: float | None = None, to: int | None = None) -> bytes:
        """One heartbeat for peer ``to`` (the only peer when None)."""
        if to is None:
            (to,) = self.peers
        return self._tagged(self._body(now), to)

    def _tagged(self, body: bytes, to: int) -> bytes:
        key = self.self_key if to == self.node else self.keys[to]
        return body + hmac.new(key, body, hashlib.sha256).digest()[:TAG]

    def _body(self, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        snap = self.snapshot()
        self.seq += 1
        self.recent.append((now, self.seq))
        while self.recent and now - self.recent[0][0] > 2 * self.timeout:
            self.recent.popleft()
        heard = {str(p.node): p.last_seq for p in self.peers.values()
                 if now - p.last_heard < self.timeout}
        body = json.dumps({"v": VERSION, "c": self.cluster_id, "n": self.node, "i": snap["i"],
                           "q": self.seq, "st": snap["st"], "g": snap["g"], "m": sorted(snap["m"]),
                           "h": heard, "p": self.hash},
                          separators=(",", ":")).encode()
        return body

    def receive(self, data: bytes, link: int, addr, now: float) -> None:
        if len(data) <= TAG or len(data) > MAX_DATAGRAM:
            return self._log("size", now, "dropping malformed heartbeat from %s", addr)
        body, tag = data[:-TAG], data[-TAG:]
        # The sender's id is read before the tag is checked (the tag's key depends on
        # it); nothing else of an unchecked datagram is used.
        try:
            msg = json.loads(body)
            sender = int(msg["n"])
        except (ValueError, KeyError, TypeError, RecursionError):
            return self._log("json", now, "dropping unparsable heartbeat from %s (or another "
                             "heartbeat version than %d)", addr, VERSION)
        key = self.self_key if sender == self.node else self.keys.get(sender)
        if key is None:
            return self._log("unknown", now, "heartbeat from %s claiming node %s, which is not a "
                             "configured peer; ignored", addr, sender)
        if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:TAG]):
            return self._log("auth", now, "dropping heartbeat from %s claiming node %d: bad HMAC "
                             "(forged, or a wrong key or credential)", addr, sender)
        if sender == self.node:
            self._problem("duplicate", f"another process at {addr} claims node id {self.node}", now)
            return self._log("dup", now, "another node at %s uses this node's id %d", addr, self.node)
        try:
            seq = int(msg["q"])
            hears = {int(n): int(q) for n, q in dict(msg.get("h", {})).items()}
            if msg.get("v") != VERSION:
                raise ValueError("version")
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._log("json", now, "dropping unparsable heartbeat from %s (or another "
                             "heartbeat version than %d)", addr, VERSION)
        if msg.get("c") != self.cluster_id:
            return self._log("cluster", now, "heartbeat from node %s of cluster %r, not %r; "
                             "ignored", sender, msg.get("c"), self.cluster_id)
        peer = self.peers[sender]
        known = peer.source.get(link)
        if known is not None and known != addr and now - peer.heard_on.get(link, -1e9) < self.timeout:
            # Two processes claim one node id: keep the one already heard, ignore the
            # other, so it cannot make this node flap (or race) over the real peer.
            self._problem(f"duplicate{sender}",
                          f"node {sender} is heard from both {known[0]}:{known[1]} and "
                          f"{addr[0]}:{addr[1]} on link {link}: two processes use node id {sender}",
                          now)
            return self._log(f"dup{sender}", now, "heartbeats claiming node %d come from %s and %s; "
                              "ignoring %s (duplicate node id?)", sender, known, addr, addr)
        if seq <= peer.last_seq:
            return self._log(f"stale{sender}", now, "dropping a heartbeat of node %d that is not "
                             "newer than the last one (replayed or reordered)", sender)
        peer.last_seq = seq
        peer.source[link] = addr
        if msg.get("p") != self.hash:
            self._problem("peers", f"node {sender} has a different peer list", now)
            self._log(f"peers{sender}", now, "node %d has a different peer list than this node", sender)
        self.received += 1
        if 0 <= link < len(self.received_on):
            self.received_on[link] += 1
        changed = (peer.generation, peer.state, peer.members) != (
            int(msg.get("g", 0)), str(msg.get("st", "")), frozenset(msg.get("m", [])))
        was_reachable = (now - peer.last_heard < self.timeout
                         and peer.hears.get(self.node, -1) >= self.oldest_fresh_seq(now))
        peer.last_heard = now
        peer.heard_on[link] = now
        peer.incarnation = int(msg.get("i", 0))
        peer.state = str(msg.get("st", ""))
        if peer.state in (MEMBER, RACING):
            peer.member_incarnation = peer.incarnation
        peer.generation = int(msg.get("g", 0))
        peer.members = frozenset(int(m) for m in msg.get("m", []))
        peer.hears = hears
        peer.peers_hash = int(msg.get("p", 0))
        if changed or not was_reachable:
            self.on_change()

    # -- tasks ------------------------------------------------------------------------------
    async def open(self) -> None:
        for host, port in self.links:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            try:
                await sock.bind((host, port))
            except OSError as exc:
                sock.close()
                from fencevol.errors import InvalidArgument
                raise InvalidArgument(f"cannot listen for heartbeats on {host}:{port}: "
                                      f"{exc.strerror}") from None
            self.sockets.append(sock)

    def close(self) -> None:
        for s in self.sockets:
            s.close()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i, sock in enumerate(self.sockets):
                nursery.start_soon(self._receiver, i, sock)
            nursery.start_soon(self._sender)

    async def _receiver(self, link: int, sock) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(MAX_DATAGRAM + 1)
            except OSError as exc:     # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                log.debug("heartbeat link %d: %s", link, exc)
                continue
            self.receive(data, link, addr, time.monotonic())

    async def _sender(self) -> None:
        while True:
            body = self._body()
            for i, sock in enumerate(self.sockets):
                for peer in self.peers.values():
                    if i < len(peer.addresses):
                        try:
                            await sock.sendto(self._tagged(body, peer.node), peer.addresses[i])
                            self.sent += 1
                            self.sent_on[i] += 1
                        except OSError as exc:
                            log.debug("heartbeat to node %d link %d: %s", peer.node, i, exc)
            with trio.move_on_after(self.interval):
                await self._kick.wait()
            self._kick = trio.Event()
