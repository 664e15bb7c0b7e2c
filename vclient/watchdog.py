"""Watchdog self-fencing (the sanlock + wdmd / sbd model): a separate small process
per node kills the agent before the server can declare it fenced, so a write the
gate admitted can never land after the survivors go on.

Why: the gate's check and the write are two steps. An agent that stalls between
them (a hung agent, a swap storm, SIGSTOP, a debugger) and wakes after the server
fenced it would write over data the survivors have taken over. Nothing the agent
does after waking can be trusted; a separate process that is not stalled must end
it first.

How: the agent and the watchdog share a page of 64-bit words (a memfd mapped by
both; layout below). The agent writes; the watchdog (``vclient/watchdogd.py``)
reads every ``TICK`` seconds, on the same ``CLOCK_BOOTTIME``, and SIGKILLs the agent
through a pidfd (never a reused pid) when either rule holds:

1. *no progress*: the agent's event loop has not pinged for longer than the budget
   ``guard + margin - slack``;
2. *a write outlives its lease*: a volume slot counts a write the gate admitted and
   the lease it was admitted under has ended (the gate publishes the count before
   it reads the clock, and every lease end before the deadline it allows).

Timing (the argument is in docs/FENCING.md): a victim that does not acknowledge is
declared fenced no earlier than ``L + margin`` on the server's clock, where ``L`` is
the end of the last lease the server granted as the client counts it (the client
counts from when it sent the request). Rule 2 fires by ``L + TICK``. Rule 1 fires by
``t_admit + budget + TICK < L - guard + budget + TICK = L + margin - slack + TICK``
for a write admitted on the loop after its last ping. Both leave ``slack - TICK``
or more for the kill to take effect; settings that cannot are refused at start.

Not covered: a write already inside the kernel when the kill lands completes at the
device's pace (a bounded time for a healthy device); a stalled or paused whole
host stalls the watchdog too (a hardware watchdog, ``--hw-watchdog``, covers a
hang; nothing here covers a paused VM without one). The agent pauses writes
whenever its watchdog is not running or not ticking.
"""

from __future__ import annotations

import logging
import mmap
import os
import subprocess
import sys
from dataclasses import dataclass

import trio

from fencevol import clock
from fencevol.errors import FencevolError, InvalidArgument

log = logging.getLogger("vclient.watchdog")

MAGIC = 0x4657574400000001          # "FVWD", layout version 1
TICK = 0.05                          # the watchdog's period
PING = 0.1                           # the agent's ping period
DEFAULT_SLACK = 0.5
START_TIMEOUT = 10.0
STALE_TICKS = 10                     # the agent pauses writes when the watchdog is this late

# Words of the shared page (int64, CLOCK_BOOTTIME nanoseconds for times). W_WORST:
# the longest time without a ping the watchdog has seen (how close it came).
W_MAGIC, W_PID, W_PING, W_BUDGET, W_TICK, W_STATE, W_KILLS, W_SLOTS, W_WORST = range(9)
HEADER_WORDS = 16
MAX_SLOTS = 256
SLOT_WORDS = 2                       # inflight writes, lease end
WORDS = HEADER_WORDS + MAX_SLOTS * SLOT_WORDS
SIZE = WORDS * 8

STARTING, ARMED, DISARMED = 0, 1, 2


def ping_budget(guard: float, margin: float, slack: float = DEFAULT_SLACK) -> float:
    """The no-progress budget for lease guard ``guard`` and server margin ``margin``;
    ``InvalidArgument`` when the watchdog could not fire before the fence ends."""
    if slack < 2 * TICK:
        raise InvalidArgument(f"watchdog slack {slack:g}s must be at least two watchdog ticks "
                              f"({2 * TICK:g}s)")
    if margin < slack:
        raise InvalidArgument(
            f"the server's lease margin ({margin:g}s) is below the watchdog slack ({slack:g}s): "
            "a write stuck at the end of its lease could not be killed in time; raise the "
            "server's --lease-margin or lower --watchdog-slack")
    budget = guard + margin - slack
    if budget < 4 * PING:
        raise InvalidArgument(
            f"lease guard {guard:g}s + server margin {margin:g}s - watchdog slack {slack:g}s "
            f"leaves {budget:g}s for the agent to show progress, under four pings "
            f"({4 * PING:g}s); lower --watchdog-slack or raise the server's guard or margin")
    return budget


