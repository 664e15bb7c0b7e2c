"""Coordinator format and the persistent-reservation table."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencevol import coord
from fencevol.errors import ChecksumError, InvalidArgument, ReservationConflict
from vserver.pr import PRTable


def test_coordinator_roundtrip_and_changes():
    m = coord.initial("prod", [3, 1, 2], now=100.0)
    assert m.generation == 1 and m.members == frozenset() and m.node_ids == {1, 2, 3}
    m2 = m.changed({2: {"is_member": True, "incarnation": 1}}, now=200.0)
    assert m2.generation == 2 and m2.members == {2}
    assert m2.record(2).changed_at == 200.0 and m2.record(1).changed_at == 100.0
    assert coord.decode(coord.encode(m2)) == m2
    assert len(coord.encode(m2)) % 512 == 0


@settings(max_examples=500)
@given(st.data())
def test_every_flipped_byte_in_the_coordinator_is_detected(data):
    m = coord.initial("cluster-a", list(range(1, 9)), now=1.0).changed({3: {"is_member": True}}, 2.0)
    raw = bytearray(coord.encode(m))
    used = coord.HEADER.size + len(m.records) * coord.RECORD.size
    i = data.draw(st.integers(0, used - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ChecksumError):
        coord.decode(bytes(raw))


def test_coordinator_bad_input():
    for nodes in ([], [1, 1], [0], list(range(1, 70))):
        with pytest.raises(InvalidArgument):
            coord.initial("c", nodes)
    with pytest.raises(InvalidArgument):
        coord.initial("x" * 33, [1])
    with pytest.raises(ChecksumError, match="not initialized"):
        coord.decode(bytes(4096))


def test_registration_keys_change_with_incarnation():
    k1 = coord.registration_key("c", 7, 1)
    k2 = coord.registration_key("c", 7, 2)
    assert k1 != k2 and coord.key_node(k1) == coord.key_node(k2) == 7
    assert coord.registration_key("other", 7, 1) != k1


SERVER, A, B = 0x4653000000000001, coord.registration_key("c", 1, 1), coord.registration_key("c", 2, 1)


def test_pr_write_exclusive_registrants_only():
    t = PRTable()
    t.register(SERVER, 0, 0)
    t.reserve(SERVER, "WERO")
    assert not t.may_write(A)                        # unregistered: reservation conflict
    t.register(A, 1, 0)
    t.register(B, 2, 0)
    assert t.may_write(A) and t.may_write(B)
    assert t.preempt(SERVER, A) is True              # PREEMPT AND ABORT of node 1
    assert not t.may_write(A) and t.may_write(B)
    assert t.preempt(SERVER, A) is False             # a second survivor's preempt is a no-op
    with pytest.raises(ReservationConflict, match="rejoin"):
        t.register(A, 1, 0)                          # the same key never comes back...
    t.register(coord.registration_key("c", 1, 2), 1, 0)   # ...a new incarnation does
    assert t.read_reservation() == (SERVER, "WERO")
    assert PRTable.from_json(t.to_json()) == t


def test_pr_reservation_rules():
    t = PRTable()
    with pytest.raises(ReservationConflict):
        t.reserve(A, "WE")                           # must register first
    t.register(A, 1, 0)
    t.register(B, 2, 0)
    t.reserve(A, "WE")
    assert t.may_write(A) and not t.may_write(B)
    with pytest.raises(ReservationConflict):
        t.reserve(B, "WE")
    t.preempt(B, A)                                  # preempting the holder takes the reservation
    assert t.read_reservation() == (B, "WE")
    t.release(B, "WE")
    assert t.read_reservation() is None and t.may_write(0xDEAD)
    t.clear(B)
    assert t.read_keys() == []
