"""The checker's verdicts (tools/check), as pure functions of what a trial recorded.

Inputs, all with wall-clock times of the one machine the trial ran on:

* ``History``: when a survivor was told which incarnation of a node is fenced, and
  when each node (re)joined with which incarnation;
* ``Write`` records from every writer's log: who wrote which slot, when the write
  was issued, whether it succeeded, when (if ever) an fsync acknowledged it, and
  whether it was a takeover (a survivor rewriting a fenced node's slot);
* the records found on disk, per plex and slot (``Record``).

Verdicts:

(a) no write of a node issued after a survivor was told it is fenced, and before
    it rejoined, succeeded or is on disk; and no record of a slot's owner issued
    before a takeover of that slot was acknowledged is on disk (it landed on top
    of the survivor's data: an admitted write that stalled past the fence);
(b) every acknowledged write is on every plex, or a write issued later replaced it;
(e) every slot holds the same record on every plex (a mirror that diverged);
(f) no extent of a disk is allocated twice across the volumes of a group, nor
    inside a disk's private region (two servers managing one group would do it).

Ownership moves in phases -- the owner writes, is fenced, a survivor takes the
slots over and fsyncs, then the owner rejoins and writes again -- so for one slot
a later issue time means a later write, across writers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_INCARNATIONS = 0xFFFFFFFF


@dataclass(frozen=True)
class Write:
    node: int
    seq: int
    slot: int
    issued: float
    ok: bool
    acked: float | None = None        # fsync acknowledgement time
    takeover: bool = False
    done: float = 0.0                 # when the write returned


@dataclass(frozen=True)
class Record:
    """A record read from a plex."""

    node: int
    seq: int
    issued: float


@dataclass
class History:
    fenced: dict[int, list[tuple[float, int]]] = field(default_factory=dict)   # node -> (told at, incarnation)
    joined: dict[int, list[tuple[float, int]]] = field(default_factory=dict)   # node -> (at, incarnation)

    def fenced_before(self, node: int, t: float) -> float | None:
        """When a survivor was told the incarnation ``node`` was writing as at ``t``
        was fenced, if that was before ``t``; else None."""
        before = [inc for tj, inc in self.joined.get(node, []) if tj < t]
        writing = max(before) if before else 0
        for tf, inc in sorted(self.fenced.get(node, [])):
            if tf < t and writing <= inc:
                return tf
        return None


def judge(history: History, writes: list[Write], plexes: list[dict[int, Record | None]],
          owner) -> list[str]:
    """Every violation found; ``owner(slot)`` is the node whose slot it is."""
    out: list[str] = []
    takeovers: dict[int, list[tuple[float, int]]] = {}      # slot -> (acked at, by node)
    acked_by_slot: dict[int, list[Write]] = {}
    for w in writes:
        if w.acked is not None:
            acked_by_slot.setdefault(w.slot, []).append(w)
            if w.takeover:
                takeovers.setdefault(w.slot, []).append((w.acked, w.node))
        if w.ok:
            tf = history.fenced_before(w.node, w.issued)
            if tf is not None:
                out.append(f"(a) node {w.node}'s write seq {w.seq} issued {w.issued - tf:+.3f}s "
                           "after it was fenced succeeded")
    for p, slots in enumerate(plexes):
        for slot, rec in sorted(slots.items()):
            if rec is None:
                continue
            tf = history.fenced_before(rec.node, rec.issued)
            if tf is not None:
                out.append(f"(a) plex {p} slot {slot} holds node {rec.node}'s record issued "
                           f"{rec.issued - tf:+.3f}s after it was fenced")
            if rec.node == owner(slot):
                later = [(t, by) for t, by in takeovers.get(slot, []) if t > rec.issued]
                if later:
                    t, by = min(later)
                    out.append(f"(a) plex {p} slot {slot} holds node {rec.node}'s record seq "
                               f"{rec.seq} issued {t - rec.issued:.3f}s before node {by}'s "
                               "takeover of the slot was acknowledged: it landed on top of it")
    for slot, acked in sorted(acked_by_slot.items()):
        for w in acked:
            for p, slots in enumerate(plexes):
                rec = slots.get(slot)
                if rec is None or ((rec.node, rec.seq) != (w.node, w.seq) and rec.issued <= w.issued):
                    found = rec and (rec.node, rec.seq)
                    what = "takeover " if w.takeover else ""
                    out.append(f"(b) node {w.node}'s acknowledged {what}record seq {w.seq} is "
                               f"missing from slot {slot} of plex {p} (found {found})")
    if len(plexes) > 1:
        for slot in sorted(plexes[0]):
            seen = [(s.get(slot).node, s.get(slot).seq) if s.get(slot) else None for s in plexes]
            if any(x != seen[0] for x in seen):
                out.append(f"(e) slot {slot} differs between plexes: {seen}")
    return out


def takeovers_intact(plexes: list[dict[int, Record | None]], takeover: list[Write],
                     owner) -> list[str]:
    """Checked right before a lost node rejoins (once it runs again, so a write it
    held has gone out): each slot just taken over must still hold the survivor's
    record on every plex -- nothing else may have written it meanwhile."""
    out = []
    for w in takeover:
        if w.acked is None:
            continue
        for p, slots in enumerate(plexes):
            rec = slots.get(w.slot)
            if rec is None or (rec.node, rec.seq) != (w.node, w.seq):
                who = f"node {rec.node}'s record seq {rec.seq} issued at {rec.issued:.3f}" if rec else "nothing"
                out.append(f"(a) plex {p} slot {w.slot} holds {who} instead of node {w.node}'s "
                           f"takeover (acknowledged at {w.acked:.3f}) before node {owner(w.slot)} "
                           "rejoined: a write of the fenced node landed on it")
    return out


def writes_without_a_lease(writes: list[Write], cuts: list[tuple[int, float, float]],
                           lease: float) -> list[str]:
    """``cuts``: (node, cut at, healed at) -- the node could not reach the server.
    Its lease ran out at the latest ``lease`` after the cut (it was last renewed
    before): no write of it may complete after that while the cut lasts (S1)."""
    out = []
    for node, t_cut, t_heal in cuts:
        for w in writes:
            if w.node == node and w.ok and not w.takeover and t_cut + lease <= w.done <= t_heal:
                out.append(f"(a) node {w.node}'s write seq {w.seq} completed {w.done - t_cut:.3f}s "
                           f"after it lost the server: its lease ({lease:g}s) had run out")
    return out


def extents_allocated_once(volumes: dict[str, list[tuple[str, int, int]]],
                           private_size: int) -> list[str]:
    """``volumes``: volume -> its subdisks as (disk id, disk offset, length)."""
    out = []
    spans = sorted((disk, off, off + length, vol) for vol, sds in volumes.items()
                   for disk, off, length in sds)
    for disk, start, end, vol in spans:
        if start < private_size:
            out.append(f"(f) {vol}: subdisk at {start} on disk {disk[:8]} lies in the private region")
    reach: dict[str, tuple[int, str]] = {}          # disk -> (furthest end so far, its volume)
    for disk, start, end, vol in spans:
        far, owner = reach.get(disk, (0, ""))
        if start < far:
            out.append(f"(f) disk {disk[:8]} bytes {start}-{min(far, end)} belong to both "
                       f"{owner} and {vol}")
        if end > far:
            reach[disk] = (end, vol)
    return out


def summarize(violations: list[str], per_kind: int = 10) -> list[str]:
    """At most ``per_kind`` lines per verdict, then a count of the rest."""
    kinds: dict[str, int] = {}
    kept = []
    for v in violations:
        k = v[:3]
        kinds[k] = kinds.get(k, 0) + 1
        if kinds[k] <= per_kind:
            kept.append(v)
    return kept + [f"{k} ... and {c - per_kind} more" for k, c in kinds.items() if c > per_kind]
