"""The fence gate: one per attached volume, passed by every write (and, while the
map is being changed, every read).

States:

* ``open``   -- writes pass while the lease is valid: strictly before
                ``deadline`` on the client's clock (``CLOCK_BOOTTIME``: the server's
                lease minus the guard interval, counted from when the request was
                sent);
* ``paused`` -- for one or more reasons: ``reconfigure`` (the delegation was
                revoked while the map changes: reads and writes wait for the new
                map) or ``membership`` (the cluster is resolving a partition:
                writes wait, reads pass); waits end after ``pause_timeout``;
* ``fenced`` -- the node was ejected or its registration preempted: writes fail at
                once, reads are served; sticky until ``unfence`` (rejoin).

An ``open`` gate whose deadline has passed (server unreachable, node stopped) is
reported as paused for ``lease``: writes wait for a renewal, up to
``pause_timeout``, then fail; reads still work.

The hot path is ``admit_nowait()`` -- a state check and a clock read, then a
counter published to the node's watchdog and the check again. The count of admitted
writes goes out *before* the clock read that admits the write: a process that freezes anywhere after that point is seen by the
watchdog as holding a write, and is killed if the write is still pending when the
lease it was admitted under ends (``vclient/watchdog.py``). That lease end is
published on every renewal, before the deadline it allows is raised."""

from __future__ import annotations

from typing import Callable

import trio

from fencevol import clock as fvclock
from fencevol.errors import Fenced, IOFailure

OPEN, PAUSED, FENCED, CLOSED = "open", "paused", "fenced", "closed"


INFLIGHT, LEASE_END = 0, 1       # the two words of a watchdog slot


def local_slot() -> memoryview:
    """A slot nobody watches (tests, and gates made before a watchdog exists)."""
    return memoryview(bytearray(16)).cast("q")


