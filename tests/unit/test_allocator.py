"""Layouts and allocation: generated sequences of create/resize/remove."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fencevol.errors import FencevolError, InvalidArgument, NoSpace
from fencevol.extents import ExtentMap
from vserver import allocator
from vserver.model import DiskRecord, GroupConfig, extent_map_wire

SECTOR = 512
PUB = 4 << 20


def make_group(sizes_mib):
    disks = [DiskRecord(f"{i:032x}", f"d{i}", PUB + (m << 20), PUB) for i, m in enumerate(sizes_mib)]
    return GroupConfig("g" * 32, "dg", 1, disks, [])


def sector_owner_map(cfg):
    """Check: every volume sector maps to exactly one disk sector per plex, inside a
    subdisk of that volume; no disk sector is used twice. Returns the owner map."""
    owner = {}
    for vol in cfg.volumes:
        emap = ExtentMap(extent_map_wire(cfg, vol, {}))
        sub_spans = {}
        for sd in vol.subdisks():
            sub_spans.setdefault(sd.disk, []).append((sd.offset, sd.end))
        for p, plex in enumerate(emap.plexes):
            for s in range(0, vol.size, SECTOR):
                segs = plex.segments(s, SECTOR)
                assert len(segs) == 1 and segs[0][3] == SECTOR and segs[0][2] == 0
                disk = emap.disks[segs[0][0]].id
                doff = segs[0][1]
                assert any(a <= doff and doff + SECTOR <= b for a, b in sub_spans[disk])
                key = (disk, doff)
                assert key not in owner, f"{vol.name} plex {p} reuses a disk sector of {owner[key]}"
                owner[key] = (vol.name, p, s)
    return owner


layouts = st.sampled_from(["concat", "stripe", "mirror"])


@st.composite
def ops(draw):
    return draw(st.lists(st.tuples(
        st.sampled_from(["create", "create", "resize", "remove"]),
        layouts,
        st.integers(1, 48),                # size in 64 KiB units
        st.integers(2, 3),                 # columns / mirrors
        st.sampled_from([4096, 16384, 65536]),
        st.integers(0, 7),
    ), min_size=1, max_size=12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), ops())
def test_layouts_map_every_byte_exactly_once(disk_mib, sequence):
    cfg = make_group(disk_mib)
    n = 0
    for action, layout, units, k, su, pick in sequence:
        size = units * (64 << 10) - (pick * SECTOR)
        before = cfg.to_json()
        try:
            if action == "create" or not cfg.volumes:
                vol = allocator.create_volume(
                    cfg, f"v{n}", size, layout,
                    columns=k if layout == "stripe" else None,
                    mirrors=k if layout == "mirror" else None,
                    stripe_unit=su if layout == "stripe" else None,
                    max_subdisk=(64 << 10) if pick == 0 else None)
                n += 1
                cfg.volumes.append(vol)
            elif action == "resize":
                vol = cfg.volumes[pick % len(cfg.volumes)]
                new = allocator.resize_volume(cfg, vol, size)
                cfg.volumes[cfg.volumes.index(vol)] = new
            else:
                cfg.volumes.pop(pick % len(cfg.volumes))
        except (NoSpace, InvalidArgument):
            assert cfg.to_json() == before   # a failure changes nothing
            continue
        cfg.validate()
        sector_owner_map(cfg)


@given(st.integers(1, 4096), st.integers(0, 300000), st.sampled_from([4096, 65536]))
def test_multi_segment_split_matches_sector_map(length, offset, su):
    cfg = make_group([2, 2, 2])
    vol = allocator.create_volume(cfg, "s", 1 << 20, "stripe", columns=3, stripe_unit=su)
    plex = ExtentMap(extent_map_wire(cfg, vol, {})).plexes[0]
    offset = min(offset, vol.size - length)
    segs = plex.segments(offset, length)
    assert sum(s[3] for s in segs) == length
    pos = 0
    for disk, doff, boff, n in segs:
        assert boff == pos
        for i in range(0, n, 512):
            one = plex.segments(offset + boff + i, min(512, n - i))
            assert one[0][:2] == (disk, doff + i)
        pos += n


def test_no_space_is_clear_and_changes_nothing():
    cfg = make_group([1, 1])
    with pytest.raises(NoSpace, match="not enough space"):
        allocator.create_volume(cfg, "big", 3 << 20)
    with pytest.raises(NoSpace, match="needs 3 disks"):
        allocator.create_volume(cfg, "s", 1 << 20, "stripe", columns=3)
    with pytest.raises(NoSpace, match="mirror"):
        allocator.create_volume(cfg, "m", 1 << 20, "mirror", mirrors=3)
    assert cfg.volumes == []


def test_bad_arguments():
    cfg = make_group([4])
    for kwargs in ({"layout": "raid5"}, {"layout": "stripe", "columns": 1},
                   {"layout": "stripe", "columns": 2, "stripe_unit": 1000},
                   {"layout": "mirror", "mirrors": 1}, {"layout": "concat", "columns": 2}):
        layout = kwargs.pop("layout")
        with pytest.raises(FencevolError):
            allocator.create_volume(cfg, "v", 1 << 20, layout, **kwargs)
    with pytest.raises(InvalidArgument):
        allocator.create_volume(cfg, "bad/name", 1 << 20)


def test_many_extents_with_subdisk_cap():
    cfg = make_group([64])
    vol = allocator.create_volume(cfg, "frag", 10000 * (64 << 10) // 16, max_subdisk=64 << 10)
    assert len(list(vol.subdisks())) == 625
