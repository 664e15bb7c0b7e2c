"""fencevol.directio against an in-memory model: any offset and length, read and
written with O_DIRECT (partial blocks read, patched and written back)."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencevol import directio

SIZE = 64 << 10


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("dio") / "disk.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    fd = directio.open_direct(str(path))
    try:
        yield fd, directio.block_size(fd), bytearray(SIZE)
    finally:
        os.close(fd)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 9000)), min_size=1, max_size=6))
def test_any_range_round_trips(disk, writes):
    fd, block, model = disk
    assert block in (512, 4096)
    for off, n in writes:
        n = min(n, SIZE - off)
        data = os.urandom(n)
        directio.write_range(fd, off, data, block)
        model[off:off + n] = data
        assert directio.read_range(fd, off, n, block) == data
    assert directio.read_range(fd, 0, SIZE, block) == bytes(model)


def test_reads_past_the_end_are_short(disk):
    fd, block, model = disk
    assert directio.read_range(fd, SIZE - 10, 100, block) == bytes(model[SIZE - 10:])
    assert directio.read_range(fd, SIZE + 4096, 10, block) == b""


def test_a_filesystem_without_direct_io_gets_a_clear_error(monkeypatch):
    import errno

    def refuse(path, flags, *a):
        assert flags & os.O_DIRECT
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(directio.InvalidArgument, match="refuses direct I/O"):
        directio.open_direct("/some/tmpfs/disk.img")
