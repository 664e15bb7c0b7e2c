import pytest
from testbed.disks import VanishingDir
from testbed.processes import vctl, vctl_json
from testbed.records import extent_map_from_show

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


def extent_map(server, volume: str):
    """The volume's extent map, rebuilt from `vctl vol show --json`."""
    return extent_map_from_show(vctl_json(server, "vol", "show", volume))


@pytest.fixture
def vanishing(tmp_path):
    """A directory behind bindfs that a test can kill (a dying disk) and mount again."""
    v = VanishingDir(tmp_path)
    try:
        yield v
    finally:
        v.close()
