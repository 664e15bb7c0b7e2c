"""Measure fencing latency with default settings (run via tools/bench --only fencing
or directly with .venv/bin/python tools/fence_timing.py).

Two nodes, both writing 4 KiB records every 5 ms to dg/data. At t0 the heartbeat
link is cut (nftables). Measured from t0, per run:

* reachable: the server reaches both sides -- the loser's first rejected write,
  and the survivor's first accepted write completed after the fence;
* unreachable: the node about to lose is also frozen (SIGSTOP) at t0, so the
  server cannot get its acknowledgement and waits out its lease + margin; the
  survivor's first accepted write after the fence.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from testbed.cluster import Cluster
from testbed.processes import wait_for
from testbed.records import WriterProc


def one_run(workdir: Path, freeze: bool) -> dict:
    c = Cluster(workdir, 2)
    writers = []
    try:
        c.setup()
        for i in (1, 2):
            c.start(i, "dg/data")
        wait_for(lambda: all(c.cluster_state(i)["members"] == [1, 2] for i in (1, 2)), 20, "2 members")
        for i in (1, 2):
            writers.append(WriterProc(c.nodes[i].path("dg/data"), i, f"{i * 100}-{i * 100 + 99}",
                                      workdir / f"w{i}.log", interval=0.005))
        wait_for(lambda: all(len(w.entries()) > 20 for w in writers), 10, "writers")
        t0 = time.time()
        if freeze:
            os.kill(c.nodes[1].proc.pid, signal.SIGSTOP)
        c.partition([1], [2])
        if freeze:
            survivor, loser = 2, 1
        else:
            def winner():
                st = {i: c.cluster_state(i) for i in (1, 2)}
                w = [i for i in (1, 2) if st[i]["state"] == "member" and st[i]["members"] == [i]
                     and st[i]["last_fence"]]
                return w[0] if w else None
            survivor = wait_for(winner, 30, "a winner")
            loser = 3 - survivor
        fence = wait_for(lambda: c.cluster_state(survivor)["last_fence"], 30, "the fence")
        wait_for(lambda: writers[survivor - 1].oks_after(fence["at"]), 10, "a write after the fence")
        if freeze:
            os.kill(c.nodes[loser].proc.pid, signal.SIGCONT)
        else:
            wait_for(lambda: writers[loser - 1].errors_after(t0), 10, "a rejected write")
        first_ok = writers[survivor - 1].oks_after(fence["at"])[0][0]
        errs = writers[loser - 1].errors_after(t0)
        return {"survivor": survivor, "fence_seconds": fence["seconds"],
                "survivor_first_write": first_ok - t0,
                "loser_first_reject": (errs[0][0] - t0) if errs and not freeze else None,
                "acknowledged": fence["acknowledged"], "lease_expired": fence["lease_expired"]}
    finally:
        c.stop()
        for w in writers:
            w.stop()


def measure(runs: int) -> dict:
    out = {"reachable": [], "unreachable": []}
    for case, freeze in (("reachable", False), ("unreachable", True)):
        for r in range(runs):
            with tempfile.TemporaryDirectory(prefix="fencevol-fence-") as d:
                res = one_run(Path(d), freeze)
            out[case].append(res)
            print(f"{case:11s} run {r + 1}: survivor node {res['survivor']} writes again at "
                  f"+{res['survivor_first_write']:.2f}s" + (
                      f", loser's first rejected write +{res['loser_first_reject']:.2f}s"
                      if res["loser_first_reject"] is not None else "")
                  + f" (fence {res['fence_seconds']:.3f}s)", file=sys.stderr)
    return out


def render(res: dict) -> str:
    def med(case, key):
        vals = [r[key] for r in res[case] if r[key] is not None]
        return statistics.median(vals) if vals else float("nan")
    r, u = res["reachable"], res["unreachable"]
    lines = [f"Fencing latency, default settings (heartbeat 0.25 s / timeout 1.25 s, lease 4 s + "
             f"margin 1 s), median of {len(r)} runs each, measured from the cut:", "",
             "| case | loser's first rejected write | survivor's first write after the fence | target |",
             "|---|---:|---:|---|",
             f"| server reaches both sides | {med('reachable', 'loser_first_reject'):.2f} s | "
             f"{med('reachable', 'survivor_first_write'):.2f} s | survivor ≤ 2 s |",
             f"| loser frozen (no acknowledgement) | (frozen) | {med('unreachable', 'survivor_first_write'):.2f} s"
             f" | survivor ≤ 1.25 + 4 + 1 = 6.25 s |", "",
             "Runs (survivor, loser): " + "; ".join(
                 f"{x['survivor_first_write']:.2f}, {x['loser_first_reject']:.2f}" for x in r) +
             " | frozen: " + "; ".join(f"{x['survivor_first_write']:.2f}" for x in u)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = measure(args.runs)
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
