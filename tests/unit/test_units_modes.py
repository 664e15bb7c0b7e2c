import pytest

from fencevol.errors import InvalidArgument
from fencevol.modes import EW, EX, MODES, RO, RW, conflicts, parse_mode
from fencevol.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    ("512", 512), ("4K", 4096), ("4k", 4096), ("256M", 256 << 20), ("1G", 1 << 30),
    ("2T", 2 << 40), ("1.5G", 3 << 29), ("64KiB", 64 << 10), ("1MB", 1 << 20), (4096, 4096),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Q", "-1M", "0", "100", "1.1K", "1.0000001G", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_format_size():
    assert format_size(256 << 20) == "256 MiB"
    assert format_size(1536 << 20) == "1.5 GiB"
    assert format_size(100) == "100 B"


# The matrix of patent ¶0037, written out: True = may coexist (different nodes).
MATRIX = {
    (RO, RO): True, (RO, RW): True, (RO, EW): True, (RO, EX): False,
    (RW, RW): True, (RW, EW): False, (RW, EX): False,
    (EW, EW): False, (EW, EX): False, (EX, EX): False,
}


@pytest.mark.parametrize("a", MODES)
@pytest.mark.parametrize("b", MODES)
def test_conflict_matrix(a, b):
    expected = MATRIX.get((a, b), MATRIX.get((b, a)))
    assert conflicts(a, b) is (not expected)


def test_parse_mode():
    assert parse_mode("exclusive-write") == EW
    assert parse_mode("RO") == RO
    with pytest.raises(InvalidArgument):
        parse_mode("rx")
