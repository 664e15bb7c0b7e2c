"""The client's direct-I/O engine: aligned buffers and Linux native AIO.

With ``O_DIRECT`` every read waits for the device (~60-80 µs for 4 KiB here). Served
with a blocking ``pread`` on the event loop, one device request would hold up every
other FUSE request, heartbeat and renewal, and four jobs would run no faster than
one. Handing each request to a worker thread costs two thread wake-ups per request
(~80 µs on this 2-vCPU VM, measured: more than the device time). So requests go to
the kernel's native AIO instead (``io_submit`` with ``O_DIRECT``): the event loop
submits every segment of a request in one system call and goes on; the kernel
signals completions on an ``eventfd``; the loop reaps them (``io_getevents``) and
reschedules the waiting tasks. That costs ~10 µs over a blocking ``pread`` at one
request in flight, and keeps as many device requests in flight as FUSE sends.

The eventfd is watched by a pump task and by the FUSE request loop's fast wait
(``fuse_fs.fastwait``), which would otherwise sit in ``select`` on ``/dev/fuse``
while a completion waits.

Everything happens on the event-loop thread: a write is admitted by the gate and
submitted without an ``await`` in between, so a process frozen anywhere in between
has submitted nothing, and the watchdog sees the admitted write (``vclient/gate.py``).

A submitted request cannot be cancelled (its buffer belongs to the kernel until it
completes): cancellation takes effect once it is done, so a buffer is never reused
while the device may still read or fill it.

Buffers come from a free list of ``mmap``s (page aligned, so every block-aligned
slice is aligned for ``O_DIRECT``), each large enough for the largest FUSE request
plus an edge block on each side; the list grows to the number of requests ever in
flight at once and is reused, so the hot path allocates no buffers.

The system-call interface (``iocb``, ``io_event``, syscall numbers) is described in
``io_submit(2)``; ctypes calls it, no extension module is built.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform

import trio

from fencevol.polling import poll

log = logging.getLogger("vclient.dio")

MAX_REQUEST = 1 << 20           # the largest read or write FUSE sends (256 pages)
EDGE = 4096                     # room for a partial block on either side
QUEUE_DEPTH = 1024              # iocbs in flight at most (io_setup)
REAP = 64                       # events taken per io_getevents call
SPIN, LINGER = 0.00005, 0.0002  # polling, then waiting in select, for a lone request
FD_SETSIZE = 1024

IOCB_CMD_PREAD, IOCB_CMD_PWRITE = 0, 1
IOCB_FLAG_RESFD = 1

_SYSCALLS = {                   # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}


class _Iocb(ctypes.Structure):
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class DiskIOError(Exception):
    """A request's segment failed (or came back short) on disk ``disk`` (an index into
    the volume's disk list); ``disks``: every disk on which a segment failed."""

    def __init__(self, disk: int, error: BaseException):
        super().__init__(str(error))
        self.disk = disk
        self.error = error
        self.disks = {disk}


class _Request:
    __slots__ = ("task", "left", "error")

    def __init__(self, task, left: int):
        self.task = task              # None while its submitter waits in select
        self.left = left
        self.error: DiskIOError | None = None


class Buffer:
    """A pooled aligned buffer: ``view`` over it and its address."""

    __slots__ = ("map", "view", "address")

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, size)
        self.view = memoryview(self.map)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))


