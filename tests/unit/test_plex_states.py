"""Mirror plex states in the configuration and the extent map: validated, kept by
a resize, carried to the client's map (which plexes it reads and writes)."""

import pytest

from fencevol.errors import ProtocolError
from fencevol.extents import ExtentMap
from vserver import allocator
from vserver.model import DiskRecord, GroupConfig, MetadataError, extent_map_wire

PUB = 4 << 20


def group_with_mirror(states=None, resync_done=0):
    disks = [DiskRecord(f"{i:032x}", f"d{i}", PUB + (64 << 20), PUB) for i in range(3)]
    cfg = GroupConfig("g" * 32, "dg", 5, disks, [])
    vol = allocator.create_volume(cfg, "m", 8 << 20, "mirror", mirrors=3)
    if states:
        vol.plex_states = list(states)
        vol.resync_done = resync_done
    cfg.volumes.append(vol)
    return cfg, vol


def test_new_volumes_are_active_and_old_copies_read_as_active():
    cfg, vol = group_with_mirror()
    assert vol.plex_states == ["active"] * 3
    data = cfg.to_json()
    for v in data["volumes"]:
        del v["plex_states"], v["resync_done"]          # a copy written before mirror recovery
    assert GroupConfig.from_json(data).volumes[0].plex_states == ["active"] * 3


def test_states_round_trip_and_reach_the_map():
    cfg, vol = group_with_mirror(["stale", "active", "syncing"], resync_done=1 << 20)
    back = GroupConfig.from_json(cfg.to_json()).volumes[0]
    assert back.plex_states == ["stale", "active", "syncing"] and back.resync_done == 1 << 20
    emap = ExtentMap(extent_map_wire(cfg, vol, {}))
    assert emap.generation == 5 and emap.readable == [1] and emap.writable == [1, 2]
    vol.plex_states = ["detaching", "active", "stale"]     # the first step of a detach
    emap = ExtentMap(extent_map_wire(cfg, vol, {}))
    assert emap.readable == [1] and emap.writable == [0, 1]


@pytest.mark.parametrize("states, resync_done, message", [
    (["stale", "stale", "syncing"], 0, "no active plex"),
    (["active", "gone", "active"], 0, "plex states do not match"),
    (["active", "active"], 0, "plex states do not match"),
    (["active", "syncing", "active"], 9 << 20, "resync position outside"),
])
def test_bad_states_are_refused(states, resync_done, message):
    cfg, _ = group_with_mirror(states, resync_done)
    with pytest.raises(MetadataError, match=message):
        GroupConfig.from_json(cfg.to_json())


def test_a_map_without_an_active_plex_is_refused():
    cfg, vol = group_with_mirror()
    wire = extent_map_wire(cfg, vol, {})
    wire["plex_states"] = ["stale", "syncing", "stale"]
    with pytest.raises(ProtocolError, match="no active plex"):
        ExtentMap(wire)
    wire["plex_states"] = ["active"]
    with pytest.raises(ProtocolError, match="do not match"):
        ExtentMap(wire)


def test_resize_keeps_plex_states():
    cfg, vol = group_with_mirror(["stale", "active", "syncing"], resync_done=4 << 20)
    grown = allocator.resize_volume(cfg, vol, 16 << 20)
    assert grown.plex_states == ["stale", "active", "syncing"] and grown.resync_done == 4 << 20
    shrunk = allocator.resize_volume(cfg, vol, 2 << 20)
    assert shrunk.plex_states == ["stale", "active", "syncing"] and shrunk.resync_done == 2 << 20
