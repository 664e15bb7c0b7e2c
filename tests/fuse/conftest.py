import pytest

from fencevol.extents import ExtentMap
from harness import vctl, vctl_json

pytestmark = pytest.mark.fuse

LAYOUTS = {
    "cat": ["--layout", "concat", "--max-subdisk", "1M"],
    "str": ["--layout", "stripe", "--columns", "3", "--stripe-unit", "64K"],
    "mir": ["--layout", "mirror", "--mirrors", "2", "--max-subdisk", "1M"],
}


@pytest.fixture
def dg(server, tmp_path):
    """Disk group dg1 on three 128 MiB images with a 24 MiB volume of each layout;
    returns the image paths."""
    disks = []
    for i in range(3):
        p = str(tmp_path / f"disk{i}.img")
        vctl(server, "disk", "init", p, "--size", "128M")
        disks.append(p)
    vctl(server, "dg", "create", "dg1", *disks)
    for name, args in LAYOUTS.items():
        vctl(server, "vol", "create", "dg1", name, "24M", *args)
    return disks


def extent_map(server, volume: str) -> ExtentMap:
    """The volume's extent map, rebuilt from `vctl vol show --json`."""
    show = vctl_json(server, "vol", "show", volume)
    disks, index, plexes = [], {}, []
    for p in show["plexes"]:
        cols = []
        for c in p["columns"]:
            col = []
            for sd in c["subdisks"]:
                if sd["disk_id"] not in index:
                    index[sd["disk_id"]] = len(disks)
                    disks.append({"id": sd["disk_id"], "path": sd["path"], "name": sd["disk"]})
                col.append([index[sd["disk_id"]], sd["disk_offset"], sd["length"]])
            cols.append(col)
        plexes.append(cols)
    return ExtentMap({"size": show["size"], "stripe_unit": show["stripe_unit"],
                      "plexes": plexes, "disks": disks})


def read_backing(emap: ExtentMap, plex: int, offset: int, length: int) -> bytes:
    """Read a volume range straight from the backing images (no mount involved)."""
    out = bytearray(length)
    for disk, doff, boff, n in emap.plexes[plex].segments(offset, length):
        with open(emap.disks[disk].path, "rb") as f:
            f.seek(doff)
            out[boff:boff + n] = f.read(n)
    return bytes(out)
