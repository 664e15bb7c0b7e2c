"""A cheaper "wait until the FUSE device is readable" for pyfuse3's request loop.

pyfuse3 (3.5) takes every request through a ``trio.Lock`` and
``trio.lowlevel.wait_readable``: two trips through the trio scheduler plus an
``epoll_ctl`` and an ``epoll_wait`` per request. With several fio jobs that was most
of the client's CPU per 4 KiB read, and the client saturated one core at 0.44x bindfs.

Here a worker coming back for its next request first waits on the device itself with
``select(2)`` for up to ``LINGER`` seconds, without leaving the event loop. A request
that is already queued, or arrives within that window, is taken at once; otherwise
the worker parks the way pyfuse3 does (one waiter at a time, under a lock). Direct
writes to one FUSE file are serialized by the kernel (one in flight; libfuse 3.14
cannot set FOPEN_PARALLEL_DIRECT_WRITES), so the next write arrives some tens of µs
after the previous reply: sleeping in ``select`` right away frees the CPU for the
writer instead of spending it on a scheduler round. Measured figures are in
docs/BENCHMARKS.md.

Rules that keep this correct:

- never read while another worker is parked in ``wait_readable``: that worker would
  wake to an empty device and block the whole process in ``read``;
- yield to the scheduler at least every ``YIELD_INTERVAL`` seconds, so heartbeats,
  renewals and the control socket keep running under a saturating load; ``LINGER``
  bounds how long one wait can hold the loop.

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

import pyfuse3
import trio

log = logging.getLogger("fuse_fs")

SUPPORTED_VERSIONS = ("3.5.0",)
LINGER = 0.0002
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


class FastWait:
    """Stands in for ``pyfuse3._wait_fuse_readable``: True when a request can be read
    now, False when the loop should end."""

    def __init__(self, fd: int):
        self.fd = fd
        self.rlist = [fd]
        self.lock = trio.Lock()
        self.parked = False
        self.closing = False
        self.last_yield = time.monotonic()
        self.fast = 0        # requests taken without a scheduler round
        self.parks = 0

    async def __call__(self) -> bool:
        if self.closing:
            return False
        if not self.parked and select.select(self.rlist, (), (), LINGER)[0]:
            now = time.monotonic()
            if now - self.last_yield < YIELD_INTERVAL:
                self.fast += 1
                return True
            self.last_yield = now
            await trio.lowlevel.cancel_shielded_checkpoint()
            # Other tasks ran: one of them may have parked or taken the request.
        try:
            async with self.lock:
                if self.closing:
                    return False
                self.parks += 1
                self.parked = True
                try:
                    await trio.lowlevel.wait_readable(self.fd)
                finally:
                    self.parked = False
        except trio.ClosedResourceError:
            return False
        self.last_yield = time.monotonic()
        return True


_installed: FastWait | None = None


def install() -> FastWait | None:
    """Swap in the fast wait (after ``pyfuse3.init``); None when it does not apply."""
    global _installed
    if os.environ.get("FENCEVOL_STOCK_FUSE_LOOP") == "1":
        log.info("FUSE requests: pyfuse3's stock loop (FENCEVOL_STOCK_FUSE_LOOP=1)")
        return None
    version = getattr(pyfuse3, "__version__", None)
    if version not in SUPPORTED_VERSIONS or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.info("FUSE requests: pyfuse3's stock loop (pyfuse3 %s not tested here)", version)
        return None
    fd = find_fuse_fd()
    if fd is None or fd >= FD_SETSIZE:
        log.warning("FUSE requests: pyfuse3's stock loop (no usable FUSE device descriptor)")
        return None
    _installed = FastWait(fd)
    pyfuse3._wait_fuse_readable = _installed
    log.info("FUSE requests: fast wait (linger %.0f µs)", LINGER * 1e6)
    return _installed


def stats() -> dict:
    """For ``vclient status``: which loop serves requests, and how."""
    if _installed is None:
        return {"loop": "stock"}
    return {"loop": "fast", "fast_requests": _installed.fast, "parks": _installed.parks}


def closing() -> None:
    """Tell waiters that the session ends (call before ``pyfuse3.terminate``)."""
    if _installed is not None:
        _installed.closing = True
