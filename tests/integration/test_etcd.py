"""etcd as a real component (issue 12): tools/etcd starts a 3-member cluster of
Debian's etcd-server on loopback, it keeps serving through one member's kill -9
(quorum 2 of 3) and stops serving writes without a quorum, and `down` leaves no
process and no data behind."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from testbed.etcd import EtcdCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_a_three_member_cluster_keeps_a_quorum_and_needs_one(tmp_path):
    cluster = EtcdCluster.create(tmp_path / "etcd", 3)
    try:
        cluster.start()
        cluster.put("/fencevol/test", "one")
        assert cluster.get("/fencevol/test") == "one"
        cluster.kill("m1")                                   # one member crashes
        cluster.put("/fencevol/test", "two")
        assert cluster.get("/fencevol/test") == "two"
        cluster.kill("m2")                                   # no quorum left
        with pytest.raises(RuntimeError):
            cluster.put("/fencevol/test", "three")
    finally:
        pids = [m.pid for m in cluster.members if m.pid]
        cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(Path(m.data_dir).exists() for m in cluster.members)


@pytest.mark.timeout(60)
def test_tools_etcd_up_status_down(tmp_path):
    run = lambda *a: subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/etcd.py"),
                                     *a, "--dir", str(tmp_path)], capture_output=True, text=True,
                                    timeout=40)
    try:
        up = run("up", "1", "--json")
        assert up.returncode == 0, up.stderr
        (endpoint,) = json.loads(up.stdout)["endpoints"]
        again = run("up", "1")
        assert again.returncode == 1 and "already up" in again.stderr
        status = run("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["m1"]["endpoint"] == endpoint
    finally:
        down = run("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert run("status").returncode == 1                     # nothing left to ask
