"""The watchdog's judgement (pure) and its timing budget."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fencevol.errors import InvalidArgument
from vclient.watchdog import (
    ARMED,
    DISARMED,
    PING,
    TICK,
    Snapshot,
    decide,
    hw_timeout,
    ping_budget,
)

S = 1_000_000_000


def snap(ping=0, budget=1 * S, slots=(), state=ARMED):
    return Snapshot(state, ping, budget, tuple(slots))


def test_quiet_agent_is_left_alone():
    assert decide(snap(ping=10 * S), 10 * S + S) is None          # exactly at the budget
    assert decide(snap(ping=10 * S, slots=[(0, 5 * S)]), 10 * S) is None   # idle slot, old lease


def test_no_progress_past_the_budget_kills():
    why = decide(snap(ping=10 * S), 11 * S + 1)
    assert why and "no progress" in why


def test_a_write_pending_at_its_lease_end_kills():
    assert decide(snap(ping=10 * S, slots=[(0, 0), (1, 10 * S + 1)]), 10 * S) is None
    why = decide(snap(ping=10 * S, slots=[(0, 0), (1, 10 * S)]), 10 * S)
    assert why and "slot 1" in why and "lease" in why


def test_unarmed_or_disarmed_never_kills():
    for state in (0, DISARMED):
        assert decide(snap(state=state, ping=0, slots=[(3, 0)]), 100 * S) is None
    assert decide(snap(budget=0, ping=0), 100 * S) is None          # no budget yet: rule 1 off


@given(guard=st.floats(0.05, 3), margin=st.floats(0, 5), slack=st.floats(0, 3),
       t_admit=st.floats(0, 10), early=st.floats(0, 10))
def test_budget_fires_before_the_fence_ends(guard, margin, slack, t_admit, early):
    """For any accepted settings: a write admitted at t_admit, ``early`` seconds
    before the last moment the gate allows (the lease end L minus the guard), by an
    agent that froze right after its last ping, is killed at the latest one tick
    after the budget ran out: at least slack - tick before the server's earliest
    fence end, L + margin. A write pending at L is killed by L + tick, margin - tick
    before. Settings where that does not hold are refused."""
    try:
        budget = ping_budget(guard, margin, slack)
    except InvalidArgument:
        return
    L = t_admit + early + guard
    kill_rule1 = t_admit + budget + TICK
    kill_rule2 = L + TICK
    fence_end = L + margin
    assert fence_end - kill_rule1 >= slack - TICK - 1e-9
    assert fence_end - kill_rule2 >= slack - TICK - 1e-9
    assert budget >= 4 * PING


def test_impossible_settings_are_refused_with_a_reason():
    with pytest.raises(InvalidArgument, match="margin"):
        ping_budget(0.5, 0.2, 0.5)
    with pytest.raises(InvalidArgument, match="two watchdog ticks"):
        ping_budget(0.5, 1.0, 0.01)
    with pytest.raises(InvalidArgument, match="four pings"):
        ping_budget(0.1, 0.3, 0.3)
    assert ping_budget(0.5, 1.0) == pytest.approx(1.0)
    with pytest.raises(InvalidArgument, match="whole seconds"):
        hw_timeout(0.9)
    assert hw_timeout(1.7) == 1