class DirectIO:
    """Native AIO on the event-loop thread. ``submit`` takes a request's segments
    and returns when all of them completed."""

    def __init__(self, buffer_size: int = MAX_REQUEST + 2 * EDGE, depth: int = QUEUE_DEPTH):
        machine = platform.machine()
        if machine not in _SYSCALLS:
            raise OSError(errno.ENOSYS, f"native AIO numbers unknown for {machine}")
        self._setup, self._destroy, self._getevents, self._submit = _SYSCALLS[machine]
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self.buffer_size = buffer_size
        self.depth = depth
        ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, ctypes.c_long(depth), ctypes.byref(ctx)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        self._ctx = ctx.value
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._c_ctx = ctypes.c_ulong(self._ctx)
        self._iocbs = (_Iocb * depth)()
        self._ptrs = (ctypes.POINTER(_Iocb) * depth)()
        self._ptr_of = [ctypes.pointer(cb) for cb in self._iocbs]
        for cb in self._iocbs:
            cb.aio_flags = IOCB_FLAG_RESFD
            cb.aio_resfd = self.efd
        self._free_iocbs = list(range(depth - 1, -1, -1))
        self._owner: list[tuple[_Request, int, int] | None] = [None] * depth
        self._events = (_IoEvent * REAP)()
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self._c_zero, self._c_reap = ctypes.c_long(0), ctypes.c_long(REAP)
        self._c_n = [ctypes.c_long(i) for i in range(65)]
        self._slot_waiters = trio.lowlevel.ParkingLot()
        self._free: list[Buffer] = []
        self.buffers = 0
        self.requests = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.waking = 0             # requests done whose tasks have not run yet
        self.linger = False         # see linger_with
        self._linger_fds = [self.efd]
        self.sync_completions = 0

    def linger_with(self, fd: int) -> None:
        """Let a request that is alone in flight wait for its completion in
        ``select`` on the loop thread, for up to ``LINGER``, giving up as soon as
        ``fd`` (the FUSE device) has a new request."""
        self._linger_fds = [self.efd, fd]
        self.linger = fd < FD_SETSIZE and self.efd < FD_SETSIZE

    # -- buffers -------------------------------------------------------------------------
    def take(self) -> Buffer:
        """An aligned buffer of ``buffer_size`` bytes (give it back with ``give``)."""
        if self._free:
            return self._free.pop()
        self.buffers += 1
        return Buffer(self.buffer_size)

    def give(self, buf: Buffer) -> None:
        self._free.append(buf)

    # -- requests --------------------------------------------------------------------------
    async def submit(self, opcode: int, segments) -> None:
        """Run ``segments`` -- ((fd, disk offset, address, length, disk), ...), all
        reads or all writes (``opcode``) -- and return when every one completed.
        Raises ``DiskIOError`` for the first that failed."""
        n = len(segments)
        while len(self._free_iocbs) < n:
            await self._slot_waiters.park()
        req = _Request(trio.lowlevel.current_task(), n)
        iocbs, ptrs, ptr_of = self._iocbs, self._ptrs, self._ptr_of
        owner, free = self._owner, self._free_iocbs
        for k, (fd, doff, address, length, disk) in enumerate(segments):
            i = free.pop()
            cb = iocbs[i]
            cb.aio_data = i
            cb.aio_lio_opcode = opcode
            cb.aio_fildes = fd
            cb.aio_buf = address
            cb.aio_nbytes = length
            cb.aio_offset = doff
            owner[i] = (req, length, disk)
            ptrs[k] = ptr_of[i]
        self.requests += 1
        self.inflight += 1
        if self.inflight > self.peak_inflight:
            self.peak_inflight = self.inflight
        if self.inflight == 1 and self.linger:
            # Alone in flight: wait for it right here (a device round trip, tens of
            # µs) instead of two trips through the scheduler -- unless a FUSE
            # request arrives meanwhile (then this one waits like any other and
            # the loop serves the newcomer) or the device is slow.
            task, req.task = req.task, None
            self._submit_all(n)
            if poll(self._linger_fds, SPIN, LINGER)[:1] == [self.efd]:
                self.complete()
            req.task = task
            if not req.left:
                self.sync_completions += 1
                if req.error is not None:
                    raise req.error
                return
        else:
            self._submit_all(n)
        await trio.lowlevel.wait_task_rescheduled(_no_abort)
        self.waking -= 1
        if req.error is not None:
            raise req.error

    def _submit_all(self, n: int) -> None:
        ptrs = self._ptrs
        done = 0
        while done < n:
            left = n - done
            arr = ptrs if done == 0 else (ctypes.POINTER(_Iocb) * left)(*ptrs[done:n])
            got = self._syscall(self._submit, self._c_ctx,
                                self._c_n[left] if left <= 64 else ctypes.c_long(left), arr)
            if got < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.EINTR):
                    continue
                # Not submitted: fail these iocbs as if they completed with the error.
                for k in range(done, n):
                    self._finish(ptrs[k].contents.aio_data, -err)
                return
            done += got

    def _finish(self, i: int, res: int) -> None:
        req, length, disk = self._owner[i]
        self._owner[i] = None
        self._free_iocbs.append(i)
        if res != length:
            if req.error is not None:
                req.error.disks.add(disk)
            else:
                if res < 0:
                    error = OSError(-res, os.strerror(-res))
                else:
                    error = OSError(errno.EIO, f"short transfer ({res} of {length} bytes)")
                req.error = DiskIOError(disk, error)
        req.left -= 1
        if not req.left:
            self.inflight -= 1
            if req.task is not None:
                self.waking += 1
                trio.lowlevel.reschedule(req.task)

    def complete(self) -> None:
        """Reap finished requests and reschedule their tasks (call from the trio
        thread when ``efd`` is readable). The eventfd is reset before reaping, so
        a completion that lands meanwhile leaves it set: no wake-up is lost."""
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        events = self._events
        while True:
            n = self._syscall(self._getevents, self._c_ctx, self._c_zero, self._c_reap, events,
                              self._no_wait)
            if n <= 0:
                break
            for k in range(n):
                ev = events[k]
                self._finish(ev.data, ev.res)
            if n < REAP:
                break
        if len(self._slot_waiters):
            self._slot_waiters.unpark_all()

    async def pump(self) -> None:
        """Deliver completions whenever the eventfd fires (the FUSE fast wait also
        delivers them while it sits in ``select``)."""
        while True:
            await trio.lowlevel.wait_readable(self.efd)
            self.complete()

    async def fdatasync(self, fd: int) -> None:
        """``fdatasync`` in a worker thread (milliseconds: a thread hop is cheap next
        to it). Not through AIO, so that every ``io_submit`` carries reads or writes
        -- what tools/fault/stall holds is then a write the gate admitted."""
        await trio.to_thread.run_sync(os.fdatasync, fd)

    def close(self) -> None:
        """Release the AIO context (after the loop stopped submitting; waits for
        requests in flight)."""
        if self._ctx:
            self._syscall(self._destroy, self._c_ctx)
            self._ctx = 0
            os.close(self.efd)

    def describe(self) -> dict:
        return {"engine": "aio", "requests": self.requests, "inflight": self.inflight,
                "peak_inflight": self.peak_inflight, "completed_in_place": self.sync_completions,
                "buffers": self.buffers, "buffer_size": self.buffer_size}


def _no_abort(raise_cancel):
    return trio.lowlevel.Abort.FAILED
