"""Waiting for a descriptor without giving up the CPU at once (the FUSE request loop
and the client's direct-I/O engine use it)."""

from __future__ import annotations

import select
import time


def poll(fds: list[int], spin: float, linger: float) -> list[int]:
    """The descriptors of ``fds`` that are readable: polled without sleeping for up
    to ``spin`` seconds, then waited for in ``select`` for up to ``linger``.

    Polling first keeps this thread on its CPU: on a virtual machine, waking a
    thread that slept costs tens of µs (the idle vCPU must be woken), and a FUSE
    request involves three such wake-ups (device, application, daemon). Spinning
    for a FUSE round trip's worth of time removes the daemon's."""
    end = time.monotonic() + spin
    while True:
        ready = select.select(fds, (), (), 0)[0]
        if ready or time.monotonic() > end:
            break
    return ready or select.select(fds, (), (), linger)[0]
