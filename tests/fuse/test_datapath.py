"""Real FUSE mounts: data lands at the mapped offsets of the backing images."""

import errno
import json
import os
import signal
import subprocess
import threading
import time

import pytest
from conftest import LAYOUTS, extent_map
from testbed.processes import mounted, vctl, vctl_json, wait_for
from testbed.records import read_backing

pytestmark = pytest.mark.fuse


@pytest.mark.parametrize("vol", sorted(LAYOUTS))
def test_writes_land_at_mapped_offsets(server, dg, clients, tmp_path, vol):
    name = f"dg1/{vol}"
    c = clients(1, name)
    path = c.path(name)
    assert path.stat().st_size == 24 << 20
    emap = extent_map(server, name)
    assert emap.extent_count() >= 3
    # The whole volume is modelled in memory; every write goes to both.
    model = bytearray(24 << 20)
    # dd with O_DIRECT, 3 MiB starting 512 KiB in: crosses subdisk / stripe boundaries.
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    subprocess.run(["dd", f"if={src}", f"of={path}", "bs=64k", "seek=8", "oflag=direct",
                    "conv=fsync,notrunc", "status=none"], check=True, timeout=60)
    model[512 << 10:(512 << 10) + (3 << 20)] = src.read_bytes()
    # os.pwrite at unaligned offsets, across a 1 MiB subdisk / 64 KiB stripe boundary.
    fd = os.open(path, os.O_RDWR)
    try:
        for off, n in [((1 << 20) - 777, 5000), ((8 << 20) + 65536 - 3, 7), (3, 1),
                       ((24 << 20) - 100, 100)]:
            data = os.urandom(n)
            assert os.pwrite(fd, data, off) == n
            model[off:off + n] = data
        os.fsync(fd)
        for off in range(0, 24 << 20, 1 << 20):
            chunk = bytes(model[off:off + (1 << 20)])
            assert os.pread(fd, 1 << 20, off) == chunk, off      # through the mount
            for plex in range(len(emap.plexes)):                  # and on every plex's disks
                assert read_backing(emap, plex, off, 1 << 20) == chunk, (off, plex)
        assert os.pread(fd, 4096, 24 << 20) == b""                # EOF past the end
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", 24 << 20)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_dd_64mib_roundtrip_on_every_layout(server, tmp_path, clients):
    """The README's promise: dd 64 MiB with O_DIRECT and conv=fsync, then compare."""
    disks = []
    for i in range(3):
        p = str(tmp_path / f"big{i}.img")
        vctl(server, "disk", "init", p, "--size", "256M")
        disks.append(p)
    vctl(server, "dg", "create", "big", *disks)
    for name, args in LAYOUTS.items():
        vctl(server, "vol", "create", "big", name, "64M", *args)
    c = clients(1, *(f"big/{n}" for n in LAYOUTS))
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 << 20))
    for name in LAYOUTS:
        target = c.path(f"big/{name}")
        subprocess.run(["dd", f"if={src}", f"of={target}", "bs=1M", "count=64", "oflag=direct",
                        "conv=fsync", "status=none"], check=True, timeout=120)
        subprocess.run(["cmp", str(src), str(target)], check=True, timeout=120)


def fio_verify(path, tmp_path, *extra):
    """fio randwrite 8 MiB with crc32c verify blocks; (exit status, its JSON job)."""
    cp = subprocess.run(["fio", "--name=verify", f"--filename={path}", "--rw=randwrite",
                         "--bs=4k", "--size=8M", "--direct=1", "--ioengine=psync",
                         "--verify=crc32c", "--do_verify=1", "--randseed=7",
                         "--output-format=json", *extra],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)  # its .state file
    out = cp.stdout
    return cp.returncode, (json.loads(out[out.index("{"):])["jobs"][0] if "{" in out else {}), cp.stderr


