"""The coordinator volume's content (patent Figure 4), sans-IO.

One block at offset 0 of the coordinator volume, big-endian::

    header (72 bytes)
      magic        8   "FVCOORD\\0"
      version      u16 (1)
      flags        u16 (0)
      record_count u32
      generation   u64   bumped by every change (compare-and-swap key)
      timestamp    f64   unix time of the last change
      cluster_id   32    UTF-8, NUL padded
      crc32c       u32   CRC-32C over the header (this field zeroed) and the records
      reserved     u32
    (the CRC covers every header byte but its own field)
    records (32 bytes each, sorted by node id)
      node_id      u32
      is_member    u8
      pad          3
      incarnation  u32   bumped at each join: the node's registration key changes
      reserved     u32
      changed_at   f64   unix time this record last changed
      reserved     8

A single copy, on purpose: a copy that fails its checksum is reported and never
used -- falling back to an older copy could resurrect an old membership.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, replace

from .crc import crc32c
from .errors import ChecksumError, InvalidArgument

MAGIC = b"FVCOORD\0"
VERSION = 1
HEADER = struct.Struct(">8sHHIQd32sII")
RECORD = struct.Struct(">IB3xIId8x")
MAX_NODES = 64
MAX_NODE_ID = 65535
BLOCK = 4096
assert HEADER.size == 72 and RECORD.size == 32


@dataclass(frozen=True)
class NodeRecord:
    node_id: int
    is_member: bool = False
    incarnation: int = 0
    changed_at: float = 0.0


@dataclass(frozen=True)
class Membership:
    cluster_id: str
    generation: int
    records: tuple[NodeRecord, ...]
    timestamp: float = 0.0

    @property
    def members(self) -> frozenset[int]:
        return frozenset(r.node_id for r in self.records if r.is_member)

    @property
    def node_ids(self) -> frozenset[int]:
        return frozenset(r.node_id for r in self.records)

    def record(self, node_id: int) -> NodeRecord | None:
        for r in self.records:
            if r.node_id == node_id:
                return r
        return None

    def changed(self, updates: dict[int, dict], now: float | None = None) -> "Membership":
        """A new membership, generation + 1, with ``updates[node] = {field: value}``
        applied; only records that really change get a new ``changed_at``."""
        now = time.time() if now is None else now
        records = []
        for r in self.records:
            u = updates.get(r.node_id)
            if u:
                new = replace(r, **u)
                records.append(replace(new, changed_at=now) if new != r else r)
            else:
                records.append(r)
        return Membership(self.cluster_id, self.generation + 1, tuple(records), now)

    def to_json(self) -> dict:
        return {"cluster_id": self.cluster_id, "generation": self.generation,
                "timestamp": self.timestamp, "members": sorted(self.members),
                "records": [{"node_id": r.node_id, "is_member": r.is_member,
                             "incarnation": r.incarnation, "changed_at": r.changed_at}
                            for r in self.records]}


def check_cluster_id(cluster_id: str) -> str:
    raw = cluster_id.encode() if isinstance(cluster_id, str) else b""
    if not raw or len(raw) > 32 or b"\0" in raw:
        raise InvalidArgument(f"bad cluster id {cluster_id!r}: 1-32 bytes of UTF-8")
    return cluster_id


def initial(cluster_id: str, nodes: list[int], now: float | None = None) -> Membership:
    """Figure 5: a record per node, nobody a member yet, generation 1."""
    check_cluster_id(cluster_id)
    ids = sorted(nodes)
    if not ids or len(ids) > MAX_NODES:
        raise InvalidArgument(f"a coordinator holds 1 to {MAX_NODES} nodes")
    if len(set(ids)) != len(ids):
        raise InvalidArgument("duplicate node id in the node list")
    if any(not 1 <= n <= MAX_NODE_ID for n in ids):
        raise InvalidArgument(f"node ids must be 1-{MAX_NODE_ID}")
    now = time.time() if now is None else now
    return Membership(cluster_id, 1, tuple(NodeRecord(n, False, 0, now) for n in ids), now)


def encode(m: Membership) -> bytes:
    body = b"".join(RECORD.pack(r.node_id, int(r.is_member), r.incarnation, 0, r.changed_at)
                    for r in m.records)
    cid = m.cluster_id.encode()
    head = HEADER.pack(MAGIC, VERSION, 0, len(m.records), m.generation, m.timestamp, cid, 0, 0)
    crc = crc32c(body, crc32c(head))
    head = HEADER.pack(MAGIC, VERSION, 0, len(m.records), m.generation, m.timestamp, cid, crc, 0)
    data = head + body
    return data + bytes(-len(data) % 512)


def decode(data: bytes, where: str = "coordinator") -> Membership:
    """Parse and verify; any damage raises ``ChecksumError`` naming what failed."""
    if len(data) < HEADER.size:
        raise ChecksumError(f"{where}: too short ({len(data)} bytes) for a coordinator header")
    magic, version, flags, count, gen, ts, cid, crc, reserved = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ChecksumError(f"{where}: not initialized as a coordinator (no FVCOORD magic)")
    if version != VERSION:
        raise ChecksumError(f"{where}: coordinator format version {version} not supported")
    if count > MAX_NODES or HEADER.size + count * RECORD.size > len(data):
        raise ChecksumError(f"{where}: header claims {count} records; header damaged")
    body = bytes(data[HEADER.size:HEADER.size + count * RECORD.size])
    head0 = HEADER.pack(magic, version, flags, count, gen, ts, cid, 0, reserved)
    actual = crc32c(body, crc32c(head0))
    if actual != crc:
        raise ChecksumError(f"{where}: coordinator checksum mismatch (stored {crc:#010x}, "
                            f"computed {actual:#010x}); refusing to use it")
    try:
        cluster_id = cid.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise ChecksumError(f"{where}: cluster id is not UTF-8") from None
    records = []
    for i in range(count):
        node, member, inc, _, changed = RECORD.unpack_from(body, i * RECORD.size)
        records.append(NodeRecord(node, bool(member), inc, changed))
    return Membership(cluster_id, gen, tuple(records), ts)


def registration_key(cluster_id: str, node_id: int, incarnation: int) -> int:
    """The node's SCSI-3 style registration key: 16 bits of the cluster, 16 of the
    node, 32 of the incarnation -- a restarted or rejoined node gets a new key."""
    return (cluster_bits(cluster_id) << 48) | ((node_id & 0xFFFF) << 32) | (incarnation & 0xFFFFFFFF)


ANY_INCARNATION = 0xFFFFFFFF      # "every incarnation" where one is expected


def cluster_bits(cluster_id: str) -> int:
    """The 16 bits of a cluster in its nodes' keys ("" is a stand-alone node's)."""
    return crc32c(cluster_id.encode()) & 0xFFFF


def key_cluster(key: int) -> int:
    return key >> 48


def key_node(key: int) -> int:
    return (key >> 32) & 0xFFFF


def key_incarnation(key: int) -> int:
    return key & 0xFFFFFFFF


def format_key(key: int) -> str:
    return f"0x{key:016x}"
