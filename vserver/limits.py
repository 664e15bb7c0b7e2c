"""What one client can make the server hold: request memory, per session and
overall, and how long a frame may take to arrive.

Every request frame is charged to its session's budget and, through it, to the
server's before its body is read -- its full size is known from the header -- and
stays charged until the request's reply is sent. A connection that finds no room
stops reading (TCP pushes back on the sender) until requests finish; since a frame
is admitted whole or not at all, frames being read never wait for each other. A
frame must arrive within ``frame_timeout`` seconds of its first byte (time spent
waiting for room not counted), so a client that sends half a frame and stalls
loses its connection and gives the room back.

JSON is charged at ``JSON_WEIGHT`` times its length: parsed, a JSON text takes up
to that much more memory as Python objects (a list of short strings); payloads
(remote I/O data) are charged at their length."""

from __future__ import annotations

import math

import trio

from fencevol import wire
from fencevol.errors import ProtocolError
from fencevol.rpc import RECEIVE_CHUNK, ConnectionClosed, FramedConnection

JSON_WEIGHT = 16
MAX_REQUEST_JSON = 256 << 10         # after authentication; requests are small
SESSION_MEMORY = 64 << 20
SERVER_MEMORY = 256 << 20
FRAME_TIMEOUT = 30.0
MAX_CONNECTIONS = 1024


class MemoryBudget:
    """Bytes charged against a limit, optionally inside a parent's limit. A charge
    larger than the limit is let through when nothing else is charged (one
    request always makes progress)."""

    def __init__(self, limit: int, parent: "MemoryBudget | None" = None):
        self.limit = limit
        self.parent = parent
        self.used = 0
        self.peak = 0
        self._changed = trio.Event()         # on the root only

    @property
    def root(self) -> "MemoryBudget":
        b = self
        while b.parent is not None:
            b = b.parent
        return b

    def fits(self, n: int) -> bool:
        b = self
        while b is not None:
            if b.used and b.used + n > b.limit:
                return False
            b = b.parent
        return True

    async def take(self, n: int) -> None:
        root = self.root
        while not self.fits(n):
            await root._changed.wait()
        b = self
        while b is not None:
            b.used += n
            b.peak = max(b.peak, b.used)
            b = b.parent
        root._notify()

    def give(self, n: int) -> None:
        if not n:
            return
        b = self
        while b is not None:
            b.used -= n
            b = b.parent
        self.root._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Return after the next take or give anywhere under this budget's root."""
        await self.root._changed.wait()


def frame_charge(json_len: int, payload_len: int) -> int:
    return wire.HEADER_SIZE + JSON_WEIGHT * json_len + payload_len


class ChargedReader:
    """Reads request frames from ``conn``, charging each to ``budget`` (see the
    module docstring). ``receive`` returns ``(message, payload, charge)``; the
    caller gives ``charge`` back when the request is done; ``close`` gives back
    what a frame cut short held."""

    def __init__(self, conn: FramedConnection, budget: MemoryBudget, frame_timeout: float = FRAME_TIMEOUT):
        self.conn = conn
        self.budget = budget
        self.frame_timeout = frame_timeout
        self._charged = 0                    # for the frame being read
        self._deadline = math.inf

    async def receive(self) -> tuple[dict, bytes, int]:
        dec = self.conn.decoder
        while True:
            need = dec.header()
            if need is not None:
                if not self._charged:
                    charge = frame_charge(need[0], need[1])
                    t0 = trio.current_time()
                    await self.budget.take(charge)
                    self._charged = charge
                    self._deadline += trio.current_time() - t0
                frame = dec.next_frame()
                if frame is not None:
                    charge, self._charged = self._charged, 0
                    self._deadline = (trio.current_time() + self.frame_timeout if dec.buffered
                                      else math.inf)        # the next frame has begun
                    return frame[0], frame[1], charge
            with trio.move_on_at(self._deadline):
                data = await self.conn.stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    if dec.buffered:
                        raise ProtocolError(
                            f"connection closed inside a frame ({dec.buffered} bytes pending)")
                    raise ConnectionClosed()
                if not dec.buffered:
                    self._deadline = trio.current_time() + self.frame_timeout
                dec.feed(data)
                continue
            raise ProtocolError(f"frame not completed within {self.frame_timeout:g}s "
                                f"({dec.buffered} bytes received)")

    def close(self) -> None:
        self.budget.give(self._charged)
        self._charged = 0