def test_fio_verify(server, dg, clients, tmp_path):
    c = clients(1, "dg1/str")
    rc, job, err = fio_verify(c.path("dg1/str"), tmp_path)
    assert rc == 0 and job["error"] == 0, err
    assert job["write"]["io_bytes"] == 8 << 20 and job["read"]["io_bytes"] == 8 << 20  # all read back
    # The check can fail: corrupt one written block on its disk, verify again.
    emap = extent_map(server, "dg1/str")
    disk, doff, _, _ = emap.plexes[0].segments(4 << 20, 4096)[0]
    with open(emap.disks[disk].path, "r+b") as f:
        f.seek(doff + 100)
        f.write(b"\xff" * 16)
    rc, job, err = fio_verify(c.path("dg1/str"), tmp_path, "--verify_only")
    assert rc != 0 and ("verify" in err or job.get("error")), (rc, err[-500:])


def test_namespace_is_fixed(server, dg, clients):
    c = clients(1, "dg1/cat:ro", "dg1/mir")
    assert sorted(os.listdir(c.mount)) == ["dg1"]
    assert sorted(os.listdir(c.mount / "dg1")) == ["cat", "mir"]
    for op in (lambda: (c.mount / "dg1" / "new").touch(),
               lambda: os.unlink(c.path("dg1/mir")),
               lambda: os.rename(c.path("dg1/mir"), c.mount / "dg1" / "x"),
               lambda: os.mkdir(c.mount / "dg1" / "d"),
               lambda: os.truncate(c.path("dg1/mir"), 4096)):
        with pytest.raises(OSError) as exc:
            op()
        assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        open(c.path("dg1/cat"), "r+b")
    assert exc.value.errno == errno.EROFS
    with open(c.path("dg1/cat"), "rb") as f:
        assert f.read(10) == bytes(10)


def test_resize_under_live_io_loses_nothing(server, dg, clients):
    c = clients(1, "dg1/str")
    path = c.path("dg1/str")
    block = 64 << 10
    nblocks = (24 << 20) // block
    errors, written = [], []
    stop = threading.Event()

    def writer():
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            i = 0
            buf = bytearray(block)
            while not stop.is_set() or i < 40:
                slot = i % nblocks
                buf[:16] = i.to_bytes(8, "big") + slot.to_bytes(8, "big")
                import mmap
                m = mmap.mmap(-1, block)
                m.write(bytes(buf))
                os.pwritev(fd, [m], slot * block)
                m.close()
                written.append((slot, i))
                if i % 16 == 15:
                    os.fsync(fd)
                i += 1
            os.fsync(fd)
        except OSError as exc:
            errors.append(exc)
        finally:
            os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(written) > 50, 30, "writes before the resize")
        info = vctl_json(server, "vol", "resize", "dg1/str", "48M")
        assert info["size"] == 48 << 20
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive(), "the writer hung (in the gate?)"
    assert not errors, errors
    last = {}
    for slot, i in written:
        last[slot] = i
    fd = os.open(path, os.O_RDONLY)
    try:
        for slot, i in last.items():
            head = os.pread(fd, 16, slot * block)
            assert head == i.to_bytes(8, "big") + slot.to_bytes(8, "big"), (slot, i)
    finally:
        os.close(fd)
    wait_for(lambda: path.stat().st_size == 48 << 20, 10, "the new size in the mount")
    gate = c.volume_status("dg1/str")["gate"]
    assert gate["pauses"] >= 1 and gate["writes_rejected"] == 0 and gate["state"] == "open"


def test_sigterm_unmounts_and_releases(server, dg, clients):
    c = clients(1, "dg1/cat:ex")
    assert vctl_json(server, "status")["attachments"][0]["node"] == 1
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(15) == 0
    assert not mounted(c.mount)
    assert vctl_json(server, "status")["attachments"] == []
    c2 = clients(2, "dg1/cat:ex")          # no lease to wait out
    assert c2.volume_status("dg1/cat")["gate"]["state"] == "open"


def test_stale_mount_after_kill_9(server, dg, clients):
    """A killed client leaves its mount stale; a new one on the same mount point
    clears it and comes up at once (a shared attach waits for no lease)."""
    c = clients(1, "dg1/cat")
    c.kill()
    with pytest.raises(OSError) as exc:
        os.stat(c.path("dg1/cat"))
    assert exc.value.errno == errno.ENOTCONN
    lease = vctl_json(server, "status")["server"]["lease"]
    t0 = time.monotonic()
    c.start()
    assert "stale fencevol mount" in c.log_text()
    assert c.path("dg1/cat").stat().st_size == 24 << 20
    assert time.monotonic() - t0 < lease["duration"]
