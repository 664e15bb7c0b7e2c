"""tools/check: prove that no write escapes the fence, Jepsen-style.

Each trial starts a fresh cluster (tools/cluster; with --hosts every node is a
"host" with its own network namespace and its own loop devices over the images),
runs a writer on every node (tools/writer.py: checksummed records with node,
incarnation, generation and a sequence number, in slots the node owns, fsync'd
every few writes, every outcome logged), and applies a seeded random schedule of
faults with the tools/fault/* scripts. Whenever a fault costs the cluster a node
(partition, pause, stall, kill), the survivors fence it, and then one survivor
*takes its data over*: it rewrites every slot of the lost node and fsyncs, as a
failover would (journal replay, service restart) -- only then does the lost node
come back (restarted if its watchdog or the fault killed it) and rejoin. At the
end the checker reads every plex straight from the images and judges
(tools/verdicts.py):

  (a) no write of a node issued after the survivors were told it was fenced (and
      before it rejoined) succeeded or is on disk, and no record the owner issued
      before a takeover of its slot was acknowledged is on disk -- that would be an
      admitted write that stalled past the fence and landed on the survivor's data;
  (b) every fsync-acknowledged record (takeovers included) is on every plex, or a
      later write replaced it;
  (c) after each partition exactly one side kept membership, the other ejected
      itself or was killed by its watchdog;
  (d) no daemon crashed (watchdog kills of stalled nodes are counted, not
      crashes), no traceback in the logs, every mount answers;
  (e) every slot holds the same record on every plex of the mirror;
  (f) no extent is allocated twice across the volumes of the group (nor in a
      disk's private region).

With --ha the control plane is 3 etcd members and 2 servers (tools/cluster up
--ha), and the nemesis also kills the leader (-9, restarted as a standby), cuts it
off from etcd, freezes it past its etcd lease and wakes it, and kills it right
after partitioning the nodes (the survivors' fence goes to the new leader).

A row per trial, a summary, exit status 1 on any violation. A failing trial keeps
its directory (logs, cluster.json, images) and prints the command replaying it.
SIGINT or SIGTERM stops after the current trial (its cluster taken down, the
summary printed, exit status 130); a second one stops at once, still taking the
cluster down.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.processes import ENV, VENV_BIN, alive, wait_for
from testbed.records import extent_map_from_show, parse_writer_log, WriterProc
from testbed.verdicts import (
    History,
    Record,
    Write,
    extents_allocated_once,
    judge,
    summarize,
    takeovers_intact,
    writes_without_a_lease,
)
from writer import BLOCK, decode

from fencevol import directio, ondisk
from vclient import selftest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
FAULTS = ("partition", "pause", "partition-pause-racer", "kill", "server-restart", "stall",
          "isolate", "isolate-server", "kill-leader", "partition-etcd", "pause-leader",
          "partition-kill-leader")
HOSTS_ONLY = ("isolate", "isolate-server")      # they cut one node's links to the server
HA_ONLY = ("kill-leader", "partition-etcd", "pause-leader", "partition-kill-leader")
NOT_HA = ("server-restart",)                    # one server: --ha has kill-leader instead
SLOTS_PER_NODE = 64
MOUNT_GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV}   # its node was killed
# Self-tests: a deliberately broken build or run, and the verdict it must draw.
SELF_TESTS = {
    "no-gate": "(a)",            # gates let everything through (vclient/selftest.py)
    "no-lease": "(a)",           # gates ignore lease deadlines (isolate-server, --hosts)
    "no-watchdog": "(a)",        # a stalled write lands on a takeover
    "lost-ack": "(b)",           # an acknowledged slot zeroed on one plex after the run
    "split-brain": "(c)",        # losers never eject themselves
    "dead-writer": "(d)",        # a node's writer killed mid-trial
}


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
        self.takeover_logs: list[Path] = []
        self.fresh_takeovers: list[Path] = []        # taken over, lost node not back yet
        self.server_cuts: list[tuple[int, float, float]] = []   # (node, cut, healed)
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.applied: list[str] = []
        self.writes = self.acked = self.takeovers = 0
        # Every cluster event any status call showed, per node: a killed node's
        # history dies with its process, so it is collected as the trial goes.
        self.events: dict[str, dict[str, dict]] = {n: {} for n in self.nodes}
        self.env = dict(ENV)
        breaks = {"no-gate": "no-gate", "no-lease": "no-lease", "split-brain": "never-eject"}
        if args.self_test in breaks:
            self.env[selftest.SWITCH] = selftest.value(breaks[args.self_test])

    # -- plumbing -----------------------------------------------------------------------
    def sh(self, *cmd: str, timeout: float = 120, check: bool = True) -> str:
        cp = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                            env=self.env)
        if check and cp.returncode != 0:
            raise TrialFailed(f"{' '.join(map(str, cmd[:3]))}...: {cp.stderr.strip()[-300:]}")
        return cp.stdout

    def fault(self, name: str, *args: str, check: bool = True) -> None:
        self.sh(TOOLS / "fault" / name, *args, "--dir", self.dir, check=check)

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

    # -- losing a node, taking its data over, getting it back --------------------------------------
    def resolution(self):
        """(members, states) once a loss is resolved: every node a member, ejected,
        dead (killed by its watchdog or the fault) or silent (stopped, stalled),
        some not a member, and every member listing exactly the members; else None."""
        st = self.status()
        states = {n: self.cluster_of(st, n).get("state")
                  or ("silent" if "error" in (st.get(n) or {}) else "dead") for n in self.nodes}
        if any(s not in ("member", "ejected", "dead", "silent") for s in states.values()):
            return None
        members = sorted((n for n, s in states.items() if s == "member"), key=int)
        if not members or len(members) == len(self.nodes):
            return None
        want = sorted(int(n) for n in members)
        if any(self.cluster_of(st, n).get("members") != want for n in members):
            return None
        return members, states

    def told_fenced(self, nodes: set[int], t0: float) -> bool:
        """Has a survivor been told, since ``t0``, that every one of ``nodes`` is fenced?"""
        self.status()
        told = {v for seen in self.events.values() for ev in seen.values()
                if ev["event"] == "fenced" and ev["at"] >= t0 for v in ev["victims"]}
        return nodes <= told

    def lose(self, t0: float, what: str, sides: tuple[list[str], list[str]] | None = None) -> None:
        """After a fault at ``t0``: wait until the loss is resolved ((c) for a
        partition), until a survivor was told every lost node is fenced, then take
        the lost nodes' slots over; then heal, bring everything back and rejoin."""
        try:
            members, states = self.wait(self.resolution, 40, f"{what} to resolve")
        except TrialFailed as exc:
            self.violations.append(f"(c) {what}: {exc}")
            return
        lost = [n for n in self.nodes if n not in members]
        if sides is not None:
            a, b = sides
            if not (set(members) <= set(a) or set(members) <= set(b)):
                self.violations.append(f"(c) {what}: members {members} span both sides {a}|{b}")
        kept = ",".join(members)
        self.notes.append(f"{what}: kept {kept}; lost " + ", ".join(f"{n} ({states[n]})" for n in lost))
        self.wait(lambda: self.told_fenced({int(n) for n in lost}, t0), 40,
                  f"the survivors to be told nodes {lost} are fenced")
        self.check_on_disk_membership(members, lost, what)
        self.fresh_takeovers = [self.take_over(n, members[0]) for n in lost]

    def vctl_json(self, *args: str):
        st = self.state["server"]
        return json.loads(self.sh(VENV_BIN / "vctl", "--server", st["address"], "--key-file",
                                  st["key_file"], *args, "--json"))

    def check_on_disk_membership(self, members: list[str], lost: list[str], what: str) -> None:
        """(c) from what the nodes cannot misreport: the coordinator lists exactly the
        survivors, and no disk still honours a lost node's registration."""
        listed = self.vctl_json("coord", "show", "dg/coord")["membership"]["members"]
        if sorted(listed) != sorted(int(n) for n in members):
            self.violations.append(f"(c) {what}: the coordinator lists {sorted(listed)}, the "
                                   f"surviving nodes say {members}")
        for d in self.vctl_json("pr", "read-keys"):
            still = sorted({k["node"] for k in d["keys"] if k["owner"].startswith("node")
                            and str(k["node"]) in lost})
            if still:
                self.violations.append(f"(c) {what}: disk {d['disk']} still honours the keys of "
                                       f"fenced nodes {still}")

    def take_over(self, lost: str, survivor: str) -> Path:
        """``survivor`` rewrites every slot of ``lost`` once and fsyncs."""
        node = self.state["nodes"][survivor]
        base = (int(lost) - 1) * SLOTS_PER_NODE
        log = self.dir / f"takeover-{lost}-by-{survivor}-{len(self.takeover_logs)}.log"
        self.takeover_logs.append(log)
        cp = subprocess.run([sys.executable, str(TOOLS / "writer.py"), "--file", node["file"],
                             "--node", survivor, "--slots", f"{base}-{base + SLOTS_PER_NODE - 1}",
                             "--log", str(log), "--control", node["control"], "--once"],
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise TrialFailed(f"node {survivor} could not take node {lost}'s slots over: "
                              f"{cp.stderr.strip()[-300:]}")
        self.takeovers += 1
        return log

    def restore(self) -> None:
        """Heal; once every node that is still alive answers again (a write it held
        has gone out by then), check the slots just taken over; restart dead nodes
        (new writer), rejoin ejected ones."""
        self.fault("heal")

        def settled():
            st = self.status()
            return all(self.cluster_of(st, n).get("state") or not alive(self.state["nodes"][n].get("pid"))
                       for n in self.nodes)

        self.wait(settled, 40, "every node to answer or be gone")
        if self.fresh_takeovers:
            writes = [w for w in self.writes_logged(self.fresh_takeovers) if w.takeover]
            self.violations += takeovers_intact(self.read_plexes(), writes, self.owner)
            self.fresh_takeovers = []
        for n in self.nodes:
            if not alive(self.state["nodes"][n].get("pid")):
                for w in self.writers[n]:
                    w.stop(timeout=5)
                self.sh(TOOLS / "cluster", "start-node", n, "--dir", self.dir, timeout=90)
                self.start_writer(n)
        st = self.status()
        for n in self.nodes:
            if self.cluster_of(st, n).get("state") != "member":
                self.sh(VENV_BIN / "vclient", "join", "--control", self.state["nodes"][n]["control"],
                        timeout=60)
        self.wait(self.all_members, 40, "every node to be a member again")

    # -- nemesis ------------------------------------------------------------------------------
    def split(self) -> tuple[list[str], list[str]]:
        nodes = list(self.nodes)
        self.rnd.shuffle(nodes)
        k = self.rnd.randint(1, len(nodes) - 1)
        return sorted(nodes[:k], key=int), sorted(nodes[k:], key=int)

    def apply(self, fault: str) -> None:
        self.applied.append(fault)
        t0 = time.time()
        if fault == "partition":
            a, b = self.split()
            self.fault("partition", ",".join(a), ",".join(b))
            self.lose(t0, f"partition {','.join(a)}|{','.join(b)}", (a, b))
        elif fault == "partition-pause-racer":
            a, b = self.split()
            racer = min(a, key=int)
            self.fault("partition", ",".join(a), ",".join(b))
            time.sleep(self.rnd.uniform(1.0, 1.8))         # around detection and race
            self.fault("pause", racer)
            time.sleep(self.rnd.uniform(2.0, 4.0))
            self.fault("resume", racer, check=False)        # its watchdog may have killed it
            self.lose(t0, f"partition {','.join(a)}|{','.join(b)} with racer {racer} paused", (a, b))
        elif fault == "pause":
            # The survivors fence it and take its data over while it is frozen (its
            # watchdog kills it first); then it wakes, as a paused VM would.
            n = self.rnd.choice(self.nodes)
            self.fault("pause", n)
            self.lose(t0, f"node {n} paused")
            self.fault("resume", n, check=False)
        elif fault == "stall":
            n = self.rnd.choice(self.nodes)
            # Longer than a fence plus a takeover: without a watchdog the held write
            # would land on the survivor's data. The self-test stalls longer still, so
            # that the takeover comes first even on a loaded machine.
            seconds = self.rnd.uniform(8.0, 12.0) + (15 if self.args.self_test == "no-watchdog" else 0)
            self.fault("stall", n, "--seconds", f"{seconds:.1f}")
            self.lose(t0, f"node {n} stalled after its gate admitted a write")
        elif fault == "isolate":
            n = self.rnd.choice(self.nodes)
            self.fault("isolate", n, "--peers")
            self.lose(t0, f"node {n} cut off from the server and its peers")
            self.server_cuts.append((int(n), t0, time.time()))      # restore() heals after
        elif fault == "isolate-server":
            # Its peers still hear it, so nobody fences it: only its lease stops it.
            n = self.rnd.choice(self.nodes)
            self.fault("isolate", n)
            time.sleep(self.rnd.uniform(6.0, 9.0))        # past its lease
            # The window ends when the heal starts: the node may legitimately
            # re-attach and write while the heal command is still returning.
            self.server_cuts.append((int(n), t0, time.time()))
            self.fault("heal")
            self.notes.append(f"node {n} cut off from the server for {time.time() - t0:.1f}s")
            self.wait(self.all_members, 40, f"node {n} to be back")
            return
        elif fault == "kill":
            n = self.rnd.choice(self.nodes)
            self.status()                      # keep the history the kill will erase
            self.fault("kill-node", n)
            self.lose(t0, f"node {n} killed")
        elif fault == "kill-leader":
            self.fault("kill-leader", "--restart")
            self.notes.append("leader killed (-9) and restarted as a standby")
            self.wait(self.all_members, 30, "the nodes after the leader's kill")
            return
        elif fault == "partition-etcd":
            self.fault("partition-etcd")
            time.sleep(self.rnd.uniform(3.0, 6.0))        # past the etcd lease: a new leader
            self.fault("heal")
            self.notes.append(f"leader cut off from etcd for {time.time() - t0:.1f}s")
            self.wait(self.all_members, 30, "the nodes after the etcd cut")
            return
        elif fault == "pause-leader":
            pid = self.vctl_json("status")["server"]["pid"]
            os.kill(pid, signal.SIGSTOP)
            time.sleep(self.rnd.uniform(3.0, 6.0))
            os.kill(pid, signal.SIGCONT)
            self.notes.append(f"leader (pid {pid}) frozen for {time.time() - t0:.1f}s")
            self.wait(self.all_members, 30, "the nodes after the leader's freeze")
            return
        elif fault == "partition-kill-leader":
            a, b = self.split()
            self.fault("partition", ",".join(a), ",".join(b))
            time.sleep(self.rnd.uniform(0.0, 1.5))          # before, during or after the race
            self.fault("kill-leader", "--restart")
            self.lose(t0, f"partition {','.join(a)}|{','.join(b)} with the leader killed", (a, b))
        elif fault == "server-restart":
            self.fault("restart-server", "--kill", "--down-for", f"{self.rnd.uniform(0.2, 2.0):.2f}")
            self.notes.append("server killed and restarted")
            self.wait(self.all_members, 20, "the nodes after the server restart")
            return
        else:
            raise ValueError(fault)
        self.restore()

    # -- the trial ------------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.monotonic()
        faults = [self.rnd.choice(self.args.faults) for _ in range(self.rnd.randint(1, self.args.max_faults))]
        try:
            self.sh(TOOLS / "cluster", "up", str(self.args.nodes), "--dir", self.dir, "--quiet",
                    "--pause-timeout", "5", *(["--hosts"] if self.args.hosts else []),
                    *(["--ha"] if self.args.ha else []),
                    *(["--node-arg=--watchdog", "--node-arg=off"]
                      if self.args.self_test == "no-watchdog" else []), timeout=180)
            self.wait(self.all_members, 40, "the cluster to form")
            for n in self.nodes:
                self.start_writer(n)
            time.sleep(1.0)
            if self.args.self_test == "dead-writer":
                self.writers[self.nodes[0]][-1].proc.kill()
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
                "writes": self.writes, "acked": self.acked, "takeovers": self.takeovers,
                "watchdog_kills": self.watchdog_kills()}

    def watchdog_kills(self) -> int:
        return sum(log.read_text(errors="replace").count("watchdog: killing vclient")
                   for log in self.dir.glob("node*.log"))

    def finish(self) -> None:
        try:
            status = self.status() if (self.dir / "cluster.json").exists() else {}
        except (TrialFailed, subprocess.TimeoutExpired):
            status = {}
        for n, ws in self.writers.items():          # (d): the current writers still run
            if ws and ws[-1].proc.poll() is not None:
                err = ws[-1].proc.stderr.read().decode(errors="replace").strip().splitlines()
                self.violations.append(f"(d) node {n}'s writer died (exit status "
                                       f"{ws[-1].proc.returncode})" + (f": {err[-1]}" if err else ""))
        for ws in self.writers.values():
            for w in ws:
                w.stop(timeout=5)
        try:
            if (self.dir / "cluster.json").exists():
                self.check_health(status)
                if self.args.self_test == "lost-ack":
                    self.lose_an_acknowledged_write()
                try:
                    self.check_records()
                except (TrialFailed, subprocess.TimeoutExpired) as exc:
                    self.violations.append(f"(d) the records could not be checked: {exc}")
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
            if not alive(node.get("pid")):
                self.violations.append(f"(d) node {n} is not running")
            try:
                os.stat(node["mount"])
            except OSError as exc:
                self.violations.append(f"(d) node {n}'s mount is broken: {exc.strerror}")
        if st.get("ha"):
            for k, srv in enumerate(st["ha"]["servers"]):
                if not alive(srv.get("pid")):
                    self.violations.append(f"(d) server {k + 1} is not running")
            try:
                self.vctl_json("status")
            except TrialFailed as exc:
                self.violations.append(f"(d) no server leads at the end: {exc}")
        elif not alive(st["server"].get("pid")):
            self.violations.append("(d) the server is not running")
        for log in list(self.dir.glob("node*.log")) + list(self.dir.glob("vserver*.log")):
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Traceback" in text or "internal error" in text:
                self.violations.append(f"(d) {log.name} has a traceback")
        for n, ws in self.writers.items():
            if not any(e[3] == "ok" for w in ws for e in w.entries()):
                self.violations.append(f"(d) node {n}'s writers wrote nothing")
            for w in ws:
                for t, _, _, _, err in w.fsync_errors():
                    if err not in MOUNT_GONE:
                        self.violations.append(f"(d) node {n}'s writer: fsync failed with errno {err} "
                                               f"({os.strerror(err)}) while its mount was up")

    def lose_an_acknowledged_write(self) -> None:
        """Self-test: zero, on plex 0's disk, the slot of the last acknowledged write."""
        acked = [w for w in self.writes_logged() if w.acked is not None and not w.takeover]
        slot = max(acked, key=lambda w: w.acked).slot
        emap = extent_map_from_show(self.vctl_json("vol", "show", "dg/data"))
        for disk, doff, _, n in emap.plexes[0].segments(slot * BLOCK, BLOCK):
            fd = directio.open_direct(emap.disks[disk].path)
            try:
                directio.write_range(fd, doff, bytes(n), 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.notes.append(f"self-test: zeroed slot {slot} on plex 0")

    def group_extents(self) -> dict[str, list[tuple[str, int, int]]]:
        """Every volume of the group, as the server describes it: its subdisks."""
        out = {}
        for v in self.vctl_json("vol", "list"):
            show = self.vctl_json("vol", "show", v["name"])
            out[v["name"]] = [(sd["disk_id"], sd["disk_offset"], sd["length"])
                              for p in show["plexes"] for c in p["columns"] for sd in c["subdisks"]]
        return out

    def read_plexes(self) -> list[dict[int, Record | None]]:
        """Every slot of dg/data, per plex, read from the images with direct I/O."""
        emap = extent_map_from_show(self.vctl_json("vol", "show", "dg/data"))
        fds = {i: directio.open_direct(d.path, os.O_RDONLY) for i, d in enumerate(emap.disks)}
        try:
            out = []
            for plex in emap.plexes:
                slots = {}
                for s in range(len(self.nodes) * SLOTS_PER_NODE):
                    buf = bytearray(BLOCK)
                    for disk, doff, boff, n in plex.segments(s * BLOCK, BLOCK):
                        buf[boff:boff + n] = directio.read_range(fds[disk], doff, n, 4096)
                    rec = decode(bytes(buf))
                    slots[s] = rec and Record(rec["node"], rec["seq"], rec["time"])
                out.append(slots)
            return out
        finally:
            for fd in fds.values():
                os.close(fd)

    def history(self) -> History:
        """When was which incarnation of each node fenced (a survivor told), and with
        which incarnation did each node (re)join, when?"""
        h = History()
        for n, seen in self.events.items():
            for ev in seen.values():
                if ev["event"] == "fenced":
                    incs = ev.get("incarnations", {})
                    for v in ev["victims"]:
                        h.fenced.setdefault(v, []).append((ev["at"], int(incs.get(str(v), 0xFFFFFFFF))))
                if ev["event"] == "joined":
                    h.joined.setdefault(int(n), []).append((ev["at"], int(ev.get("incarnation", 0))))
        return h

    @staticmethod
    def owner(slot: int) -> int:
        return slot // SLOTS_PER_NODE + 1

    def writes_logged(self, takeover_logs: list[Path] | None = None) -> list[Write]:
        """Every write logged (only those of ``takeover_logs`` when given)."""
        if takeover_logs is None:
            logs = [(int(n), w.log, False) for n, ws in self.writers.items() for w in ws]
            takeover_logs = self.takeover_logs
        else:
            logs = []
        logs += [(int(p.name.split("-")[3]), p, True) for p in takeover_logs]
        out = []
        for node, log, takeover in logs:
            entries = parse_writer_log(log)
            issued = {seq: extra for _, seq, _, what, extra in entries if what == "ok"}
            acked = {seq: t for t, seq, _, what, _ in entries if what == "acked"}
            for t, seq, slot, what, extra in entries:
                if what in ("ok", "err"):
                    ok = what == "ok"
                    out.append(Write(node, seq, slot, extra if ok else t, ok,
                                     acked.get(seq) if seq in issued else None, takeover, t))
        return out

    def check_records(self) -> None:
        writes = self.writes_logged()
        self.writes = sum(1 for w in writes if not w.takeover)
        self.acked = sum(1 for w in writes if w.acked is not None)
        self.violations += judge(self.history(), writes, self.read_plexes(), self.owner)
        self.violations += extents_allocated_once(self.group_extents(), ondisk.PRIVATE_SIZE)
        if self.server_cuts:
            lease = self.vctl_json("status")["server"]["lease"]["duration"]
            self.violations += writes_without_a_lease(writes, self.server_cuts, lease)
        self.violations = summarize(self.violations)




def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--first-trial", type=int, default=1, help="start numbering here (replay one trial)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--max-faults", type=int, default=2, help="faults per trial (1 to this)")
    ap.add_argument("--faults", help=f"comma-separated subset of {', '.join(FAULTS)} (default: "
                                      f"all; {', '.join(HOSTS_ONLY)} only with --hosts)")
    ap.add_argument("--hosts", action="store_true",
                    help="run every trial on the hosts test bed (tools/cluster up --hosts)")
    ap.add_argument("--ha", action="store_true",
                    help="an HA control plane (3 etcd members, 2 servers) and leader faults")
    ap.add_argument("--dir", default=str(ROOT / "check-runs"), help="where trials run")
    ap.add_argument("--keep", action="store_true", help="keep every trial's directory")
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    ap.add_argument("--self-test", choices=sorted(SELF_TESTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    explicit = args.faults is not None
    args.faults = [f for f in (args.faults or ",".join(FAULTS)).split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        ap.error(f"unknown faults {sorted(unknown)}")
    if not args.hosts:
        if explicit and set(args.faults) & set(HOSTS_ONLY):
            ap.error(f"faults {', '.join(HOSTS_ONLY)} need --hosts")
        args.faults = [f for f in args.faults if f not in HOSTS_ONLY]
    if args.ha and args.hosts:
        ap.error("--ha does not combine with --hosts yet")
    drop = NOT_HA if args.ha else HA_ONLY
    if explicit and set(args.faults) & set(drop):
        ap.error(f"faults {', '.join(sorted(set(args.faults) & set(drop)))} "
                 + ("do not apply with --ha" if args.ha else "need --ha"))
    args.faults = [f for f in args.faults if f not in drop]
    if args.nodes < 2:
        ap.error("at least 2 nodes")
    base = Path(args.dir).resolve() / f"seed-{args.seed}"
    base.mkdir(parents=True, exist_ok=True)
    print(f"tools/check: seed {args.seed}, {args.trials} trials, {args.nodes} nodes"
          f"{' on separate hosts' if args.hosts else ''}{' with an HA control plane' if args.ha else ''}, faults {','.join(args.faults)}; runs in {base}")
    print(f"{'trial':>5}  {'result':9}  {'secs':>5}  {'writes':>6}  {'acked':>5}  {'takeovers':>9}  "
          f"{'wd kills':>8}  faults")
    results, failed = [], []
    stopping = []

    def stop(signum, frame):            # first signal: finish this trial; second: now
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        print(f"{'':>7}  {signal.Signals(signum).name}: stopping after this trial "
              "(again to stop at once; the cluster is taken down either way)", flush=True)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i in range(args.first_trial, args.first_trial + args.trials):
        if stopping:
            break
        trial = Trial(i, args.seed, args, base)
        res = trial.run()
        results.append(res)
        ok = not res["violations"]
        print(f"{i:>5}  {'ok' if ok else 'VIOLATION':9}  {res['seconds']:>5.0f}  {res['writes']:>6}  "
              f"{res['acked']:>5}  {res['takeovers']:>9}  {res['watchdog_kills']:>8}  "
              f"{', '.join(res['faults'])}", flush=True)
        for note in res["notes"]:
            print(f"{'':>7}- {note}")
        for v in res["violations"]:
            print(f"{'':>7}! {v}")
        if ok and not args.keep:
            shutil.rmtree(trial.dir, ignore_errors=True)
        if not ok:
            failed.append(i)
            print(f"{'':>7}  kept {trial.dir}; replay: tools/check --seed {args.seed} "
                  f"--first-trial {i} --trials 1 --nodes {args.nodes} --faults {','.join(args.faults)}"
                  + (" --hosts" if args.hosts else "") + (" --ha" if args.ha else ""))
    writes = sum(r["writes"] for r in results)
    acked = sum(r["acked"] for r in results)
    takeovers = sum(r["takeovers"] for r in results)
    kills = sum(r["watchdog_kills"] for r in results)
    if stopping:
        print(f"\nstopped by {signal.Signals(stopping[0]).name} after {len(results)} of {args.trials} trials")
    print(f"\nsummary: {len(results) - len(failed)}/{len(results)} trials passed, {writes} writes, "
          f"{acked} acknowledged records checked, {takeovers} takeovers, {kills} watchdog kills"
          + (f"; FAILED trials {failed}" if failed else ""))
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else (130 if stopping else 0)


if __name__ == "__main__":
    sys.exit(main())
