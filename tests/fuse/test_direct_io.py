"""Direct I/O on the backing disks: requests of any size and alignment work, and two
hosts that share a disk but not a page cache see each other's writes."""

import os
import subprocess

import pytest
from conftest import LAYOUTS, extent_map
from testbed.processes import vctl
from testbed.records import read_backing

pytestmark = pytest.mark.fuse

MiB = 1 << 20


def dd(*args: str) -> bytes:
    cp = subprocess.run(["dd", *args, "status=none"], capture_output=True, timeout=120)
    assert cp.returncode == 0, cp.stderr.decode()
    return cp.stdout


@pytest.mark.parametrize("vol", sorted(LAYOUTS))
def test_dd_with_odd_block_sizes(server, dg, clients, tmp_path, vol):
    """bs=513 and bs=1 writes and reads (partial blocks: read-modify-write), across a
    subdisk boundary (1 MiB) and a stripe unit (64 KiB), land exactly on every plex."""
    name = f"dg1/{vol}"
    c = clients(1, name)
    path = c.path(name)
    model = bytearray(24 * MiB)
    src = tmp_path / "src"
    # 40 records of 513 bytes from offset 2024 * 513, crossing 1 MiB.
    data = os.urandom(513 * 40)
    src.write_bytes(data)
    dd(f"if={src}", f"of={path}", "bs=513", "seek=2024", "conv=notrunc,fsync")
    model[2024 * 513:2024 * 513 + len(data)] = data
    # 700 one-byte writes around the third stripe unit boundary.
    off = 3 * 65536 - 350
    data = os.urandom(700)
    src.write_bytes(data)
    dd(f"if={src}", f"of={path}", "bs=1", f"seek={off}", "conv=notrunc,fsync")
    model[off:off + 700] = data
    # Read back through the mount with the same odd sizes, and from every plex.
    got = dd(f"if={path}", "bs=513", "skip=2024", "count=40")
    assert got == bytes(model[2024 * 513:2024 * 513 + 513 * 40])
    assert dd(f"if={path}", "bs=1", f"skip={off}", "count=700") == bytes(model[off:off + 700])
    emap = extent_map(server, name)
    for start in (MiB - 8192, 3 * 65536 - 4096):
        for plex in range(len(emap.plexes)):
            assert read_backing(emap, plex, start, 16384) == bytes(model[start:start + 16384]), plex
    assert c.volume_status(name)["partial_block_writes"] >= 700


def test_two_hosts_sharing_a_disk_read_each_others_writes(server, tmp_path, clients, loop_devices):
    """Two loop devices over one image are two hosts on one LUN, each with its own
    page cache. Node 2 reads a block (caching it if it read buffered), node 1
    overwrites it and fsyncs, node 2 reads again: it must see the new data."""
    img = tmp_path / "lun.img"
    vctl(server, "disk", "init", str(img), "--size", "64M", "--name", "lun")
    vctl(server, "dg", "create", "san", str(img))
    vctl(server, "vol", "create", "san", "v", "8M")
    host1, host2 = loop_devices(img), loop_devices(img)
    n1 = clients(1, "san/v", extra=("--disk-path", f"lun={host1}"))
    n2 = clients(2, "san/v", extra=("--disk-path", f"lun={host2}"))
    for node, dev in ((n1, host1), (n2, host2)):
        disk = node.volume_status("san/v")["disks"][0]
        assert disk["access"] == "local" and disk["path"] == dev, disk
    f1, f2 = n1.path("san/v"), n2.path("san/v")
    stale = []
    for i in range(5):
        block = 16 + 37 * i
        before = dd(f"if={f2}", "bs=4096", f"skip={block}", "count=1", "iflag=direct")
        new = os.urandom(4096)
        (tmp_path / "blk").write_bytes(new)
        dd(f"if={tmp_path / 'blk'}", f"of={f1}", "bs=4096", f"seek={block}", "count=1",
           "oflag=direct", "conv=fsync,notrunc")
        after = dd(f"if={f2}", "bs=4096", f"skip={block}", "count=1", "iflag=direct")
        assert before != new
        if after != new:
            stale.append(i)
    assert not stale, f"node 2 read stale data in rounds {stale} of 5"
