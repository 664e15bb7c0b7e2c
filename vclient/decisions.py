"""Join, leave and race decisions of the fence driver (sans-IO, patent Figures 6-10).

Each function takes the coordinator's membership as read under exclusive access and
what the node knows, and returns the membership to write (compare-and-swap on the
generation it read) or raises ``JoinRefused``. No sockets, files or clocks inside,
except ``now`` passed in for record timestamps."""

from __future__ import annotations

from dataclasses import dataclass

from fencevol.coord import ANY_INCARNATION, Membership
from fencevol.errors import InvalidArgument

# A node's cluster state, as it announces it in every heartbeat.
JOINING, MEMBER, RACING, EJECTED, LEFT, IDLE = "joining", "member", "racing", "ejected", "left", "idle"


class JoinRefused(InvalidArgument):
    """The coordinator and the live cluster disagree: the node must not join."""

    code = "join_refused"
    exit_code = 1


def validate(coord: Membership, cluster_id: str, me: int) -> None:
    """Figure 6, 615: the header is for this cluster and knows this node."""
    if coord.cluster_id != cluster_id:
        raise JoinRefused(f"coordinator belongs to cluster {coord.cluster_id!r}, "
                          f"this node to {cluster_id!r}")
    if coord.record(me) is None:
        raise JoinRefused(f"node {me} has no record in the coordinator of cluster {cluster_id} "
                          f"(known nodes: {sorted(coord.node_ids)})")


@dataclass(frozen=True)
class JoinPlan:
    new: Membership
    crash_reset: frozenset[int]       # stale member records reset (¶0056-57)


def plan_join(coord: Membership, cluster_id: str, me: int, live_members: frozenset[int],
              now: float) -> JoinPlan:
    """Figure 6. ``live_members`` are the nodes this node hears that say they are
    members. Joins when the coordinator's members are exactly those; when they are
    those plus this node itself -- its previous incarnation crashed without leaving
    (¶0056-57) -- the stale record is reset first. Any other mismatch (a pre-existing
    split brain, or a crashed cluster that needs `vctl coord clear`) is refused."""
    validate(coord, cluster_id, me)
    unknown = live_members - coord.node_ids
    if unknown:
        raise JoinRefused(f"live nodes {sorted(unknown)} are not in the coordinator")
    recorded = coord.members
    others = recorded - {me}
    if others != live_members:
        raise JoinRefused(
            f"coordinator lists members {sorted(recorded)} but the live members this node "
            f"hears are {sorted(live_members)}: a pre-existing split brain, or a crashed "
            "cluster (if every listed node is down, run `vctl coord clear`)")
    reset = frozenset({me}) if me in recorded else frozenset()
    rec = coord.record(me)
    new = coord.changed({me: {"is_member": True, "incarnation": (rec.incarnation + 1) & 0xFFFFFFFF}},
                        now)
    return JoinPlan(new, reset)


def plan_leave(coord: Membership, cluster_id: str, me: int, now: float) -> Membership | None:
    """Figure 7: clear this node's membership (``None`` if already not a member)."""
    validate(coord, cluster_id, me)
    if not coord.record(me).is_member:
        return None
    return coord.changed({me: {"is_member": False}}, now)


@dataclass(frozen=True)
class RaceResult:
    won: bool
    members: frozenset[int]           # membership after the race (as written or read)
    victims: frozenset[int]           # members removed by this racer (to be fenced)
    new: Membership | None            # what to write; None when nothing changes
    reason: str = ""


def plan_race(coord: Membership, cluster_id: str, me: int, reachable: frozenset[int],
              now: float) -> RaceResult:
    """Figures 8-10, run by the lowest node of a subcluster holding the coordinator
    exclusively. ``reachable`` is the racer's subcluster (itself included). A racer
    no longer recorded as a member has lost (someone else won first); otherwise it
    wins and removes every member outside its subcluster."""
    validate(coord, cluster_id, me)
    if not coord.record(me).is_member:
        return RaceResult(False, coord.members, frozenset(), None,
                          f"node {me} is no longer a member (generation {coord.generation})")
    keep = coord.members & (reachable | {me})
    victims = coord.members - keep
    if not victims:
        return RaceResult(True, coord.members, frozenset(), None, "nothing to remove")
    new = coord.changed({v: {"is_member": False} for v in victims}, now)
    return RaceResult(True, new.members, victims, new)