@dataclass(frozen=True)
class Snapshot:
    state: int
    ping_ns: int
    budget_ns: int
    slots: tuple[tuple[int, int], ...]      # (inflight writes, lease end ns) in use


def snapshot(words) -> Snapshot:
    used = min(max(words[W_SLOTS], 0), MAX_SLOTS)
    slots = tuple((words[HEADER_WORDS + 2 * i], words[HEADER_WORDS + 2 * i + 1])
                  for i in range(used))
    return Snapshot(words[W_STATE], words[W_PING], words[W_BUDGET], slots)


def decide(snap: Snapshot, now_ns: int) -> str | None:
    """Why the agent must be killed now, or None (pure)."""
    if snap.state != ARMED:
        return None
    if snap.budget_ns > 0 and now_ns - snap.ping_ns > snap.budget_ns:
        return (f"the agent made no progress for {(now_ns - snap.ping_ns) / 1e9:.3f}s "
                f"(budget {snap.budget_ns / 1e9:g}s): it is stopped or hung")
    for i, (inflight, lease_end) in enumerate(snap.slots):
        if inflight > 0 and now_ns >= lease_end:
            return (f"{inflight} admitted write(s) on volume slot {i} still pending "
                    f"{(now_ns - lease_end) / 1e9:.3f}s after the end of the lease they were "
                    "admitted under")
    return None


def hw_timeout(budget: float) -> int:
    """Whole seconds for a hardware watchdog that must fire within ``budget``."""
    seconds = int(budget)
    if seconds < 1:
        raise InvalidArgument(f"a hardware watchdog counts whole seconds; the budget "
                              f"{budget:g}s is under one")
    return seconds


