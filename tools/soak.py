"""tools/soak: the watchdog and the heartbeats must not fence a healthy, busy node.

Starts a cluster (tools/cluster, --hosts by default), runs fio (random 4 KiB reads
and writes, O_DIRECT, several jobs) on every node's volume and CPU hogs (busy loops,
one per core) for the whole duration, then reports, from the nodes' logs and
status: watchdog kills, ejections, races, membership changes, and the longest time
without a ping each node's watchdog saw (how close it came to its budget). Any
kill, ejection or race fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


def sh(*cmd, timeout: float = 300) -> str:
    cp = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise SystemExit(f"soak: {' '.join(map(str, cmd[:3]))}...: {cp.stderr.strip()[-500:]}")
    return cp.stdout


def status(d: Path) -> dict:
    return json.loads(sh(TOOLS / "cluster", "status", "--json", "--dir", d))["nodes"]


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="fio jobs per node (default 2)")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2,
                    help="CPU hog processes (default one per core)")
    ap.add_argument("--loopback", action="store_true", help="one host (no --hosts test bed)")
    ap.add_argument("--dir", help="cluster directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = Path(args.dir or tempfile.mkdtemp(prefix="fencevol-soak-")).resolve()
    seconds = args.minutes * 60
    sh(TOOLS / "cluster", "up", str(args.nodes), "--dir", d, "--quiet",
       *([] if args.loopback else ["--hosts"]), timeout=300)
    procs: list[subprocess.Popen] = []
    result: dict = {"minutes": args.minutes, "nodes": args.nodes, "fio_jobs_per_node": args.jobs,
                    "hogs": args.hogs, "hosts": not args.loopback}
    try:
        before = status(d)
        st = json.loads((d / "cluster.json").read_text())
        for n, node in sorted(st["nodes"].items()):
            procs.append(subprocess.Popen(
                ["fio", "--name=soak", f"--filename={node['file']}", "--rw=randrw", "--bs=4k",
                 f"--numjobs={args.jobs}", "--size=32M", "--direct=1", "--ioengine=psync",
                 "--time_based", f"--runtime={seconds:.0f}", "--group_reporting",
                 "--output-format=json", f"--output={d / f'fio-{n}.json'}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for _ in range(args.hogs):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          start_new_session=True))
        print(f"soak: {args.nodes} nodes{'' if args.loopback else ' on separate hosts'}, fio "
              f"{args.jobs} job(s) each, {args.hogs} CPU hog(s), {args.minutes:g} min; in {d}",
              flush=True)
        for p in procs[:args.nodes]:
            p.wait(timeout=seconds + 120)
        after = status(d)
        worst_ping = {n: ((s or {}).get("watchdog") or {}).get("worst_ping_gap")
                      for n, s in after.items()}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = {n: (d / f"node{n}.log").read_text(errors="replace") for n in st["nodes"]}
    kills = {n: len(re.findall(r"watchdog: killing vclient", t)) for n, t in logs.items()}
    ejections = {n: t.count("ejects itself") for n, t in logs.items()}
    races = {n: (after.get(n) or {}).get("cluster", {}).get("races") for n in st["nodes"]}
    generations = {n: ((before.get(n) or {}).get("cluster", {}).get("generation"),
                       (after.get(n) or {}).get("cluster", {}).get("generation")) for n in st["nodes"]}
    fio = {}
    for n in st["nodes"]:
        try:
            job = json.loads((d / f"fio-{n}.json").read_text())["jobs"][0]
            fio[n] = {"read_iops": round(job["read"]["iops"]), "write_iops": round(job["write"]["iops"]),
                      "errors": job.get("error", 0)}
        except (OSError, ValueError, KeyError, IndexError):
            fio[n] = None
    sh(TOOLS / "cluster", "down", "--dir", d)
    result.update(watchdog_kills=kills, ejections=ejections, races=races, generations=generations,
                  longest_without_ping=worst_ping, fio=fio)
    ok = (not any(kills.values()) and not any(ejections.values()) and not any(races.values())
          and all(a == b for a, b in generations.values()) and all(fio.values())
          and not any(f["errors"] for f in fio.values()))
    result["ok"] = ok
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for n in sorted(st["nodes"], key=int):
            f = fio[n] or {}
            print(f"node {n}: watchdog kills {kills[n]}, ejections {ejections[n]}, races {races[n]}, "
                  f"generation {generations[n][0]} -> {generations[n][1]}, longest without a ping "
                  f"{worst_ping.get(n)}s, fio {f.get('read_iops')} reads/s "
                  f"{f.get('write_iops')} writes/s, errors {f.get('errors')}")
        print(f"soak: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
