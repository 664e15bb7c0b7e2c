"""The private region at the start of every disk (format in docs/ON-DISK.md).

Layout (byte offsets)::

    0         label slot A     4 KiB   disk header: uuid, sizes, disk group
    4 KiB     label slot B     4 KiB
    8 KiB     PR slot A       28 KiB   persistent-reservation table (24 KiB used)
    32 KiB    owner lease      4 KiB   which server manages the disk group (format 3)
    36 KiB    PR slot B       28 KiB   (24 KiB used)
    64 KiB    config slot A  ~2 MiB    disk group configuration
    ...       config slot B  ~2 MiB
    4 MiB     public region: subdisks

Each area has two slots. A slot is a 28-byte header -- magic ``FENCEVOL``, format
version u16, kind u16, generation u64, payload length u32, CRC-32C u32 (over the
header with the CRC field zeroed, then the payload) -- followed by a JSON payload.
An update writes generation g+1 into the slot *not* holding the newest valid copy
and fdatasyncs, so a crash mid-write leaves the previous copy intact (S4). A slot
holding the magic whose CRC fails is reported, never used.

All of it is read and written with direct I/O (``fencevol.directio``): another host
may have changed the private region since this one last looked. Slots start on
4 KiB boundaries; a write covers the header and payload rounded up to 4 KiB (the
rest of the slot is never read: the header's length bounds the payload).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass, field

from fencevol import directio
from fencevol.crc import crc32c
from fencevol.errors import ChecksumError, InvalidArgument, NotFound

MAGIC = b"FENCEVOL"
FORMAT_VERSION = 3               # 2: an area's first write fills both slots (see read_area)
                                 # 3: the owner-lease block; older servers refuse the disk
READABLE_VERSIONS = (1, 2, 3)
SLOT_HEADER = struct.Struct(">8sHHQII")
PRIVATE_SIZE = 4 << 20

LABEL, PR, CONFIG, OWNER = 1, 2, 3, 4
KIND_NAMES = {LABEL: "label", PR: "reservation table", CONFIG: "configuration", OWNER: "owner lease"}
_AREAS = {
    LABEL: (0, 4 << 10),
    PR: (8 << 10, 28 << 10),
    CONFIG: (64 << 10, (PRIVATE_SIZE - (64 << 10)) // 2),
}
_USED = {PR: 24 << 10, OWNER: 4 << 10}    # a PR slot A payload ends where the owner block starts
OWNER_OFFSET = (8 << 10) + (24 << 10)
MIN_DISK_SIZE = PRIVATE_SIZE + (16 << 20)
IO_UNIT = 4096                   # slot offsets and write lengths are multiples of this


def slot_offset(kind: int, slot: int) -> int:
    base, size = _AREAS[kind]
    return base + slot * size


def slot_capacity(kind: int) -> int:
    return (_USED[kind] if kind in _USED else _AREAS[kind][1]) - SLOT_HEADER.size


def encode_slot(kind: int, generation: int, payload: bytes) -> bytes:
    if len(payload) > slot_capacity(kind):
        raise InvalidArgument(
            f"{KIND_NAMES[kind]} of {len(payload)} bytes does not fit its slot "
            f"({slot_capacity(kind)} bytes)")
    head = SLOT_HEADER.pack(MAGIC, FORMAT_VERSION, kind, generation, len(payload), 0)
    crc = crc32c(payload, crc32c(head))
    return SLOT_HEADER.pack(MAGIC, FORMAT_VERSION, kind, generation, len(payload), crc) + payload


@dataclass
class SlotState:
    slot: int
    generation: int | None = None    # None: empty or unreadable
    payload: bytes | None = None     # set only when the checksum holds
    problem: str | None = None       # why the slot is unusable (None for empty/valid)
    version: int = 0                 # format version of a valid copy

    @property
    def empty(self) -> bool:
        return self.generation is None and self.problem is None


def decode_slot(kind: int, slot: int, raw: bytes) -> SlotState:
    st = SlotState(slot)
    if len(raw) < SLOT_HEADER.size:
        st.problem = "short read"
        return st
    magic, version, k, gen, plen, crc = SLOT_HEADER.unpack_from(raw)
    if magic != MAGIC:
        if any(raw[:SLOT_HEADER.size]):
            st.problem = "no fencevol magic (overwritten?)"
        return st
    if version not in READABLE_VERSIONS or k != kind or plen > len(raw) - SLOT_HEADER.size:
        st.problem = (f"bad header (format version {version}, kind {k}, length {plen}); "
                      "checksum cannot be verified")
        return st
    head = SLOT_HEADER.pack(MAGIC, version, k, gen, plen, 0)
    payload = bytes(raw[SLOT_HEADER.size:SLOT_HEADER.size + plen])
    actual = crc32c(payload, crc32c(head))
    st.generation = gen
    if actual != crc:
        st.problem = f"CRC-32C mismatch (stored {crc:#010x}, computed {actual:#010x})"
        return st
    st.payload = payload
    st.version = version
    return st


MISSING_COPY = ("empty, but its area was written in pairs: a copy was wiped (if it was the "
                "newer one, this metadata rolled back to the other copy's generation)")


@dataclass
class AreaState:
    """Both slots of one area, and the newest valid copy."""

    kind: int
    slots: list[SlotState]
    best: SlotState | None = None

    @property
    def generation(self) -> int:
        return self.best.generation if self.best else 0

    @property
    def problems(self) -> list[str]:
        return [f"{KIND_NAMES[self.kind]} slot {'AB'[s.slot]}"
                + (f" (generation {s.generation})" if s.generation is not None else "")
                + f": {s.problem}" for s in self.slots if s.problem]

    def json(self) -> dict | None:
        return json.loads(self.best.payload) if self.best else None

    @property
    def next_slot(self) -> int:
        """Where the next update goes: never over the newest valid copy."""
        return 1 - self.best.slot if self.best else 0


def _read_slot(fd: int, kind: int, slot: int) -> memoryview:
    """A slot's header and payload (the header's length says how much), read with
    direct I/O: the first 4 KiB, then the rest only if the payload needs it."""
    off, size = slot_offset(kind, slot), _AREAS[kind][1]
    buf = directio.aligned_buffer(size)
    got = os.preadv(fd, [buf[:IO_UNIT]], off)
    if got == IO_UNIT and buf[:8] == MAGIC:
        plen = SLOT_HEADER.unpack_from(buf)[4]
        want = min(size, -(-(SLOT_HEADER.size + plen) // IO_UNIT) * IO_UNIT)
        if want > IO_UNIT:
            got += os.preadv(fd, [buf[IO_UNIT:want]], off + IO_UNIT)
    return buf[:got]


def read_area(fd: int, kind: int) -> AreaState:
    """Both slots and the newest valid copy. An area's first write fills both slots
    (format version 2), so one valid copy next to an empty slot is damage, not a
    fresh area: the empty slot may have held the newest copy (zeroed by a tool, a
    faulty disk) and the area would silently roll back -- it is reported instead,
    and ``write_area`` will not write over it until a repair confirms the copy."""
    slots = []
    for slot in (0, 1):
        slots.append(decode_slot(kind, slot, _read_slot(fd, kind, slot)))
    valid = [s for s in slots if s.payload is not None]
    best = max(valid, key=lambda s: s.generation) if valid else None
    if len(valid) == 1 and valid[0].version >= 2:
        other = slots[1 - valid[0].slot]
        if other.empty:
            other.problem = MISSING_COPY
    return AreaState(kind, slots, best)


def write_area(fd: int, area: AreaState, payload: dict, generation: int | None = None) -> AreaState:
    """Write ``payload`` as the next generation into the free slot and fdatasync.

    Refuses (``ChecksumError``) when the target slot holds a copy that failed its
    checksum: that needs an explicit repair, so evidence is never overwritten
    silently."""
    target = area.next_slot
    if area.slots[target].problem:
        raise ChecksumError(f"refusing to overwrite damaged {area.problems[0]}; repair first")
    gen = area.generation + 1 if generation is None else generation
    data = encode_slot(area.kind, gen, json.dumps(payload, separators=(",", ":")).encode())
    buf = directio.aligned_buffer(-(-len(data) // IO_UNIT) * IO_UNIT)
    buf[:len(data)] = data
    first = area.best is None and all(s.empty for s in area.slots)
    targets = (0, 1) if first else (target,)       # a fresh area gets both copies
    for t in targets:
        os.pwrite(fd, buf, slot_offset(area.kind, t))
    os.fdatasync(fd)
    slots = list(area.slots)
    for t in targets:
        slots[t] = SlotState(t, gen, data[SLOT_HEADER.size:], version=FORMAT_VERSION)
    return AreaState(area.kind, slots, slots[targets[0]])


def restore_copy(fd: int, area: AreaState) -> AreaState:
    """Repair: write the area's newest valid copy into its other slot (confirming
    it; what a missing newer copy held is lost) and fdatasync."""
    if area.best is None:
        raise ChecksumError(f"no valid {KIND_NAMES[area.kind]} copy to restore from")
    other = 1 - area.best.slot
    data = encode_slot(area.kind, area.best.generation, area.best.payload)
    buf = directio.aligned_buffer(-(-len(data) // IO_UNIT) * IO_UNIT)
    buf[:len(data)] = data
    os.pwrite(fd, buf, slot_offset(area.kind, other))
    os.fdatasync(fd)
    return read_area(fd, area.kind)


def clear_slot(fd: int, kind: int, slot: int) -> None:
    """Zero one slot (repair of a damaged copy); the caller fdatasyncs."""
    os.pwrite(fd, directio.aligned_buffer(_AREAS[kind][1]), slot_offset(kind, slot))


def clear_private_region(fd: int) -> None:
    zero = directio.aligned_buffer(1 << 20)
    for off in range(0, PRIVATE_SIZE, len(zero)):
        os.pwrite(fd, zero, off)
    os.fdatasync(fd)


@dataclass
class Label:
    """Decoded disk header."""

    disk_id: str
    name: str
    size: int
    public_offset: int
    dg_id: str = ""
    dg_name: str = ""
    created: float = 0.0

    def to_json(self) -> dict:
        return {"disk_id": self.disk_id, "name": self.name, "size": self.size,
                "private_size": self.public_offset, "public_offset": self.public_offset,
                "dg_id": self.dg_id, "dg_name": self.dg_name, "created": self.created}

    @classmethod
    def from_json(cls, d: dict) -> "Label":
        return cls(str(d["disk_id"]), str(d["name"]), int(d["size"]), int(d["public_offset"]),
                   str(d.get("dg_id", "")), str(d.get("dg_name", "")), float(d.get("created", 0)))


def open_disk(path: str) -> tuple[int, int]:
    """Open a disk image or block device read-write with direct I/O; return
    ``(fd, size)``.

    Raises ``NotFound`` / ``InvalidArgument`` with a one-line reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file or device") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgument(f"{path}: not a regular file or block device")
    try:
        fd = directio.open_direct(path)
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot open read-write: {exc.strerror}") from None
    size = os.lseek(fd, 0, os.SEEK_END)
    return fd, size


