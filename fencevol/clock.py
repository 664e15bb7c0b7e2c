"""The clock that leases are measured on: ``CLOCK_BOOTTIME``.

``CLOCK_MONOTONIC`` stops while a host is suspended; a client that counted its lease
on it would wake from a suspend believing its lease still runs, though the server
has long since fenced it. ``CLOCK_BOOTTIME`` keeps counting through a suspend, so a
suspended host's lease has run out when it wakes.

Both daemons run trio on this clock (``trio.run(..., clock=BOOTTIME)``), so
``trio.current_time()``, sleeps and deadlines are all on it, and ``now()`` reads it
outside trio (the gate's hot path, the watchdog process). Only times taken on one
host are ever compared: a lease is counted by each side on its own clock.
"""

from __future__ import annotations

import time

import trio

CLOCK_ID = time.CLOCK_BOOTTIME


def now() -> float:
    """Seconds on ``CLOCK_BOOTTIME``."""
    return time.clock_gettime(CLOCK_ID)


def now_ns() -> int:
    return time.clock_gettime_ns(CLOCK_ID)


class BoottimeClock(trio.abc.Clock):
    """A trio clock on ``CLOCK_BOOTTIME``. A sleep that spans a suspend ends as soon
    as the host wakes (trio recomputes every timeout from this clock)."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.clock_gettime(CLOCK_ID)

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.clock_gettime(CLOCK_ID)


BOOTTIME = BoottimeClock()
