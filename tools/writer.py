"""A workload process for fault tests and tools/check: writes checksummed records
into the slots it owns on a mounted volume and logs every outcome.

Record (one 4 KiB block per slot, written O_DIRECT)::

    magic "FVREC001" | node u32 | incarnation u32 | generation u64 | seq u64 |
    wall time f64 | crc32c u32 (over the 44 bytes before it) | padding

``--log`` gets one line per write: ``time seq slot ok issued`` or ``time seq slot
err errno`` (sequence numbers start at the start time in microseconds), and with
``--fsync-every N`` a line ``time seq slot acked`` for every record made durable
by a successful fsync. The node's incarnation and membership generation come
from its vclient control socket (``--control``), refreshed twice a second.
Runs until SIGTERM/SIGINT or ``--duration``; with ``--once`` it writes every slot
once, fsyncs and exits (a survivor taking over a fenced node's slots: tools/check).
Lives in its own process: a test holding an open FUSE file would hang in every
fork while that daemon is stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import mmap
import os
import signal
import socket
import struct
import sys
import threading
import time

from fencevol.crc import crc32c

BLOCK = 4096
MAGIC = b"FVREC001"
RECORD = struct.Struct(">8sIIQQd")
CRC = struct.Struct(">I")


def encode(node: int, incarnation: int, generation: int, seq: int, when: float) -> bytes:
    head = RECORD.pack(MAGIC, node, incarnation, generation, seq, when)
    body = head + CRC.pack(crc32c(head))
    return body + bytes([node & 0xFF]) * (BLOCK - len(body))


def decode(block: bytes) -> dict | None:
    """The record in a block, or None if the block holds no valid record."""
    if len(block) < RECORD.size + CRC.size or block[:8] != MAGIC:
        return None
    head = block[:RECORD.size]
    (crc,) = CRC.unpack_from(block, RECORD.size)
    if crc32c(head) != crc:
        return None
    _, node, inc, gen, seq, when = RECORD.unpack(head)
    return {"node": node, "incarnation": inc, "generation": gen, "seq": seq, "time": when}


def parse_slots(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


class Identity(threading.Thread):
    """Polls the node's incarnation and generation from its control socket."""

    def __init__(self, path: str | None):
        super().__init__(daemon=True)
        self.path = path
        self.incarnation = 0
        self.generation = 0

    def poll(self) -> None:
        if not self.path:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(self.path)
            s.sendall(b'{"op": "status"}\n')
            buf = b""
            while b"\n" not in buf:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
            st = json.loads(buf)["result"]
            c = st.get("cluster") or {}
            self.incarnation = int(c.get("incarnation", int(st["key"], 16) & 0xFFFFFFFF))
            self.generation = int(c.get("generation", 0))
        except (OSError, ValueError, KeyError):
            pass
        finally:
            s.close()

    def run(self) -> None:
        while True:
            self.poll()
            time.sleep(0.5)


def sync_and_acknowledge(fd: int, unsynced: list[tuple[int, int]], log) -> bool:
    """fsync; log an ``acked`` line per write it made durable, or the error."""
    try:
        os.fsync(fd)
    except OSError as exc:
        print(f"{time.time():.6f} - - fsync-err {exc.errno}", file=log)
        unsynced.clear()
        return False
    now = time.time()
    for seq, slot in unsynced:
        print(f"{now:.6f} {seq} {slot} acked", file=log)
    unsynced.clear()
    return True


def main() -> int:
    ap = argparse.ArgumentParser(prog="writer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", required=True, help="the volume file in the mount")
    ap.add_argument("--node", type=int, required=True)
    ap.add_argument("--slots", required=True, help="slots this node owns, e.g. 0-49 or 3,7,9")
    ap.add_argument("--log", required=True)
    ap.add_argument("--control", help="the node's vclient control socket")
    ap.add_argument("--interval", type=float, default=0.01, help="pause between writes (s)")
    ap.add_argument("--fsync-every", type=int, default=0, help="fsync after every N writes")
    ap.add_argument("--duration", type=float, default=0, help="stop after this long (0: run)")
    ap.add_argument("--once", action="store_true",
                    help="write every slot once, fsync, exit (status 1 if any write or the "
                         "fsync failed)")
    args = ap.parse_args()
    slots = parse_slots(args.slots)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ident = Identity(args.control)
    ident.poll()
    ident.start()
    buf = mmap.mmap(-1, BLOCK)
    end = time.monotonic() + args.duration if args.duration else float("inf")
    fd = os.open(args.file, os.O_RDWR | os.O_DIRECT)
    unsynced: list[tuple[int, int]] = []
    with open(args.log, "a", buffering=1) as log:
        # Sequence numbers start at the current time in microseconds, so they keep
        # growing across writer restarts on one machine (the checker relies on it).
        seq = time.time_ns() // 1000
        print(f"{time.time():.6f} start node={args.node} seq={seq}", file=log)
        failed = 0
        for n in range(len(slots)) if args.once else itertools.count():
            if stop.is_set() or time.monotonic() >= end:
                break
            slot = slots[n] if args.once else slots[seq % len(slots)]
            issued = time.time()
            buf.seek(0)
            buf.write(encode(args.node, ident.incarnation, ident.generation, seq, issued))
            try:
                os.pwritev(fd, [buf], slot * BLOCK)
                print(f"{time.time():.6f} {seq} {slot} ok {issued:.6f}", file=log)
                unsynced.append((seq, slot))
            except OSError as exc:
                print(f"{time.time():.6f} {seq} {slot} err {exc.errno}", file=log)
                failed += 1
            seq += 1
            if args.once:
                continue
            if args.fsync_every and len(unsynced) >= args.fsync_every:
                sync_and_acknowledge(fd, unsynced, log)
            if args.interval:
                time.sleep(args.interval)
        if args.once and not sync_and_acknowledge(fd, unsynced, log):
            failed += 1
        print(f"{time.time():.6f} stop", file=log)
    os.close(fd)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
