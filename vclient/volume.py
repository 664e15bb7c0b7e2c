"""An attached volume: delegation, extent map, gate, and the data path.

Every request is widened to the volume's block size (the largest logical block size
of its local disks), split along the extent map and served with direct I/O on
descriptors opened once per disk (``vclient/disks.py``), all segments of a request
(every column, every writable plex of a mirror) submitted at once through native
AIO (``vclient/dio.py``). Reads come from an active plex only; a write that fails
on some plexes but reached another has those plexes detached through the server
before it is acknowledged (docs/MIRRORS.md). Reads return the requested slice of the aligned buffer. A write
that does not start and end on a block boundary reads its edge blocks first
(read-modify-write); it runs alone on the volume (writes that share a block never
interleave within this node). Segments on disks the client cannot reach go through
the server's remote I/O for just that plex.

Writes pass the fence gate (``vclient/gate.py``) and stay counted in it until every
plex has them; the gate publishes that count to the node's watchdog."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from fencevol.errors import FencevolError, IOFailure, NoSpace, Unavailable
from fencevol.extents import ExtentMap
from fencevol.metrics import Latency
from fencevol.modes import MODE_NAMES, can_write
from fencevol.protocol.messages import PlexDetachRequest, ReadRequest, SyncRequest, WriteRequest

from .dio import IOCB_CMD_PREAD, IOCB_CMD_PWRITE, DirectIO, DiskIOError
from .disks import BackingDisks, DiskAccess
from .gate import PAUSED, FenceGate

if TYPE_CHECKING:
    from .link import ServerLink

log = logging.getLogger("vclient.volume")
_now_ns = time.perf_counter_ns

DEFAULT_BLOCK = 512


class AttachedVolume:
    def __init__(self, name: str, mode: str, link: "ServerLink", disks: BackingDisks,
                 dio: DirectIO, gate: FenceGate):
        self.name = name
        self.mode = mode
        self.link = link
        self.backing = disks
        self.dio = dio
        self.delegation = ""
        self.gate = gate
        self.watchdog_slot = -1
        self.size = 0
        self.layout = ""
        self.block = DEFAULT_BLOCK
        self.map: ExtentMap | None = None
        self.access: list[DiskAccess] = []
        self.fds: list[int] = []
        self.plexes: list = []
        self.read_plex_index = 0
        self.plex_detaches = 0
        self._serial = 0                          # maps installed so far
        self._map_writes: dict[int, int] = {}     # writes in flight per map serial
        self._map_drained: trio.Event | None = None
        self.dirty: set[int] = set()
        self.writable_fds: set[int] = set()
        self.remote_dirty = False
        self.bytes_read = 0
        self.reads = 0
        self.read_latency = Latency()
        self.read_failovers = 0
        self.bytes_written = 0
        self.writes = 0
        self.write_latency = Latency()
        self.partial_writes = 0
        self._writes = 0                          # block-aligned writes in flight
        self._idle: trio.Event | None = None      # set when _writes drops to 0
        self._exclusive: trio.Event | None = None  # a partial-block write is running
        self._partial_lock = trio.Lock()

    @property
    def writable_mode(self) -> bool:
        return can_write(self.mode)

    def install(self, wire_map: dict, volume_info: dict | None = None) -> None:
        """Adopt a (new) extent map. Writes in flight finish on the map they started
        with; ``writes_before`` tells when they have."""
        emap = ExtentMap(wire_map)
        for p in emap.writable:           # a plex coming back (resync): reopen its failed disks
            for col in emap.plexes[p].columns:
                for d in col.disks:
                    self.backing.reopen_failed(emap.disks[d])
        access = [self.backing.get(ref) for ref in emap.disks]
        fds = [a.fd for a in access]

        def remote_count(p: int) -> int:
            return sum(1 for col in emap.plexes[p].columns for d in col.disks if fds[d] < 0)

        self.map, self.access, self.fds = emap, access, fds
        self.plexes = emap.plexes
        self.writable_fds = {fds[d] for p in emap.writable for col in emap.plexes[p].columns
                             for d in col.disks if fds[d] >= 0}
        self.read_plex_index = min(emap.readable, key=remote_count)
        self.block = max([a.block for a in access if a.local] or [DEFAULT_BLOCK])
        self.size = emap.size
        self._serial += 1
        if volume_info:
            self.layout = volume_info.get("layout", self.layout)

    def adopt(self, wire_map: dict) -> bool:
        """Install a pushed or replied map unless the one installed is newer."""
        if self.map is not None and int(wire_map.get("generation", 0)) < self.map.generation:
            return False
        old = self.map.states if self.map else None
        self.install(wire_map)
        if old != self.map.states:
            log.warning("%s: plex states now %s", self.name, ", ".join(
                f"{p}:{st}" for p, st in enumerate(self.map.states)))
        return True

    async def writes_before(self) -> None:
        """Return once every write that started under an earlier map has finished."""
        serial = self._serial
        while any(s < serial for s in self._map_writes):
            if self._map_drained is None:      # shared by every waiter (two pushes in a row)
                self._map_drained = trio.Event()
            await self._map_drained.wait()

    def _span(self, off: int, n: int) -> tuple[int, int]:
        mask = self.block - 1
        start, end = off & ~mask, (off + n + mask) & ~mask
        if end - start > self.dio.buffer_size:
            raise IOFailure(f"request of {n} bytes is larger than the client's I/O buffers")
        return start, end

    # -- reads ----------------------------------------------------------------------------
    async def read(self, off: int, size: int):
        t0 = _now_ns()
        if off >= self.size or size <= 0:
            return b""
        if off + size > self.size:
            size = self.size - off
        if self.gate.state is PAUSED and not self.gate.readable():
            await self.gate.wait_readable()
        start, end = self._span(off, size)
        buf = self.dio.take()
        try:
            await self._read_range(start, end - start, buf, 0)
        except BaseException:
            self.dio.give(buf)
            raise
        # Handing the buffer back before the caller replies is safe: pyfuse3 copies
        # the returned view into its reply without an await in between, and buffers
        # are only handed out on this thread.
        self.dio.give(buf)
        self.bytes_read += size
        self.reads += 1
        self.read_latency.observe(_now_ns() - t0)
        return buf.view[off - start:off - start + size]

    async def _read_range(self, start: int, length: int, buf, at: int) -> None:
        """Put the volume's bytes ``[start, start + length)`` (block aligned) at
        ``buf.view[at:]``, from the read plex; if that fails, from another plex of a
        mirror, which then becomes the read plex (until the map is set again)."""
        try:
            await self._read_plex(self.read_plex_index, start, length, buf, at)
            return
        except (IOFailure, Unavailable) as exc:
            error = exc
        for p in self.map.readable:
            if p == self.read_plex_index:
                continue
            try:
                await self._read_plex(p, start, length, buf, at)
            except (IOFailure, Unavailable) as exc:
                log.warning("%s: plex %d cannot serve the read either: %s", self.name, p, exc)
                continue
            log.warning("%s: plex %d failed (%s); reading from plex %d", self.name,
                        self.read_plex_index, error, p)
            self.read_failovers += 1
            self.read_plex_index = p
            return
        raise error

    async def _read_plex(self, plex: int, start: int, length: int, buf, at: int) -> None:
        fds = self.fds
        base = buf.address + at
        plan = []
        remote = None
        for d, doff, boff, n in self.plexes[plex].segments(start, length):
            fd = fds[d]
            if fd >= 0:
                plan.append((fd, doff, base + boff, n, d))
            else:
                if remote is None:
                    remote = []
                remote.append((boff, n))
        if plan:
            try:
                await self.dio.submit(IOCB_CMD_PREAD, plan)
            except DiskIOError as exc:
                raise self._io_error(exc.disk, exc.error) from None
        if remote:
            view = buf.view
            for boff, n in remote:
                _, data = await self.link.request(ReadRequest(
                    self.delegation, offset=start + boff, length=n, plex=plex))
                if len(data) != n:
                    raise IOFailure(f"remote read returned {len(data)} of {n} bytes")
                view[at + boff:at + boff + n] = data

    # -- writes ---------------------------------------------------------------------------
    async def write(self, off: int, data) -> int:
        t0 = _now_ns()
        size = self.size
        n = len(data)
        if off >= size:
            raise NoSpace(f"write at {off} is past the end of {self.name} ({size} bytes)")
        if off + n > size:
            data = memoryview(data)[:size - off]
            n = size - off
        if (off | n) & (self.block - 1):
            n = await self._write_partial(off, data)
            self.writes += 1
            self.write_latency.observe(_now_ns() - t0)
            return n
        while self._exclusive is not None:
            await self._exclusive.wait()
        gate = self.gate
        if not gate.admit_nowait():
            await gate.admit()
        self._writes += 1
        buf = self.dio.take()
        try:
            buf.view[:n] = data
            await self._write_range(off, n, buf)
        finally:
            self.dio.give(buf)
            gate.leave()
            self._writes -= 1
            if not self._writes and self._idle is not None:
                self._idle.set()
        self.bytes_written += n
        self.writes += 1
        self.write_latency.observe(_now_ns() - t0)
        return n

    async def _write_partial(self, off: int, data) -> int:
        """A write that starts or ends inside a block: read the edge blocks, patch,
        write whole blocks. Runs alone: block-aligned writes wait meanwhile, and it
        waits for those in flight."""
        n = len(data)
        async with self._partial_lock:
            done = self._exclusive = trio.Event()
            try:
                while self._writes:
                    self._idle = trio.Event()
                    await self._idle.wait()
                self._idle = None
                gate = self.gate
                if not gate.admit_nowait():
                    await gate.admit()
                start, end = self._span(off, n)
                bs = self.block
                buf = self.dio.take()
                try:
                    head = off - start
                    if head:
                        await self._read_range(start, bs, buf, 0)
                    if (off + n) % bs and (end - start > bs or not head):
                        await self._read_range(end - bs, bs, buf, end - start - bs)
                    buf.view[head:head + n] = data
                    await self._write_range(start, end - start, buf)
                finally:
                    self.dio.give(buf)
                    gate.leave()
            finally:
                self._exclusive = None
                done.set()
        self.partial_writes += 1
        self.bytes_written += n
        return n

    async def _write_range(self, start: int, length: int, buf) -> None:
        """Write ``buf.view[:length]`` at the aligned volume offset ``start`` to every
        writable plex of the map installed now. Plexes that failed while another
        took the write are detached (through the server) before it returns: the
        write no longer counts as in flight under its map by then -- its disk I/O is
        done -- so a map acknowledgement never waits for a detach (which may wait
        for that very acknowledgement)."""
        serial = self._serial
        counts = self._map_writes
        counts[serial] = counts.get(serial, 0) + 1
        emap = self.map
        try:
            failed, error = await self._write_plexes(emap, self.fds, start, length, buf)
        finally:
            left = counts[serial] - 1
            if left:
                counts[serial] = left
            else:
                del counts[serial]
                if self._map_drained is not None:
                    self._map_drained.set()
                    self._map_drained = None
        if failed:
            await self._detach(emap, sorted(failed), error)

    async def _write_plexes(self, emap: ExtentMap, fds: list[int], start: int, length: int,
                            buf) -> tuple[set[int], FencevolError | None]:
        """Write every writable plex; return the plexes that failed (to detach) and
        the error, or raise it if no active plex took the write. While plexes
        resync they are written only after the active ones completed (the order
        the server's copy relies on)."""
        if len(emap.writable) == len(emap.readable):
            failed, error = await self._write_phase(emap, fds, emap.writable, start, length, buf)
        else:
            failed, error = await self._write_phase(emap, fds, emap.readable, start, length, buf)
            if len(failed) < len(emap.readable):
                syncing = [p for p in emap.writable if p not in emap.readable]
                more, error2 = await self._write_phase(emap, fds, syncing, start, length, buf)
                failed |= more
                error = error or error2
        if failed and not set(emap.readable) - failed:
            raise error
        return failed, error

    async def _write_phase(self, emap: ExtentMap, fds: list[int], plexes: list[int], start: int,
                           length: int, buf) -> tuple[set[int], FencevolError | None]:
        """The local segments of ``plexes`` in one submission, then remote ones;
        return the plexes that failed and the first error."""
        base = buf.address
        plan = []
        remote = None
        for p in plexes:
            for d, doff, boff, ln in emap.plexes[p].segments(start, length):
                fd = fds[d]
                if fd < 0:
                    if remote is None:
                        remote = []
                    remote.append((p, boff, ln))
                else:
                    plan.append((fd, doff, base + boff, ln, d))
        failed: set[int] = set()
        error: FencevolError | None = None
        if plan:
            try:
                await self.dio.submit(IOCB_CMD_PWRITE, plan)
            except DiskIOError as exc:
                error = self._io_error(exc.disk, exc.error)
                failed = {p for p in plexes if any(
                    seg[0] in exc.disks for seg in emap.plexes[p].segments(start, length))}
            dirty = self.dirty
            for entry in plan:
                dirty.add(entry[0])
        if remote:
            view = buf.view
            for p, boff, ln in remote:
                if p in failed:
                    continue
                try:
                    await self.link.request(WriteRequest(self.delegation, offset=start + boff, plex=p),
                                            bytes(view[boff:boff + ln]))
                except IOFailure as exc:          # the server's path to the plex failed
                    failed.add(p)
                    error = error or exc
            self.remote_dirty = True
        return failed, error

    async def _detach(self, emap: ExtentMap, plexes: list[int], error: FencevolError) -> None:
        log.error("%s: write failed on plex(es) %s (%s); detaching them", self.name,
                  ", ".join(map(str, plexes)), error)
        try:
            reply, _ = await self.link.request(PlexDetachRequest(
                self.delegation, plexes, emap.generation, str(error)))
        except FencevolError as exc:
            log.error("%s: the server did not detach plex(es) %s: %s; the write fails", self.name,
                      ", ".join(map(str, plexes)), exc)
            raise error from None
        self.plex_detaches += 1
        self.adopt(reply.map)

    async def fsync(self) -> None:
        """fdatasync every backing disk written since the last sync (S6): direct
        writes have reached the disk, but its write cache may still hold them."""
        dirty, self.dirty = self.dirty, set()
        dirty &= self.writable_fds          # a detached plex's disk is not synced
        try:
            for fd in dirty:
                await self.dio.fdatasync(fd)
        except OSError as exc:
            self.dirty |= dirty
            raise IOFailure(f"fdatasync failed on a backing disk of {self.name}: {exc.strerror}") from None
        if self.remote_dirty:
            self.remote_dirty = False
            try:
                await self.link.request(SyncRequest(self.delegation))
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
                "block_size": self.block, "read_plex": self.read_plex_index,
                "plex_states": list(self.map.states) if self.map else [],
                "map_generation": self.map.generation if self.map else 0,
                "plex_detaches": self.plex_detaches,
                "read_failovers": self.read_failovers, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "partial_block_writes": self.partial_writes,
                "gate": self.gate.describe(), "disks": [a.describe() for a in self.access]}
