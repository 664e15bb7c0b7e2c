"""Deliberately broken builds, for tools/check's self-tests only.

A checker that never reports a violation proves nothing; each break below makes one
safety mechanism fail in a known way, and tools/check must report it. A break is
chosen with an environment variable whose value is deliberately alarming, so it
cannot be switched on by accident; the node logs a critical warning. The watchdog
is turned off with the gate breaks (it would otherwise cover for them).

    FENCEVOL_UNSAFE_SELF_TEST=yes-break-<kind>-for-checker-self-test
"""

from __future__ import annotations

import logging

from fencevol.errors import InvalidArgument

SWITCH = "FENCEVOL_UNSAFE_SELF_TEST"
BREAKS = {
    "no-gate": "every gate lets every write through, fenced or not",
    "no-lease": "gates ignore lease deadlines (a fenced gate still refuses)",
    "never-eject": "the node never ejects itself: it keeps claiming its membership",
}
WITHOUT_WATCHDOG = {"no-gate", "no-lease"}

log = logging.getLogger("vclient")


def value(kind: str) -> str:
    return f"yes-break-{kind}-for-checker-self-test"


def apply(env_value: str) -> str:
    """Break what ``env_value`` names; return the kind. Unknown values are refused."""
    kinds = {value(k): k for k in BREAKS}
    if env_value not in kinds:
        raise InvalidArgument(f"{SWITCH} is set to an unknown value; unset it")
    kind = kinds[env_value]
    from .cluster import FenceDriver
    from .gate import CLOSED, INFLIGHT, OPEN, FenceGate

    if kind == "no-gate":
        def admit_anything(self) -> bool:
            self.inflight += 1
            self.slot[INFLIGHT] = self.inflight
            return True
        FenceGate.writable = lambda self: self.state is not CLOSED
        FenceGate.admit_nowait = admit_anything
    elif kind == "no-lease":
        def admit_unless_fenced(self) -> bool:
            self.inflight += 1
            self.slot[INFLIGHT] = self.inflight
            if self.state is OPEN:
                return True
            self.leave()
            return False
        FenceGate.writable = lambda self: self.state is OPEN
        FenceGate.admit_nowait = admit_unless_fenced
    elif kind == "never-eject":
        FenceDriver.eject = lambda self, why: log.critical("NOT ejecting (self-test): %s", why)
    log.critical("SELF-TEST BREAK %s (%s): %s; for tools/check's self-test only",
                 kind, SWITCH, BREAKS[kind])
    return kind
