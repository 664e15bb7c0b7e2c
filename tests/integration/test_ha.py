"""The HA control plane on etcd (issue 12): 3 etcd members, 2 servers, 3 nodes.

* kill -9 the leader under fio: the standby is elected, loads the delegation
  table from etcd, the nodes reclaim their delegations from it; fio sees no error.
* cut the leader off from etcd: it stops answering (granting, renewing) before
  the standby answers its first request; the nodes move over without an I/O
  error; once healed, the old leader starts over as a standby.
* freeze the leader (SIGSTOP) past its etcd lease, and wake it: it refuses
  everything and starts over as a standby; the nodes stay with the new leader.
"""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import trio
from fencevol import auth
from fencevol.errors import NotLeader, Unavailable
from fencevol.rpc import open_client, parse_address
from testbed.ha import HaControlPlane
from testbed.processes import Client, vctl, wait_for

pytestmark = pytest.mark.integration

NODES = (1, 2, 3)


@pytest.fixture
def ha(tmp_path):
    plane = HaControlPlane(tmp_path / "ha", servers=2, members=3)
    nodes: dict[int, Client] = {}
    runs: list[subprocess.Popen] = []           # fio processes: none outlives the test
    try:
        plane.start()
        for p in ("d1", "d2"):
            img = tmp_path / f"{p}.img"
            vctl(plane, "disk", "init", str(img), "--size", "96M")
        vctl(plane, "dg", "create", "dg", str(tmp_path / "d1.img"), str(tmp_path / "d2.img"))
        for i in NODES:
            vctl(plane, "vol", "create", "dg", f"v{i}", "24M")
        for i in NODES:
            nodes[i] = Client(plane, i, tmp_path, f"dg/v{i}").start()
        yield plane, nodes, runs
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for c in nodes.values():
            c.stop()
        plane.stop()


