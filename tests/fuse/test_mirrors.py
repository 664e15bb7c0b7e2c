"""Mirror recovery with real faults (docs/MIRRORS.md): the disk under one plex dies
under fio (a bindfs mount killed: every descriptor on it fails), the plex is
detached and fio sees no error; the disk comes back and the plex is resynced while
fio writes on; the server is killed -9 in the middle of a resync and resumes it;
a dead disk is replaced by a new one. Every time the plexes end byte-identical."""

import json
import os
import signal
import subprocess

import pytest
from conftest import extent_map
from testbed.processes import VENV_BIN, vctl, vctl_json, wait_for
from testbed.records import read_backing

pytestmark = pytest.mark.fuse

SIZE = 32 << 20


@pytest.fixture
def fios():
    runs: list[subprocess.Popen] = []
    try:
        yield runs
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def mirror(server, tmp_path, vanishing) -> None:
    """dg1/m: a 32 MiB mirror, plex 0 on d0 (behind the vanishing bindfs), plex 1 on d1."""
    vctl(server, "disk", "init", str(vanishing.path / "d0.img"), "--size", "64M")
    vctl(server, "disk", "init", str(tmp_path / "d1.img"), "--size", "64M")
    vctl(server, "dg", "create", "dg1", str(vanishing.path / "d0.img"), str(tmp_path / "d1.img"))
    vctl(server, "vol", "create", "dg1", "m", "32M", "--layout", "mirror", "--mirrors", "2")
    show = vctl_json(server, "vol", "show", "dg1/m")
    assert show["plexes"][0]["columns"][0]["subdisks"][0]["disk"] == "d0", show


