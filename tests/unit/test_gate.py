"""The fence gate under virtual time (trio MockClock; the gate reads the same clock)."""

import pytest
import trio

from fencevol.errors import Fenced, IOFailure
from vclient.gate import FENCED, INFLIGHT, LEASE_END, OPEN, PAUSED, FenceGate, local_slot


def gate(pause_timeout=10.0):
    return FenceGate(pause_timeout, clock=trio.current_time)


async def test_lease_deadline_and_renewal(autojump_clock):
    g = gate()
    g.renewed(trio.current_time() + 3.5)
    assert g.writable()
    await trio.sleep(3.4)
    assert g.writable()
    await trio.sleep(0.2)
    assert not g.writable() and g.describe()["state"] == PAUSED

    async def renew_later():
        await trio.sleep(4)
        g.renewed(trio.current_time() + 3.5)

    async with trio.open_nursery() as n:
        n.start_soon(renew_later)
        t0 = trio.current_time()
        await g.wait_writable()                       # waits for the renewal, no error
        assert trio.current_time() - t0 == pytest.approx(4)
    assert g.pauses == 1 and g.writes_rejected == 0 and g.renewals == 2


async def test_lapsed_lease_fails_after_pause_timeout(autojump_clock):
    g = gate(pause_timeout=2.0)
    g.renewed(trio.current_time() + 1)
    await trio.sleep(1)
    t0 = trio.current_time()
    with pytest.raises(IOFailure, match="paused for more than 2s"):
        await g.wait_writable()
    assert trio.current_time() - t0 == pytest.approx(2)
    assert g.writes_rejected == 1


async def test_fence_is_immediate_and_sticky(autojump_clock):
    g = gate()
    g.renewed(trio.current_time() + 100)
    g.fence("preempted by node 1")
    t0 = trio.current_time()
    with pytest.raises(Fenced, match="preempted"):
        await g.wait_writable()
    assert trio.current_time() == t0                  # at once, no waiting
    g.renewed(trio.current_time() + 100)              # a renewal does not lift a fence
    assert g.state is FENCED and not g.writable() and g.readable()
    g.unfence()
    g.renewed(trio.current_time() + 100)
    assert g.state is OPEN and g.writable()


async def test_reconfigure_pause_blocks_reads_and_drains_writes(autojump_clock):
    g = gate()
    g.renewed(trio.current_time() + 100)
    assert g.admit_nowait()                           # a write in flight
    g.pause("reconfigure")
    assert not g.readable() and not g.writable()
    events = []

    async def reader():
        await g.wait_readable()
        events.append(("read", trio.current_time()))

    async def finish_write():
        await trio.sleep(1)
        g.leave()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        n.start_soon(finish_write)
        await g.drain()
        events.append(("drained", trio.current_time()))
        await trio.sleep(1)
        g.renewed(trio.current_time() + 100)          # reinstated
    assert [e[0] for e in events] == ["drained", "read"]
    assert g.state is OPEN and g.pauses == 1


def test_admission_is_published_before_the_clock_is_read():
    """A process frozen right after the clock read must already be seen holding a
    write by the watchdog; the lease end it must finish by is published on renewal."""
    slot = local_slot()
    seen = []
    now = [0.0]

    def clock():
        seen.append(slot[INFLIGHT])
        return now[0]

    g = FenceGate(clock=clock, slot=slot)
    g.renewed(10.0, 10.5)
    assert slot[LEASE_END] == 10_500_000_000
    assert g.admit_nowait()
    assert seen[-1] == 1 and slot[INFLIGHT] == 1
    g.leave()
    assert slot[INFLIGHT] == 0
    now[0] = 10.0                                     # deadline reached: refused uncounted
    assert not g.admit_nowait()
    assert seen[-1] == 0 and slot[INFLIGHT] == 0 and g.inflight == 0
    g.renewed(9.0, 9.5)                               # an older grant never moves it back
    assert slot[LEASE_END] == 10_500_000_000


class SpySlot:
    """A watchdog slot that remembers every count the gate ever published."""

    def __init__(self):
        self.words = [0, 0]
        self.counts = []

    def __getitem__(self, i):
        return self.words[i]

    def __setitem__(self, i, v):
        self.words[i] = v
        if i == INFLIGHT:
            self.counts.append(v)


def test_a_refused_write_is_never_shown_to_the_watchdog():
    """Long run seed 400, trial 28: a fenced node whose application kept writing
    published a count of 1 for an instant on every refused write; the watchdog
    sampled one, saw a write "pending" 7.6 s past its lease, and killed a healthy
    node. Refused writes are now turned away before they are counted."""
    now = [0.0]
    slot = SpySlot()
    g = FenceGate(clock=lambda: now[0], slot=slot)
    g.renewed(10.0, 10.5)
    g.fence("ejected")
    assert not g.admit_nowait()
    g.unfence()
    g.pause("membership")
    assert not g.admit_nowait()
    g.resume("membership")
    now[0] = 11.0                                     # lease lapsed (server unreachable)
    assert not g.admit_nowait()
    assert slot.counts == [] and g.inflight == 0
    # The deadline passing between the two clock reads: counted and uncounted at
    # once, while the lease end (what the watchdog judges by) is still ahead.
    reads = iter([9.9, 10.0])
    g2 = FenceGate(clock=lambda: next(reads), slot=slot)
    g2.renewed(10.0, 10.5)
    assert not g2.admit_nowait()
    assert slot.counts == [1, 0] and slot[LEASE_END] == 10_500_000_000
