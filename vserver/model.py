"""Disk group configuration: the records every disk of a group carries a copy of.

Serialized as JSON inside a checksummed private-region slot (docs/ON-DISK.md).
``GroupConfig.from_json`` validates structure and geometry, so a copy that passes
its CRC but makes no sense is refused too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fencevol.errors import InvalidArgument, MetadataError, NotFound  # noqa: F401 (re-exported)
from fencevol.units import SECTOR

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LAYOUTS = ("concat", "stripe", "mirror")
# Plex states (VxVM's ACTIVE / STALE, LVM raid1's in-sync / out-of-sync):
#   active  -- in sync: read and written;
#   stale   -- detached after a failed write (or replaced disk): neither read nor written;
#   syncing -- being resynchronized from an active plex: written, not read, until done;
#   detaching -- the first step of a detach: written, no longer read (then stale).
ACTIVE, STALE, SYNCING, DETACHING = "active", "stale", "syncing", "detaching"
PLEX_STATES = (ACTIVE, STALE, SYNCING, DETACHING)
KINDS = ("data", "coordinator")
CONFIG_FORMAT = 1


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidArgument(
            f"bad {what} name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)")
    return name


@dataclass
class Subdisk:
    disk: str          # disk UUID
    offset: int        # absolute byte offset on the disk (inside the public region)
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class DiskRecord:
    id: str
    name: str
    size: int            # device size in bytes when it joined
    public_offset: int   # first byte of the public region


@dataclass
class Volume:
    id: str
    name: str
    size: int
    layout: str
    plexes: list[list[list[Subdisk]]]   # plex -> column -> subdisks
    stripe_unit: int = 0
    kind: str = "data"
    cluster_id: str = ""                 # coordinator volumes: which cluster
    plex_states: list[str] = field(default_factory=list)   # per plex; empty: all active
    resync_done: int = 0                 # bytes of the syncing plexes copied so far

    def __post_init__(self):
        if not self.plex_states:
            self.plex_states = [ACTIVE] * len(self.plexes)

    def plexes_in(self, *states: str) -> list[int]:
        return [p for p, st in enumerate(self.plex_states) if st in states]

    @property
    def columns(self) -> int:
        return len(self.plexes[0])

    def subdisks(self):
        for plex in self.plexes:
            for col in plex:
                yield from col

    def disk_ids(self) -> set[str]:
        return {sd.disk for sd in self.subdisks()}

    def to_json(self) -> dict:
        return {
            "id": self.id, "name": self.name, "size": self.size, "layout": self.layout,
            "stripe_unit": self.stripe_unit, "kind": self.kind, "cluster_id": self.cluster_id,
            "plex_states": list(self.plex_states), "resync_done": self.resync_done,
            "plexes": [[[[sd.disk, sd.offset, sd.length] for sd in col] for col in plex]
                       for plex in self.plexes],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Volume":
        return cls(
            id=str(d["id"]), name=str(d["name"]), size=int(d["size"]), layout=str(d["layout"]),
            stripe_unit=int(d.get("stripe_unit", 0)), kind=str(d.get("kind", "data")),
            cluster_id=str(d.get("cluster_id", "")),
            plex_states=[str(x) for x in d.get("plex_states", [])],
            resync_done=int(d.get("resync_done", 0)),
            plexes=[[[Subdisk(str(a), int(b), int(c)) for a, b, c in col] for col in plex]
                    for plex in d["plexes"]],
        )


@dataclass
class GroupConfig:
    id: str
    name: str
    generation: int = 1
    disks: list[DiskRecord] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)

    def disk(self, disk_id: str) -> DiskRecord:
        for d in self.disks:
            if d.id == disk_id:
                return d
        raise NotFound(f"disk {disk_id} is not in disk group {self.name}")

    def volume(self, name: str) -> Volume:
        for v in self.volumes:
            if v.name == name:
                return v
        raise NotFound(f"no volume {self.name}/{name}")

    def to_json(self) -> dict:
        return {
            "format": CONFIG_FORMAT, "id": self.id, "name": self.name,
            "generation": self.generation,
            "disks": [{"id": d.id, "name": d.name, "size": d.size, "public_offset": d.public_offset}
                      for d in self.disks],
            "volumes": [v.to_json() for v in self.volumes],
        }

    @classmethod
    def from_json(cls, d: dict) -> "GroupConfig":
        try:
            if d.get("format") != CONFIG_FORMAT:
                raise MetadataError(f"configuration format {d.get('format')!r} not supported")
            cfg = cls(
                id=str(d["id"]), name=str(d["name"]), generation=int(d["generation"]),
                disks=[DiskRecord(str(x["id"]), str(x["name"]), int(x["size"]),
                                  int(x["public_offset"])) for x in d["disks"]],
                volumes=[Volume.from_json(v) for v in d["volumes"]],
            )
        except MetadataError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"configuration record is malformed: {exc!r}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check geometry: subdisks inside public regions, no overlaps, plex capacity
        covers the volume, layout rules. Raises ``MetadataError``."""
        disks = {d.id: d for d in self.disks}
        if len(disks) != len(self.disks):
            raise MetadataError(f"disk group {self.name}: duplicate disk id")
        used: dict[str, list[tuple[int, int, str]]] = {d: [] for d in disks}
        names = set()
        for v in self.volumes:
            where = f"volume {self.name}/{v.name}"
            if v.name in names:
                raise MetadataError(f"{where}: duplicate name")
            names.add(v.name)
            if v.layout not in LAYOUTS or v.kind not in KINDS:
                raise MetadataError(f"{where}: unknown layout or kind")
            if v.size <= 0 or v.size % SECTOR or not v.plexes:
                raise MetadataError(f"{where}: bad size or no plex")
            if len(v.plex_states) != len(v.plexes) or any(st not in PLEX_STATES for st in v.plex_states):
                raise MetadataError(f"{where}: plex states do not match its plexes")
            if ACTIVE not in v.plex_states:
                raise MetadataError(f"{where}: no active plex")
            if not 0 <= v.resync_done <= v.size:
                raise MetadataError(f"{where}: resync position outside the volume")
            if v.layout == "stripe" and v.stripe_unit <= 0:
                raise MetadataError(f"{where}: stripe without stripe unit")
            for plex in v.plexes:
                if len(plex) != v.columns or any(not col for col in plex):
                    raise MetadataError(f"{where}: plexes differ in columns or a column is empty")
                if plex_capacity(plex, v.stripe_unit) < v.size:
                    raise MetadataError(f"{where}: a plex is smaller than the volume")
                for sd in (sd for col in plex for sd in col):
                    rec = disks.get(sd.disk)
                    if rec is None:
                        raise MetadataError(f"{where}: subdisk on unknown disk {sd.disk}")
                    if sd.length <= 0 or sd.offset < rec.public_offset or sd.end > rec.size:
                        raise MetadataError(f"{where}: subdisk outside the public region of {rec.name}")
                    used[sd.disk].append((sd.offset, sd.end, v.name))
        for disk_id, spans in used.items():
            spans.sort()
            for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise MetadataError(
                        f"disk group {self.name}: volumes {an} and {bn} overlap on disk "
                        f"{disks[disk_id].name}")


def plex_capacity(plex: list[list[Subdisk]], stripe_unit: int) -> int:
    caps = [sum(sd.length for sd in col) for col in plex]
    if stripe_unit <= 0:
        return caps[0]
    return min(c // stripe_unit for c in caps) * stripe_unit * len(caps)


def extent_map_wire(cfg: GroupConfig, vol: Volume, disk_paths: dict[str, str]) -> dict:
    """The map a client gets (fencevol.extents wire form)."""
    order: dict[str, int] = {}
    for sd in vol.subdisks():
        order.setdefault(sd.disk, len(order))
    disks = []
    for disk_id in order:
        rec = cfg.disk(disk_id)
        disks.append({"id": disk_id, "name": rec.name, "path": disk_paths.get(disk_id, "")})
    return {
        "size": vol.size, "stripe_unit": vol.stripe_unit, "generation": cfg.generation,
        "plex_states": list(vol.plex_states),
        "plexes": [[[[order[sd.disk], sd.offset, sd.length] for sd in col] for col in plex]
                   for plex in vol.plexes],
        "disks": disks,
    }
