"""An attached volume: delegation, extent map, gate, and the data path.

Reads and writes are split along the extent map and served with ``os.pread`` /
``os.pwrite`` on descriptors opened once per disk, inline on the event loop (no
thread hop per request). Segments on disks the client cannot reach go through
the server's remote I/O for just that plex."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from fencevol.errors import FencevolError, IOFailure, NoSpace, Unavailable
from fencevol.extents import ExtentMap
from fencevol.modes import MODE_NAMES, can_write

from .disks import BackingDisks, DiskAccess
from .gate import PAUSED, FenceGate

if TYPE_CHECKING:
    from .link import ServerLink

log = logging.getLogger("vclient.volume")


class AttachedVolume:
    def __init__(self, name: str, mode: str, link: "ServerLink", disks: BackingDisks,
                 pause_timeout: float):
        self.name = name
        self.mode = mode
        self.link = link
        self.backing = disks
        self.delegation = ""
        self.gate = FenceGate(pause_timeout)
        self.size = 0
        self.layout = ""
        self.map: ExtentMap | None = None
        self.access: list[DiskAccess] = []
        self.fds: list[int] = []
        self.plexes: list = []
        self.read_plex = None
        self.read_plex_index = 0
        self.dirty: set[int] = set()
        self.remote_dirty = False
        self.bytes_read = 0
        self.read_failovers = 0
        self.bytes_written = 0

    @property
    def writable_mode(self) -> bool:
        return can_write(self.mode)

    def install(self, wire_map: dict, volume_info: dict | None = None) -> None:
        """Adopt a (new) extent map. Called with no write in flight."""
        emap = ExtentMap(wire_map)
        access = [self.backing.get(ref) for ref in emap.disks]
        fds = [a.fd for a in access]

        def remote_count(plex) -> int:
            return sum(1 for col in plex.columns for d in col.disks if fds[d] < 0)

        best = min(range(len(emap.plexes)), key=lambda i: remote_count(emap.plexes[i]))
        self.map, self.access, self.fds = emap, access, fds
        self.plexes = emap.plexes
        self.read_plex, self.read_plex_index = emap.plexes[best], best
        self.size = emap.size
        if volume_info:
            self.layout = volume_info.get("layout", self.layout)

    # -- data path --------------------------------------------------------------------------
    async def read(self, off: int, size: int):
        if off >= self.size or size <= 0:
            return b""
        if off + size > self.size:
            size = self.size - off
        if self.gate.state is PAUSED and not self.gate.readable():
            await self.gate.wait_readable()
        segs = self.read_plex.segments(off, size)
        if len(segs) == 1:
            d, doff, _, n = segs[0]
            fd = self.fds[d]
            if fd >= 0:
                try:
                    data = os.pread(fd, n, doff)
                except OSError as exc:
                    return await self._read_elsewhere(off, size, self._io_error(d, exc))
                if len(data) != n:
                    return await self._read_elsewhere(off, size, self._io_error(
                        d, IOFailure(f"short read at disk offset {doff}")))
                self.bytes_read += n
                return data
        try:
            return await self._read_segments(self.read_plex_index, segs, off, size)
        except (IOFailure, Unavailable) as exc:
            return await self._read_elsewhere(off, size, exc)

    async def _read_elsewhere(self, off: int, size: int, error: FencevolError):
        """The read plex failed: read the range from another plex of a mirror, and
        read from that plex from now on (until the map is set again). Re-raises
        ``error`` when there is no other plex or every plex fails."""
        for p in range(len(self.plexes)):
            if p == self.read_plex_index:
                continue
            try:
                data = await self._read_segments(p, self.plexes[p].segments(off, size), off, size)
            except (IOFailure, Unavailable) as exc:
                log.warning("%s: plex %d cannot serve the read either: %s", self.name, p, exc)
                continue
            log.warning("%s: plex %d failed (%s); reading from plex %d", self.name,
                        self.read_plex_index, error, p)
            self.read_failovers += 1
            self.read_plex, self.read_plex_index = self.plexes[p], p
            return data
        raise error

    async def _read_segments(self, plex: int, segs, off: int, size: int) -> bytearray:
        buf = bytearray(size)
        view = memoryview(buf)
        fds = self.fds
        for d, doff, boff, n in segs:
            fd = fds[d]
            if fd >= 0:
                try:
                    got = os.preadv(fd, [view[boff:boff + n]], doff)
                except OSError as exc:
                    raise self._io_error(d, exc) from None
                if got != n:
                    raise self._io_error(d, IOFailure(f"short read at disk offset {doff}"))
            else:
                _, data = await self.link.call("read", {
                    "delegation": self.delegation, "offset": off + boff, "length": n,
                    "plex": plex})
                if len(data) != n:
                    raise IOFailure(f"remote read returned {len(data)} of {n} bytes")
                view[boff:boff + n] = data
        self.bytes_read += size
        return buf

    async def write(self, off: int, buf) -> int:
        size = self.size
        n = len(buf)
        if off >= size:
            raise NoSpace(f"write at {off} is past the end of {self.name} ({size} bytes)")
        if off + n > size:
            buf = memoryview(buf)[:size - off]
            n = size - off
        gate = self.gate
        if not gate.writable():
            await gate.wait_writable()
        gate.enter()
        try:
            remote = None
            fds = self.fds
            for p, plex in enumerate(self.plexes):
                for d, doff, boff, ln in plex.segments(off, n):
                    fd = fds[d]
                    if fd < 0:
                        if remote is None:
                            remote = []
                        remote.append((p, boff, ln))
                        continue
                    try:
                        written = os.pwrite(fd, buf if ln == n else memoryview(buf)[boff:boff + ln], doff)
                    except OSError as exc:
                        raise self._io_error(d, exc) from None
                    if written != ln:
                        raise self._io_error(d, IOFailure(f"short write at disk offset {doff}"))
                    self.dirty.add(fd)
            if remote:
                view = memoryview(buf)
                for p, boff, ln in remote:
                    await self.link.call("write", {"delegation": self.delegation,
                                                   "offset": off + boff, "plex": p},
                                         bytes(view[boff:boff + ln]))
                self.remote_dirty = True
        finally:
            gate.leave()
        self.bytes_written += n
        return n

    async def fsync(self) -> None:
        """fdatasync every backing disk written since the last sync (S6)."""
        dirty, self.dirty = self.dirty, set()
        try:
            for fd in dirty:
                await trio.to_thread.run_sync(os.fdatasync, fd)
        except OSError as exc:
            self.dirty |= dirty
            raise IOFailure(f"fdatasync failed on a backing disk of {self.name}: {exc.strerror}") from None
        if self.remote_dirty:
            self.remote_dirty = False
            try:
                await self.link.call("sync", {"delegation": self.delegation})
            except BaseException:
                self.remote_dirty = True
                raise

    def _io_error(self, disk_index: int, exc: BaseException) -> IOFailure:
        acc = self.access[disk_index]
        self.backing.io_error(acc, exc)
        return IOFailure(f"I/O error on disk {acc.name}: {exc}")

    def describe(self) -> dict:
        return {"name": self.name, "mode": self.mode, "mode_name": MODE_NAMES[self.mode],
                "delegation": self.delegation, "size": self.size, "layout": self.layout,
                "read_plex": self.read_plex_index, "read_failovers": self.read_failovers,
                "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "gate": self.gate.describe(),
                "disks": [a.describe() for a in self.access]}
