"""The volume server and vctl as a user runs them: real processes, real files."""

import hashlib
import json
import os
import socket
import struct

import pytest
from harness import Server, vctl, vctl_json

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
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read(ondisk.PRIVATE_SIZE))
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
def test_garbage_client_does_not_disturb_others(server, tmp_path, garbage):
    make_group(server, tmp_path, n=1, size="64M")
    bystander = _raw_connect(server)          # a second connection open throughout
    s = _raw_connect(server)
    s.recv(4096)                              # the server's hello
    s.sendall(garbage)
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):                       # the server closes this one connection...
        pass
    s.close()
    assert vctl_json(server, "dg", "list")[0]["name"] == "dg1"   # ...and keeps serving
    assert bystander.recv(4096).startswith(b"FV")                  # its hello still arrived
    bystander.close()
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
