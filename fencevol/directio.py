"""Direct I/O on backing disks, shared by the server and the client.

Every backing disk is opened ``O_DIRECT``: hosts that share a LUN each have their
own page cache, so a buffered read on one host can return data another host
overwrote long ago, and a fenced host's dirty pages could reach the disk after the
survivors went on. With ``O_DIRECT`` every read goes to the disk and every write has
reached it (up to the disk's write cache, flushed by ``fdatasync``) when the call
returns.

``O_DIRECT`` wants the file offset, the length and the memory address aligned to the
disk's logical block size. Buffers here are ``mmap``-backed (page aligned), and
``read_range`` / ``write_range`` serve any offset and length: a read covers the
aligned range and returns the slice; a write that does not start or end on a block
boundary reads the edge blocks first (read-modify-write). These synchronous helpers
are for metadata and the server's remote I/O; the client's data path has its own
(``vclient/dio.py``).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct

from .errors import InvalidArgument, IOFailure

BLKSSZGET = 0x1268           # ioctl: logical block size of a block device
PROBE_SIZES = (512, 4096)
MAX_BLOCK = 4096


def aligned_buffer(size: int) -> memoryview:
    """A zeroed, page-aligned buffer of ``size`` bytes (at least one page)."""
    return memoryview(mmap.mmap(-1, max(size, mmap.PAGESIZE)))[:size]


def open_direct(path: str, flags: int = os.O_RDWR) -> int:
    """Open ``path`` with ``O_DIRECT``; a filesystem that refuses direct I/O gets a
    one-line error saying so."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise InvalidArgument(
                f"{path}: the filesystem refuses direct I/O (O_DIRECT); fencevol needs it "
                "so that hosts sharing the disk never read stale cached data -- put the "
                "image on a filesystem that supports it (ext4, xfs) or use a block device") from None
        raise


def block_size(fd: int) -> int:
    """The logical block size direct I/O on ``fd`` must be aligned to: the device's
    for a block device; for a file, the smallest of 512 and 4096 that a direct read
    accepts."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        raw = fcntl.ioctl(fd, BLKSSZGET, struct.pack("I", 0))
        size = struct.unpack("I", raw)[0]
        if size & (size - 1) or not 512 <= size <= 65536:
            raise IOFailure(f"unexpected logical block size {size}")
        return size
    buf = aligned_buffer(MAX_BLOCK)
    for size in PROBE_SIZES:
        try:
            os.preadv(fd, [buf[:size]], size)
            return size
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    raise IOFailure("direct reads are refused at every block size tried (512, 4096)")


def _span(offset: int, length: int, block: int) -> tuple[int, int]:
    start = offset - offset % block
    end = -(-(offset + length) // block) * block
    return start, end


def read_range(fd: int, offset: int, length: int, block: int) -> bytes:
    """``length`` bytes at ``offset`` (any alignment) read with direct I/O. Short only
    at the end of the file."""
    start, end = _span(offset, length, block)
    buf = aligned_buffer(end - start)
    got = os.preadv(fd, [buf], start)
    skip = offset - start
    return bytes(buf[skip:skip + min(length, max(got - skip, 0))])


def write_range(fd: int, offset: int, data, block: int) -> None:
    """Write ``data`` at ``offset`` (any alignment) with direct I/O, reading the
    partial edge blocks first. The caller serializes writes that share a block."""
    n = len(data)
    if not n:
        return
    start, end = _span(offset, n, block)
    buf = aligned_buffer(end - start)
    skip = offset - start
    if skip:
        _read_block(fd, buf[:block], start)
    if (offset + n) % block and (end - block >= start + block or not skip):
        _read_block(fd, buf[end - start - block:], end - block)
    buf[skip:skip + n] = data
    written = os.pwrite(fd, buf, start)
    if written != end - start:
        raise IOFailure(f"short write at disk offset {start} ({written} of {end - start} bytes)")


def _read_block(fd: int, view: memoryview, offset: int) -> None:
    """Read one block for a read-modify-write; past the end of a file it is zeros."""
    got = os.preadv(fd, [view], offset)
    if got < len(view):
        view[got:] = bytes(len(view) - got)


def fdatasync_all(fds) -> None:
    """``fdatasync`` each descriptor (blocking: run it in a worker thread)."""
    for fd in fds:
        os.fdatasync(fd)
