"""Heartbeat reception: authentication, cluster and peer checks, mutual reachability,
and duplicate node ids (pure: datagrams are built and fed in, no sockets)."""

import time

from vclient.heartbeat import TAG, Heartbeats

KEY = b"k" * 32
A1 = ("127.0.0.1", 7001)
A2 = ("127.0.0.1", 7002)
ELSEWHERE = ("127.0.0.9", 7002)


def node(n, peers, cluster="c1", key=KEY, state="member", changes=None):
    addrs = {1: [A1], 2: [A2], 3: [("127.0.0.1", 7003)]}
    on_change = (lambda: changes.append(1)) if changes is not None else (lambda: None)
    return Heartbeats(cluster, n, key, addrs[n], {p: addrs[p] for p in peers}, 0.25, 1.25,
                      lambda: {"i": 7, "st": state, "g": 3, "m": [1, 2]}, on_change)


def beat(sender: Heartbeats, hears=()) -> bytes:
    """A datagram from ``sender``, which hears ``hears`` (encoding reads the clock)."""
    for n in hears:
        sender.peers[n].last_heard = time.monotonic()
    return sender._encode()


T = time.monotonic()    # receive times are T + x (the receiver takes ``now`` as given)


def test_mutual_reachability_needs_both_directions():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two), 0, A2, T)
    assert one.heard(T + 0.1) == {2}
    assert one.reachable(T + 0.1) == {1}            # 2 does not hear 1 yet
    one.receive(beat(two, hears=[1]), 0, A2, T + 0.2)
    assert one.reachable(T + 0.3) == {1, 2}
    assert one.reachable(T + 0.2 + 1.3) == {1}      # silent past the timeout: lost


def test_view_changes_are_reported_once():
    changes = []
    one, two = node(1, [2], changes=changes), node(2, [1])
    one.receive(beat(two, hears=[1]), 0, A2, T)
    one.receive(beat(two, hears=[1]), 0, A2, T + 0.25)
    assert len(changes) == 1


def test_rejected_datagrams_change_nothing():
    one = node(1, [2])
    good = beat(node(2, [1]))
    for data in (b"", good[:-1] + bytes([good[-1] ^ 1]), good[:TAG],
                 beat(node(2, [1], cluster="other")), beat(node(2, [1], key=b"x" * 32)),
                 beat(node(3, [1, 2]))):
        one.receive(data, 0, A2, T)
    assert one.received == 0 and one.heard(T) == frozenset()


def test_heartbeat_with_own_id_is_a_problem():
    one = node(1, [2])
    one.receive(beat(node(1, [2])), 0, ELSEWHERE, T)
    assert "duplicate" in one.problems and one.received == 0


def test_second_source_for_a_node_id_is_ignored_and_reported():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two, hears=[1]), 0, A2, T)
    impostor = node(2, [1], state="joining")     # same id, another address, hears nobody
    for t in (T + 0.1, T + 0.3, T + 0.6):
        one.receive(beat(impostor), 0, ELSEWHERE, t)
        one.receive(beat(two, hears=[1]), 0, A2, t + 0.05)
    assert one.reachable(T + 0.7) == {1, 2}         # no flapping over the real node 2
    assert one.peers[2].state == "member"
    assert "both 127.0.0.1:7002 and 127.0.0.9:7002" in one.problems["duplicate2"]


def test_new_source_after_silence_is_a_restart_not_a_duplicate():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two, hears=[1]), 0, A2, T)
    one.receive(beat(two, hears=[1]), 0, ELSEWHERE, T + 1.3)
    assert one.peers[2].source[0] == ELSEWHERE and not one.problems
