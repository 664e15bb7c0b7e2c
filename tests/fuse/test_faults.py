"""The client under faults: server stopped past the lease, unreachable disks,
bad attaches, a server that is not up yet, a backing disk that vanishes."""

import errno
import os
import signal
import subprocess
import time

import pytest
from conftest import extent_map
from testbed.processes import mounted, Server, vctl, vctl_json, wait_for
from testbed.records import read_backing

pytestmark = pytest.mark.fuse

SHORT_LEASE = ("--lease", "1.0", "--lease-margin", "0.5", "--lease-guard", "0.2")
SHORT_LEASE_SLACK = ("--watchdog-slack", "0.2")     # guard + margin - slack = 0.5 s budget


@pytest.fixture
def short_lease_server(tmp_path):
    srv = Server(tmp_path / "state", *SHORT_LEASE)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def write_at(path, off, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def read_at(path, off, n):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def image(path) -> bytes:
    """A backing image's bytes as on disk (the client writes around any cache)."""
    with open(path, "rb") as f:
        return f.read()


def test_server_stopped_past_lease(short_lease_server, tmp_path):
    from testbed.processes import Client
    srv = short_lease_server
    p = str(tmp_path / "d0.img")
    vctl(srv, "disk", "init", p, "--size", "64M")
    vctl(srv, "dg", "create", "dg1", p)
    vctl(srv, "vol", "create", "dg1", "v", "8M")
    c = Client(srv, 1, tmp_path, "dg1/v", extra=("--pause-timeout", "2") + SHORT_LEASE_SLACK)
    try:
        c.start()
        path = c.path("dg1/v")
        assert write_at(path, 0, b"before") == 6
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: c.volume_status("dg1/v")["gate"]["state"] == "paused", 10,
                     "the gate to pause after the lease ran out")
            t0 = time.monotonic()
            with pytest.raises(OSError) as exc:
                write_at(path, 4096, b"during")              # waits, then EIO
            waited = time.monotonic() - t0
            assert exc.value.errno == errno.EIO
            assert waited >= 1.5, waited                       # it did wait (pause timeout 2s)
            assert b"during" not in image(p)                   # the refused write is not on disk
            assert read_at(path, 0, 6) == b"before"            # reads still served
            gate = c.volume_status("dg1/v")["gate"]
            assert gate["writes_rejected"] == 1 and gate["pauses"] >= 1
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        wait_for(lambda: c.volume_status("dg1/v")["gate"]["state"] == "open", 15,
                 "the gate to reopen after SIGCONT")
        assert write_at(path, 8192, b"after") == 5             # elsewhere: 4096 stays as it was
        assert read_at(path, 8192, 5) == b"after"
        assert b"during" not in image(p)                       # nor did it land later
    finally:
        c.stop()


def test_remote_io_for_unreachable_disk(server, dg, clients):
    c = clients(1, "dg1/str", extra=("--disk-path", "disk1=/nonexistent/disk1.img"))
    st = c.volume_status("dg1/str")
    remote = [d for d in st["disks"] if d["access"] == "remote"]
    assert [d["name"] for d in remote] == ["disk1"] and "cannot open" in remote[0]["reason"]
    path = c.path("dg1/str")
    data = os.urandom(3 * 65536 + 1000)
    assert write_at(path, 65536 - 500, data) == len(data)
    assert read_at(path, 65536 - 500, len(data)) == data
    os.sync()
    emap = extent_map(server, "dg1/str")
    assert read_backing(emap, 0, 65536 - 500, len(data)) == data   # the server wrote disk1's part
    out = subprocess.run([str(c.command()[0]), "status", "--control", c.control],
                         capture_output=True, text=True, timeout=30)
    assert "REMOTE DISK" in out.stdout and "disk1" in out.stdout
    assert "watchdog pid" in out.stdout and "armed  budget 1.00s" in out.stdout


def test_bad_attach_mounts_nothing(server, dg, clients):
    bad = clients(1, "dg1/nope", start=False)
    bad.start(wait=False)
    assert bad.proc.wait(30) != 0
    assert "no volume dg1/nope" in bad.log_text()
    assert not mounted(bad.mount)
    holder = clients(2, "dg1/cat:ex")
    rival = clients(3, "dg1/cat:rw", start=False)
    rival.start(wait=False)
    assert rival.proc.wait(30) != 0
    assert "attached exclusive by node 2" in rival.log_text()
    assert not mounted(rival.mount)
    assert holder.volume_status("dg1/cat")["gate"]["state"] == "open"


def test_lease_terms_that_leave_the_watchdog_no_time_are_refused(short_lease_server, tmp_path):
    """Guard 0.2 s + margin 0.5 s - the default slack 0.5 s leaves 0.2 s: the watchdog
    could not fire before the fence ends. The client says so and mounts nothing."""
    from testbed.processes import Client
    p = str(tmp_path / "d0.img")
    vctl(short_lease_server, "disk", "init", p, "--size", "64M")
    vctl(short_lease_server, "dg", "create", "dg1", p)
    vctl(short_lease_server, "vol", "create", "dg1", "v", "8M")
    c = Client(short_lease_server, 1, tmp_path, "dg1/v")
    try:
        c.start(wait=False)
        assert c.proc.wait(30) == 2
        assert "leaves 0.2s for the agent to show progress" in c.log_text()
        assert not mounted(c.mount)
        assert vctl_json(short_lease_server, "status")["attachments"] == []
    finally:
        c.stop()


