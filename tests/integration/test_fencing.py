"""Split brain with real processes: partitions are nftables drops on the nodes'
heartbeat ports, hangs are SIGSTOP. Patent Figures 9 (failover) and 10 (parallel)."""

import errno
import os
import signal
import subprocess
import time

import pytest
from testbed.cluster import Cluster, partition_resolved
from testbed.processes import Client, stall, vctl, vctl_json, wait_for
from testbed.records import WriterProc
from writer import decode

pytestmark = [pytest.mark.integration, pytest.mark.fuse, pytest.mark.nft]

BLOCK = 4096


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(n, **kw):
        c = Cluster(tmp_path, n, **kw)
        c.writers = []
        c.others = []                    # extra processes: stopped like the writers
        made.append(c)
        return c.setup()

    try:
        yield make
    finally:
        for c in made:
            c.stop()                     # continues and stops the nodes: blocked writers wake
            for w in c.writers + c.others:
                w.stop()


def writer(cluster, node, slots, **kw):
    """A writer process on ``node``'s mount of dg/data, owning ``slots``."""
    c = cluster.nodes[node]
    w = WriterProc(c.path("dg/data"), node, slots, cluster.workdir / f"writer-{node}.log",
                   control=c.control, **kw)
    cluster.writers.append(w)
    return w


def states(cluster, nodes):
    return {i: cluster.cluster_state(i)["state"] for i in nodes}


def members_are(cluster, nodes, timeout: float = 20):
    """Wait until every node of ``nodes`` sees exactly ``nodes`` as the members."""
    want = sorted(nodes)
    wait_for(lambda: all(cluster.cluster_state(i)["members"] == want for i in want), timeout,
             f"members {want}")


def start_members(cluster, nodes, *attach):
    """Start ``nodes`` (attaching ``attach``) and wait until they are the members."""
    for i in nodes:
        cluster.start(i, *attach)
    members_are(cluster, nodes)


def resolved(cluster, nodes):
    """The nodes' cluster states once the partition is resolved (else None)."""
    st = {i: cluster.cluster_state(i) for i in nodes}
    return st if partition_resolved(st) else None


def node_keys(cluster) -> dict[int, set[str]]:
    """Registered keys per node, over every disk (`vctl pr read-keys`)."""
    out: dict[int, set[str]] = {}
    for d in vctl_json(cluster.server, "pr", "read-keys"):
        for k in d["keys"]:
            if k["owner"].startswith("node"):
                out.setdefault(k["node"], set()).add(k["key"])
    return out


def records_on_disk(cluster, slots) -> list[dict]:
    """The writer records found in ``slots`` of dg/data, on every plex."""
    size = max(slots) + 1
    return [rec for region in plex_regions(cluster, size) for s in slots
            if (rec := decode(region[s * BLOCK:(s + 1) * BLOCK]))]


def test_parallel_figure10(make_cluster):
    c = make_cluster(4)
    start_members(c, range(1, 5), "dg/data")
    keys_before = node_keys(c)
    writers = {i: writer(c, i, f"{i * 100}-{i * 100 + 49}") for i in range(1, 5)}
    wait_for(lambda: all(w.entries() for w in writers.values()), 10, "writers to start")
    c.partition([1, 2], [3, 4])
    st = wait_for(lambda: resolved(c, range(1, 5)), 30, "the partition to be resolved")
    members = sorted(i for i, s in st.items() if s["state"] == "member")
    assert members in ([1, 2], [3, 4]), st
    losers = sorted(set(range(1, 5)) - set(members))
    assert all(st[i]["state"] == "ejected" for i in losers)
    # When the survivors were told the losers are fenced (their fence events).
    told = wait_for(lambda: [c.cluster_state(i)["last_fence"] for i in members
                             if c.cluster_state(i)["last_fence"]], 30, "the fence events")
    t_fenced = min(f["at"] for f in told)
    wait_for(lambda: all(writers[i].oks_after(t_fenced + 0.5) for i in members), 10,
             "survivors to keep writing")
    wait_for(lambda: all(writers[i].errors_after(t_fenced) for i in losers), 10,
             "losers' writes to fail")
    for w in writers.values():
        w.stop()
    for i in losers:
        assert all(e[4] == errno.EIO for e in writers[i].errors_after(t_fenced))
        # No write a loser issued after the survivors were told succeeded...
        assert [e for e in writers[i].oks_after(t_fenced) if e[4] >= t_fenced] == []
        # ...or is on either plex.
        late = [r for r in records_on_disk(c, range(i * 100, i * 100 + 50)) if r["time"] >= t_fenced]
        assert late == [], late
    show = vctl_json(c.server, "coord", "show", "dg/coord")
    assert show["checksum_ok"] and show["membership"]["members"] == members
    assert set(node_keys(c)) == set(members)
    # The losers rejoin after the heal, with new keys (the old ones stay preempted).
    c.heal()
    for i in losers:
        info = subprocess.run([str(c.nodes[i].command()[0]), "join", "--control", c.nodes[i].control,
                               "--json"], capture_output=True, text=True, timeout=60)
        assert info.returncode == 0, info.stderr
    members_are(c, range(1, 5))
    keys_after = node_keys(c)
    for i in members:
        assert keys_after[i] == keys_before[i]
    preempted = {k for d in vctl_json(c.server, "pr", "read-keys") for k in d["preempted"]}
    for i in losers:
        assert keys_after[i] and keys_after[i].isdisjoint(keys_before[i]), (keys_before, keys_after)
        assert keys_before[i] <= preempted
        fd = os.open(c.nodes[i].path("dg/data"), os.O_RDWR)
        try:
            assert os.pwrite(fd, b"back", i * 100 * BLOCK) == 4
        finally:
            os.close(fd)


