"""pyfuse3 ``Operations`` for attached volumes.

Layout: the root lists disk groups that have an attached volume; each group
directory lists the attached volumes as regular files of the volume's size. Files
are opened with ``direct_io`` (no page cache: other nodes write the same volume).
Namespace changes (create, unlink, rename, mkdir, truncate to another size) fail
with EPERM. ``O_TRUNC`` on open is ignored, as on a block device, so ``dd of=...``
works without ``conv=notrunc``.

Every handler runs through ``_translate``: ``FUSEError`` passes; a domain error
becomes its errno; ``OSError`` its errno; anything else is logged and becomes EIO.
The mount never goes down because of one request."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from typing import Callable, Protocol

import pyfuse3
import trio

from fencevol.errors import FencevolError

log = logging.getLogger("fuse_fs")

ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0


class VolumeSource(Protocol):
    """What the filesystem needs from the node: its attached volumes by ``DG/VOL``."""

    volumes: dict


def _fuse_error(exc: Exception, where: str) -> pyfuse3.FUSEError:
    """The errno a handler's exception becomes (the one translation point)."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, FencevolError):
        log.debug("%s: %s", where, exc)
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError):
        log.warning("%s: %s", where, exc)
        return pyfuse3.FUSEError(exc.errno or errno.EIO)
    log.error("unexpected error in FUSE %s; returning EIO", where, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def _translate(fn: Callable) -> Callable:
    """Wrap a handler so that only ``FUSEError`` leaves it (``Cancelled`` and other
    BaseExceptions pass untouched)."""
    @functools.wraps(fn)
    async def handler(*args):
        try:
            return await fn(*args)
        except Exception as exc:
            raise _fuse_error(exc, fn.__name__) from None
    return handler


class VolumeFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, source: VolumeSource):
        super().__init__()
        self.source = source
        self._inodes: dict[tuple[str, str], int] = {}   # ("dir", dg) / ("vol", dg/vol) -> inode
        self._names: dict[int, tuple[str, str]] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, object] = {}
        self._next_fh = 1
        self._mounted_at = time.time()

    # -- namespace ---------------------------------------------------------------------
    def _inode(self, kind: str, name: str) -> int:
        key = (kind, name)
        ino = self._inodes.get(key)
        if ino is None:
            ino = self._inodes[key] = self._next_inode
            self._names[ino] = key
            self._next_inode += 1
        return ino

    def _groups(self) -> list[str]:
        return sorted({name.split("/", 1)[0] for name in self.source.volumes})

    def _volume(self, inode: int):
        kind, name = self._names.get(inode, ("", ""))
        if kind != "vol":
            return None
        return self.source.volumes.get(name)

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_blksize = 4096
        t = int(self._mounted_at * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2 + len(self._groups())
            return a
        kind, name = self._names.get(inode, ("", ""))
        if kind == "dir" and name in self._groups():
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            return a
        vol = self._volume(inode)
        if vol is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a.st_mode = stat.S_IFREG | (0o660 if vol.writable_mode else 0o440)
        a.st_nlink = 1
        a.st_size = vol.size
        a.st_blocks = (vol.size + 511) // 512
        return a

    def _children(self, inode: int) -> list[tuple[str, int]]:
        if inode == pyfuse3.ROOT_INODE:
            return [(g, self._inode("dir", g)) for g in self._groups()]
        kind, dg = self._names.get(inode, ("", ""))
        if kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return [(n.split("/", 1)[1], self._inode("vol", n))
                for n in sorted(self.source.volumes) if n.split("/", 1)[0] == dg]

    # -- handlers -------------------------------------------------------------------------
    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        name = os.fsdecode(name)
        for child, ino in self._children(parent_inode):
            if child == name:
                return self._attrs(ino)
        raise pyfuse3.FUSEError(errno.ENOENT)

    @_translate
    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        vol = self._volume(inode)
        if vol is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size and attr.st_size != vol.size:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attrs(inode)   # time updates are accepted and ignored

    @_translate
    async def opendir(self, inode, ctx):
        self._children(inode)
        return inode

    @_translate
    async def readdir(self, fh, start_id, token):
        for i, (name, ino) in enumerate(self._children(fh)):
            if i < start_id:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(ino), i + 1):
                break

    @_translate
    async def releasedir(self, fh):
        return None

    @_translate
    async def open(self, inode, flags, ctx):
        vol = self._volume(inode)
        if vol is None:
            raise pyfuse3.FUSEError(errno.EISDIR if inode in self._names or
                                    inode == pyfuse3.ROOT_INODE else errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR) and not vol.writable_mode:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = vol
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    # read and write are the hot path: the translation is inlined (one coroutine
    # frame less per request than the decorator).
    async def read(self, fh, off, size):
        try:
            return await self._handles[fh].read(off, size)
        except Exception as exc:
            raise _fuse_error(exc, "read") from None

    async def write(self, fh, off, buf):
        try:
            return await self._handles[fh].write(off, buf)
        except Exception as exc:
            raise _fuse_error(exc, "write") from None

    @_translate
    async def flush(self, fh):
        vol = self._handles.get(fh)
        if vol is not None and vol.writable_mode:
            await vol.fsync()

    @_translate
    async def fsync(self, fh, datasync):
        await self._handles[fh].fsync()

    @_translate
    async def release(self, fh):
        self._handles.pop(fh, None)

    @_translate
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        total = sum(v.size for v in self.source.volumes.values())
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = total // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.source.volumes) + len(self._groups()) + 1
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def _refuse(self, *args):
        raise pyfuse3.FUSEError(errno.EPERM)

    create = mknod = mkdir = unlink = rmdir = rename = link = symlink = _refuse

    # -- notifications from the node ----------------------------------------------------------
    async def volume_changed(self, name: str) -> None:
        """Size or presence of a volume changed: drop the kernel's cached view."""
        ino = self._inodes.get(("vol", name))
        if ino is None:
            return
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, True)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOSYS):
                log.warning("invalidate %s: %s", name, exc)
        dg_ino = self._inodes.get(("dir", name.split("/", 1)[0]))
        if dg_ino is not None and name not in self.source.volumes:
            pyfuse3.invalidate_entry_async(dg_ino, os.fsencode(name.split("/", 1)[1]),
                                           ignore_enoent=True)