def fio(runs: list, path, runtime: float, offset: int = 0, size: int = SIZE) -> subprocess.Popen:
    runs.append(subprocess.Popen(
        ["fio", "--name=mirror", f"--filename={path}", "--rw=randrw", "--bs=4k", f"--size={size}",
         f"--offset={offset}",
         "--ioengine=libaio", "--iodepth=4", "--direct=1", "--time_based", f"--runtime={runtime}",
         "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return runs[-1]


def fio_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return {"error": job["error"], "writes": job["write"]["total_ios"], "reads": job["read"]["total_ios"]}


def lose_plex_0(server, c, vanishing, fios, runtime: float, before: int) -> dict:
    """Under fio on ``c``, once it has written ``before`` bytes, kill the disk under
    plex 0; wait until the plex is detached and fio ends; fio's result."""
    run = fio(fios, c.path("dg1/m"), runtime)
    wait_for(lambda: written(c, "dg1/m", before), 30, "fio writing")
    vanishing.vanish()
    wait_for(lambda: states(server) == ["stale", "active"], 20, "plex 0 detached")
    return fio_result(run)


def written(client, volume, at_least: int) -> bool:
    return client.volume_status(volume)["bytes_written"] >= at_least


def states(server, volume="dg1/m") -> list[str]:
    return vctl_json(server, "vol", "show", volume)["plex_states"]


def plexes_identical(server, volume="dg1/m", size=SIZE) -> None:
    emap = extent_map(server, volume)
    a, b = (read_backing(emap, p, 0, size) for p in (0, 1))
    same = a == b
    if not same:
        diff = next(i for i in range(0, size, 4096) if a[i:i + 4096] != b[i:i + 4096])
        raise AssertionError(f"plexes differ, first at offset {diff}")


@pytest.mark.timeout(240)
@pytest.mark.server_args("--resync-rate", "8M")     # slow enough to be seen under way
def test_plex_failure_under_fio_then_resync_while_writing(server, tmp_path, vanishing, clients, fios):
    mirror(server, tmp_path, vanishing)
    c = clients(1, "dg1/m")
    result = lose_plex_0(server, c, vanishing, fios, 6, 2 << 20)
    assert result["error"] == 0 and result["writes"] > 0, result
    st = c.volume_status("dg1/m")
    assert st["plex_states"] == ["stale", "active"] and st["read_plex"] == 1, st
    assert "detaching them" in c.log_text()
    assert vctl_json(server, "status")["degraded"][0]["plex_states"] == ["stale", "active"]
    # The disk comes back; repair reopens it and resyncs plex 0 while fio writes on.
    vanishing.revive()
    run = fio(fios, c.path("dg1/m"), 8)
    wait_for(lambda: written(c, "dg1/m", st["bytes_written"] + (1 << 20)), 30, "fio writing again")
    repaired = vctl_json(server, "dg", "repair", "dg1")
    assert any("d0 is back" in r for r in repaired["repaired"]), repaired
    wait_for(lambda: (vctl_json(server, "vol", "show", "dg1/m").get("resync") or {}).get("done", 0) > 0,
             20, "resync under way")
    show = vctl_json(server, "vol", "show", "dg1/m")
    assert show["plex_states"] == ["syncing", "active"] and 0 <= show["resync"]["percent"] < 100, show
    # Waits, with a progress bar on a terminal (a pty from script(1)).
    cp = subprocess.run(["script", "-qec", f"{VENV_BIN / 'vctl'} vol resync dg1/m", "/dev/null"],
                        env=server.env, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "resync dg1/m" in cp.stdout and "100%" in cp.stdout and "|" in cp.stdout, cp.stdout
    assert "plex 0 active, plex 1 active" in cp.stdout, cp.stdout
    out = vctl(server, "vol", "resync", "dg1/m", check=False)        # not a terminal: no bar
    assert out.returncode != 0 and "every plex is active" in out.stderr and "%" not in out.stdout
    result = fio_result(run)
    assert result["error"] == 0 and result["writes"] > 0, result
    assert c.volume_status("dg1/m")["plex_states"] == ["active", "active"]
    plexes_identical(server)
    assert "the write fails" not in c.log_text() and c.proc.poll() is None


@pytest.mark.timeout(240)
@pytest.mark.server_args("--resync-rate", "4M")     # 8 s: killed in the middle
def test_server_kill_mid_resync_resumes_it(server, tmp_path, vanishing, clients, fios):
    mirror(server, tmp_path, vanishing)
    c = clients(1, "dg1/m")
    assert lose_plex_0(server, c, vanishing, fios, 4, 1 << 20)["error"] == 0
    vanishing.revive()
    run = fio(fios, c.path("dg1/m"), 14)
    vctl(server, "vol", "resync", "dg1/m", "--no-wait")
    # The position is checkpointed every 2 s: wait for one past a quarter.
    wait_for(lambda: vctl_json(server, "vol", "show", "dg1/m")["resync"]["percent"] > 40, 30,
             "resync past 40%")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.start(listen=server.address)
    show = vctl_json(server, "vol", "show", "dg1/m")
    assert show["plex_states"] == ["syncing", "active"], show
    assert show["resync"]["done"] > 0, show            # resumed from its checkpoint, not from 0
    vctl(server, "vol", "resync", "dg1/m")             # waits for the end
    assert states(server) == ["active", "active"]
    result = fio_result(run)
    assert result["error"] == 0 and result["writes"] > 0, result
    plexes_identical(server)
    assert "resync complete" in server.log_text()


@pytest.mark.timeout(240)
def test_dead_disk_replaced(server, tmp_path, vanishing, clients, fios):
    mirror(server, tmp_path, vanishing)
    c = clients(1, "dg1/m")
    vctl(server, "disk", "init", str(tmp_path / "d2.img"), "--size", "64M")
    result = lose_plex_0(server, c, vanishing, fios, 3, 1 << 20)
    assert result["error"] == 0 and result["writes"] > 0, result
    run = fio(fios, c.path("dg1/m"), 6)
    out = vctl(server, "disk", "replace", "d0", str(tmp_path / "d2.img")).stdout
    assert "replaced by" in out, out
    show = vctl_json(server, "vol", "show", "dg1/m")
    assert show["plex_states"] == ["active", "active"], show
    assert show["plexes"][0]["columns"][0]["subdisks"][0]["disk"] == "d2", show
    group = [g for g in vctl_json(server, "dg", "list") if g["name"] == "dg1"][0]
    assert sorted(group["disks"]) == ["d1", "d2"] and group["state"] == "ok", group
    result = fio_result(run)
    assert result["error"] == 0 and result["writes"] > 0, result
    plexes_identical(server)
    # NEW must be a disk in no group.
    bad = vctl(server, "disk", "replace", "d2", str(tmp_path / "d1.img"), check=False)
    assert bad.returncode != 0 and "already belongs" in bad.stderr, bad.stderr


@pytest.mark.timeout(120)
def test_two_nodes_lose_a_plex_at_once(server, tmp_path, vanishing, clients, fios):
    """Both nodes' writes fail on the dead plex at about the same time: each asks
    for the detach while the other's acknowledgement of the new map is awaited. No
    write fails, and neither node loses its delegation over it (a node acknowledges
    a map without waiting for its own writes that wait for a detach)."""
    mirror(server, tmp_path, vanishing)
    nodes = [clients(i, "dg1/m") for i in (1, 2)]
    half = SIZE // 2
    runs = [fio(fios, c.path("dg1/m"), 6, offset=i * half, size=half) for i, c in enumerate(nodes)]
    wait_for(lambda: all(written(c, "dg1/m", 1 << 20) for c in nodes), 30, "fio writing on both")
    vanishing.vanish()
    wait_for(lambda: states(server) == ["stale", "active"], 20, "plex 0 detached")
    for run in runs:
        result = fio_result(run)
        assert result["error"] == 0 and result["writes"] > 0, result
    for c in nodes:
        st = c.volume_status("dg1/m")
        assert st["plex_states"] == ["stale", "active"], st
        assert "delegation lost" not in c.log_text() and "the write fails" not in c.log_text()


@pytest.mark.timeout(180)
def test_evacuate_a_disk_under_fio(server, tmp_path, clients, fios):
    """A concat volume and a mirror plex live on d0; `disk evacuate d0` moves them
    to d2 and d3 through temporary plexes while fio writes: no error, the data
    written before is there, and nothing is left on d0."""
    for i in range(4):
        vctl(server, "disk", "init", str(tmp_path / f"d{i}.img"), "--size", "64M")
    vctl(server, "dg", "create", "dg1", *(str(tmp_path / f"d{i}.img") for i in range(2)))
    vctl(server, "vol", "create", "dg1", "cat", "16M")
    vctl(server, "vol", "create", "dg1", "m", "16M", "--layout", "mirror")
    vctl(server, "dg", "add-disk", "dg1", str(tmp_path / "d2.img"), str(tmp_path / "d3.img"))
    on_d0 = lambda v: [sd["disk"] for p in vctl_json(server, "vol", "show", v)["plexes"]  # noqa: E731
                       for c in p["columns"] for sd in c["subdisks"]].count("d0")
    assert on_d0("dg1/cat") and on_d0("dg1/m")
    c = clients(1, "dg1/cat", "dg1/m")
    before = os.urandom(1 << 20)
    with open(c.path("dg1/cat"), "r+b", buffering=0) as f:
        f.write(before)
    runs = [fio(fios, c.path(v), 6, size=16 << 20) for v in ("dg1/cat", "dg1/m")]
    wait_for(lambda: written(c, "dg1/m", 1 << 20), 30, "fio writing")
    out = vctl(server, "disk", "evacuate", "d0", timeout=120).stdout
    assert "moved off it" in out, out
    for run in runs:
        result = fio_result(run)
        assert result["error"] == 0 and result["writes"] > 0, result
    assert on_d0("dg1/cat") == 0 and on_d0("dg1/m") == 0
    for v in ("dg1/cat", "dg1/m"):
        show = vctl_json(server, "vol", "show", v)
        assert show["plex_states"] == ["active"] * show["mirrors"], show
    assert vctl_json(server, "vol", "show", "dg1/cat")["mirrors"] == 1
    plexes_identical(server, "dg1/m", 16 << 20)
    d0 = [d for d in vctl_json(server, "disk", "list") if d["name"] == "d0"][0]
    assert d0["free"] == d0["public_size"], d0
    fd = os.open(c.path("dg1/cat"), os.O_RDONLY)
    try:
        got = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    emap = extent_map(server, "dg1/cat")
    assert read_backing(emap, 0, 0, 1 << 20) == got
