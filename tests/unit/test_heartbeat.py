"""Heartbeat reception: authentication, cluster and peer checks, mutual reachability,
and duplicate node ids (pure: datagrams are built and fed in, no sockets)."""

import hashlib
import hmac
import time

from fencevol.auth import Credential, issue_credential, pair_key
from vclient.heartbeat import TAG, Heartbeats

KEY = b"k" * 32
A1 = ("127.0.0.1", 7001)
A2 = ("127.0.0.1", 7002)
ELSEWHERE = ("127.0.0.9", 7002)


def node(n, peers, cluster="c1", key=KEY, state="member", changes=None):
    addrs = {1: [A1], 2: [A2], 3: [("127.0.0.1", 7003)]}
    on_change = (lambda: changes.append(1)) if changes is not None else (lambda: None)
    cred = key if isinstance(key, Credential) else Credential(key=key, cluster_key=key)
    return Heartbeats(cluster, n, cred, addrs[n], {p: addrs[p] for p in peers}, 0.25, 1.25,
                      lambda: {"i": 7, "st": state, "g": 3, "m": [1, 2]}, on_change)


T = time.monotonic()    # times are T + x (both sides take ``now`` as given)


def beat(sender: Heartbeats, now: float = T, hears=(), to=None) -> bytes:
    """A datagram from ``sender`` at ``now`` for node ``to`` (its only peer when
    None), after it heard a fresh heartbeat of each node in ``hears`` (Heartbeats
    objects) -- so it echoes their seqs."""
    for other in hears:
        sender.receive(other._encode(now, to=sender.node), 0, other.links[0], now)
    return sender._encode(now, to=to)


def test_mutual_reachability_needs_both_directions():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two), 0, A2, T)
    assert one.heard(T + 0.1) == {2}
    assert one.reachable(T + 0.1) == {1}            # 2 does not hear 1 yet
    one.receive(beat(two, T + 0.2, hears=[one]), 0, A2, T + 0.2)
    assert one.reachable(T + 0.3) == {1, 2}
    assert one.reachable(T + 0.2 + 1.3) == {1}      # silent past the timeout: lost


def test_view_changes_are_reported_once():
    changes = []
    one, two = node(1, [2], changes=changes), node(2, [1])
    one.receive(beat(two, T, hears=[one]), 0, A2, T)
    one.receive(beat(two, T + 0.25, hears=[one]), 0, A2, T + 0.25)
    assert len(changes) == 1


def test_a_replayed_heartbeat_never_rolls_a_peer_back():
    one, two = node(1, [2]), node(2, [1], state="joining")
    old = beat(two, T, hears=[one])
    two.snapshot = lambda: {"i": 8, "st": "member", "g": 4, "m": [1, 2]}
    one.receive(beat(two, T + 0.25, hears=[one]), 0, A2, T + 0.25)
    one.receive(old, 0, A2, T + 0.5)                 # captured earlier, replayed now
    assert one.peers[2].state == "member" and one.peers[2].generation == 4
    assert one.received == 1


def test_a_replay_of_a_dead_node_does_not_keep_it_reachable():
    """Issue 10, finding 3: one captured datagram of a dead node, replayed, kept it a
    member on the survivors. Replayed to a receiver that never saw it (restarted,
    no history), it is heard -- but it echoes a seq the receiver did not send
    within a timeout, so the node is not reachable."""
    one, two = node(1, [2]), node(2, [1])
    captured = beat(two, T, hears=[one])              # node 2 alive and hearing node 1
    for t in (T + 3.0, T + 3.25):                     # later: node 1 restarted, node 2 dead
        one._encode(t)
    fresh = node(1, [2])
    fresh._encode(T + 3.0)
    fresh.receive(captured, 0, A2, T + 3.1)
    assert fresh.heard(T + 3.1) == {2} and fresh.reachable(T + 3.1) == {1}
    one.receive(captured, 0, A2, T + 3.3)             # and the old receiver: stale echo
    assert one.reachable(T + 3.3) == {1}


def test_a_duplicate_report_expires():
    from vclient.heartbeat import DUPLICATE_MEMORY
    one = node(1, [2])
    one.receive(beat(node(1, [2]), to=1), 0, ELSEWHERE, T)
    assert "duplicate" in one.problems_at(T + 1)
    assert one.problems_at(T + DUPLICATE_MEMORY + 0.1) == {}


