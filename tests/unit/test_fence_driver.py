"""The fence driver's handling of a fence the server does not confirm (virtual
time; a fake node stands in for the link and the gates)."""

import pytest
import trio

from fencevol.auth import Credential
from fencevol.errors import ChecksumError, InvalidArgument
from fencevol.protocol.messages import FenceReply, FenceRequest
from vclient.cluster import ClusterOptions, FenceDriver


class FakeNode:
    def __init__(self, answers):
        self.answers = list(answers)             # exceptions to raise, then success
        self.calls = 0
        self.paused: set[str] = set()
        self.credential = Credential(key=b"k" * 32, cluster_key=b"k" * 32)
        self.node_id = 1
        self.lease = {"duration": 4.0, "margin": 1.0}

    async def request(self, msg, payload=b"", timeout=None):
        assert isinstance(msg, FenceRequest)
        self.calls += 1
        if self.answers:
            raise self.answers.pop(0)
        victims = [v.node for v in msg.victims]
        return FenceReply(fenced=victims, preempted=len(victims), acknowledged=victims,
                          lease_expired=[], seconds=0.1), b""

    def pause_all(self, reason):
        self.paused.add(reason)

    def resume_all(self, reason):
        self.paused.discard(reason)


def driver(node):
    opts = ClusterOptions("c", "dg/coord", [("127.0.0.1", 7001)], {2: [("127.0.0.1", 7002)]})
    return FenceDriver(node, opts)


async def test_an_unconfirmed_fence_is_retried_until_confirmed(autojump_clock):
    node = FakeNode([ChecksumError("disk d0: damaged slot")] * 3)
    d = driver(node)
    t0 = trio.current_time()
    await d._fence([2], {2: 1})
    assert node.calls == 4 and d.unfenced == {}
    assert trio.current_time() - t0 >= 0.5 + 1 + 2              # backed off between tries
    assert d.stats.last_fence["victims"] == [2]


async def test_a_refused_fence_keeps_writes_paused_and_is_retried(autojump_clock):
    """A fence the server refuses outright must not let the survivor resume writing
    (the membership pause stays) until a later try is confirmed."""
    node = FakeNode([InvalidArgument("node 1 is not a member")])
    d = driver(node)
    d.state, d.members = "member", frozenset({1})
    node.pause_all("membership")
    with pytest.raises(InvalidArgument):
        await d._fence([2], {2: 1})
    assert d.unfenced == {2: 1} and "membership" in node.paused
    await d._check()                                   # the monitor's next look retries it
    assert node.calls == 2 and d.unfenced == {} and "membership" not in node.paused
