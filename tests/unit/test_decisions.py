"""Join, race and follow decisions over thousands of generated partition schedules.

A model server holds the coordinator: exclusive access serializes racers, and the
write is a compare-and-swap on the generation the racer read, as in
``coord_write``. Racers may stall after reading (SIGSTOP) and try their write
later, after others have written."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fencevol import coord
from vclient.decisions import (
    EJECTED as S_EJECTED,
    LEFT as S_LEFT,
    MEMBER as S_MEMBER,
    JoinRefused,
    PeerView,
    await_racer,
    fence_incarnations,
    follow,
    newer_view,
    participants,
    plan_join,
    plan_leave,
    plan_race,
    race_delay,
    racer_of,
)


class ModelCoordinator:
    def __init__(self, m):
        self.m = m
        self.writes = 0

    def cas(self, expected, new) -> bool:
        if self.m.generation != expected:
            return False
        assert new.generation == expected + 1
        self.m = new
        self.writes += 1
        return True


def all_members(n):
    m = coord.initial("c", list(range(1, n + 1)), now=0)
    for node in range(1, n + 1):
        plan = plan_join(m, "c", node, m.members, now=node)
        m = plan.new
    return m


@st.composite
def partitions(draw, n):
    """Assign each node to a subcluster; subclusters are numbered by first appearance."""
    groups = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    subs = {}
    for node, g in zip(range(1, n + 1), groups):
        subs.setdefault(g, set()).add(node)
    return [frozenset(s) for s in subs.values()]


@settings(max_examples=2000, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(partitions(n), st.randoms(use_true_random=False)),
                         min_size=1, max_size=6))))
def test_races_have_at_most_one_winner(case):
    n, schedule = case
    store = ModelCoordinator(all_members(n))
    for subs, rnd in schedule:
        before = store.m
        if len(subs) == 1:
            continue                                     # nothing lost, no race
        racers = [racer_of(s & before.members | {min(s)}) for s in subs]
        sub_of = {min(s): s for s in subs}
        rnd.shuffle(racers)
        # Some racers stall between reading and writing.
        stalled = []
        winners = []
        for r in racers:
            read = store.m
            res = plan_race(read, "c", r, sub_of[r], now=1)
            if res.won and res.new is not None and rnd.random() < 0.3:
                stalled.append((r, read, res))
                continue
            if res.won and res.new is not None:
                assert store.cas(read.generation, res.new)
            if res.won:
                winners.append(r)
        for r, read, res in stalled:                      # wake up later
            if store.cas(read.generation, res.new):
                winners.append(r)
        members = store.m.members
        # S5: the surviving membership lies inside one subcluster, and every racer
        # that believes it won is inside it.
        holders = [s for s in subs if members <= s]
        assert len(holders) == 1 or not members
        for w in winners:
            if w in members:
                assert sub_of[w] >= members
        winning_subs = {frozenset(sub_of[w]) for w in winners if w in members}
        assert len(winning_subs) <= 1
        if not members:
            break
        # Heal: the ejected nodes rejoin one by one.
        for node in sorted(set(range(1, n + 1)) - members):
            plan = plan_join(store.m, "c", node, store.m.members, now=2)
            assert store.cas(store.m.generation, plan.new)
        assert store.m.members == frozenset(range(1, n + 1))


def test_join_rules():
    m = coord.initial("c", [1, 2, 3], now=0)
    plan = plan_join(m, "c", 1, frozenset(), now=1)
    assert plan.new.members == {1} and plan.new.record(1).incarnation == 1
    m = plan.new
    with pytest.raises(JoinRefused, match="pre-existing split brain"):
        plan_join(m, "c", 2, frozenset(), now=2)          # node 1 recorded but not heard
    m = plan_join(m, "c", 2, frozenset({1}), now=2).new
    # Node 2 crashed and restarts while node 1 is alive: its stale record is reset.
    plan = plan_join(m, "c", 2, frozenset({1}), now=3)
    assert plan.crash_reset == {2} and plan.new.members == {1, 2}
    assert plan.new.record(2).incarnation == 2
    with pytest.raises(JoinRefused, match="cluster 'c'"):
        plan_join(m, "other", 3, frozenset({1, 2}), now=4)
    with pytest.raises(JoinRefused, match="no record"):
        plan_join(m, "c", 9, frozenset({1, 2}), now=4)
    with pytest.raises(JoinRefused, match="not in the coordinator"):
        plan_join(m, "c", 3, frozenset({1, 2, 7}), now=4)


def test_leave_and_lost_race():
    m = all_members(3)
    m = plan_leave(m, "c", 3, now=5)
    assert m.members == {1, 2}
    assert plan_leave(m, "c", 3, now=6) is None
    won = plan_race(m, "c", 1, frozenset({1}), now=7)
    assert won.won and won.victims == {2}
    lost = plan_race(won.new, "c", 2, frozenset({2}), now=8)
    assert not lost.won and "no longer a member" in lost.reason


def test_a_self_ejected_follower_is_removed_by_the_racer_that_wins_late():
    """Trial 173 of `tools/check --seed 43`: {1,2}|{3}, racer 1 frozen while holding
    the coordinator; follower 2 ejects itself (racer silent), then 1 wakes and wins
    with members [1, 2]. Node 2, heard but ejected, is not a participant: node 1
    sees it lost, races again and removes it."""
    m = all_members(3)
    won = plan_race(m, "c", 1, frozenset({1, 2}), now=1)
    assert won.won and won.new.members == {1, 2}
    states = {2: "ejected", 3: "member"}
    sub = participants(1, frozenset({1, 2}), states)
    assert sub == {1}
    again = plan_race(won.new, "c", 1, sub & won.new.members, now=2)
    assert again.won and again.victims == {2} and again.new.members == {1}
    assert participants(1, frozenset({1, 2, 3}), {2: "member", 3: "racing"}) == {1, 2, 3}
    assert participants(2, frozenset({2}), {2: "ejected"}) == {2}      # never drops itself


@st.composite
def hearing(draw, n):
    """Who hears whom: any directed graph (one-way cuts, non-transitive views)."""
    return {(i, j): draw(st.booleans()) for i in range(1, n + 1) for j in range(1, n + 1) if i != j}


def views_of(n, hears):
    """Each node's subcluster as the heartbeats define it: itself and every peer it
    hears that hears it too (``Heartbeats.reachable``)."""
    return {i: frozenset({i} | {j for j in range(1, n + 1)
                                if j != i and hears[(i, j)] and hears[(j, i)]})
            for i in range(1, n + 1)}


@settings(max_examples=2000, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(st.just(n), hearing(n),
                                                    st.randoms(use_true_random=False))))
def test_racers_with_asymmetric_views_retry_and_at_most_one_side_survives(case):
    """Arbitrary, non-transitive views (A hears B, B hears C, C does not hear A),
    one-way cuts, and racers interleaved at random between reading the coordinator
    and their compare-and-swap -- the real racer re-reads and re-plans when its
    write loses (``FenceDriver._race``). Whatever happens: the coordinator only
    loses members, every write removes only nodes outside its writer's view, and
    every racer that ends up a winner and still a member sees every final member."""
    n, hears, rnd = case
    store = ModelCoordinator(all_members(n))
    view = views_of(n, hears)
    start = store.m.members
    racers = [i for i in range(1, n + 1)
              if min(view[i]) == i and not start <= view[i]]       # lowest of a view that lost someone
    state = {r: ("read", None) for r in racers}
    outcome = {}
    steps = 0
    while state:
        steps += 1
        assert steps < 1000, "racers never finish"
        r = rnd.choice(sorted(state))
        phase, read = state[r]
        if phase == "read":
            m = store.m
            res = plan_race(m, "c", r, view[r], now=steps)
            if not res.won:
                outcome[r] = "lost"
                del state[r]
            elif res.new is None:
                outcome[r] = "won"
                del state[r]
            else:
                assert res.new.members <= m.members and r in res.new.members
                assert m.members - res.new.members == m.members - view[r]
                state[r] = ("write", (m, res))
        else:
            m, res = read
            if store.cas(m.generation, res.new):
                outcome[r] = "won"
                del state[r]
            else:
                state[r] = ("read", None)        # changed under it: judge again
    final = store.m.members
    assert final and final <= start
    for r, how in outcome.items():
        if how == "won" and r in final:
            assert final <= view[r], (r, view[r], final)


# -- the member's decisions on heartbeat views (issue 11: out of the I/O code) -------------
node_ids = st.integers(1, 8)
node_sets = st.frozensets(node_ids, max_size=8)
views = st.builds(PeerView, node_ids, st.sampled_from([S_MEMBER, S_LEFT, S_EJECTED, "racing",
                                                        "joining", "idle"]),
                  st.integers(0, 6), node_sets, st.integers(-1, 5))


@settings(max_examples=500, deadline=None)
@given(gen=st.integers(0, 6), peers=st.lists(views, max_size=6), heard=node_sets)
def test_the_newer_view_is_the_highest_generation_a_heard_member_announces(gen, peers, heard):
    eligible = [p for p in peers if p.node in heard and p.state in (S_MEMBER, S_LEFT)
                and p.generation > gen]
    got = newer_view(gen, peers, heard)
    if not eligible:
        assert got is None
    else:
        top = max(p.generation for p in eligible)
        assert got[0] == top and got in [(p.generation, p.members) for p in eligible
                                         if p.generation == top]


@settings(max_examples=500, deadline=None)
@given(me=node_ids, members=node_sets, new=node_sets, leavers=node_sets, gen=st.integers(1, 9))
def test_following_ejects_when_dropped_and_fences_exactly_the_dropped_non_leavers(
        me, members, new, leavers, gen):
    plan = follow(me, members, (gen, new), leavers)
    if me not in new:
        assert plan.eject and not plan.victims
    else:
        assert not plan.eject
        assert plan.victims == (members - new) - leavers
        assert me not in plan.victims


@settings(max_examples=500, deadline=None)
@given(me=node_ids, gen=st.integers(0, 6), racer=node_ids, reachable=st.booleans(),
       peer=st.none() | views)
def test_waiting_for_the_racer(me, gen, racer, reachable, peer):
    v = await_racer(me, gen, racer, reachable, peer)
    assert not (v.eject and v.view)
    if peer is None or not reachable:
        assert "silent" in v.eject                         # never waits on a silent racer
    elif v.view is not None:
        assert me in v.view[1] and v.view[0] > gen and peer.state == S_MEMBER
    elif not v.eject:                                      # waits only while it is racing
        assert peer.state != S_EJECTED and not (peer.state == S_MEMBER and peer.generation > gen)


@settings(max_examples=2000, deadline=None)
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(st.just(n), partitions(n))))
def test_after_a_partition_followers_fence_exactly_what_their_racer_removed(case):
    """plan_race, await_racer and follow together: every follower of a winning
    racer adopts the racer's view and fences exactly the racer's victims; a larger
    side never starts later than a smaller one."""
    n, subs = case
    m = all_members(n)
    for sub in subs:
        racer = racer_of(sub)
        result = plan_race(m, "c", racer, sub, now=1)
        if not result.won or result.new is None:
            continue
        announced = PeerView(racer, S_MEMBER, result.new.generation, result.new.members)
        for f in sub - {racer}:
            v = await_racer(f, m.generation, racer, True, announced)
            assert v.view == (result.new.generation, result.new.members)
            assert m.members - v.view[1] == result.victims
            assert follow(f, m.members, v.view, frozenset()).victims == result.victims
        for other in subs:
            if len(other) < len(sub):
                assert race_delay(len(sub), n, 0.5) <= race_delay(len(other), n, 0.5)
        assert (race_delay(len(sub), n, 0.5) > 0) == (2 * len(sub) < n)


@given(victims=st.lists(node_ids, unique=True, max_size=5),
       known=st.dictionaries(node_ids, st.integers(0, 9)),
       announced=st.dictionaries(node_ids, st.integers(-1, 9)))
def test_fence_incarnations_prefer_the_coordinator_then_the_announcement(victims, known, announced):
    got = fence_incarnations(victims, known, announced)
    assert set(got) == set(victims)
    for v in victims:
        if v in known:
            assert got[v] == known[v]
        elif announced.get(v, -1) >= 0:
            assert got[v] == announced[v]
        else:
            assert got[v] == coord.ANY_INCARNATION
