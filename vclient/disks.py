"""Backing disks as a client sees them: one direct-I/O descriptor per disk, opened
once and shared by every attached volume, or "remote" when the client has no usable
path (none given, cannot be opened, no direct I/O there, or it holds another disk)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fencevol import directio, ondisk
from fencevol.errors import FencevolError
from fencevol.extents import DiskRef

log = logging.getLogger("vclient.disks")

REMOTE = -1


@dataclass
class DiskAccess:
    id: str
    name: str
    path: str
    fd: int = REMOTE
    block: int = 512          # logical block size for direct I/O
    reason: str = ""          # why it is remote
    failed: str = ""          # first I/O error seen (logged once)

    @property
    def local(self) -> bool:
        return self.fd >= 0

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "path": self.path,
                "access": "local" if self.local else "remote", "block_size": self.block,
                "reason": self.reason, "error": self.failed}


class BackingDisks:
    """Opens backing disks on first use; ``overrides`` maps a disk id or name to a
    path that replaces the one the server knows."""

    def __init__(self, overrides: dict[str, str] | None = None, force_remote: set[str] | None = None):
        self.overrides = overrides or {}
        self.force_remote = force_remote or set()
        self.disks: dict[str, DiskAccess] = {}

    def get(self, ref: DiskRef) -> DiskAccess:
        d = self.disks.get(ref.id)
        if d is None:
            d = self.disks[ref.id] = self._open(ref)
        return d

    def _open(self, ref: DiskRef) -> DiskAccess:
        path = self.overrides.get(ref.id) or self.overrides.get(ref.name) or ref.path
        acc = DiskAccess(ref.id, ref.name, path)
        if ref.id in self.force_remote or ref.name in self.force_remote:
            acc.reason = "configured remote"
        elif not path:
            acc.reason = "server gave no path"
        else:
            try:
                fd = directio.open_direct(path)
            except OSError as exc:
                acc.reason = f"cannot open {path}: {exc.strerror}"
            except FencevolError as exc:
                acc.reason = str(exc)
            else:
                found = self._label_id(fd)
                try:
                    acc.block = directio.block_size(fd)
                except (OSError, FencevolError) as exc:
                    found, acc.reason = None, f"{path}: no usable direct I/O ({exc})"
                if found == ref.id:
                    acc.fd = fd
                else:
                    os.close(fd)
                    if found is not None:
                        acc.reason = f"{path} holds disk {found or 'without a valid label'}, not {ref.id}"
        if acc.local:
            log.info("disk %s: local at %s", ref.name, path)
        elif acc.reason == "configured remote":
            log.info("disk %s: remote I/O through the server (configured)", ref.name)
        else:
            log.error("disk %s: NO LOCAL PATH (%s): all its I/O goes through the server, which is "
                      "slow. If this host sees the disk under another path, map it: "
                      "--disk-path %s=PATH, or %s = \"PATH\" under [disk_paths] in the config file",
                      ref.name, acc.reason, ref.name, ref.name)
        return acc

    @staticmethod
    def _label_id(fd: int) -> str:
        try:
            area = ondisk.read_area(fd, ondisk.LABEL)
            lab = area.json()
            return str(lab["disk_id"]) if lab else ""
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def reopen_failed(self, ref: DiskRef) -> None:
        """A disk that had I/O errors is wanted again (its plex is being resynced):
        open its path afresh and put the new file behind the same descriptor number
        (``dup2``), so maps holding the number reach the disk again and no number is
        ever reused for another file while a map still holds it."""
        acc = self.disks.get(ref.id)
        if acc is None or not acc.failed or acc.fd < 0:
            return
        fresh = self._open(ref)
        if fresh.fd < 0:
            log.warning("disk %s: still unusable (%s)", ref.name, fresh.reason)
            return
        os.dup2(fresh.fd, acc.fd)
        os.close(fresh.fd)
        acc.failed = ""
        log.warning("disk %s: reopened at %s after I/O errors", ref.name, fresh.path)

    def io_error(self, acc: DiskAccess, exc: BaseException) -> None:
        """Record an I/O error on a disk; log only the first one."""
        if not acc.failed:
            acc.failed = str(exc)
            log.error("disk %s (%s): I/O error: %s -- its extents fail (a mirror detaches the "
                      "plex on it)", acc.name, acc.path, exc)

    def close(self) -> None:
        for d in self.disks.values():
            if d.fd >= 0:
                os.close(d.fd)
                d.fd = REMOTE
        self.disks.clear()
