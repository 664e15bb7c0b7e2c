"""The watchdog process (started by ``vclient run``; see ``vclient/watchdog.py``).

It reads the agent's shared page every tick and SIGKILLs the agent through a pidfd
when the agent stopped making progress or a write outlives the lease it was
admitted under. It locks its memory and runs at real-time priority so that the load
that stalls the agent does not stall it; it ignores SIGINT, SIGTERM and SIGHUP
(the agent's shutdown disarms it) and exits when the agent exits or disarms.

With ``--hw-watchdog`` it also opens a Linux watchdog device and keeps it alive for
as long as it runs and the agent is healthy: a whole-host hang (this process
included) then resets the host. It stops petting when the agent cannot be killed.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import select
import signal
import struct
import sys
import time

from fencevol import clock
from fencevol.cli import setup_logging

from .watchdog import (
    ARMED,
    DISARMED,
    MAGIC,
    SIZE,
    TICK,
    W_KILLS,
    W_MAGIC,
    W_PID,
    W_STATE,
    W_PING,
    W_TICK,
    W_WORST,
    decide,
    snapshot,
)

log = logging.getLogger("vclient.watchdog")

KILL_WAIT = 10.0
WDIOC_SETTIMEOUT = 0xC0045706       # _IOWR('W', 6, int)
MCL_CURRENT, MCL_FUTURE = 1, 2


class HardwareWatchdog:
    def __init__(self, path: str, timeout: int):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SystemExit(f"watchdog: cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
        except OSError as exc:
            os.close(self.fd)
            raise SystemExit(f"watchdog: {path} is not a watchdog device that takes a "
                             f"{timeout}s timeout: {exc.strerror}") from None
        self.path = path

    def pet(self) -> None:
        os.write(self.fd, b"\0")

    def release(self) -> None:
        """Magic close: the device stops counting (clean shutdown only)."""
        os.write(self.fd, b"V")
        os.close(self.fd)


def harden() -> None:
    """Lock memory and take a real-time priority; log what could not be had."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        log.warning("mlockall failed (%s); the watchdog can be paged out",
                    os.strerror(ctypes.get_errno()))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError as exc:
        log.warning("no real-time priority (%s); heavy load can delay the watchdog", exc.strerror)


def kill(pidfd: int, pid: int, node: int, reason: str) -> None:
    log.critical("killing vclient node %d (pid %d): %s", node, pid, reason)
    t0 = time.monotonic()
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    if select.select([pidfd], [], [], KILL_WAIT)[0]:
        log.critical("vclient node %d (pid %d) is gone, %.1f ms after the kill", node, pid,
                     (time.monotonic() - t0) * 1e3)
    else:
        log.critical("vclient node %d (pid %d) is still there %gs after SIGKILL (stuck in the "
                     "kernel?)", node, pid, KILL_WAIT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vclient-watchdog", description=__doc__)
    ap.add_argument("--node-id", type=int, required=True)
    ap.add_argument("--shm-fd", type=int, required=True)
    ap.add_argument("--pidfd", type=int, required=True)
    ap.add_argument("--hw-watchdog", default="")
    ap.add_argument("--hw-timeout", type=int, default=0)
    args = ap.parse_args(argv)
    setup_logging(f"vclient-{args.node_id}-watchdog")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    words = memoryview(mmap.mmap(args.shm_fd, SIZE)).cast("q")
    if words[W_MAGIC] != MAGIC:
        log.error("shared page has no watchdog layout (magic %#x)", words[W_MAGIC])
        return 2
    pid = words[W_PID]
    pidfd = args.pidfd
    harden()
    hw = HardwareWatchdog(args.hw_watchdog, args.hw_timeout) if args.hw_watchdog else None
    log.info("watching vclient node %d (pid %d), tick %gs%s", args.node_id, pid, TICK,
             f", hardware watchdog {args.hw_watchdog} ({args.hw_timeout}s)" if hw else "")
    killed = False
    while True:
        now = clock.now_ns()
        words[W_TICK] = now
        state = words[W_STATE]
        if state == DISARMED:
            log.info("disarmed by vclient node %d; exiting", args.node_id)
            break
        if state == ARMED and now - words[W_PING] > words[W_WORST]:
            words[W_WORST] = now - words[W_PING]
        reason = decide(snapshot(words), now) if state == ARMED else None
        if reason:
            words[W_KILLS] += 1
            kill(pidfd, pid, args.node_id, reason)
            killed = True
            break
        if hw is not None:
            hw.pet()
        try:
            if select.select([pidfd], [], [], TICK)[0]:
                log.warning("vclient node %d (pid %d) exited without disarming the watchdog",
                            args.node_id, pid)
                break
        except InterruptedError:
            continue
    if hw is not None:
        if killed and select.select([pidfd], [], [], 0)[0] == []:
            log.critical("leaving %s unpetted: the host resets", hw.path)
            while True:
                time.sleep(60)
        hw.release()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:
        if exc.errno != errno.EINTR:
            raise
