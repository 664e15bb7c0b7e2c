"""SCSI-3 persistent reservations, emulated per disk (sans-IO).

Semantics follow SPC-3 where they matter for fencing:

* REGISTER adds an initiator's key; a key removed by PREEMPT stays refused
  (tombstoned) -- the node must rejoin with a new incarnation, hence a new key;
* RESERVE needs a registered key; one reservation per disk, of a type:
  ``WE`` write exclusive, ``EA`` exclusive access, ``WERO`` / ``EARO`` the same
  for registrants only;
* RELEASE by the holder, CLEAR by any registrant (drops everything);
* PREEMPT removes the victim's registration (and takes its reservation);
  PREEMPT AND ABORT also aborts the victim's outstanding I/O -- here: its
  delegations are revoked and its gates closed before the fence completes.

The table is stored in each disk's private region (docs/ON-DISK.md, kind 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fencevol.coord import format_key, key_node
from fencevol.errors import InvalidArgument, ReservationConflict

TYPES = ("WE", "EA", "WERO", "EARO")
TYPE_NAMES = {"WE": "Write Exclusive", "EA": "Exclusive Access",
              "WERO": "Write Exclusive, Registrants Only",
              "EARO": "Exclusive Access, Registrants Only"}
MAX_TOMBSTONES = 256


@dataclass
class PRTable:
    generation: int = 0
    registrations: dict[int, dict] = field(default_factory=dict)   # key -> {"node", "at"}
    reservation: tuple[int, str] | None = None
    preempted: list[int] = field(default_factory=list)

    # -- PERSISTENT RESERVE IN ---------------------------------------------------------
    def read_keys(self) -> list[int]:
        return sorted(self.registrations)

    def read_reservation(self) -> tuple[int, str] | None:
        return self.reservation

    def may_write(self, key: int) -> bool:
        if self.reservation is None:
            return True
        holder, rtype = self.reservation
        if rtype in ("WE", "EA"):
            return key == holder
        return key in self.registrations

    # -- PERSISTENT RESERVE OUT ----------------------------------------------------------
    def _bump(self) -> None:
        self.generation += 1

    def _registered(self, key: int, what: str) -> None:
        if key not in self.registrations:
            raise ReservationConflict(f"{what}: key {format_key(key)} is not registered")

    def register(self, key: int, node: int, now: float) -> bool:
        """Add ``key``; returns False when it was already registered."""
        if key == 0:
            raise InvalidArgument("key 0 is reserved")
        if key in self.preempted:
            raise ReservationConflict(
                f"key {format_key(key)} of node {key_node(key)} was preempted; the node must "
                "rejoin the cluster (new incarnation, new key)")
        if key in self.registrations:
            return False
        self.registrations[key] = {"node": node, "at": now}
        self._bump()
        return True

    def unregister(self, key: int) -> None:
        if key not in self.registrations:
            return
        del self.registrations[key]
        if self.reservation and self.reservation[0] == key:
            self.reservation = None
        self._bump()

    def reserve(self, key: int, rtype: str) -> None:
        if rtype not in TYPES:
            raise InvalidArgument(f"unknown reservation type {rtype!r}: {', '.join(TYPES)}")
        self._registered(key, "RESERVE")
        if self.reservation is not None:
            if self.reservation == (key, rtype):
                return
            raise ReservationConflict(
                f"RESERVE: disk is reserved ({self.reservation[1]}) by {format_key(self.reservation[0])}")
        self.reservation = (key, rtype)
        self._bump()

    def release(self, key: int, rtype: str) -> None:
        self._registered(key, "RELEASE")
        if self.reservation is None or self.reservation[0] != key:
            return
        if self.reservation[1] != rtype:
            raise InvalidArgument(f"RELEASE: reservation type is {self.reservation[1]}, not {rtype}")
        self.reservation = None
        self._bump()

    def clear(self, key: int) -> None:
        self._registered(key, "CLEAR")
        self.registrations.clear()
        self.reservation = None
        self._bump()

    def preempt(self, key: int, victim: int) -> bool:
        """Remove ``victim``; returns False when it was not registered (a no-op, so
        that survivors fencing in parallel do not trip over each other)."""
        self._registered(key, "PREEMPT")
        if victim == key:
            raise InvalidArgument("PREEMPT: a key cannot preempt itself")
        if victim not in self.registrations:
            self._tombstone(victim)
            return False
        del self.registrations[victim]
        if self.reservation and self.reservation[0] == victim:
            self.reservation = (key, self.reservation[1])
        self._tombstone(victim)
        self._bump()
        return True

    def _tombstone(self, victim: int) -> None:
        if victim not in self.preempted:
            self.preempted.append(victim)
            del self.preempted[:-MAX_TOMBSTONES]

    def forget_tombstone(self, key: int) -> None:
        if key in self.preempted:
            self.preempted.remove(key)
            self._bump()

    # -- persistence ---------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"generation": self.generation,
                "registrations": {format_key(k): v for k, v in sorted(self.registrations.items())},
                "reservation": None if self.reservation is None else
                {"key": format_key(self.reservation[0]), "type": self.reservation[1]},
                "preempted": [format_key(k) for k in self.preempted]}

    @classmethod
    def from_json(cls, d: dict | None) -> "PRTable":
        if not d:
            return cls()
        res = d.get("reservation")
        return cls(generation=int(d.get("generation", 0)),
                   registrations={int(k, 16): {"node": int(v["node"]), "at": float(v["at"])}
                                  for k, v in d.get("registrations", {}).items()},
                   reservation=None if not res else (int(res["key"], 16), str(res["type"])),
                   preempted=[int(k, 16) for k in d.get("preempted", [])])
