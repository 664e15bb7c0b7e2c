"""Extent maps: volume offsets -> (disk, disk offset) segments (sans-IO).

A volume has one or more plexes (mirrors); every plex has the full volume. A plex
has one or more columns; with a stripe unit ``su > 0`` volume offset ``v`` lives in
stripe unit ``u = v // su``, column ``u % ncols`` at column offset
``(u // ncols) * su + v % su``; with ``su == 0`` there is one column (concat). A
column is a concatenation of subdisks ``(disk index, disk offset, length)``.

Wire form (server -> client), see docs/PROTOCOL.md::

    {"size": int, "stripe_unit": int, "generation": int,
     "plex_states": ["active" | "stale" | "syncing" | "detaching", ...] per plex
                    (default all active; read: active; written: all but stale),
     "plexes": [[[ [disk_index, disk_offset, length], ... ] per column ] per plex],
     "disks": [{"id": uuid, "path": str, "name": str}, ...]}
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from .errors import ProtocolError

Segment = tuple[int, int, int, int]
"""(disk index, disk offset, offset in the request buffer, length)."""


class _Column:
    __slots__ = ("starts", "disks", "offsets", "lengths", "capacity")

    def __init__(self, subdisks):
        self.starts: list[int] = []
        self.disks: list[int] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        pos = 0
        for disk, offset, length in subdisks:
            self.starts.append(pos)
            self.disks.append(disk)
            self.offsets.append(offset)
            self.lengths.append(length)
            pos += length
        self.capacity = pos

    def map(self, coff: int, length: int, boff: int, out: list) -> None:
        i = bisect_right(self.starts, coff) - 1
        starts, disks, offsets, lengths = self.starts, self.disks, self.offsets, self.lengths
        while length:
            rel = coff - starts[i]
            n = lengths[i] - rel
            if n > length:
                n = length
            out.append((disks[i], offsets[i] + rel, boff, n))
            coff += n
            boff += n
            length -= n
            i += 1


class PlexMap:
    """One plex: maps a volume range to disk segments."""

    __slots__ = ("columns", "stripe_unit", "ncols", "_single")

    def __init__(self, columns, stripe_unit: int):
        self.columns = [_Column(c) for c in columns]
        self.ncols = len(self.columns)
        self.stripe_unit = stripe_unit
        if not self.columns or (self.ncols > 1 and stripe_unit <= 0):
            raise ProtocolError("plex needs one column, or several with a stripe unit")
        col = self.columns[0]
        # Fast path: a plain one-subdisk concat maps with an addition.
        self._single = (col.disks[0], col.offsets[0]) if (
            self.ncols == 1 and stripe_unit == 0 and len(col.disks) == 1) else None

    @property
    def capacity(self) -> int:
        if self.stripe_unit == 0:
            return self.columns[0].capacity
        su = self.stripe_unit
        return min(c.capacity // su for c in self.columns) * su * self.ncols

    def segments(self, offset: int, length: int) -> list[Segment]:
        """Split ``[offset, offset + length)`` into disk segments in buffer order.
        The caller keeps the range inside the volume."""
        if self._single is not None:
            disk, base = self._single
            return [(disk, base + offset, 0, length)]
        out: list[Segment] = []
        su = self.stripe_unit
        if su == 0:
            self.columns[0].map(offset, length, 0, out)
            return out
        ncols, columns, boff = self.ncols, self.columns, 0
        while length:
            unit, within = divmod(offset, su)
            row, col = divmod(unit, ncols)
            n = su - within
            if n > length:
                n = length
            columns[col].map(row * su + within, n, boff, out)
            offset += n
            boff += n
            length -= n
        return out


@dataclass(frozen=True)
class DiskRef:
    id: str
    path: str
    name: str


class ExtentMap:
    """A volume's full map: size, plexes and the disks they reference."""

    __slots__ = ("size", "stripe_unit", "plexes", "disks", "wire", "generation", "states",
                 "readable", "writable")

    def __init__(self, wire: dict):
        try:
            self.size = int(wire["size"])
            self.stripe_unit = int(wire.get("stripe_unit", 0))
            self.disks = [DiskRef(str(d["id"]), str(d.get("path", "")), str(d.get("name", "")))
                          for d in wire["disks"]]
            self.plexes = [PlexMap([[(int(a), int(b), int(c)) for a, b, c in col] for col in plex],
                                   self.stripe_unit) for plex in wire["plexes"]]
            self.generation = int(wire.get("generation", 0))
            self.states = [str(x) for x in wire.get("plex_states") or ["active"] * len(self.plexes)]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProtocolError(f"malformed extent map: {exc!r}") from None
        if not self.plexes:
            raise ProtocolError("extent map has no plex")
        if len(self.states) != len(self.plexes):
            raise ProtocolError("extent map: plex states do not match its plexes")
        self.readable = [p for p, st in enumerate(self.states) if st == "active"]
        self.writable = [p for p, st in enumerate(self.states) if st in ("active", "syncing",
                                                                           "detaching")]
        if not self.readable:
            raise ProtocolError("extent map has no active plex")
        for plex in self.plexes:
            for col in plex.columns:
                if any(d < 0 or d >= len(self.disks) for d in col.disks):
                    raise ProtocolError("extent map references an unknown disk")
            if plex.capacity < self.size:
                raise ProtocolError(
                    f"extent map plex holds {plex.capacity} bytes, less than the volume size {self.size}")
        self.wire = wire

    def extent_count(self) -> int:
        return sum(len(c.disks) for p in self.plexes for c in p.columns)