def test_server_unreachable_at_start(tmp_path):
    from testbed.processes import Client
    srv = Server(tmp_path / "state")
    srv.start()
    srv.stop()                                    # keep its address, nothing listens there
    c = Client(srv, 1, tmp_path)
    try:
        c.start(wait=False)
        wait_for(lambda: "unreachable" in c.log_text(), 10, "a retry message")
        assert not mounted(c.mount)
        srv.start(srv.address)
        from testbed.processes import read_line
        assert "mounted" in read_line(c.proc, 30, "vclient after the server came up")
        assert c.status()["server"]["connected"]
    finally:
        c.stop()
        srv.stop()


def test_backing_disk_vanishing(server, tmp_path, clients, vanishing):
    """disk1 sits behind a bindfs mount that we kill: EIO for its extents only,
    logged once, client alive."""
    d0, d1 = str(tmp_path / "d0.img"), str(vanishing.path / "d1.img")
    vctl(server, "disk", "init", d0, "--size", "64M")
    vctl(server, "disk", "init", d1, "--size", "64M")
    vctl(server, "dg", "create", "dg1", d0, d1)
    vctl(server, "vol", "create", "dg1", "v", "16M", "--layout", "stripe", "--columns", "2",
         "--stripe-unit", "64K")
    c = clients(1, "dg1/v")
    path = c.path("dg1/v")
    assert write_at(path, 0, b"a" * 131072) == 131072
    vanishing.vanish()
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pread(fd, 4096, 0) == b"a" * 4096            # column 0: disk d0
        for _ in range(3):
            with pytest.raises(OSError) as exc:
                os.pread(fd, 4096, 65536)                        # column 1: disk d1
            assert exc.value.errno == errno.EIO
        assert os.pwrite(fd, b"b" * 4096, 0) == 4096
    finally:
        os.close(fd)
    assert c.log_text().count("I/O error") == 1
    assert c.proc.poll() is None
    st = c.volume_status("dg1/v")
    assert [d["name"] for d in st["disks"] if d["error"]] == ["d1"]


def mirror_over_a_vanishing_disk(server, tmp_path, vanishing) -> None:
    """dg1/m: a mirror with plex 0 on d0 (behind the vanishing bindfs) and plex 1
    on d1."""
    d0, d1 = str(vanishing.path / "d0.img"), str(tmp_path / "d1.img")
    vctl(server, "disk", "init", d0, "--size", "64M")
    vctl(server, "disk", "init", d1, "--size", "64M")
    vctl(server, "dg", "create", "dg1", d0, d1)
    vctl(server, "vol", "create", "dg1", "m", "16M", "--layout", "mirror", "--mirrors", "2")


def test_mirror_reads_survive_a_vanished_plex(server, tmp_path, clients, vanishing):
    """The disk under the mirror's read plex dies: reads go on from the other plex
    (with the data written before), the client reads from it from then on; a write
    detaches the dead plex (stale) and succeeds on the other."""
    mirror_over_a_vanishing_disk(server, tmp_path, vanishing)
    c = clients(1, "dg1/m")
    st = c.volume_status("dg1/m")
    show = vctl_json(server, "vol", "show", "dg1/m")
    plex_disk = {p: show["plexes"][p]["columns"][0]["subdisks"][0]["disk"] for p in (0, 1)}
    assert st["read_plex"] == 0 and plex_disk[0] == "d0", (st, plex_disk)
    path = c.path("dg1/m")
    data = os.urandom(131072)
    assert write_at(path, 4096, data) == len(data)
    vanishing.vanish()
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(3):
            assert os.pread(fd, len(data), 4096) == data
        assert os.pwrite(fd, b"b" * 4096, 0) == 4096
        assert os.pread(fd, 4096, 0) == b"b" * 4096
    finally:
        os.close(fd)
    st = c.volume_status("dg1/m")
    assert st["read_plex"] == 1 and st["read_failovers"] == 1, st
    assert st["plex_states"] == ["stale", "active"] and st["plex_detaches"] == 1, st
    assert vctl_json(server, "vol", "show", "dg1/m")["plex_states"] == ["stale", "active"]
    assert c.log_text().count("reading from plex 1") == 1
    assert c.proc.poll() is None


