"""fio benchmark of the fencevol data path (run through tools/bench).

Every workload runs on four targets, interleaved round by round so machine noise
hits them alike: a mounted single-extent volume (gate and extent map active, direct
I/O through native AIO to the image), the raw image region under it read and
written with O_DIRECT (the physical limit of this path, and the reference for the
targets), the same region buffered (the page cache), and bindfs mounted over the
image directory (a C FUSE passthrough, buffered underneath). The report gives the
median of the rounds, the ratio volume / raw O_DIRECT, the client's CPU time per
request and the most FUSE requests it had in flight at once (sampled). Then a
10,000-extent volume against a one-extent volume, the client's RSS with 8 volumes
attached under fio load, and the fencing latencies."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from testbed.processes import Client, force_unmount, mounted, Server, vctl, vctl_json, wait_for

MiB = 1 << 20
WORKLOADS = [
    # name, rw, bs, numjobs, target (volume / raw O_DIRECT)
    ("4k randread 1 job", "randread", "4k", 1, 0.6),
    ("4k randread 4 jobs", "randread", "4k", 4, 0.6),
    ("4k randwrite 1 job", "randwrite", "4k", 1, 0.6),
    ("4k randwrite 4 jobs", "randwrite", "4k", 4, 0.6),
    ("1M seq read", "read", "1M", 1, 0.9),
    ("1M seq write", "write", "1M", 1, 0.9),
]


def rotated(items: list, round_no: int) -> list:
    """Round r runs the targets in a rotated order (and reversed on odd rounds), so
    no target always runs first or right after a write-heavy one."""
    k = round_no % len(items)
    out = items[k:] + items[:k]
    return out[::-1] if round_no % 2 else out


def fio(filename: str, rw: str, bs: str, numjobs: int, size: int, offset: int, runtime: float,
        direct: bool) -> dict:
    os.sync()   # start every run with no dirty pages left by the previous one
    cmd = ["fio", "--output-format=json", "--name=bench", f"--filename={filename}", f"--rw={rw}",
           f"--bs={bs}", f"--numjobs={numjobs}", f"--size={size}", f"--offset={offset}",
           f"--direct={int(direct)}", "--ioengine=psync", "--group_reporting", "--time_based",
           f"--runtime={runtime}", "--ramp_time=1", "--randrepeat=0", "--norandommap"]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + 120)
    if cp.returncode != 0:
        raise RuntimeError(f"fio failed: {cp.stderr.strip() or cp.stdout[-500:]}")
    job = json.loads(cp.stdout[cp.stdout.index("{"):])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"iops": side["iops"], "mibs": side["bw_bytes"] / MiB}


def fuse_connection(mount: Path) -> Path | None:
    """The /sys/fs/fuse/connections entry of a mount (its device number); mounts
    fusectl there if needed."""
    base = Path("/sys/fs/fuse/connections")
    if not os.path.ismount(base):
        subprocess.run(["mount", "-t", "fusectl", "none", str(base)], capture_output=True)
    path = base / str(os.minor(os.stat(mount).st_dev))
    return path if path.exists() else None


class ClientLoad:
    """While a fio run lasts: the client's CPU time per request it served, and the
    most FUSE requests it had waiting at once (sampled every millisecond)."""

    def __init__(self, client, conn: Path | None):
        self.client = client
        self.conn = conn
        self.max_waiting = 0
        self.cpu_per_request = 0.0
        self.system_share = 0.0
        self._stop = threading.Event()

    def _cpu(self) -> tuple[float, float]:
        """(user, system) seconds of the client so far."""
        with open(f"/proc/{self.client.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            try:
                self.max_waiting = max(self.max_waiting, int((self.conn / "waiting").read_text()))
            except (OSError, ValueError):
                return

    def __enter__(self):
        self.cpu0, self.req0 = self._cpu(), self.client.status()["io"]["requests"]
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if self.conn is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.conn is not None:
            self.thread.join()
        served = self.client.status()["io"]["requests"] - self.req0
        user, system = (b - a for a, b in zip(self.cpu0, self._cpu()))
        self.cpu_per_request = (user + system) / max(served, 1) * 1e6
        self.system_share = system / max(user + system, 1e-9)
        return False


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in ("iops", "mibs")}


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", type=float, default=4.0, help="seconds per fio run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--size", default="256M", help="test region (default 256M)")
    ap.add_argument("--only", choices=["paths", "extents", "rss", "fencing"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--fence-runs", type=int, default=5, help="runs per fencing case (default 5)")
    ap.add_argument("--stock-loop", action="store_true",
                    help="paths: also run a second client on pyfuse3's stock request loop "
                         "(FENCEVOL_STOCK_FUSE_LOOP=1), the reference for fuse_fs.fastwait")
    ap.add_argument("--workload", action="append", metavar="TEXT",
                    help="paths: only the workloads whose name contains TEXT (repeatable)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--record", metavar="FILE", help="append a dated markdown section to FILE")
    args = ap.parse_args()
    from fencevol.units import parse_size
    size = parse_size(args.size, align=MiB)
    parts = args.only or ["paths", "extents", "rss", "fencing"]

    work = Path(tempfile.mkdtemp(prefix="fencevol-bench-"))
    server = Server(work / "state")
    bindfs = None
    clients = []
    results: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "machine": machine(), "runtime": args.runtime, "rounds": args.rounds}
    try:
        server.start()
        img_dir = work / "images"
        img_dir.mkdir()
        disks = [str(img_dir / f"disk{i}.img") for i in range(3)]
        for d in disks:
            vctl(server, "disk", "init", d, "--size", "2G")
        vctl(server, "dg", "create", "bench", *disks)
        vctl(server, "vol", "create", "bench", "one", str(size))
        show = vctl_json(server, "vol", "show", "bench/one")
        sd = show["plexes"][0]["columns"][0]["subdisks"][0]
        image, offset = sd["path"], sd["disk_offset"]
        print(f"# {results['machine']}", file=sys.stderr)

        if "paths" in parts:
            c = Client(server, 1, work, "bench/one")
            clients.append(c)
            c.start()
            vol_file = str(c.path("bench/one"))
            via = work / "bindfs"
            via.mkdir()
            bindfs = subprocess.Popen(["bindfs", "-f", str(img_dir), str(via)],
                                      stderr=subprocess.DEVNULL)
            wait_for(lambda: mounted(via), 10, "bindfs mount")
            bind_file = str(via / Path(image).name)
            # Fill the region once so reads see real data.
            fio(image, "write", "1M", 1, size, offset, 0, False)
            targets = {"volume": (vol_file, 0, True), "direct": (image, offset, True),
                       "bindfs": (bind_file, offset, True), "raw": (image, offset, False)}
            fuse_conn = fuse_connection(c.mount)
            if args.stock_loop:
                stock = Client(server, 4, work, "bench/one", env={"FENCEVOL_STOCK_FUSE_LOOP": "1"})
                clients.append(stock)
                stock.start()
                targets["stock"] = (str(stock.path("bench/one")), 0, True)
            table = {}
            for name, rw, bs, jobs, target in [w for w in WORKLOADS if not args.workload
                                               or any(t in w[0] for t in args.workload)]:
                runs: dict[str, list] = {t: [] for t in targets}
                cost, sys_share, inflight = [], [], 0
                for r in range(args.rounds):
                    for t in rotated(list(targets), r):
                        f, off, direct = targets[t]
                        if t == "volume":
                            with ClientLoad(c, fuse_conn) as load:
                                runs[t].append(fio(f, rw, bs, jobs, size, off, args.runtime, direct))
                            cost.append(load.cpu_per_request)
                            sys_share.append(load.system_share)
                            inflight = max(inflight, load.max_waiting)
                        else:
                            runs[t].append(fio(f, rw, bs, jobs, size, off, args.runtime, direct))
                med = {t: median_of(v) for t, v in runs.items()}
                med["target"] = target
                med["cpu_us"] = statistics.median(cost)
                med["cpu_sys"] = statistics.median(sys_share)
                med["fuse_inflight"] = inflight
                table[name] = med
                print(f"{name:22s} volume {med['volume']['iops']:9.0f} IOPS {med['volume']['mibs']:8.1f} MiB/s"
                      f"   vs O_DIRECT {med['volume']['iops'] / med['direct']['iops']:.2f}x"
                      f"   vs bindfs {med['volume']['iops'] / med['bindfs']['iops']:.2f}x"
                      f"   client {med['cpu_us']:.0f} us CPU/request ({med['cpu_sys']:.0%} system), "
                      f"<= {inflight} in flight"
                      + (f"   vs stock loop {med['volume']['iops'] / med['stock']['iops']:.2f}x"
                         if "stock" in med else ""), file=sys.stderr)
            results["paths"] = table
            for cl in list(clients):
                cl.stop()
                clients.remove(cl)

        if "extents" in parts:
            # Both volumes are created, in turn, on the same backing region (the
            # allocator is deterministic), so ext4's per-region costs cancel out.
            ext_size = 10000 * (64 << 10)
            shapes = {"frag": ["--max-subdisk", "64K"], "flat": []}
            ext_img = str(img_dir / "extents.img")
            vctl(server, "disk", "init", ext_img, "--size", "1G")
            vctl(server, "dg", "create", "ext", ext_img)      # one disk: one region
            c = Client(server, 2, work)
            clients.append(c)
            c.start()
            counts, where = {}, {}

            def make(v):
                vctl(server, "vol", "create", "ext", v, str(ext_size), *shapes[v])
                show = vctl_json(server, "vol", "show", f"ext/{v}")
                counts[v] = show["extents"]
                first = show["plexes"][0]["columns"][0]["subdisks"][0]
                where[v] = (first["disk"], first["disk_offset"])
                subprocess.run([str(Path(sys.executable).parent / "vclient"), "attach", f"ext/{v}",
                                "--control", c.control], check=True, capture_output=True)

            def drop(v):
                subprocess.run([str(Path(sys.executable).parent / "vclient"), "detach", f"ext/{v}",
                                "--control", c.control], check=True, capture_output=True)
                vctl(server, "vol", "remove", f"ext/{v}")

            make("flat")
            fio(str(c.path("ext/flat")), "write", "1M", 1, ext_size, 0, 0, True)   # fill once
            drop("flat")
            table = {}
            for name, rw in (("4k randread", "randread"), ("4k randwrite", "randwrite")):
                runs = {v: [] for v in shapes}
                for r in range(2 * args.rounds):     # a small effect: twice the rounds
                    for v in rotated(list(runs), r):
                        make(v)
                        runs[v].append(fio(str(c.path(f"ext/{v}")), rw, "4k", 1, ext_size, 0,
                                           args.runtime, True))
                        drop(v)
                assert where["frag"] == where["flat"], where
                med = {v: median_of(x) for v, x in runs.items()}
                table[name] = med
                print(f"{name:22s} {counts['frag']} extents {med['frag']['iops']:9.0f} IOPS vs "
                      f"{counts['flat']} extent {med['flat']['iops']:9.0f} IOPS: "
                      f"{med['frag']['iops'] / med['flat']['iops']:.3f}x", file=sys.stderr)
            results["extents"] = {"counts": counts, "table": table}
            c.stop()
            clients.remove(c)

        if "rss" in parts:
            names = [f"r{i}" for i in range(8)]
            for n in names:
                vctl(server, "vol", "create", "bench", n, "32M")
            c = Client(server, 3, work, *(f"bench/{n}" for n in names))
            clients.append(c)
            c.start()
            pid = c.status()["pid"]
            peak = [0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        for line in open(f"/proc/{pid}/status"):
                            if line.startswith("VmRSS:"):
                                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                    except OSError:
                        return
                    time.sleep(0.1)

            t = threading.Thread(target=sample)
            t.start()
            jobfile = work / "rss.fio"
            jobfile.write_text("[global]\nioengine=psync\ndirect=1\nrw=randrw\nbs=4k\nsize=32M\n"
                               f"time_based\nruntime={max(args.runtime, 5)}\n" + "".join(
                                   f"[j{i}]\nfilename={c.path('bench/' + n)}\n" for i, n in enumerate(names)))
            subprocess.run(["fio", str(jobfile), "--output-format=terse"], check=True,
                           capture_output=True, timeout=300)
            stop.set()
            t.join()
            results["rss"] = {"volumes": len(names), "peak_bytes": peak[0]}
            print(f"client RSS with {len(names)} volumes under fio load: {peak[0] / MiB:.1f} MiB",
                  file=sys.stderr)
    finally:
        for c in clients:
            c.stop()
        if bindfs is not None:
            bindfs.terminate()
            try:
                bindfs.wait(10)
            except subprocess.TimeoutExpired:
                bindfs.kill()
            force_unmount(work / "bindfs")
        server.stop()
        subprocess.run(["rm", "-rf", str(work)])

    if "fencing" in parts:
        import fence_timing
        results["fencing"] = fence_timing.measure(args.fence_runs)
    text = render(results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write("\n" + text + "\n")
    return 0


def render(res: dict) -> str:
    out = [f"### {res['date']} — {res['machine']}", "",
           f"fio psync, iodepth 1, {res['runtime']:g} s per run, median of {res['rounds']} "
           "interleaved rounds (order rotated each round, `sync` before every run). volume: "
           "FUSE file of a one-extent concat volume (gate and map active), fio O_DIRECT, the "
           "client doing direct I/O through native AIO; O_DIRECT: fio O_DIRECT on the image "
           "region (the reference for the targets); bindfs: the image through bindfs, fio "
           "O_DIRECT on the FUSE file, buffered below; raw: the image region, buffered. "
           "CPU: the client's CPU time per request served; in flight: the most FUSE requests "
           "the client had at once (sampled).", ""]
    if "paths" in res:
        stock = any("stock" in med for med in res["paths"].values())
        extra = (" stock loop IOPS | volume/stock |", "---:|---:|") if stock else ("", "")
        if stock:
            out += ["stock loop: a second client serving the same volume with pyfuse3's own "
                    "request loop (`FENCEVOL_STOCK_FUSE_LOOP=1`), interleaved with the others.", ""]
        out += ["| workload | volume IOPS | volume MiB/s | O_DIRECT IOPS | bindfs IOPS | raw IOPS |"
                + extra[0] + " volume/O_DIRECT | volume/bindfs | client CPU/req (system) | in flight | target |",
                "|---|---:|---:|---:|---:|---:|" + extra[1] + "---:|---:|---:|---:|---|"]
        for name, med in res["paths"].items():
            v, dr, b, r = med["volume"], med["direct"], med["bindfs"], med["raw"]
            ratio = v["iops"] / dr["iops"]
            verdict = "met" if ratio >= med["target"] else "MISSED"
            ref = (f" {med['stock']['iops']:.0f} | {v['iops'] / med['stock']['iops']:.2f}x |"
                   if "stock" in med else "")
            out.append(f"| {name} | {v['iops']:.0f} | {v['mibs']:.1f} | {dr['iops']:.0f} | {b['iops']:.0f} | "
                       f"{r['iops']:.0f} |{ref} {ratio:.2f}x | {v['iops'] / b['iops']:.2f}x | "
                       f"{med['cpu_us']:.0f} µs ({med.get('cpu_sys', 0):.0%}) | {med['fuse_inflight']} | "
                       f"≥ {med['target']:g}x: {verdict} |")
        out.append("")
    if "extents" in res:
        e = res["extents"]
        out += ["Extent map size: both volumes in turn on the same backing region.", "",
                f"| workload | {e['counts']['frag']} extents IOPS | {e['counts']['flat']} extent IOPS | ratio | target |",
                "|---|---:|---:|---:|---|"]
        for name, med in e["table"].items():
            out.append(f"| {name} | {med['frag']['iops']:.0f} | {med['flat']['iops']:.0f} | "
                       f"{med['frag']['iops'] / med['flat']['iops']:.3f} | within 5% |")
        out.append("")
    if "fencing" in res:
        import fence_timing
        out += [fence_timing.render(res["fencing"]), ""]
    if "rss" in res:
        out.append(f"Client peak RSS with {res['rss']['volumes']} volumes attached under fio load: "
                   f"{res['rss']['peak_bytes'] / MiB:.1f} MiB (target < 64 MiB).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
