"""What the checker reads: the writer's log (tools/writer.py) and the records on
the backing disks, through a volume's extent map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WRITER = Path(__file__).resolve().parents[1] / "writer.py"


def parse_writer_log(path: Path) -> list[tuple]:
    """tools/writer.py's log: (time, seq, slot, outcome, errno or issue time), with
    outcome "ok", "err", "acked" or "fsync-err" (seq and slot -1: an fsync failed,
    the writes since the last good one are not acknowledged)."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        p = line.split()
        if len(p) >= 4 and p[1].isdigit():
            extra = p[4] if len(p) > 4 else "0"
            out.append((float(p[0]), int(p[1]), int(p[2]), p[3],
                        float(extra) if p[3] == "ok" else int(extra)))
        elif len(p) == 5 and p[3] == "fsync-err":
            out.append((float(p[0]), -1, -1, "fsync-err", int(p[4])))
    return out


class WriterProc:
    """tools/writer.py as a subprocess, and its log parsed."""

    def __init__(self, file, node: int, slots: str, log: Path, control: str | None = None,
                 interval: float = 0.01, fsync_every: int = 0):
        self.log = Path(log)
        cmd = [sys.executable, str(WRITER), "--file", str(file), "--node", str(node),
               "--slots", slots, "--log", str(log), "--interval", str(interval),
               "--fsync-every", str(fsync_every)]
        if control:
            cmd += ["--control", control]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def entries(self) -> list[tuple]:
        """(time, seq, slot, outcome, errno) per line ("ok", "err" or "acked")."""
        return parse_writer_log(self.log)

    def oks_after(self, t: float) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "ok" and e[0] >= t]

    def fsync_errors(self) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "fsync-err"]

    def errors_after(self, t: float) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "err" and e[0] >= t]

    def stop(self, timeout: float = 30) -> bool:
        """TERM, then KILL; never raises. False if the process is still there (it is
        blocked on a stopped FUSE daemon: continue or stop that daemon first)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    return False
        if self.proc.stderr and not self.proc.stderr.closed:
            self.proc.stderr.close()
        return True


def extent_map_from_show(show: dict):
    """A volume's ExtentMap rebuilt from ``vctl vol show --json`` (disk paths as the
    server knows them), for reading backing images directly."""
    from fencevol.extents import ExtentMap
    disks, index, plexes = [], {}, []
    for p in show["plexes"]:
        cols = []
        for c in p["columns"]:
            col = []
            for sd in c["subdisks"]:
                if sd["disk_id"] not in index:
                    index[sd["disk_id"]] = len(disks)
                    disks.append({"id": sd["disk_id"], "path": sd["path"], "name": sd["disk"]})
                col.append([index[sd["disk_id"]], sd["disk_offset"], sd["length"]])
            cols.append(col)
        plexes.append(cols)
    return ExtentMap({"size": show["size"], "stripe_unit": show["stripe_unit"],
                      "plexes": plexes, "disks": disks})


def read_backing(emap, plex: int, offset: int, length: int) -> bytes:
    """Read a volume range of one plex straight from the backing images."""
    out = bytearray(length)
    for disk, doff, boff, n in emap.plexes[plex].segments(offset, length):
        with open(emap.disks[disk].path, "rb") as f:
            f.seek(doff)
            out[boff:boff + n] = f.read(n)
    return bytes(out)


# -- TLS test certificates (openssl CLI) -----------------------------------------------------