def takeover(node, slots: range, text: bytes = b"node=2 took over") -> None:
    """``node`` now owns the data: overwrite ``slots`` with its pattern, fsync."""
    fd = os.open(node.path("dg/data"), os.O_RDWR)
    try:
        for slot in slots:
            os.pwrite(fd, text.ljust(BLOCK, b"#"), slot * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


def plex_regions(cluster, slots: int) -> list[bytes]:
    """The first ``slots`` blocks of dg/data on every plex, read from the images."""
    out = []
    for plex in vctl_json(cluster.server, "vol", "show", "dg/data")["plexes"]:
        sd = plex["columns"][0]["subdisks"][0]
        fd = os.open(sd["path"], os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap
            buf = mmap.mmap(-1, slots * BLOCK)
            os.preadv(fd, [buf], sd["disk_offset"])
            out.append(bytes(buf))
        finally:
            os.close(fd)
    return out


def test_failover_figure9_standby_takes_over_after_fence(make_cluster):
    """Node 1 runs the application with an exclusive attach and hangs (SIGSTOP) as
    the network partitions. Its watchdog kills it within the no-progress budget,
    before the survivors are told; node 2 wins, the server cannot reach node 1, so
    the fence waits out its lease; only then may node 2 attach exclusively and take
    the data over. Not one block of node 1 lands afterwards, on either plex."""
    c = make_cluster(2)
    n1 = c.start(1, "dg/data:ex")
    n2 = c.start(2)
    wait_for(lambda: c.cluster_state(2)["members"] == [1, 2], 20, "both members")
    budget = n1.status()["watchdog"]["budget"]
    w = writer(c, 1, "0-63")
    wait_for(lambda: len(w.entries()) > 20, 10, "node 1 writing")
    rival = subprocess.run([str(n2.command()[0]), "attach", "dg/data", "--mode", "ex",
                            "--control", n2.control], capture_output=True, text=True, timeout=30)
    assert rival.returncode != 0 and "attached exclusive by node 1" in rival.stderr
    os.kill(n1.proc.pid, signal.SIGSTOP)
    t_stop = time.time()
    c.partition([1], [2])
    assert n1.proc.wait(10) == -signal.SIGKILL
    t_killed = time.time()
    assert "made no progress" in n1.log_text() and "is gone" in n1.log_text()
    st = wait_for(lambda: (lambda s: s["members"] == [2] and s["last_fence"] and s)(
        c.cluster_state(2)), 30, "node 2 to win and fence node 1")
    lease = vctl_json(c.server, "status")["server"]["lease"]
    # Killed within its budget, long before the fence could end.
    assert t_killed - t_stop < budget + 1.0
    assert st["last_fence"]["at"] > t_killed + lease["margin"]
    # The server could not reach node 1: the fence waited out its lease + margin.
    assert st["last_fence"]["lease_expired"] == [1] and st["last_fence"]["acknowledged"] == []
    assert st["last_fence"]["at"] - t_stop >= lease["duration"] + lease["margin"] - 1.5
    took = subprocess.run([str(n2.command()[0]), "attach", "dg/data", "--mode", "ex",
                           "--control", n2.control], capture_output=True, text=True, timeout=30)
    assert took.returncode == 0, took.stderr
    takeover(n2, range(64))
    t_told = time.time()
    wait_for(lambda: len(w.errors_after(t_told)) >= 3, 20, "node 1's writes to fail")
    w.stop()
    assert w.oks_after(t_told) == []
    for region in plex_regions(c, 64):
        assert region.count(b"node=2 took over") == 64   # no block of node 1 came back
    assert vctl_json(c.server, "coord", "show", "dg/coord")["membership"]["members"] == [2]


STALL = 15


@pytest.mark.parametrize("watchdog", ["on", "off"])
def test_write_stalled_after_admission_never_lands_after_the_takeover(make_cluster, watchdog):
    """The issue's case: node 2 writes records to its slots of a mirror; its agent
    stalls right after the gate admitted a write, before the write is issued
    (strace holds the submission). Node 1 wins, the fence completes when node 2's
    lease ran out, node 1 takes the slots over and fsyncs. With the watchdog, node
    2 is killed before the fence ends and its write never lands. With the
    watchdog off, the held write lands on top of node 1's data when the stall
    ends -- the failure this test exists to catch."""
    c = make_cluster(2, volumes=(("data", "32M", ("--layout", "mirror")),),
                     node_args=("--watchdog", watchdog))
    start_members(c, (1, 2), "dg/data")
    w = writer(c, 2, "0-63")
    wait_for(lambda: len(w.entries()) > 20, 10, "node 2 writing")
    n2 = c.nodes[2]
    tracer = stall(n2.proc.pid, STALL, c.workdir / "stall.log")
    t_stall = time.time()
    try:
        st = wait_for(lambda: (lambda s: s["members"] == [1] and s["last_fence"] and s)(
            c.cluster_state(1)), 30, "node 1 to win and fence node 2")
        takeover(c.nodes[1], range(64), b"node=1 took over")
        assert time.time() < t_stall + STALL, "the takeover must come before the stall ends"
        if watchdog == "on":
            assert n2.proc.wait(STALL) == -signal.SIGKILL    # it dies once strace lets go
            log = n2.log_text()
            assert "killing vclient node 2" in log and "made no progress" in log
            assert st["last_fence"]["at"] > t_stall
        else:
            # The stall ends and the held write goes out, on top of node 1's data.
            wait_for(lambda: any(decode(r[s * BLOCK:(s + 1) * BLOCK]) for r in plex_regions(c, 64)
                                 for s in range(64)), STALL + 10, "the held write to land")
    finally:
        tracer.terminate()
        tracer.wait(10)
    escaped = [(p, s) for p, r in enumerate(plex_regions(c, 64)) for s in range(64)
               if not r[s * BLOCK:(s + 1) * BLOCK].startswith(b"node=1 took over")]
    if watchdog == "on":
        assert escaped == [], f"node 2's writes landed after the takeover at {escaped}"
    else:
        assert escaped, "the unprotected stall should have let the held write through"


def test_gate_alone_refuses_a_frozen_node_that_wakes(make_cluster):
    """Defense in depth, with the watchdog off: node 1 is frozen, fenced and taken
    over; when it wakes, its lease has run out and the server refuses it, so its
    gate refuses every new write (only a write admitted before the freeze could
    still land: the watchdog's job)."""
    c = make_cluster(2, node_args=("--watchdog", "off"))
    n1 = c.start(1, "dg/data:ex")
    n2 = c.start(2)
    wait_for(lambda: c.cluster_state(2)["members"] == [1, 2], 20, "both members")
    assert n1.status()["watchdog"] == {"enabled": False}
    assert "watchdog off" in n1.log_text()
    w = writer(c, 1, "0-63")
    wait_for(lambda: len(w.entries()) > 20, 10, "node 1 writing")
    os.kill(n1.proc.pid, signal.SIGSTOP)
    c.partition([1], [2])
    wait_for(lambda: c.cluster_state(2)["last_fence"], 30, "node 2 to fence node 1")
    took = subprocess.run([str(n2.command()[0]), "attach", "dg/data", "--mode", "ex",
                           "--control", n2.control], capture_output=True, text=True, timeout=30)
    assert took.returncode == 0, took.stderr
    takeover(n2, range(64))
    t_told = time.time()
    os.kill(n1.proc.pid, signal.SIGCONT)
    wait_for(lambda: c.cluster_state(1)["state"] == "ejected", 20, "node 1 to eject itself")
    wait_for(lambda: len(w.errors_after(t_told)) >= 3, 20, "node 1's writes to fail")
    w.stop()
    assert all(e[4] == errno.EIO for e in w.errors_after(t_told))
    assert [e for e in w.oks_after(t_told) if e[4] >= t_told] == []   # none issued after it


def test_corrupt_coordinator_refuses_join(make_cluster, tmp_path):
    c = make_cluster(2)
    show = vctl_json(c.server, "vol", "show", "dg/coord")
    sd = show["plexes"][0]["columns"][0]["subdisks"][0]
    with open(sd["path"], "r+b") as f:
        f.seek(sd["disk_offset"] + 80)             # inside node 1's record
        b = f.read(1)
        f.seek(sd["disk_offset"] + 80)
        f.write(bytes([b[0] ^ 0x01]))
    with open(sd["path"], "rb") as f:
        f.seek(sd["disk_offset"])
        before = f.read(4096)
    r = vctl(c.server, "coord", "show", "dg/coord", check=False)
    assert r.returncode != 0 and "checksum BAD" in r.stdout and "checksum mismatch" in r.stdout
    n1 = c.client(1, "dg/data")
    n1.start(wait=False)
    assert n1.proc.wait(60) != 0
    assert "checksum mismatch" in n1.log_text()
    with open(sd["path"], "rb") as f:
        f.seek(sd["disk_offset"])
        assert f.read(4096) == before                # nothing overwritten
    assert vctl_json(c.server, "status")["attachments"] == []


@pytest.mark.parametrize("case", ["wrong cluster", "unknown node", "peer lists differ"])
def test_bad_cluster_configuration_refuses_join(make_cluster, case):
    """The misconfigured node exits with its reason and changes nothing: the
    coordinator keeps its generation, a running member is undisturbed."""
    c = make_cluster(2)
    if case == "peer lists differ":
        c.start(2)
        members_are(c, [2])
    generation = vctl_json(c.server, "coord", "show", "dg/coord")["membership"]["generation"]
    if case == "wrong cluster":
        args = [a if a != c.cluster_id else "othercluster" for a in c.node_command_args(1)]
        n = Client(c.server, 1, c.workdir, extra=tuple(args))
        message = "belongs to cluster"
    elif case == "unknown node":
        n = Client(c.server, 7, c.workdir, extra=tuple(c.node_command_args(1)))
        message = "no record"
    else:
        args = c.node_command_args(1) + ["--peer", "5=127.0.0.1:9"]
        n = Client(c.server, 1, c.workdir, extra=tuple(args))
        message = "different peer list"
    c.nodes[n.node_id] = n
    n.start(wait=False)
    assert n.proc.wait(60) != 0
    assert message in n.log_text(), n.log_text()[-2000:]
    m = vctl_json(c.server, "coord", "show", "dg/coord")["membership"]
    assert m["generation"] == generation and n.node_id not in m["members"]
    if case == "peer lists differ":
        st = c.cluster_state(2)
        assert st["state"] == "member" and st["members"] == [2] and st["races"] == 0, st
        assert st["generation"] == generation


def test_duplicate_node_id_is_refused(make_cluster):
    """A second process claiming node 2, from another address (as from another host):
    the server refuses its session while node 2's is alive, so it never reaches the
    coordinator, and node 2 is not disturbed."""
    c = make_cluster(2)
    start_members(c, (1, 2), "dg/data")
    generation = vctl_json(c.server, "coord", "show", "dg/coord")["membership"]["generation"]
    connects = c.nodes[2].status()["server"]["connects"]
    assert c.nodes[2].status()["server"]["credential"] == "node 2 credential"   # not the cluster key
    own = f"127.0.0.1:{c.ports[2][0]}"
    args = [f"127.0.0.5:{c.ports[2][0]}" if a == own else a for a in c.node_command_args(2)]
    (c.workdir / "dup").mkdir()
    n = Client(c.server, 2, c.workdir / "dup", "dg/data", extra=tuple(args))
    c.others.append(n)
    n.start(wait=False)
    wait_for(lambda: n.log_text().count("already connected") >= 2, 30, "the duplicate refused, twice")
    assert "node id 2 is already connected" in n.log_text()
    assert n.proc.poll() is None and not (c.workdir / "dup" / "mnt2" / "dg").exists()
    n.stop()
    for i in (1, 2):
        st = c.cluster_state(i)
        assert st["state"] == "member" and st["members"] == [1, 2] and st["races"] == 0, st
    assert c.nodes[2].status()["server"]["connects"] == connects
    m = vctl_json(c.server, "coord", "show", "dg/coord")["membership"]
    assert m["generation"] == generation


def test_graceful_leave_needs_no_fencing(make_cluster):
    c = make_cluster(3)
    start_members(c, (1, 2, 3), "dg/data")
    r = subprocess.run([str(c.nodes[3].command()[0]), "leave", "--control", c.nodes[3].control],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    c.nodes[3].stop()
    members_are(c, (1, 2), 10)
    timeout = c.cluster_state(1)["heartbeat"]["timeout"]

    def silent_for_a_timeout(i):            # node i stopped hearing node 3 a timeout ago
        age = next(p for p in c.cluster_state(i)["peers"] if p["node"] == 3)["last_heard"]
        return age is not None and age > 2 * timeout

    wait_for(lambda: all(silent_for_a_timeout(i) for i in (1, 2)), 20,
             "nodes 1 and 2 to have missed node 3 for two heartbeat timeouts")
    for i in (1, 2):
        st = c.cluster_state(i)
        assert st["state"] == "member" and st["races"] == 0
    keys = vctl_json(c.server, "pr", "read-keys")
    assert all(not d["preempted"] for d in keys)


def test_minority_racer_starts_late(make_cluster):
    """{1} | {2, 3}: node 1 is the lowest id but alone. Guaranteed: exactly one side
    keeps membership and the other ejects itself, and node 1 -- racing for a
    minority -- starts its race late while node 2 does not (that head start is why
    the larger side normally wins; who wins is timing, not a guarantee)."""
    c = make_cluster(3)
    start_members(c, (1, 2, 3), "dg/data")
    c.partition([1], [2, 3])
    st = wait_for(lambda: resolved(c, (1, 2, 3)), 30, "the partition to be resolved")
    members = [i for i, s in st.items() if s["state"] == "member"]
    assert members in ([1], [2, 3]), st
    assert all(s["state"] == "ejected" for i, s in st.items() if i not in members), st
    assert sum(s["races_won"] for s in st.values()) == 1
    assert "races for a minority (1 of 3 members)" in c.nodes[1].log_text()
    assert "races for a minority" not in c.nodes[2].log_text()


def test_server_refuses_a_fenced_nodes_remote_writes(make_cluster):
    """Node 2 reaches its disks only through the server, and its gate is broken
    (a self-test build: it admits every write). Frozen, it loses the race; woken
    after the fence, it keeps sending writes -- the server refuses every one (its
    delegation is gone, its key preempted), so none lands."""
    from vclient import selftest
    c = make_cluster(2)
    c.start(1, "dg/data")
    n2 = c.start(2, "dg/data", extra=("--remote-disk", "disk0", "--remote-disk", "disk1"),
                 env={selftest.SWITCH: selftest.value("no-gate")})
    members_are(c, [1, 2])
    assert all(d["access"] == "remote" for d in n2.volume_status("dg/data")["disks"])
    w = writer(c, 2, "0-63")
    wait_for(lambda: len(w.entries()) > 20, 10, "node 2 writing through the server")
    os.kill(n2.proc.pid, signal.SIGSTOP)
    c.partition([1], [2])
    st = wait_for(lambda: (lambda s: s["members"] == [1] and s["last_fence"] and s)(
        c.cluster_state(1)), 30, "node 1 to win and fence node 2")
    t_fenced = st["last_fence"]["at"]
    os.kill(n2.proc.pid, signal.SIGCONT)
    wait_for(lambda: len(w.errors_after(t_fenced)) >= 5, 20, "node 2's writes to be refused")
    w.stop()
    assert [e for e in w.oks_after(t_fenced) if e[4] >= t_fenced] == []
    assert [r for r in records_on_disk(c, range(64)) if r["time"] >= t_fenced] == []
    assert "SELF-TEST BREAK no-gate" in n2.log_text()


def test_one_way_cut_is_resolved_like_a_partition(make_cluster):
    """Node 1's heartbeats stop reaching nodes 2 and 3, while it still hears them:
    reachability needs both directions, so both sides see a partition and exactly
    one side keeps membership."""
    c = make_cluster(3)
    start_members(c, (1, 2, 3), "dg/data")
    c.nft.drop_from(c.ports[1], c.ports[2] + c.ports[3])
    st = wait_for(lambda: resolved(c, (1, 2, 3)), 30, "the one-way cut to be resolved")
    members = [i for i, s in st.items() if s["state"] == "member"]
    assert members in ([1], [2, 3]), st
    assert all(s["state"] == "ejected" for i, s in st.items() if i not in members), st
    show = vctl_json(c.server, "coord", "show", "dg/coord")
    assert show["membership"]["members"] == members


def test_coordinator_corrupted_during_a_race_stops_everyone(make_cluster):
    """{1, 2} | {3} and a byte of the coordinator flipped as the network splits: no
    racer can read a valid membership, so nobody wins -- every node ejects itself
    (no writes anywhere), and the damaged copy is left as evidence, never replaced."""
    c = make_cluster(3)
    start_members(c, (1, 2, 3), "dg/data")
    sd = vctl_json(c.server, "vol", "show", "dg/coord")["plexes"][0]["columns"][0]["subdisks"][0]
    c.partition([1, 2], [3])
    with open(sd["path"], "r+b") as f:
        f.seek(sd["disk_offset"] + 70)
        b = f.read(1)
        f.seek(sd["disk_offset"] + 70)
        f.write(bytes([b[0] ^ 0x10]))
        f.seek(sd["disk_offset"])
        damaged = f.read(4096)
    wait_for(lambda: all(c.cluster_state(i)["state"] == "ejected" for i in (1, 2, 3)), 40,
             "every node to eject itself")
    for i in (1, 3):
        assert "coordinator" in c.cluster_state(i)["reason"], c.cluster_state(i)
    r = vctl(c.server, "coord", "show", "dg/coord", check=False)
    assert r.returncode != 0 and "checksum BAD" in r.stdout
    with open(sd["path"], "rb") as f:
        f.seek(sd["disk_offset"])
        assert f.read(4096) == damaged


def test_saturated_data_path_keeps_heartbeats(make_cluster):
    """Four fio jobs keep node 1's FUSE loop busy for four heartbeat timeouts. The
    request loop must still yield to heartbeats, renewals and watchdog pings: no peer
    is lost, nobody races, the watchdog never came close to its budget, and the
    requests went through the fast wait (fuse_fs.fastwait)."""
    c = make_cluster(2)
    start_members(c, (1, 2), "dg/data")
    before = {i: c.cluster_state(i)["generation"] for i in (1, 2)}
    timeout = c.cluster_state(1)["heartbeat"]["timeout"]
    cp = subprocess.run(["fio", "--name=load", f"--filename={c.nodes[1].path('dg/data')}",
                         "--rw=randrw", "--bs=4k", "--numjobs=4", "--size=16M", "--direct=1",
                         "--ioengine=psync", "--time_based", f"--runtime={4 * timeout:.1f}",
                         "--group_reporting", "--output-format=terse"],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    for i in (1, 2):
        st = c.cluster_state(i)
        assert st["state"] == "member" and st["members"] == [1, 2], st
        assert st["generation"] == before[i] and st["races"] == 0, st
    status = c.nodes[1].status()
    fuse, wd = status["fuse"], status["watchdog"]
    assert fuse["loop"] == "fast" and fuse["fast_requests"] > 1000, fuse
    # The watchdog saw the busy agent keep pinging well within its budget.
    assert wd["state"] == "armed" and wd["worst_ping_gap"] < wd["budget"] / 2, wd
    assert "killing vclient" not in c.nodes[1].log_text()


def test_one_redundant_link_lost_is_not_a_partition(make_cluster):
    """Two heartbeat links per node (¶0003): losing one link changes nothing; losing
    both is a partition, resolved by the race."""
    c = make_cluster(2, links=2)
    start_members(c, (1, 2), "dg/data")
    generation = c.cluster_state(1)["generation"]
    c.nft.drop_between([c.ports[1][0]], [c.ports[2][0]])          # link 0 only
    timeout = c.cluster_state(1)["heartbeat"]["timeout"]

    def only_link_1_heard(i):
        silence = c.cluster_state(i)["peers"][0]["links"]     # link -> seconds since heard
        return silence.get("0", 0) > timeout and silence.get("1", 9) < timeout

    wait_for(lambda: all(only_link_1_heard(i) for i in (1, 2)), 20, "link 0 silent, link 1 alive")
    for i in (1, 2):
        st = c.cluster_state(i)
        assert st["state"] == "member" and st["members"] == [1, 2], st
        assert st["generation"] == generation and st["races"] == 0, st
    c.nft.drop_between([c.ports[1][1]], [c.ports[2][1]])          # and link 1
    st = wait_for(lambda: resolved(c, (1, 2)), 30, "the partition to be resolved")
    assert sorted(s["state"] for s in st.values()) == ["ejected", "member"]