def fio(runs: list, path, runtime: float) -> subprocess.Popen:
    runs.append(subprocess.Popen(
        ["fio", "--name=ha", f"--filename={path}", "--rw=randrw", "--bs=4k", "--size=16M",
         "--ioengine=psync", "--direct=1", "--time_based", f"--runtime={runtime}",
         "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return runs[-1]


def writing(nodes: dict[int, Client]) -> bool:
    """Has fio written a MiB through every node's mount yet?"""
    return all(nodes[i].volume_status(f"dg/v{i}")["bytes_written"] >= 1 << 20 for i in NODES)


def fio_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return {"error": job["error"], "ios": job["read"]["total_ios"] + job["write"]["total_ios"]}


def all_reclaimed(plane: HaControlPlane, k: int) -> bool:
    st = plane.status(k)
    if not st:
        return False
    atts = st["attachments"]
    return (len(atts) == len(NODES)
            and all(a["state"] == "active" and a["connected"] for a in atts))


@pytest.mark.timeout(180)
def test_leader_kill_under_fio_is_invisible_to_io(ha):
    plane, nodes, procs = ha
    runs = {i: fio(procs, nodes[i].path(f"dg/v{i}"), 14) for i in NODES}
    wait_for(lambda: writing(nodes), 30, "fio writing on every node")
    old, killed_at = plane.kill_leader()
    # vctl given both servers waits out the election instead of failing on it.
    st = json.loads(vctl(plane, "status", "--json").stdout)
    assert st["server"]["listen"] != plane.addresses[old] and st["server"]["ha"]["epoch"] > 0
    new = plane.wait_leader(30, other_than=old)
    wait_for(lambda: all_reclaimed(plane, new), 30, "every delegation reclaimed from the new leader")
    failover = time.monotonic() - killed_at
    results = {i: fio_result(p) for i, p in runs.items()}
    print(f"failover: leader kill -9 -> all 3 delegations renewed by the new leader in "
          f"{failover:.2f}s; fio {results}")
    for i, r in results.items():
        assert r["error"] == 0 and r["ios"] > 100, (i, r)
    st = plane.status(new)
    assert st["server"]["ha"]["epoch"] > 0
    # The new leader took the group over: a configuration generation jump on disk.
    assert st["groups"][0]["generation"] > 1 << 20
    # Nobody wrote through a lapsed lease: the gates only paused.
    for c in nodes.values():
        assert "EIO" not in c.log_text()


class Prober:
    """Pings one server every 10 ms over one admin connection (reconnecting when
    it breaks), recording each answered ping as (sent, answered) on this clock:
    the server's leadership check ran between the two."""

    def __init__(self, plane: HaControlPlane, k: int):
        self.address = parse_address(plane.addresses[k])
        self.key = auth.load_key_file(plane.key_file)
        self.answered: list[tuple[float, float]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._run,), daemon=True)
        self._thread.start()

    async def _run(self):
        while not self._stop.is_set():
            try:
                async with open_client(self.address, self.key, "admin") as client:
                    while not self._stop.is_set():
                        sent = time.monotonic()
                        try:
                            with trio.fail_after(1):
                                await client.call("ping", {})
                            self.answered.append((sent, time.monotonic()))
                        except NotLeader:
                            self.refused += 1
                        await trio.sleep(0.01)
            except (Unavailable, trio.TooSlowError):
                await trio.sleep(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(180)
def test_leader_cut_off_from_etcd_stops_before_the_other_starts(ha):
    plane, nodes, procs = ha
    old = plane.leader()
    other = 1 - old
    runs = {i: fio(procs, nodes[i].path(f"dg/v{i}"), 14) for i in NODES}
    probes = {old: Prober(plane, old), other: Prober(plane, other)}
    try:
        wait_for(lambda: writing(nodes) and probes[old].answered, 30, "fio writing, the leader answering")
        cut_at = time.monotonic()
        plane.cut_from_etcd(old)
        plane.wait_leader(30, other_than=old)
        wait_for(lambda: all_reclaimed(plane, other), 30, "delegations reclaimed by the new leader")
    finally:
        for p in probes.values():
            p.stop()
    results = {i: fio_result(p) for i, p in runs.items()}
    old_last = max(answered for _, answered in probes[old].answered)
    new_first = min(sent for sent, _ in probes[other].answered)
    print(f"cut at 0; old leader answered last at {old_last - cut_at:+.2f}s, "
          f"new leader first at {new_first - cut_at:+.2f}s; fio {results}")
    assert old_last < new_first
    assert probes[old].refused > 0, "the cut-off leader never refused"
    for i, r in results.items():
        assert r["error"] == 0 and r["ios"] > 100, (i, r)
    # Healed: the old leader learns its lease is gone and starts over as a standby.
    plane.heal()
    wait_for(lambda: "starting over as a standby" in plane.servers[old].log_text(), 30,
             "the deposed leader to start over")
    assert plane.servers[old].proc.poll() is None
    assert plane.leader() == other


@pytest.mark.timeout(180)
def test_frozen_leader_wakes_deposed(ha):
    plane, nodes, _ = ha
    old = plane.leader()
    pid = plane.servers[old].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        new = plane.wait_leader(30, other_than=old)
        wait_for(lambda: all_reclaimed(plane, new), 30, "delegations reclaimed by the new leader")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "starting over as a standby" in plane.servers[old].log_text(), 30,
             "the woken leader to start over")
    assert plane.status(old) is None                     # it answers nothing as a leader
    assert plane.leader() == new
    # Every node still writes, through the new leader's delegations.
    for i in NODES:
        with open(nodes[i].path(f"dg/v{i}"), "r+b") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())
    log = plane.servers[old].log_text()
    assert "leadership lost" in log


@pytest.mark.timeout(120)
def test_a_standby_whose_etcd_lease_ran_out_starts_over_and_can_lead(tmp_path):
    """A standby cut off from etcd longer than its lease comes back with a new
    lease (it starts over), so it can still take over from the leader."""
    plane = HaControlPlane(tmp_path / "ha", servers=2, members=3)
    try:
        plane.start()
        leader = plane.leader()
        standby = 1 - leader
        plane.cut_from_etcd(standby)
        leases = lambda: plane.etcd.call("lease/leases", {}).get("leases", [])  # noqa: E731
        wait_for(lambda: len(leases()) == 1, 30, "the standby's etcd lease to run out")
        plane.heal()
        wait_for(lambda: "starting over as a standby" in plane.servers[standby].log_text(), 30,
                 "the standby to start over")
        wait_for(lambda: len(leases()) == 2, 30, "the standby's new etcd lease")
        plane.servers[leader].kill()
        assert plane.wait_leader(30) == standby
    finally:
        plane.stop()