def test_rejected_datagrams_change_nothing():
    one = node(1, [2])
    good = beat(node(2, [1]))
    for data in (b"", good[:-1] + bytes([good[-1] ^ 1]), good[:TAG],
                 beat(node(2, [1], cluster="other")), beat(node(2, [1], key=b"x" * 32)),
                 beat(node(3, [1, 2]), to=1)):
        one.receive(data, 0, A2, T)
    assert one.received == 0 and one.heard(T) == frozenset()


def test_heartbeat_with_own_id_is_a_problem():
    one = node(1, [2])
    one.receive(beat(node(1, [2]), to=1), 0, ELSEWHERE, T)
    assert "duplicate" in one.problems_at(T) and one.received == 0


def test_second_source_for_a_node_id_is_ignored_and_reported():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two, T, hears=[one]), 0, A2, T)
    impostor = node(2, [1], state="joining")     # same id, another address, hears nobody
    for t in (T + 0.1, T + 0.3, T + 0.6):
        one.receive(beat(impostor, t), 0, ELSEWHERE, t)
        one.receive(beat(two, t + 0.05, hears=[one]), 0, A2, t + 0.05)
    assert one.reachable(T + 0.7) == {1, 2}         # no flapping over the real node 2
    assert one.peers[2].state == "member"
    assert "both 127.0.0.1:7002 and 127.0.0.9:7002" in one.problems_at(T + 0.7)["duplicate2"]


def test_new_source_after_silence_is_a_restart_not_a_duplicate():
    one, two = node(1, [2]), node(2, [1])
    one.receive(beat(two, T, hears=[one]), 0, A2, T)
    one.receive(beat(two, T + 1.3, hears=[one]), 0, ELSEWHERE, T + 1.3)
    assert one.peers[2].source[0] == ELSEWHERE and not one.problems_at(T + 1.3)


def test_forged_heartbeats_are_logged_rate_limited_with_bounded_memory(caplog):
    """Issue 10, finding 9: forged heartbeats logged one ERROR per source address
    forever (a log flood, and a set that grew with every spoofed port)."""
    one, two = node(1, [2]), node(2, [1])
    forged = beat(two)[:-TAG] + b"\0" * TAG
    with caplog.at_level("ERROR", logger="vclient.heartbeat"):
        for port in range(20000):                     # 20,000 spoofed sources in 10 s
            one.receive(forged, 0, ("10.0.0.1", 1024 + port), T + port / 2000)
        assert len(caplog.records) == 1 and "bad HMAC" in caplog.records[0].getMessage()
        one.receive(forged, 0, ("10.0.0.2", 9), T + 61)   # a minute later: one line, with a count
    assert len(caplog.records) == 2
    assert "19999 more like it" in caplog.records[1].getMessage()
    assert len(one._log._last) <= one._log.cap and one.received == 0


def test_a_node_credential_speaks_only_for_its_own_node(tmp_path):
    """Identities (issue 10): heartbeat tags use the key of the pair {sender,
    receiver}. Node 3, holding only its own credential, cannot make node 1 hear
    a heartbeat claiming to be node 2 -- with the old shared heartbeat key it could."""
    from fencevol import auth
    creds = {}
    for n in (1, 2, 3):
        path = tmp_path / f"node{n}.cred"
        auth.write_secret_file(str(path), issue_credential(KEY, n, [1, 2, 3]))
        creds[n] = auth.load_credential(str(path))
    assert creds[3].node == 3 and set(creds[3].pairs) == {1, 2}
    addrs = {1: [A1], 2: [A2], 3: [("127.0.0.1", 7003)]}

    def member(n):
        return Heartbeats("c1", n, creds[n], addrs[n], {p: addrs[p] for p in (1, 2, 3) if p != n},
                          0.25, 1.25, lambda: {"i": 7, "st": "member", "g": 3, "m": [1, 2, 3]},
                          lambda: None)
    one, two = member(1), member(2)
    one.receive(two._encode(T, to=1), 0, A2, T)                 # the real node 2: heard
    assert one.heard(T) == {2}
    # Node 3 forges node 2 with every key it has.
    body = two._body(T + 0.1)
    for key in creds[3].pairs.values():
        one.receive(body + hmac.new(key, body, hashlib.sha256).digest()[:TAG], 0, ELSEWHERE, T + 0.1)
    assert one.received == 1
    assert creds[1].pair(1, 2) == pair_key(KEY, 1, 2) == creds[2].pair(2, 1)
    assert creds[3].pair(3, 2) != creds[1].pair(1, 2)
