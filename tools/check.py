"""tools/check: prove that no write escapes the fence, Jepsen-style.

Each trial starts a fresh cluster (tools/cluster), runs a writer on every node
(tools/writer.py: checksummed records with node, incarnation, generation and a
sequence number, in slots the node owns, fsync'd every few writes, every outcome
logged), applies a seeded random schedule of faults with the tools/fault/*
scripts, heals, and then checks, reading the backing images directly:

  (a) no record of a node was issued after the survivors were told it was fenced
      (and before it rejoined) -- neither on disk nor acknowledged to its writer;
  (b) every fsync-acknowledged record is on disk in every plex, or superseded by a
      later record of the same node;
  (c) after each partition exactly one side kept membership, the other ejected;
  (d) no daemon crashed, no traceback in the logs, every mount answers.

A row per trial, a summary, exit status 1 on any violation. A failing trial keeps
its directory (logs, cluster.json, images) and prints the command replaying it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import (  # noqa: E402
    ENV,
    VENV_BIN,
    WriterProc,
    extent_map_from_show,
    parse_writer_log,
    partition_resolved,
    wait_for,
)
from writer import BLOCK, decode  # noqa: E402

from vclient.gate import UNSAFE_SWITCH, UNSAFE_VALUE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
FAULTS = ("partition", "pause", "partition-pause-racer", "kill", "server-restart")
SLOTS_PER_NODE = 64


class TrialFailed(Exception):
    pass


class Trial:
    def __init__(self, index: int, seed: int, args, base: Path):
        self.index = index
        self.seed = seed
        self.rnd = random.Random(f"{seed}:{index}")
        self.args = args
        self.dir = base / f"trial-{index:04d}"
        self.nodes = [str(i) for i in range(1, args.nodes + 1)]
        self.writers: dict[str, list[WriterProc]] = {n: [] for n in self.nodes}
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.applied: list[str] = []
        self.writes = self.acked = 0
        # Every cluster event any status call showed, per node: a killed node's
        # history dies with its process, so it is collected as the trial goes.
        self.events: dict[str, dict[str, dict]] = {n: {} for n in self.nodes}
        self.env = dict(ENV)
        if args.disable_gate_for_self_test:
            self.env[UNSAFE_SWITCH] = UNSAFE_VALUE

    # -- plumbing -----------------------------------------------------------------------
    def sh(self, *cmd: str, timeout: float = 120, check: bool = True) -> str:
        cp = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                            env=self.env)
        if check and cp.returncode != 0:
            raise TrialFailed(f"{' '.join(map(str, cmd[:3]))}...: {cp.stderr.strip()[-300:]}")
        return cp.stdout

    def fault(self, name: str, *args: str) -> None:
        self.sh(TOOLS / "fault" / name, *args, "--dir", self.dir)

    @property
    def state(self) -> dict:
        return json.loads((self.dir / "cluster.json").read_text())

    def status(self) -> dict:
        out = json.loads(self.sh(TOOLS / "cluster", "status", "--json", "--dir", self.dir))
        st = {n: (s or {}) for n, s in out["nodes"].items()}
        for n, s in st.items():
            for ev in (s.get("cluster") or {}).get("history", []):
                self.events.setdefault(n, {})[json.dumps(ev, sort_keys=True)] = ev
        return st

    def cluster_of(self, status: dict, n: str) -> dict:
        return (status.get(n) or {}).get("cluster") or {}

    def wait(self, pred, timeout: float, what: str):
        try:
            return wait_for(pred, timeout, what, interval=0.1)
        except TimeoutError as exc:
            raise TrialFailed(str(exc)) from None

    def all_members(self):
        st = self.status()
        want = sorted(int(n) for n in self.nodes)
        ok = all(self.cluster_of(st, n).get("state") == "member"
                 and self.cluster_of(st, n).get("members") == want for n in self.nodes)
        return st if ok else None

    def start_writer(self, n: str) -> None:
        node = self.state["nodes"][n]
        base = (int(n) - 1) * SLOTS_PER_NODE
        w = WriterProc(node["file"], int(n), f"{base}-{base + SLOTS_PER_NODE - 1}",
                       self.dir / f"writer-{n}-{len(self.writers[n])}.log", control=node["control"],
                       interval=0.01, fsync_every=4)
        self.writers[n].append(w)

    # -- nemesis ------------------------------------------------------------------------------
    def rejoin_ejected(self) -> None:
        st = self.status()
        for n in self.nodes:
            if self.cluster_of(st, n).get("state") != "member":
                self.sh(VENV_BIN / "vclient", "join", "--control", self.state["nodes"][n]["control"],
                        timeout=60)
        self.wait(self.all_members, 40, "every node to be a member again")

    def resolved(self):
        st = self.status()
        clusters = {n: self.cluster_of(st, n) for n in self.nodes}
        members = partition_resolved(clusters)
        return (members, {n: c.get("state") for n, c in clusters.items()}) if members else None

    def check_partition(self, a: list[str], b: list[str], what: str) -> None:
        """(c): exactly one side kept membership; the other side ejected itself."""
        try:
            members, states = self.wait(self.resolved, 40, f"{what} to resolve")
        except TrialFailed as exc:
            self.violations.append(f"(c) {what}: {exc}")
            return
        if not (set(members) <= set(a) or set(members) <= set(b)):
            self.violations.append(f"(c) {what}: members {members} span both sides {a}|{b}")
        side = a if set(members) <= set(a) else b
        losers = [n for n in self.nodes if n not in side]
        if any(states[n] != "ejected" for n in losers):
            self.violations.append(f"(c) {what}: losers {losers} not all ejected: {states}")
        self.notes.append(f"{what}: {'|'.join(','.join(s) for s in (a, b))} -> kept {','.join(members)}")

    def split(self) -> tuple[list[str], list[str]]:
        nodes = list(self.nodes)
        self.rnd.shuffle(nodes)
        k = self.rnd.randint(1, len(nodes) - 1)
        return sorted(nodes[:k]), sorted(nodes[k:])

    def apply(self, fault: str) -> None:
        self.applied.append(fault)
        if fault == "partition":
            a, b = self.split()
            self.fault("partition", ",".join(a), ",".join(b))
            self.check_partition(a, b, "partition")
            self.fault("heal")
            self.rejoin_ejected()
        elif fault == "partition-pause-racer":
            a, b = self.split()
            racer = min(a, key=int)
            self.fault("partition", ",".join(a), ",".join(b))
            time.sleep(self.rnd.uniform(1.0, 1.8))         # around detection and race
            self.fault("pause", racer)
            time.sleep(self.rnd.uniform(2.0, 4.0))
            self.fault("resume", racer)
            self.check_partition(a, b, f"partition with racer {racer} paused")
            self.fault("heal")
            self.rejoin_ejected()
        elif fault == "pause":
            n = self.rnd.choice(self.nodes)
            self.fault("pause", n)
            time.sleep(self.rnd.uniform(2.0, 5.0))
            self.fault("resume", n)
            self.notes.append(f"paused node {n}")
            self.wait(lambda: self.cluster_of(self.status(), n).get("state") in ("member", "ejected"),
                      20, f"node {n} to settle")
            self.rejoin_ejected()
        elif fault == "kill":
            n = self.rnd.choice(self.nodes)
            old = self.writers[n][-1]
            self.status()                      # keep the history the kill will erase
            self.fault("kill-node", n, "--restart")
            old.stop(timeout=5)
            self.notes.append(f"killed and restarted node {n}")
            self.wait(lambda: self.cluster_of(self.status(), n).get("state") in ("member", "ejected"),
                      30, f"node {n} to come back")
            self.rejoin_ejected()
            self.start_writer(n)
        elif fault == "server-restart":
            self.fault("restart-server", "--kill", "--down-for", f"{self.rnd.uniform(0.2, 2.0):.2f}")
            self.notes.append("server killed and restarted")
            self.wait(self.all_members, 20, "the nodes after the server restart")
        else:
            raise ValueError(fault)

    # -- the trial ------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.monotonic()
        faults = [self.rnd.choice(self.args.faults) for _ in range(self.rnd.randint(1, self.args.max_faults))]
        try:
            self.sh(TOOLS / "cluster", "up", str(self.args.nodes), "--dir", self.dir, "--quiet",
                    "--pause-timeout", "5", timeout=180)
            self.wait(self.all_members, 40, "the cluster to form")
            for n in self.nodes:
                self.start_writer(n)
            time.sleep(1.0)
            for f in faults:
                self.apply(f)
                time.sleep(self.rnd.uniform(0.3, 1.0))
            time.sleep(1.0)
        except TrialFailed as exc:
            self.violations.append(f"trial could not proceed: {exc}")
        except subprocess.TimeoutExpired as exc:
            self.violations.append(f"trial could not proceed: {exc.cmd[0]} timed out")
        finally:
            self.finish()
        return {"trial": self.index, "seed": self.seed, "faults": self.applied, "notes": self.notes,
                "violations": self.violations, "seconds": round(time.monotonic() - t0, 1),
                "writes": self.writes, "acked": self.acked}

    def finish(self) -> None:
        try:
            status = self.status() if (self.dir / "cluster.json").exists() else {}
        except (TrialFailed, subprocess.TimeoutExpired):
            status = {}
        for ws in self.writers.values():
            for w in ws:
                w.stop(timeout=5)
        try:
            if (self.dir / "cluster.json").exists():
                self.check_health(status)
                self.check_records(status)
        finally:
            if (self.dir / "cluster.json").exists():
                self.sh(TOOLS / "cluster", "down", "--dir", self.dir, check=False)
            for ws in self.writers.values():
                for w in ws:
                    w.stop(timeout=5)

    def check_health(self, status: dict) -> None:
        """(d): every daemon alive, no traceback, every mount answers."""
        st = self.state
        for n, node in st["nodes"].items():
            if not _alive(node.get("pid")):
                self.violations.append(f"(d) node {n} is not running")
            try:
                os.stat(node["mount"])
            except OSError as exc:
                self.violations.append(f"(d) node {n}'s mount is broken: {exc.strerror}")
        if not _alive(st["server"].get("pid")):
            self.violations.append("(d) the server is not running")
        for log in list(self.dir.glob("node*.log")) + [self.dir / "vserver.log"]:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Traceback" in text or "internal error" in text:
                self.violations.append(f"(d) {log.name} has a traceback")

    def read_plexes(self) -> list[dict[int, dict | None]]:
        """Every slot of dg/data, per plex, read from the backing images."""
        show = json.loads(self.sh(VENV_BIN / "vctl", "--server", self.state["server"]["address"],
                                  "--key-file", self.state["server"]["key_file"],
                                  "vol", "show", "dg/data", "--json"))
        emap = extent_map_from_show(show)
        disks = emap.disks
        files = {i: open(d.path, "rb") for i, d in enumerate(disks)}
        try:
            out = []
            for plex in emap.plexes:
                slots = {}
                for s in range(len(self.nodes) * SLOTS_PER_NODE):
                    buf = bytearray(BLOCK)
                    for disk, doff, boff, n in plex.segments(s * BLOCK, BLOCK):
                        files[disk].seek(doff)
                        buf[boff:boff + n] = files[disk].read(n)
                    slots[s] = decode(bytes(buf))
                out.append(slots)
            return out
        finally:
            for f in files.values():
                f.close()

    def check_records(self, status: dict) -> None:
        # When was which incarnation of each node fenced (a survivor told), and with
        # which incarnation did each node (re)join, when?
        told: dict[int, list[tuple[float, int]]] = {}
        joins: dict[int, list[tuple[float, int]]] = {}
        for n, seen in self.events.items():
            for ev in seen.values():
                if ev["event"] == "fenced":
                    incs = ev.get("incarnations", {})
                    for v in ev["victims"]:
                        told.setdefault(v, []).append((ev["at"], int(incs.get(str(v), 0xFFFFFFFF))))
                if ev["event"] == "joined":
                    joins.setdefault(int(n), []).append((ev["at"], int(ev.get("incarnation", 0))))

        def forbidden(node: int, t: float) -> float | None:
            """The fence time if ``node`` issued a write at ``t`` as an incarnation
            that had been fenced (told to a survivor) before ``t``."""
            before = [inc for tj, inc in joins.get(node, []) if tj < t]
            writing = max(before) if before else 0
            for tf, inc in sorted(told.get(node, [])):
                if tf < t and writing <= inc:
                    return tf
            return None

        plexes = self.read_plexes()
        acked_total = writes_total = 0
        for n, ws in self.writers.items():
            node = int(n)
            for w in ws:
                entries = parse_writer_log(w.log)
                writes_total += sum(1 for e in entries if e[3] in ("ok", "err"))
                for t, seq, slot, what, extra in entries:
                    if what == "ok":
                        tf = forbidden(node, extra)
                        if tf is not None:
                            self.violations.append(f"(a) node {node}'s write seq {seq} issued "
                                                   f"{extra - tf:+.3f}s after it was fenced succeeded")
                    elif what == "acked":
                        acked_total += 1
                        for p, slots in enumerate(plexes):
                            rec = slots.get(slot)
                            if rec is None or rec["node"] != node or rec["seq"] < seq:
                                self.violations.append(
                                    f"(b) node {node}'s acknowledged record seq {seq} is missing from "
                                    f"slot {slot} of plex {p} (found {rec and (rec['node'], rec['seq'])})")
        for p, slots in enumerate(plexes):
            for slot, rec in slots.items():
                if rec is None:
                    continue
                tf = forbidden(rec["node"], rec["time"])
                if tf is not None:
                    self.violations.append(f"(a) plex {p} slot {slot} holds node {rec['node']}'s record "
                                           f"issued {rec['time'] - tf:+.3f}s after it was fenced")
        self.writes, self.acked = writes_total, acked_total
        # Keep the report readable: at most 10 lines per kind.
        kinds: dict[str, int] = {}
        kept = []
        for v in self.violations:
            k = v[:3]
            kinds[k] = kinds.get(k, 0) + 1
            if kinds[k] <= 10:
                kept.append(v)
        extra = {k: c - 10 for k, c in kinds.items() if c > 10}
        self.violations = kept + [f"{k} ... and {c} more" for k, c in extra.items()]


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--first-trial", type=int, default=1, help="start numbering here (replay one trial)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--max-faults", type=int, default=2, help="faults per trial (1 to this)")
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma-separated subset of {', '.join(FAULTS)}")
    ap.add_argument("--dir", default=str(ROOT / "check-runs"), help="where trials run")
    ap.add_argument("--keep", action="store_true", help="keep every trial's directory")
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    ap.add_argument("--disable-gate-for-self-test", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        ap.error(f"unknown faults {sorted(unknown)}")
    if args.nodes < 2:
        ap.error("at least 2 nodes")
    base = Path(args.dir).resolve() / f"seed-{args.seed}"
    base.mkdir(parents=True, exist_ok=True)
    print(f"tools/check: seed {args.seed}, {args.trials} trials, {args.nodes} nodes, faults "
          f"{','.join(args.faults)}; runs in {base}")
    print(f"{'trial':>5}  {'result':9}  {'secs':>5}  {'writes':>6}  {'acked':>5}  faults")
    results, failed = [], []
    for i in range(args.first_trial, args.first_trial + args.trials):
        trial = Trial(i, args.seed, args, base)
        res = trial.run()
        results.append(res)
        ok = not res["violations"]
        print(f"{i:>5}  {'ok' if ok else 'VIOLATION':9}  {res['seconds']:>5.0f}  {res['writes']:>6}  "
              f"{res['acked']:>5}  {', '.join(res['faults'])}", flush=True)
        for note in res["notes"]:
            print(f"{'':>7}- {note}")
        for v in res["violations"]:
            print(f"{'':>7}! {v}")
        if ok and not args.keep:
            shutil.rmtree(trial.dir, ignore_errors=True)
        if not ok:
            failed.append(i)
            print(f"{'':>7}  kept {trial.dir}; replay: tools/check --seed {args.seed} "
                  f"--first-trial {i} --trials 1 --nodes {args.nodes} --faults {','.join(args.faults)}")
    writes = sum(r["writes"] for r in results)
    acked = sum(r["acked"] for r in results)
    print(f"\nsummary: {len(results) - len(failed)}/{len(results)} trials passed, {writes} writes, "
          f"{acked} acknowledged records checked" + (f"; FAILED trials {failed}" if failed else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