def participants(me: int, reachable: frozenset[int], states: dict[int, str]) -> frozenset[int]:
    """The nodes this node's subcluster counts: itself and every mutually reachable
    peer, except one announcing that it ejected itself. A follower whose racer fell
    silent ejects itself (Figure 10, 1060); if the racer wakes and wins, that node is
    still recorded as a member, and must be removed and fenced like a lost one."""
    return frozenset(n for n in reachable if n == me or states.get(n) != EJECTED)


def racer_of(subcluster: frozenset[int]) -> int:
    """The lowest node id of a subcluster races for it (¶0047)."""
    return min(subcluster)


# -- what a member does when the cluster changes (Figures 8-10), on heartbeat views ----------

@dataclass(frozen=True)
class PeerView:
    """What a peer last announced in its heartbeat."""
    node: int
    state: str
    generation: int
    members: frozenset[int]
    member_incarnation: int = -1      # its incarnation while it was a member; -1 unknown


def newer_view(generation: int, peers: list[PeerView], heard: frozenset[int]
               ) -> tuple[int, frozenset[int]] | None:
    """The highest generation a heard member (or leaver) announces, if above
    ``generation``: a join, a leave, or this side's racer won."""
    best = None
    for p in peers:
        if p.node in heard and p.state in (MEMBER, LEFT) and p.generation > generation:
            if best is None or p.generation > best[0]:
                best = (p.generation, p.members)
    return best


@dataclass(frozen=True)
class Follow:
    """Adopting a newer view: eject (``eject`` says why) or fence ``victims``."""
    eject: str
    victims: frozenset[int]


def follow(me: int, members: frozenset[int], view: tuple[int, frozenset[int]],
           leavers: frozenset[int]) -> Follow:
    """A newer view without this node means it was removed: eject. Otherwise every
    member it dropped is fenced, except those that said they left (Figure 7)."""
    gen, new_members = view
    if me not in new_members:
        return Follow(f"generation {gen} no longer lists node {me}", frozenset())
    return Follow("", frozenset((members - new_members) - leavers - {me}))


@dataclass(frozen=True)
class RacerVerdict:
    """One look at the racer: eject (``eject`` says why), follow ``view`` (its
    generation and members), or neither -- wait."""
    eject: str = ""
    view: tuple[int, frozenset[int]] | None = None


def await_racer(me: int, generation: int, racer: int, reachable: bool,
                peer: PeerView | None) -> RacerVerdict:
    """Figure 10, 1055/1060, on the racer's last heartbeat: follow once it won with
    this node; eject if it lost, fell silent, or won without this node."""
    if peer is None or not reachable:
        return RacerVerdict(f"racer node {racer} went silent")
    if peer.state == EJECTED:
        return RacerVerdict(f"racer node {racer} lost the race")
    if peer.state == MEMBER and peer.generation > generation:
        if me not in peer.members:
            return RacerVerdict(f"racer node {racer} won without this node")
        return RacerVerdict(view=(peer.generation, peer.members))
    return RacerVerdict()


def race_delay(subcluster: int, members: int, minority_delay: float) -> float:
    """How long a racer waits before racing: a side holding less than half of the
    members starts ``minority_delay`` late, so that a larger side wins when both
    can reach the coordinator; a majority or a tie races at once."""
    return minority_delay if 2 * subcluster < members else 0.0


def fence_incarnations(victims: list[int], known: dict[int, int],
                       announced: dict[int, int]) -> dict[int, int]:
    """The incarnation of each victim to fence: what the coordinator said (the
    racer's ``known``), else what the victim last announced as a member, else every
    incarnation (``ANY_INCARNATION``). A victim that restarted and rejoined since
    keeps its new incarnation -- the server spares a member's current one."""
    out = {}
    for v in victims:
        inc = known.get(v, announced.get(v, -1))
        out[v] = inc if inc >= 0 else ANY_INCARNATION
    return out
