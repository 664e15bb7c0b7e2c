"""The volume server and vctl as a user runs them: real processes, real files."""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest
import trio
from testbed.processes import VENV_BIN, Server, vctl, vctl_json, wait_for

from fencevol import ondisk

pytestmark = pytest.mark.integration


def make_group(server, tmp_path, n=3, size="256M"):
    disks = []
    for i in range(n):
        p = str(tmp_path / f"disk{i}.img")
        vctl(server, "disk", "init", p, "--size", size)
        disks.append(p)
    vctl(server, "dg", "create", "dg1", *disks)
    return disks


def make_volumes(server):
    vctl(server, "vol", "create", "dg1", "cat", "100M")
    vctl(server, "vol", "create", "dg1", "str", "96M", "--layout", "stripe", "--columns", "3",
         "--stripe-unit", "64K")
    vctl(server, "vol", "create", "dg1", "mir", "64M", "--layout", "mirror", "--mirrors", "2")


def private_region_digest(paths):
    """The private regions' metadata, without the owner-lease block: the server
    rewrites that every renewal by design (its counter), whatever else happens."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            region = bytearray(f.read(ondisk.PRIVATE_SIZE))
        region[ondisk.OWNER_OFFSET:ondisk.OWNER_OFFSET + ondisk.IO_UNIT] = bytes(ondisk.IO_UNIT)
        h.update(region)
    return h.hexdigest()


def test_new_user_scenario_survives_kill_9(server, tmp_path):
    make_group(server, tmp_path)
    make_volumes(server)
    shown = vctl(server, "vol", "show", "dg1/str").stdout
    assert "stripe (3 columns, unit 64 KiB)" in shown and shown.count("disk") >= 3
    show = vctl_json(server, "vol", "show", "dg1/mir")
    assert len(show["plexes"]) == 2
    assert {sd["disk"] for p in show["plexes"] for c in p["columns"] for sd in c["subdisks"]} \
        .__len__() == 2
    before = vctl(server, "vol", "list", "--json").stdout
    server.kill()                                   # kill -9
    server.start(server.address)
    assert vctl(server, "vol", "list", "--json").stdout == before
    assert vctl(server, "--json", "vol", "list").stdout == before   # --json in either place


def test_kill_9_in_the_middle_of_vol_create_leaves_a_usable_group(server, tmp_path):
    """The server is killed after the new configuration reached the first disk and
    before the others (strace holds its first fdatasync): after a restart the group
    has a consistent configuration -- the volume is there or not, no damaged copy --
    and takes changes again."""
    make_group(server, tmp_path)
    gen = vctl_json(server, "dg", "list")[0]["generation"]
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(["strace", "-qq", "-f", "-p", str(server.pid), "-e", "trace=fdatasync",
                               "-e", "inject=fdatasync:delay_enter=30s:when=1", "-o", str(log)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    create = None
    try:
        status = Path(f"/proc/{server.pid}/status")
        wait_for(lambda: "TracerPid:\t0" not in status.read_text(), 10, "strace to attach")
        create = subprocess.Popen([str(VENV_BIN / "vctl"), "vol", "create", "dg1", "new", "32M"],
                                  env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: log.exists() and "fdatasync(" in log.read_text(), 20,
                 "the configuration write to stall")
        os.kill(server.pid, signal.SIGKILL)         # it dies as soon as strace lets go of it
    finally:
        tracer.kill()
        tracer.wait(10)
    server.kill()
    assert create is not None
    try:
        assert create.wait(30) != 0                 # never acknowledged
    finally:
        if create.poll() is None:
            create.kill()
        create.stdout.close()
        create.stderr.close()
    server.start(server.address)
    groups = vctl_json(server, "dg", "list")
    assert groups[0]["problems"] == [] and groups[0]["generation"] in (gen, gen + 1), groups
    names = {v["name"] for v in vctl_json(server, "vol", "list")}
    assert names <= {"dg1/new"}
    vctl(server, "vol", "create", "dg1", "after", "32M")           # takes changes again
    assert {v["name"] for v in vctl_json(server, "vol", "list")} == names | {"dg1/after"}
    assert vctl_json(server, "dg", "list")[0]["problems"] == []


def test_import_on_empty_state_dir(server, tmp_path):
    disks = make_group(server, tmp_path)
    make_volumes(server)
    before = vctl_json(server, "vol", "list")
    server.stop()
    fresh = Server(tmp_path / "fresh-state")
    try:
        fresh.start()
        assert vctl_json(fresh, "dg", "list") == []
        r = vctl(fresh, "dg", "import", "dg1", check=False)
        assert r.returncode != 0 and "no disk of disk group dg1 found" in r.stderr
        vctl(fresh, "dg", "import", "dg1", "--scan", str(tmp_path / "*.img"))
        assert vctl_json(fresh, "vol", "list") == before
        again = vctl(fresh, "dg", "import", "dg1", *disks, check=False)
        assert again.returncode != 0 and "already imported" in again.stderr
    finally:
        fresh.stop()


def test_flipped_byte_is_reported_and_nothing_is_overwritten(server, tmp_path):
    disks = make_group(server, tmp_path)
    vctl(server, "vol", "create", "dg1", "cat", "10M")
    server.stop()
    # Flip one byte inside the newest configuration copy of the first disk.
    fd = os.open(disks[0], os.O_RDWR)
    area = ondisk.read_area(fd, ondisk.CONFIG)
    off = ondisk.slot_offset(ondisk.CONFIG, area.best.slot) + ondisk.SLOT_HEADER.size + 10
    b = os.pread(fd, 1, off)
    os.pwrite(fd, bytes([b[0] ^ 0x40]), off)
    os.close(fd)
    digest = private_region_digest(disks)
    server.start(server.address)
    listing = vctl_json(server, "disk", "list")
    bad = [d for d in listing if d["state"] == "error"]
    assert [d["path"] for d in bad] == [disks[0]]
    assert "CRC-32C mismatch" in bad[0]["problems"][0] and "configuration slot" in bad[0]["problems"][0]
    assert "CRC-32C mismatch" in server.log_text()
    r = vctl(server, "vol", "create", "dg1", "another", "1M", check=False)
    assert r.returncode != 0
    assert "disk0" in r.stderr and "CRC-32C mismatch" in r.stderr and "\n" not in r.stderr.strip()
    assert vctl_json(server, "vol", "list")[0]["name"] == "dg1/cat"   # good copies still serve
    assert private_region_digest(disks) == digest
    vctl(server, "dg", "repair", "dg1")
    vctl(server, "vol", "create", "dg1", "another", "1M")
    assert all(d["state"] == "ok" for d in vctl_json(server, "disk", "list"))


def _raw_connect(server):
    host, port = server.address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                              # not our protocol
    b"FV\x01\x00" + struct.pack(">IIII", 1 << 30, 0, 0, 0),            # oversized frame
    b"FV\x01\x00" + struct.pack(">IIII", 100, 0, 0, 0) + b"{",         # truncated, then EOF
])
async def test_garbage_client_does_not_disturb_others(server, tmp_path, garbage):
    from fencevol import auth, rpc
    from fencevol.rpc import parse_address
    make_group(server, tmp_path, n=1, size="64M")
    # An authenticated session open throughout, used after the garbage arrived.
    bystander = await rpc.connect(parse_address(server.address), auth.load_key_file(server.key_file),
                                  "admin")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bystander.run)
        s = _raw_connect(server)
        s.recv(4096)                              # the server's hello
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):                       # the server closes this one connection...
            pass
        s.close()
        assert vctl_json(server, "dg", "list")[0]["name"] == "dg1"   # ...and keeps serving
        reply, _ = await bystander.call("dg_list", {}, timeout=10)   # the old session too
        assert reply["groups"][0]["name"] == "dg1", reply
        await bystander.aclose()
        nursery.cancel_scope.cancel()
    assert server.proc.poll() is None
    assert "closed:" in server.log_text() or "refused" in server.log_text()


def test_authentication(server, tmp_path):
    wrong = tmp_path / "wrong.key"
    wrong.write_text("ab" * 32 + "\n")
    wrong.chmod(0o600)
    r = vctl(server, "--key-file", str(wrong), "dg", "list", check=False)
    assert r.returncode == 3 and "wrong cluster key" in r.stderr
    r = vctl(server, "--key-file", str(tmp_path / "missing.key"), "dg", "list", check=False)
    assert r.returncode == 3 and "does not exist" in r.stderr
    wrong.chmod(0o644)
    r = vctl(server, "--key-file", str(wrong), "dg", "list", check=False)
    assert r.returncode == 3 and "chmod 600" in r.stderr
    assert oct(os.stat(server.key_file).st_mode & 0o777) == "0o600"
    # Before authenticating, a client cannot run any request.
    s = _raw_connect(server)
    from fencevol import wire
    s.recv(4096)
    s.sendall(wire.encode({"id": 1, "op": "dg_list", "args": {}}))
    dec = wire.FrameDecoder()
    while (frame := dec.next_frame()) is None:
        chunk = s.recv(4096)
        assert chunk, "server closed without an error reply"
        dec.feed(chunk)
    assert frame[0]["ok"] is False and "auth" in frame[0]["error"]["message"]
    s.close()


def test_bad_input_changes_nothing(server, tmp_path):
    disks = make_group(server, tmp_path, n=2, size="64M")
    vctl(server, "vol", "create", "dg1", "v", "8M")
    snapshot = (vctl(server, "dg", "list", "--json").stdout, vctl(server, "vol", "list", "--json").stdout,
                private_region_digest(disks))
    other = str(tmp_path / "other.img")
    vctl(server, "disk", "init", other, "--size", "64M")
    cases = [
        (["disk", "init", str(tmp_path / "missing.img")], "no such file"),
        (["disk", "init", str(tmp_path)], "not a regular file or block device"),
        (["disk", "init", disks[0]], "belongs to disk group dg1"),
        (["dg", "create", "dg2", disks[0]], "already belongs to disk group dg1"),
        (["dg", "create", "dg1", other], "already exists"),
        (["dg", "create", "dg2", other, other], "given twice"),
        (["vol", "create", "dg1", "v", "1M"], "already exists"),
        (["vol", "create", "dg1", "huge", "1T"], "not enough space"),
        (["vol", "create", "dg1", "odd", "1000"], "not a multiple of 512"),
        (["vol", "create", "dg1", "unit", "12X"], "bad volume size"),
        (["vol", "create", "nodg", "v", "1M"], "no disk group nodg"),
        (["vol", "show", "dg1/nope"], "no volume dg1/nope"),
        (["vol", "show", "justaname"], "expected DG/VOLUME"),
        (["vol", "resize", "dg1/v", "1T"], "not enough space"),
        (["vol", "remove", "dg1/nope"], "no volume"),
    ]
    for args, message in cases:
        r = vctl(server, *args, check=False)
        assert r.returncode != 0, args
        assert message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert (vctl(server, "dg", "list", "--json").stdout, vctl(server, "vol", "list", "--json").stdout,
            private_region_digest(disks)) == snapshot
    status = json.loads(vctl(server, "status", "--json").stdout)
    assert status["server"]["listen"] == server.address


def test_disk_init_refuses_a_disk_that_holds_data(server, tmp_path):
    """Issue 10, finding 4: an ext4 filesystem at offset 1 MiB was wiped without
    --force. Anything but zeros where init writes is refused, and nothing changes."""
    img = tmp_path / "data.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True, capture_output=True)
    with open(fs, "rb") as src, open(img, "r+b") as dst:
        dst.seek(1 << 20)
        dst.write(src.read())
    before = hashlib.sha256(img.read_bytes()).hexdigest()
    r = vctl(server, "disk", "init", str(img), check=False)
    assert r.returncode != 0 and "holds data" in r.stderr and "first non-zero byte" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before          # untouched
    vctl(server, "disk", "init", str(img), "--force")                       # on purpose: allowed
    fresh = tmp_path / "fresh.img"
    vctl(server, "disk", "init", str(fresh), "--size", "64M")               # a new image: fine
