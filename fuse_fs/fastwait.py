"""A cheaper "wait until the FUSE device is readable" for pyfuse3's request loop.

pyfuse3 (3.5) takes every request through a ``trio.Lock`` and
``trio.lowlevel.wait_readable``: two trips through the trio scheduler plus an
``epoll_ctl`` and an ``epoll_wait`` per request. With several fio jobs that was most
of the client's CPU per 4 KiB read, and the client saturated one core at 0.44x bindfs.

Here the worker whose turn it is to read first waits on the device itself -- polling
for up to ``SPIN`` seconds while no I/O is in flight, then in ``select(2)`` for up to
``LINGER`` -- without leaving the event loop. A request that is already queued, or
arrives within that window, is taken at once; otherwise the worker parks the way
pyfuse3 does (in trio's ``wait_readable``). On this VM waking a sleeping thread costs
tens of µs, and the next request of an application doing one I/O at a time arrives
a FUSE round trip after the previous reply: polling that long keeps the thread
awake for it. Measured figures are in docs/BENCHMARKS.md.

Rules that keep this correct:

- one reader at a time: a worker must never read while another is parked in
  ``wait_readable`` (that worker would wake to an empty device and block the whole
  process in ``read``);
- never linger while a request whose I/O completed waits to run: its reply may be
  what the next request waits for;
- yield to the scheduler at least every ``YIELD_INTERVAL`` seconds, so heartbeats,
  renewals and the control socket keep running under a saturating load; ``SPIN``
  plus ``LINGER`` bounds how long one wait can hold the loop.

pyfuse3 looks the function up in its module globals on every call, which is what
makes the replacement possible. It is installed only for the pyfuse3 versions it was
written against; ``FENCEVOL_STOCK_FUSE_LOOP=1`` keeps pyfuse3's own (for comparison).
"""

from __future__ import annotations

import logging
import os
import select
import stat
import time
from typing import Protocol

import pyfuse3
import trio

from fencevol.polling import poll

log = logging.getLogger("fuse_fs")

SUPPORTED_VERSIONS = ("3.5.0",)
LINGER = 0.0002
SPIN = 0.00005
YIELD_INTERVAL = 0.002
FD_SETSIZE = 1024            # select(2) takes descriptors below this only
_FUSE_DEVICE = os.makedev(10, 229)


def find_fuse_fd() -> int | None:
    """The process's only ``/dev/fuse`` descriptor, or None if not exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.fstat(int(name))
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == _FUSE_DEVICE:
            found.append(int(name))
    return found[0] if len(found) == 1 else None


class Completions(Protocol):
    """What the fast wait needs from the I/O engine requests wait on."""

    efd: int            # readable when some I/O completed
    inflight: int       # requests submitted and not completed
    waking: int         # requests completed whose tasks have not run yet

    def complete(self) -> None:
        """Hand completed I/O back to its tasks."""


class _NoIO:
    efd, inflight, waking = -1, 0, 0

    def complete(self) -> None:
        pass


class FastWait:
    """Stands in for ``pyfuse3._wait_fuse_readable``: True when a request can be read
    now, False when the loop should end.

    One task at a time is the reader (``reading``); the others wait in a parking lot
    and the reader hands over when it returns. The reader lingers in ``select`` and
    parks in trio's ``wait_readable`` only after ``LINGER`` without a request.
    pyfuse3 keeps more worker tasks than requests in flight (its idle-reader count
    is not visible to this replacement), so handing the reader role to one waiter at
    a time keeps every reader on the fast path instead of queueing them all to park.

    ``io`` (see ``Completions``) is where requests wait for their device I/O. Its
    descriptor is watched in the same ``select``, so a completion is delivered at
    once; the reader never lingers while a request whose I/O finished waits to run
    (its reply may be what the next request waits for), and spins before sleeping
    only while no I/O is in flight (then the next request is all it waits for, and
    the CPU is not needed by anyone else)."""

    def __init__(self, fd: int, io: "Completions | None" = None):
        self.fd = fd
        self.io = io or _NoIO()
        self.wake_fd = self.io.efd
        self.rlist = [fd] if io is None else [fd, self.wake_fd]
        self.lot = trio.lowlevel.ParkingLot()
        self.reading = False
        self.closing = False
        self.last_yield = time.monotonic()
        self.fast = 0        # requests taken without a scheduler round
        self.parks = 0
        self.wakeups = 0     # completions delivered from the select

    async def __call__(self) -> bool:
        while self.reading:
            await self.lot.park()
        if self.closing:
            return False
        self.reading = True
        try:
            return await self._read_turn()
        finally:
            self.reading = False
            self.lot.unpark()

    async def _read_turn(self) -> bool:
        while True:
            if self.closing:
                return False
            if self.io.waking:
                # Requests whose I/O completed have not replied yet: the next
                # request may depend on their reply, so let them run first.
                await trio.lowlevel.cancel_shielded_checkpoint()
                self.last_yield = time.monotonic()
                continue
            ready = poll(self.rlist, 0 if self.io.inflight else SPIN, LINGER)
            if not ready:
                break
            if ready[-1] == self.wake_fd:
                self.wakeups += 1
                self.io.complete()
                continue
            now = time.monotonic()
            if now - self.last_yield < YIELD_INTERVAL:
                self.fast += 1
                return True
            self.last_yield = now
            await trio.lowlevel.cancel_shielded_checkpoint()
        self.parks += 1
        try:
            await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:
            return False
        self.last_yield = time.monotonic()
        return not self.closing


_installed: FastWait | None = None


def install(io: "Completions | None" = None) -> FastWait | None:
    """Swap in the fast wait (after ``pyfuse3.init``); None when it does not apply.
    ``io``: see ``FastWait``."""
    global _installed
    if os.environ.get("FENCEVOL_STOCK_FUSE_LOOP") == "1":
        log.info("FUSE requests: pyfuse3's stock loop (FENCEVOL_STOCK_FUSE_LOOP=1)")
        return None
    version = getattr(pyfuse3, "__version__", None)
    if version not in SUPPORTED_VERSIONS or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.info("FUSE requests: pyfuse3's stock loop (pyfuse3 %s not tested here)", version)
        return None
    fd = find_fuse_fd()
    if fd is None or fd >= FD_SETSIZE or (io is not None and io.efd >= FD_SETSIZE):
        log.warning("FUSE requests: pyfuse3's stock loop (no usable FUSE device descriptor)")
        return None
    _installed = FastWait(fd, io)
    pyfuse3._wait_fuse_readable = _installed
    log.info("FUSE requests: fast wait (linger %.0f µs)", LINGER * 1e6)
    return _installed


def stats() -> dict:
    """For ``vclient status``: which loop serves requests, and how."""
    if _installed is None:
        return {"loop": "stock"}
    return {"loop": "fast", "fast_requests": _installed.fast, "parks": _installed.parks,
            "completion_wakeups": _installed.wakeups}


def closing() -> None:
    """Tell waiters that the session ends (call from the trio thread, before
    ``pyfuse3.terminate``)."""
    if _installed is not None:
        _installed.closing = True
        _installed.lot.unpark_all()