@dataclass
class DiskProbe:
    """What reading a disk's private region found."""

    path: str
    label: Label | None
    label_area: AreaState
    problems: list[str] = field(default_factory=list)


def probe(fd: int, path: str) -> DiskProbe:
    area = read_area(fd, LABEL)
    label = None
    problems = area.problems
    if area.best is not None:
        try:
            label = Label.from_json(area.json())
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"label does not parse: {exc!r}")
    return DiskProbe(path, label, area, problems)


# -- the owner lease (one block, no second slot: see vserver/ownership.py) -------------------

def read_owner(fd: int) -> SlotState:
    """The owner-lease block: ``payload`` set when it holds a valid record,
    ``problem`` when it holds a damaged one (a write torn by a crash, or another
    server writing at this instant), neither when it was never written."""
    buf = directio.aligned_buffer(IO_UNIT)
    got = os.preadv(fd, [buf], OWNER_OFFSET)
    return decode_slot(OWNER, 0, buf[:got])


def write_owner(fd: int, counter: int, record: dict) -> None:
    """Write the owner-lease record (``counter`` goes in the generation field) and
    fdatasync: one 4 KiB block, in place."""
    data = encode_slot(OWNER, counter, json.dumps(record, separators=(",", ":")).encode())
    buf = directio.aligned_buffer(IO_UNIT)
    buf[:len(data)] = data
    os.pwrite(fd, buf, OWNER_OFFSET)
    os.fdatasync(fd)
