import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencevol import ondisk
from fencevol.errors import ChecksumError
from vserver.model import DiskRecord, GroupConfig, MetadataError, Subdisk, Volume


@pytest.fixture
def disk_fd(tmp_path):
    path = tmp_path / "d.img"
    with open(path, "wb") as f:
        f.truncate(ondisk.MIN_DISK_SIZE)
    fd = os.open(path, os.O_RDWR)
    yield fd
    os.close(fd)


def sample_config() -> GroupConfig:
    d = DiskRecord("d" * 32, "disk0", 64 << 20, ondisk.PRIVATE_SIZE)
    v = Volume("v" * 32, "vol", 1 << 20, "concat", [[[Subdisk(d.id, ondisk.PRIVATE_SIZE, 1 << 20)]]])
    return GroupConfig("g" * 32, "dg", 7, [d], [v])


@settings(max_examples=400)
@given(st.data())
def test_every_flipped_byte_in_a_slot_is_detected(data):
    payload = json.dumps(sample_config().to_json()).encode()
    raw = bytearray(ondisk.encode_slot(ondisk.CONFIG, 7, payload))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    st_ = ondisk.decode_slot(ondisk.CONFIG, 0, bytes(raw) + bytes(64))
    assert st_.payload is None
    assert st_.problem  # reported, not silently taken as empty


def test_config_roundtrip_and_validation():
    cfg = sample_config()
    assert GroupConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    bad = cfg.to_json()
    bad["volumes"][0]["plexes"][0][0][0][1] = 0  # subdisk inside the private region
    with pytest.raises(MetadataError):
        GroupConfig.from_json(bad)


def test_alternating_slots_survive_a_torn_write(disk_fd):
    area = ondisk.read_area(disk_fd, ondisk.CONFIG)
    assert area.best is None and not area.problems
    area = ondisk.write_area(disk_fd, area, {"n": 1})
    area = ondisk.write_area(disk_fd, area, {"n": 2})
    assert (area.generation, area.best.slot) == (2, 1)
    # Tear the next write: only half of the new copy reaches slot A.
    data = ondisk.encode_slot(ondisk.CONFIG, 3, json.dumps({"n": 3, "pad": "x" * 5000}).encode())
    os.pwrite(disk_fd, data[:len(data) // 2], ondisk.slot_offset(ondisk.CONFIG, 0))
    again = ondisk.read_area(disk_fd, ondisk.CONFIG)
    assert again.json() == {"n": 2}                  # the old copy, intact
    assert "CRC-32C mismatch" in again.problems[0]   # the torn one, reported
    with pytest.raises(ChecksumError):               # and never overwritten silently
        ondisk.write_area(disk_fd, again, {"n": 4})
