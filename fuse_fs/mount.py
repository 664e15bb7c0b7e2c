"""Mount lifecycle: checking the mount point (and clearing a stale mount left by a
killed client), mounting, serving, and unmounting."""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess

import pyfuse3

from fencevol.errors import InvalidArgument

from . import fastwait
from .fs import VolumeFS

log = logging.getLogger("fuse_fs")

FSNAME = "fencevol"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path: str) -> tuple[str, str] | None:
    """``(fstype, source)`` of the last mount on ``path``, or ``None``."""
    real = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if _unescape(parts[4]) == real:
                found = (parts[sep + 1], _unescape(parts[sep + 2]))
    return found


def prepare_mountpoint(path: str) -> None:
    """Make ``path`` usable: create it if missing; lazily unmount a stale fencevol
    mount (its process is gone: ENOTCONN); refuse a live one or a foreign mount."""
    entry = mount_entry(path)
    if entry is None:
        os.makedirs(path, exist_ok=True)
        if not os.path.isdir(path):
            raise InvalidArgument(f"mount point {path} is not a directory")
        return
    fstype, source = entry
    if not fstype.startswith("fuse") or source != FSNAME:
        raise InvalidArgument(f"{path} is already a mount point ({fstype} {source})")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        log.warning("clearing stale fencevol mount at %s (its client was killed)", path)
        unmount(path)
        return
    raise InvalidArgument(f"{path} is already mounted by a running fencevol client")


def unmount(path: str) -> None:
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                return
        except (OSError, subprocess.TimeoutExpired):
            continue
    raise InvalidArgument(f"cannot unmount {path}")


class Mount:
    """One FUSE mount per process (pyfuse3 keeps module-level state)."""

    def __init__(self, fs: VolumeFS, path: str, max_tasks: int = 99,
                 io: fastwait.Completions | None = None):
        self.fs = fs
        self.path = path          # already resolved: never stat our own mount point
        self.max_tasks = max_tasks
        self.io = io              # where requests wait for device I/O (fastwait)
        self.mounted = False

    def mount(self) -> None:
        prepare_mountpoint(self.path)
        options = set(pyfuse3.default_options)
        options |= {f"fsname={FSNAME}", "subtype=fencevol", "allow_other"}
        pyfuse3.init(self.fs, self.path, options)
        self.mounted = True
        log.info("mounted volumes at %s", self.path)

    async def serve(self) -> None:
        """Run the FUSE loop until ``terminate`` or an unmount."""
        fastwait.install(self.io)
        await pyfuse3.main(min_tasks=2, max_tasks=self.max_tasks)

    def device_fd(self) -> int | None:
        """The ``/dev/fuse`` descriptor of this mount (after ``mount``)."""
        return fastwait.find_fuse_fd()

    def stats(self) -> dict:
        """How FUSE requests are being served (see ``fastwait``)."""
        return fastwait.stats()

    def terminate(self) -> None:
        if self.mounted:
            fastwait.closing()
            pyfuse3.terminate()

    def close(self) -> None:
        if self.mounted:
            self.mounted = False
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", self.path)