class Watchdog:
    """The agent's side: the shared page, the watchdog process, the pings."""

    def __init__(self, node_id: int, slack: float = DEFAULT_SLACK, hw_device: str = "",
                 on_down=None, on_up=None):
        self.node_id = node_id
        self.slack = slack
        self.hw_device = hw_device
        self.on_down = on_down or (lambda why: None)    # pause writes
        self.on_up = on_up or (lambda: None)            # resume writes
        self.fd = os.memfd_create(f"fencevol-watchdog-{node_id}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, SIZE)
        self._map = mmap.mmap(self.fd, SIZE)
        self.words = memoryview(self._map).cast("q")
        self.words[W_MAGIC] = MAGIC
        self.words[W_PID] = os.getpid()
        self.words[W_PING] = clock.now_ns()
        self.words[W_STATE] = ARMED
        self._free = list(range(MAX_SLOTS - 1, -1, -1))
        self._used: set[int] = set()
        self.budget = 0.0
        self.proc: subprocess.Popen | None = None
        self._pidfd = -1
        self.starts = 0
        self.down_reason = ""

    # -- slots --------------------------------------------------------------------------------
    def slot(self) -> tuple[int, memoryview]:
        """A free volume slot: (index, its two words)."""
        if not self._free:
            raise InvalidArgument(f"at most {MAX_SLOTS} volumes can be attached to one node")
        i = self._free.pop()
        self._used.add(i)
        base = HEADER_WORDS + SLOT_WORDS * i
        view = self.words[base:base + SLOT_WORDS]
        view[0] = view[1] = 0
        self.words[W_SLOTS] = max(self._used) + 1
        return i, view

    def release(self, i: int) -> None:
        """Give a slot back (its volume is detached, nothing in flight)."""
        base = HEADER_WORDS + SLOT_WORDS * i
        self.words[base] = self.words[base + 1] = 0
        self._used.discard(i)
        self._free.append(i)
        self.words[W_SLOTS] = max(self._used) + 1 if self._used else 0

    # -- arming ---------------------------------------------------------------------------------
    def arm(self, lease: dict) -> float:
        """Set the no-progress budget from the server's lease terms (raises
        ``InvalidArgument`` when they leave the watchdog no time)."""
        budget = ping_budget(float(lease["guard"]), float(lease.get("margin", 1.0)), self.slack)
        if self.hw_device:
            hw_timeout(budget)
        self.budget = budget
        self.words[W_BUDGET] = int(budget * 1e9)
        return budget

    def disarm(self) -> None:
        """Clean shutdown (nothing can be admitted any more): the watchdog stops
        judging and exits."""
        self.words[W_STATE] = DISARMED

    # -- the process ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the watchdog process and wait for its first tick."""
        self.words[W_TICK] = 0
        self.words[W_PING] = clock.now_ns()
        pidfd = os.pidfd_open(os.getpid())
        try:
            cmd = [sys.executable, "-m", "vclient.watchdogd", "--node-id", str(self.node_id),
                   "--shm-fd", str(self.fd), "--pidfd", str(pidfd)]
            if self.hw_device:
                cmd += ["--hw-watchdog", self.hw_device, "--hw-timeout",
                        str(hw_timeout(self.budget) if self.budget else 0)]
            self.proc = subprocess.Popen(cmd, pass_fds=(self.fd, pidfd), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(pidfd)
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.starts += 1
        with trio.move_on_after(START_TIMEOUT):
            while not self.words[W_TICK]:
                if self.proc.poll() is not None:
                    raise FencevolError(f"the watchdog exited at start (status "
                                        f"{self.proc.returncode}); see the log above")
                await trio.sleep(TICK / 2)
            log.info("watchdog pid %d watching node %d (tick %gs)", self.proc.pid, self.node_id, TICK)
            return
        raise FencevolError(f"the watchdog did not start within {START_TIMEOUT:g}s")

    def tick_age(self) -> float:
        return (clock.now_ns() - self.words[W_TICK]) / 1e9

    async def run(self) -> None:
        """Ping every ``PING`` seconds; pause writes while the watchdog is gone or
        late, and restart it when it exited."""
        words = self.words
        while True:
            words[W_PING] = clock.now_ns()
            if self.proc.poll() is not None:
                self._down(f"the watchdog process exited (status {self.proc.returncode})")
                try:
                    os.close(self._pidfd)
                    await self.start()
                except FencevolError as exc:
                    log.error("restarting the watchdog failed: %s", exc)
                    await trio.sleep(1)
                    continue
            elif self.tick_age() > STALE_TICKS * TICK:
                self._down(f"the watchdog has not ticked for {self.tick_age():.2f}s")
            elif self.down_reason:
                log.warning("watchdog is back; writes resume")
                self.down_reason = ""
                self.on_up()
            await trio.sleep(PING)

    def _down(self, why: str) -> None:
        if not self.down_reason:
            log.critical("%s: writes are paused until it runs again", why)
            self.down_reason = why
            self.on_down(why)

    def close(self) -> None:
        """Disarm and reap the watchdog (it exits once disarmed)."""
        self.disarm()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.warning("watchdog pid %d did not exit when disarmed", self.proc.pid)

    def describe(self) -> dict:
        now = clock.now_ns()
        return {"enabled": True, "pid": self.proc.pid if self.proc else None,
                "state": {STARTING: "starting", ARMED: "armed", DISARMED: "disarmed"}.get(
                    self.words[W_STATE], "?"),
                "budget": self.budget, "slack": self.slack, "tick": TICK, "ping": PING,
                "ping_age": round((now - self.words[W_PING]) / 1e9, 3),
                "worst_ping_gap": round(self.words[W_WORST] / 1e9, 3),
                "tick_age": round((now - self.words[W_TICK]) / 1e9, 3) if self.words[W_TICK] else None,
                "slots_in_use": len(self._used), "starts": self.starts,
                "hw_device": self.hw_device or None, "down": self.down_reason or None}