def test_acknowledged_writes_survive_on_the_other_plex(server, tmp_path, clients, vanishing):
    """A writer fsyncs every 4 records to a mirror; the disk under plex 0 dies under
    it. Plex 0 is detached, writes go on without an error, and every record an
    fsync acknowledged, before and after, is on plex 1."""
    from testbed.records import WriterProc
    from writer import BLOCK, decode
    mirror_over_a_vanishing_disk(server, tmp_path, vanishing)
    c = clients(1, "dg1/m")
    w = WriterProc(c.path("dg1/m"), 1, "0-63", tmp_path / "writer.log", control=c.control,
                   interval=0.002, fsync_every=4)
    try:
        wait_for(lambda: sum(1 for e in w.entries() if e[3] == "acked") > 200, 20, "acknowledged writes")
        t_cut = time.time()
        vanishing.vanish()
        wait_for(lambda: vctl_json(server, "vol", "show", "dg1/m")["plex_states"] == ["stale", "active"],
                 10, "plex 0 detached")
        n = sum(1 for e in w.entries() if e[3] == "acked")
        wait_for(lambda: sum(1 for e in w.entries() if e[3] == "acked") > n + 100, 20,
                 "acknowledged writes after the detach")
    finally:
        w.stop()
    acked = {}
    for t, seq, slot, what, _ in w.entries():
        if what == "acked":
            acked[slot] = max(acked.get(slot, 0), seq)
    emap = extent_map(server, "dg1/m")
    plex1 = [p for p in range(2) if emap.disks[emap.plexes[p].segments(0, 1)[0][0]].name == "d1"][0]
    region = read_backing(emap, plex1, 0, 64 * BLOCK)
    lost = [(slot, seq) for slot, seq in acked.items()
            if (rec := decode(region[slot * BLOCK:(slot + 1) * BLOCK])) is None or rec["seq"] < seq]
    assert acked and lost == [], lost
    assert w.errors_after(t_cut) == []


def test_server_restart_resumes_io_without_errors(server, dg, clients, tmp_path):
    """kill -9 the server while a writer runs; restart it on the same state: the
    client reconnects, reclaims its delegation in the grace period, and the writer
    never sees an error (the outage is shorter than the pause timeout)."""
    from testbed.records import WriterProc
    c = clients(1, "dg1/cat")
    w = WriterProc(c.path("dg1/cat"), 1, "0-63", tmp_path / "writer.log", control=c.control,
                   interval=0.005, fsync_every=4)
    try:
        wait_for(lambda: len(w.entries()) > 50, 10, "writes before the restart")
        deleg = c.volume_status("dg1/cat")["delegation"]
        server.kill()
        t_down = time.time()
        time.sleep(1.0)
        server.start(server.address)
        wait_for(lambda: c.status()["server"]["connects"] >= 2, 20, "the client to reconnect")
        lease = c.status()["server"]["lease"]["duration"]
        # Writes go on past the lease the client held when the server died.
        wait_for(lambda: len(w.oks_after(t_down + lease + 1.0)) > 50, 30,
                 "writes beyond the old lease")
    finally:
        w.stop()
    assert [e for e in w.entries() if e[3] in ("err", "fsync-err")] == []
    assert c.volume_status("dg1/cat")["delegation"] == deleg      # reclaimed, not re-granted
    assert "reclaiming 1 delegation" in c.log_text()


def test_control_and_remote_io_over_tls(tmp_path):
    """Issue 10: TLS for control and remote-I/O traffic. vctl and the client trust
    the test CA; the client reaches disk1 only through the server, so data crosses
    the TLS connection; a vctl without the CA gets no answer."""
    from testbed.certs import make_ca, make_server_cert
    from testbed.processes import Client
    ca = make_ca(tmp_path, "ca")
    cert, key = make_server_cert(tmp_path, "ca")
    srv = Server(tmp_path / "state", "--tls-cert", cert, "--tls-key", key)
    srv.tls_ca = ca
    c = None
    try:
        srv.start()
        disks = []
        for i in range(2):
            p = str(tmp_path / f"disk{i}.img")
            vctl(srv, "disk", "init", p, "--size", "64M")
            disks.append(p)
        vctl(srv, "dg", "create", "dg1", *disks)
        vctl(srv, "vol", "create", "dg1", "v", "8M", "--layout", "stripe", "--columns", "2",
             "--stripe-unit", "64K")
        c = Client(srv, 1, tmp_path, "dg1/v", extra=("--remote-disk", "disk1")).start()
        data = os.urandom(256 * 1024)
        assert write_at(c.path("dg1/v"), 0, data) == len(data)
        assert read_at(c.path("dg1/v"), 0, len(data)) == data
        remote = [d for d in c.volume_status("dg1/v")["disks"] if d["access"] == "remote"]
        assert [d["name"] for d in remote] == ["disk1"]
        assert c.status()["server"]["tls"] is True
        plain = dict(srv.env)
        del plain["FENCEVOL_TLS_CA"]
        cp = subprocess.run([str(c.command()[0]).replace("vclient", "vctl"), "--timeout", "5",
                             "status"], env=plain, capture_output=True, text=True, timeout=60)
        assert cp.returncode != 0 and cp.stderr.count("\n") == 1, cp.stderr
        assert "TLS handshake failed" in srv.log_text()
    finally:
        if c is not None:
            c.stop()
        srv.stop()