class FenceGate:
    __slots__ = ("state", "reason", "deadline", "lease_end", "pause_timeout", "clock",
                 "inflight", "slot", "writes_rejected", "reads_rejected", "pauses",
                 "renewals", "fences", "_changed", "_drained", "_lease_lapsed", "_paused")

    def __init__(self, pause_timeout: float = 30.0, clock: Callable[[], float] = fvclock.now,
                 slot: memoryview | None = None):
        self.state = OPEN
        self.reason = ""
        self.deadline = 0.0
        self.lease_end = 0.0
        self.pause_timeout = pause_timeout
        self.clock = clock
        self.inflight = 0
        self.slot = local_slot() if slot is None else slot
        self.writes_rejected = 0
        self.reads_rejected = 0
        self.pauses = 0
        self.renewals = 0
        self.fences = 0
        self._changed = trio.Event()
        self._drained: trio.Event | None = None
        self._lease_lapsed = False
        self._paused: set[str] = set()

    # -- hot path ---------------------------------------------------------------------
    def writable(self) -> bool:
        return self.state is OPEN and self.clock() < self.deadline

    def readable(self) -> bool:
        return self.state is not CLOSED and "reconfigure" not in self._paused

    def admit_nowait(self) -> bool:
        """Admit a write if the gate allows it now (then ``leave`` when every plex
        has it). The write is counted, and the count published, before the check
        that admits it. A write the gate refuses anyway (fenced, paused, lease
        over) is turned away before it is counted: counting it even for an instant
        showed the watchdog a write "pending" past its lease, and it killed a
        healthy fenced node whose application kept trying to write."""
        if self.state is not OPEN or self.clock() >= self.deadline:
            return False
        self.inflight += 1
        self.slot[INFLIGHT] = self.inflight
        if self.state is OPEN and self.clock() < self.deadline:
            return True
        self.leave()        # the deadline passed in between: the lease still has guard left
        return False

    async def admit(self) -> None:
        """Wait until a write is admitted (see ``wait_writable`` for how long)."""
        while not self.admit_nowait():
            await self.wait_writable()

    def leave(self) -> None:
        self.inflight -= 1
        self.slot[INFLIGHT] = self.inflight
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    # -- slow path -----------------------------------------------------------------------
    async def wait_writable(self) -> None:
        """Return once a write may start; raise ``Fenced`` (at once) or
        ``IOFailure`` (after ``pause_timeout``)."""
        give_up = self.clock() + self.pause_timeout
        while True:
            if self.state is FENCED:
                self.writes_rejected += 1
                raise Fenced(f"node is fenced ({self.reason}); writes are refused")
            if self.state is CLOSED:
                self.writes_rejected += 1
                raise IOFailure("volume is detached")
            if self.state is OPEN:
                now = self.clock()
                if now < self.deadline:
                    return
                if not self._lease_lapsed:
                    self._lease_lapsed = True
                    self.pauses += 1
            left = give_up - self.clock()
            if left <= 0:
                self.writes_rejected += 1
                raise IOFailure(f"writes paused for more than {self.pause_timeout:g}s "
                                f"({self.describe()['reason']})")
            with trio.move_on_after(left):
                await self._changed.wait()

    async def wait_readable(self) -> None:
        """Return once reads may go on (they wait only while the map changes)."""
        give_up = self.clock() + self.pause_timeout
        while not self.readable():
            if self.state is CLOSED:
                self.reads_rejected += 1
                raise IOFailure("volume is detached")
            left = give_up - self.clock()
            if left <= 0:
                self.reads_rejected += 1
                raise IOFailure(f"reads paused for more than {self.pause_timeout:g}s ({self.reason})")
            with trio.move_on_after(left):
                await self._changed.wait()

    async def drain(self) -> None:
        """Wait until no write that passed the gate is still in flight."""
        while self.inflight:
            self._drained = trio.Event()
            await self._drained.wait()
        self._drained = None

    # -- transitions ---------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _settle(self) -> None:
        """Derive ``state``/``reason`` from fenced / paused reasons, then wake waiters."""
        if self.state is not FENCED and self.state is not CLOSED:
            if self._paused:
                self.state, self.reason = PAUSED, ", ".join(sorted(self._paused))
            else:
                self.state, self.reason = OPEN, ""
        self._notify()

    def renewed(self, deadline: float, lease_end: float | None = None) -> None:
        """The server renewed, granted or reinstated the delegation (which ends a
        ``reconfigure`` pause: the server renews only once the new map is in place).
        Writes may start before ``deadline``; each must be done by ``lease_end`` (by
        default the deadline itself), which the watchdog enforces."""
        self.renewals += 1
        end = deadline if lease_end is None else lease_end
        if end > self.lease_end:
            self.lease_end = end
            self.slot[LEASE_END] = int(end * 1e9)
        if deadline > self.deadline:
            self.deadline = deadline
        self._paused.discard("reconfigure")
        self._lease_lapsed = False
        self._settle()

    def pause(self, reason: str) -> None:
        if reason not in self._paused:
            self._paused.add(reason)
            self.pauses += 1
            self._settle()

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            self._settle()

    def expire(self) -> None:
        """The server says the lease is gone: no writes until a new grant."""
        self.deadline = 0.0
        self._notify()

    def fence(self, reason: str) -> None:
        if self.state is not FENCED:
            self.fences += 1
        self.state, self.reason = FENCED, reason
        self.deadline = 0.0
        self._notify()

    def unfence(self) -> None:
        if self.state is FENCED:
            self.state = OPEN
            self._settle()

    def close(self) -> None:
        self.state, self.reason, self.deadline = CLOSED, "detached", 0.0
        self._notify()

    def describe(self) -> dict:
        now = self.clock()
        state, reason = self.state, self.reason
        if state is OPEN and now >= self.deadline:
            state, reason = PAUSED, "lease expired (server unreachable or renewal refused)"
        return {"state": state, "reason": reason,
                "lease_remaining": round(max(0.0, self.deadline - now), 3),
                "writes_rejected": self.writes_rejected, "reads_rejected": self.reads_rejected,
                "pauses": self.pauses, "renewals": self.renewals, "fences": self.fences,
                "inflight_writes": self.inflight,
                "lease_end_in": round(self.lease_end - now, 3) if self.lease_end else None}
