"""Disks and disk groups as the server holds them (synchronous; the trio server
calls the I/O parts from a worker thread).

Invariants kept here:

* a disk joins a group only if its label is valid and names no group;
* a configuration change is computed first, validated, then written to every disk
  of the group (generation g+1) before it is installed in memory or acknowledged;
* bad input raises before anything is written.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from fencevol import directio, ondisk
from fencevol.errors import (
    AlreadyExists,
    ChecksumError,
    IOFailure,
    InUse,
    InvalidArgument,
    NotFound,
)
from fencevol.units import format_size

from .model import DiskRecord, GroupConfig, MetadataError, check_name
from .ownership import NotOwner, Ownership
from .pr import PRTable

log = logging.getLogger("vserver.storage")


class Disk:
    """An open disk (direct I/O): descriptor, logical block size, label and the three
    private-region areas."""

    def __init__(self, path: str, fd: int, size: int):
        self.path = path
        self.fd = fd
        self.size = size
        self.block = directio.block_size(fd)
        self.areas: dict[int, ondisk.AreaState] = {}
        self.label: ondisk.Label | None = None
        self.problems: list[str] = []
        self.pr = PRTable()
        self.failed = ""              # an I/O error: left out of metadata writes until reopened
        self.reload()

    @classmethod
    def open(cls, path: str) -> "Disk":
        fd, size = ondisk.open_disk(path)
        try:
            return cls(path, fd, size)
        except BaseException:
            os.close(fd)
            raise

    def reload(self) -> None:
        self.areas = {k: ondisk.read_area(self.fd, k) for k in (ondisk.LABEL, ondisk.PR, ondisk.CONFIG)}
        self.problems = []
        for area in self.areas.values():
            self.problems += area.problems
        self.label = None
        try:
            self.pr = PRTable.from_json(self.areas[ondisk.PR].json())
        except (KeyError, TypeError, ValueError) as exc:
            self.problems.append(f"reservation table does not parse: {exc!r}")
            self.pr = PRTable()
        lab = self.areas[ondisk.LABEL].json()
        if lab is not None:
            try:
                self.label = ondisk.Label.from_json(lab)
            except (KeyError, TypeError, ValueError) as exc:
                self.problems.append(f"label does not parse: {exc!r}")
        if self.label is not None and self.size < self.label.size:
            self.problems.append(self.truncation())
        self._recover_group()

    def truncation(self) -> str:
        return (f"truncated: {format_size(self.size)} but its label says {format_size(self.label.size)} "
                "(the wrong device, or a shrunk LUN/image); volumes past the end would fail -- "
                "restore its full size")

    def _recover_group(self) -> None:
        """The label's surviving copy names no group while its other copy is damaged:
        the damaged copy may be the one that named it (a disk joins a group by a
        second label write). If this disk's configuration copy lists it, it belongs
        to that group: say so, and let ``dg repair`` rewrite the label -- never treat
        it as a blank disk (``disk init`` would destroy its membership)."""
        if self.label is None or self.label.dg_id:
            return
        if not any(s.problem for s in self.areas[ondisk.LABEL].slots):
            return
        try:
            data = self.areas[ondisk.CONFIG].json() or {}
            listed = {str(d["id"]) for d in data.get("disks", [])}
            gid, gname = str(data["id"]), str(data["name"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        if self.label.disk_id in listed:
            lab = self.label
            self.label = ondisk.Label(lab.disk_id, lab.name, lab.size, lab.public_offset, gid, gname,
                                      lab.created)
            self.problems.append(f"label: the copy naming disk group {gname} is damaged; membership "
                                 f"recovered from the configuration copy (`vctl dg repair {gname}` "
                                 "rewrites the label)")

    @property
    def id(self) -> str:
        return self.label.disk_id if self.label else ""

    @property
    def name(self) -> str:
        return self.label.name if self.label else os.path.basename(self.path)

    def describe_problems(self) -> str:
        return f"disk {self.name} ({self.path}): " + "; ".join(self.problems)

    def check_writable(self) -> None:
        if self.problems:
            raise ChecksumError(self.describe_problems()
                                + " -- metadata left untouched; see `vctl dg repair`")

    def write_area(self, kind: int, payload: dict, generation: int | None = None) -> None:
        self.areas[kind] = ondisk.write_area(self.fd, self.areas[kind], payload, generation)

    def write_pr(self) -> None:
        """Persist the in-memory reservation table (fdatasync'd)."""
        self.write_area(ondisk.PR, self.pr.to_json())

    def write_label(self, label: ondisk.Label) -> None:
        self.write_area(ondisk.LABEL, label.to_json())
        self.label = label

    def group_config(self) -> GroupConfig | None:
        """This disk's copy of its group's configuration (``None`` if it has none
        for the group its label names)."""
        data = self.areas[ondisk.CONFIG].json()
        if data is None or not self.label or data.get("id") != self.label.dg_id:
            return None
        return GroupConfig.from_json(data)

    def fail(self, error: object) -> None:
        if not self.failed:
            self.failed = str(error) or "I/O error"
            log.error("disk %s (%s) failed: %s; left out of metadata writes until it is back "
                      "(`vctl dg repair`, `vctl vol resync` or `vctl disk replace`)", self.name,
                      self.path, self.failed)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_pr_all(disks) -> None:
    """Persist the reservation table of every disk in ``disks`` (blocking: run it in
    a worker thread). A disk that fails is marked failed and left out; IOFailure
    if none could be written."""
    tried, error = 0, None
    for disk in disks:
        if disk.failed:
            continue
        tried += 1
        try:
            disk.write_pr()
        except OSError as exc:
            disk.fail(exc)
            error = exc
    if tried and error is not None and all(d.failed for d in disks):
        raise IOFailure(f"no reservation table could be written ({error})")


@dataclass
class Group:
    config: GroupConfig
    disks: dict[str, Disk]                        # disk id -> open disk
    missing: list[str] = field(default_factory=list)
    ownership: Ownership | None = None            # this server's lease on the group

    @property
    def failed(self) -> dict[str, str]:
        """Disks with I/O errors: left out of metadata writes and the owner lease
        until reopened (vserver/mirrors.py)."""
        return {i: d.failed for i, d in self.disks.items() if d.failed}

    @property
    def fds(self) -> list[int]:
        return [d.fd for i, d in self.disks.items() if i not in self.failed]

    def live_disks(self) -> list["Disk"]:
        return [d for i, d in self.disks.items() if i not in self.failed]

    def fail_disk(self, disk_id: str, error: object) -> None:
        self.disks[disk_id].fail(error)

    @property
    def name(self) -> str:
        return self.config.name

    def problems(self) -> list[str]:
        out = [f"disk {m} is missing" for m in self.missing]
        out += [f"disk {self.disks[i].name} failed: {why}" for i, why in self.failed.items()]
        out += [d.describe_problems() for d in self.disks.values() if d.problems]
        return out

    def check_writable(self) -> None:
        if self.missing:
            raise InvalidArgument(
                f"disk group {self.name} is missing disk(s) {', '.join(self.missing)}; "
                "configuration changes are refused until they are back")
        for d in self.live_disks():
            d.check_writable()

    def disk_paths(self) -> dict[str, str]:
        return {i: d.path for i, d in self.disks.items()}


def write_config(group: Group, new: GroupConfig) -> None:
    """Write ``new`` (generation already bumped) to every disk of the group.

    On each disk, both slots end up holding it: first the slot not holding the
    newest valid copy (as read back from the disk now, not remembered), fdatasync,
    then the other, fdatasync. A crash leaves the previous or the new copy intact
    (S4). Before each slot, a disk holding a newer generation than ``new`` refuses
    the write: a server that lost the group and was frozen past its ownership check
    (vserver/ownership.py) gets here with an old generation. Frozen between that
    read and its write, it replaces at most one slot -- one of two newest copies,
    with a lower generation -- and its next slot is refused. Until the last disk
    is done the caller must not acknowledge.

    A disk that fails (I/O error) is marked failed and left out; the group's newest
    generation is then on the others (import takes the newest). If every disk
    fails, the write fails."""
    new.validate()
    payload = new.to_json()
    written, error = 0, None
    for rec in new.disks:
        if rec.id in group.failed:
            continue
        disk = group.disks[rec.id]
        try:
            for _ in range(2):
                area = ondisk.read_area(disk.fd, ondisk.CONFIG)
                if area.generation > new.generation:
                    raise NotOwner(f"disk {disk.name} holds configuration generation {area.generation} "
                                   f"of disk group {group.name}, newer than this server's "
                                   f"{new.generation}: another server manages the group")
                disk.areas[ondisk.CONFIG] = area
                disk.write_area(ondisk.CONFIG, payload, new.generation)
        except OSError as exc:
            group.fail_disk(rec.id, exc)
            error = exc
            continue
        written += 1
    if not written:
        raise IOFailure(f"disk group {group.name}: the configuration reached no disk ({error})")


def create_sparse_image(path: str, size: int) -> None:
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise NotFound(f"{path}: directory {parent} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise AlreadyExists(f"{path} already exists") from None
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def scan_paths(patterns: list[str]) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        for p in sorted(glob.glob(pat)):
            if p not in out and (os.path.isfile(p) or _is_block(p)):
                out.append(os.path.realpath(p) if _is_block(p) else p)
    return out


def _is_block(p: str) -> bool:
    import stat
    try:
        return stat.S_ISBLK(os.stat(p).st_mode)
    except OSError:
        return False


def new_label(disk: Disk, name: str | None) -> ondisk.Label:
    base = name or os.path.splitext(os.path.basename(disk.path))[0]
    check_name(base, "disk")
    return ondisk.Label(disk_id=uuid.uuid4().hex, name=base, size=disk.size,
                        public_offset=ondisk.PRIVATE_SIZE, created=time.time())


def refuse_if_holding_data(disk: Disk) -> None:
    """A disk without a fencevol label is initialized only if the region about to be
    written is all zeros: anything else may be someone's data (a filesystem, a
    partition table, LVM). ``blkid`` names what it recognizes."""
    data = directio.read_range(disk.fd, 0, ondisk.PRIVATE_SIZE, 4096)
    first = len(data) - len(data.lstrip(b"\0"))
    if first == len(data):
        return
    what = ""
    try:
        cp = subprocess.run(["blkid", "-p", "-o", "export", disk.path], capture_output=True,
                            text=True, timeout=10)
        found = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
        kind = found.get("TYPE") or found.get("PTTYPE")
        if kind:
            what = f"a {kind} signature (blkid); "
    except (OSError, subprocess.TimeoutExpired):
        pass
    raise InUse(f"{disk.path} holds data ({what}first non-zero byte at offset {first} of the "
                f"{format_size(ondisk.PRIVATE_SIZE)} that init writes); refusing to overwrite "
                "it -- use --force if it is really unused")


def init_disk(disk: Disk, name: str | None, force: bool) -> ondisk.Label:
    """Write a fresh private region with a new label (no group)."""
    if disk.size < ondisk.MIN_DISK_SIZE:
        raise InvalidArgument(f"{disk.path}: {format_size(disk.size)} is too small "
                              f"(at least {format_size(ondisk.MIN_DISK_SIZE)})")
    if disk.label and disk.label.dg_id:
        raise InUse(f"{disk.path} belongs to disk group {disk.label.dg_name} "
                    f"(id {disk.label.dg_id}); remove it from the group first")
    if disk.label and not force:
        raise AlreadyExists(f"{disk.path} is already initialized as disk {disk.label.name} "
                            f"({disk.label.disk_id}); use --force to re-initialize")
    if disk.problems and not force:
        raise ChecksumError(disk.describe_problems() + "; use --force to re-initialize")
    if not disk.label and not force:
        refuse_if_holding_data(disk)
    label = new_label(disk, name)
    ondisk.clear_private_region(disk.fd)
    disk.reload()
    disk.write_label(label)
    return label


def group_from_disks(name: str, disks: list[Disk]) -> Group:
    """Assemble a group from disks whose labels name it: take the newest valid
    configuration among their copies. Raises if none is usable or the disks
    disagree about the group id."""
    ids = {d.label.dg_id for d in disks if d.label}
    if len(ids) > 1:
        raise InvalidArgument(f"found disks of {len(ids)} different disk groups named {name} "
                              f"({', '.join(sorted(ids))}); import by giving the paths of one")
    best: GroupConfig | None = None
    for d in disks:
        try:
            cfg = d.group_config()
        except MetadataError as exc:
            d.problems.append(f"configuration copy invalid: {exc}")
            continue
        if cfg and (best is None or cfg.generation > best.generation):
            best = cfg
    if best is None:
        details = "; ".join(d.describe_problems() for d in disks if d.problems)
        raise ChecksumError(f"no valid configuration copy for disk group {name}"
                            + (f": {details}" if details else ""))
    by_id = {d.id: d for d in disks}
    group = Group(best, {}, [])
    for rec in best.disks:
        if rec.id in by_id:
            group.disks[rec.id] = by_id[rec.id]
        else:
            group.missing.append(f"{rec.name} ({rec.id})")
    return group


def make_group_config(name: str, disks: list[Disk]) -> GroupConfig:
    check_name(name, "disk group")
    seen: dict[str, str] = {}
    for d in disks:
        if d.label is None:
            raise InvalidArgument(f"{d.path} is not initialized; run `vctl disk init {d.path}`")
        d.check_writable()
        if d.label.dg_id:
            raise InUse(f"disk {d.name} ({d.path}) already belongs to disk group {d.label.dg_name}")
        if d.id in seen:
            raise InvalidArgument(f"disk {d.path} given twice")
        if d.name in seen.values():
            raise InvalidArgument(f"two disks are named {d.name}; re-initialize one with --name")
        seen[d.id] = d.name
    start_gen = max(d.areas[ondisk.CONFIG].generation for d in disks) + 1
    return GroupConfig(
        id=uuid.uuid4().hex, name=name, generation=start_gen,
        disks=[DiskRecord(d.id, d.name, d.size, d.label.public_offset) for d in disks])


def join_disks(group: Group, cfg: GroupConfig) -> None:
    """Write the new group's configuration, then the labels naming it. A crash in
    between leaves labels without a group: the copies are ignored (id mismatch)."""
    write_config(group, cfg)
    for rec in cfg.disks:
        d = group.disks[rec.id]
        lab = d.label
        d.write_label(ondisk.Label(lab.disk_id, lab.name, lab.size, lab.public_offset,
                                   cfg.id, cfg.name, lab.created))


# --- volume I/O (the server's own: remote I/O, coordinator) ----------------------------
def volume_read(group: Group, emap, plex, offset: int, length: int) -> bytes:
    """Direct reads of one plex, any alignment."""
    parts = []
    for disk, doff, boff, n in plex.segments(offset, length):
        d = group.disks[emap.disks[disk].id]
        data = directio.read_range(d.fd, doff, n, d.block)
        if len(data) != n:
            raise IOFailure(f"short read from disk {emap.disks[disk].name}")
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def volume_write(group: Group, emap, plexes, offset: int, data) -> set[int]:
    """Write ``data`` to every plex in ``plexes`` with direct I/O (partial blocks are
    read, patched and written back; the server's loop runs one such write at a time,
    so writes sharing a block never interleave); return the descriptors written."""
    view = memoryview(data)
    written = set()
    for plex in plexes:
        for disk, doff, boff, n in plex.segments(offset, len(data)):
            d = group.disks[emap.disks[disk].id]
            directio.write_range(d.fd, doff, view[boff:boff + n], d.block)
            written.add(d.fd)
    return written
