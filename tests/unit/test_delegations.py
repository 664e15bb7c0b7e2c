"""Delegations and leases: the sans-IO table, then the server's attach logic
in-process under trio's MockClock (virtual time, real metadata files)."""

import pytest
import trio

from fencevol import coord
from fencevol.errors import Conflict, InUse, Revoked
from fencevol.lease import LeaseTerms
from vserver.delegations import REVOKED, DelegationTable
from vserver.handlers import dispatch
from vserver.server import Session, Settings, VolumeServer

TERMS = LeaseTerms(duration=4.0, margin=1.0, guard=0.5)


def test_table_lease_arithmetic():
    t = DelegationTable(TERMS)
    d = t.grant("dg/v", 1, "ex", now=100.0)
    assert [b.id for b in t.blockers("dg/v", 2, "ro", 103.9)] == [d.id]
    assert t.blockers("dg/v", 1, "ro", 103.9) == []          # own node never blocks
    t.renew(d.id, 1, 103.9)
    with pytest.raises(Revoked, match="expired"):
        t.renew(d.id, 1, 107.9)                                # lease ended at 107.9
    assert t.may_be_valid(d, 108.89)                           # ...but margin not over
    assert not t.may_be_valid(d, 108.9)
    assert t.expire(108.9) == [d]
    assert TERMS.client_write_deadline(50.0) == 53.5


def test_revoke_ack_frees_at_once():
    t = DelegationTable(TERMS)
    d = t.grant("dg/v", 1, "rw", 0.0)
    t.begin_revoke(d, "fence")
    with pytest.raises(Revoked):
        t.renew(d.id, 1, 0.1)
    assert t.blockers("dg/v", 2, "ex", 0.1)                    # not acked: may be valid
    assert t.acknowledge(d.id, node=2) is None                 # only the holder acks
    t.acknowledge(d.id, node=1)
    assert d.state == REVOKED and t.blockers("dg/v", 2, "ex", 0.1) == []


class RecordingConn:
    """Stands in for a framed connection: records what the server pushes."""

    def __init__(self):
        self.sent = []

    async def send(self, msg, payload=b""):
        self.sent.append(msg)


def FakeSession(role="admin", node=None) -> Session:
    return Session(RecordingConn(), role, node, "test")


def pushes(sess):
    return sess.conn.sent


async def call(srv, sess, op, **args):
    if op == "attach":
        args.setdefault("key", coord.registration_key("", sess.node, 1))
    result, _ = await dispatch(srv, sess, {"op": op, "args": args}, b"")
    return result


async def make_server(tmp_path) -> VolumeServer:
    srv = VolumeServer(Settings(state_dir=str(tmp_path / "state"), lease=TERMS))
    srv.open_state()
    admin = FakeSession()
    await call(srv, admin, "disk_init", path=str(tmp_path / "d1.img"), size=64 << 20)
    await call(srv, admin, "dg_create", name="dg", disks=[str(tmp_path / "d1.img")])
    await call(srv, admin, "vol_create", dg="dg", name="v", size=1 << 20)
    return srv


def connect(srv, node):
    s = FakeSession("node", node)
    srv.sessions[node] = s
    return s


async def test_conflicting_attach_waits_for_lease_plus_margin(tmp_path, autojump_clock):
    srv = await make_server(tmp_path)
    try:
        n1, n2 = connect(srv, 1), connect(srv, 2)
        await call(srv, n1, "attach", volume="dg/v", mode="ex")
        t_grant = trio.current_time()
        with pytest.raises(Conflict, match="node 1"):
            await call(srv, n2, "attach", volume="dg/v", mode="ro")   # live holder: refused
        srv._end_session(n1)                                            # holder vanishes
        await call(srv, n2, "attach", volume="dg/v", mode="ro")         # waits it out
        assert trio.current_time() >= t_grant + TERMS.duration + TERMS.margin
        assert [a["node"] for a in (await call(srv, n2, "status"))["attachments"]] == [2]
    finally:
        srv.close()


async def test_revoke_ack_lets_resize_proceed_before_lease_end(tmp_path, autojump_clock):
    srv = await make_server(tmp_path)
    try:
        n1 = connect(srv, 1)
        r = await call(srv, n1, "attach", volume="dg/v", mode="rw")
        deleg = r["delegation"]["id"]

        async def holder_acks():
            while not pushes(n1):
                await trio.sleep(0.01)
            assert pushes(n1)[0]["push"] == "revoke"
            await call(srv, n1, "revoke_ack", delegation=deleg)

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder_acks)
            info = await call(srv, FakeSession(), "vol_resize", volume="dg/v", size=2 << 20)
        assert trio.current_time() - t0 < 1.0
        assert info["size"] == 2 << 20
        assert pushes(n1)[-1]["push"] == "reinstate" and pushes(n1)[-1]["map"]["size"] == 2 << 20
        await call(srv, n1, "renew", delegations=[deleg])   # renewable again
        with pytest.raises(InUse):
            await call(srv, FakeSession(), "vol_resize", volume="dg/v", size=1 << 20)
    finally:
        srv.close()


async def test_restart_grace_period(tmp_path, autojump_clock):
    srv = await make_server(tmp_path)
    n1 = connect(srv, 1)
    deleg = (await call(srv, n1, "attach", volume="dg/v", mode="ex"))["delegation"]["id"]
    srv.close()                                     # "crash": nothing but disk state survives
    await trio.sleep(30)
    srv = VolumeServer(Settings(state_dir=str(tmp_path / "state"), lease=TERMS))
    srv.open_state()
    await srv.claim_loaded_groups()
    try:
        t_restart = trio.current_time()
        n1 = connect(srv, 1)
        n2 = connect(srv, 2)
        async with trio.open_nursery() as nursery:
            async def reclaim_late():
                await trio.sleep(2.0)               # inside the grace period
                r = await call(srv, n1, "renew", delegations=[deleg])
                assert r["results"][deleg]["ok"]
            nursery.start_soon(reclaim_late)
            with pytest.raises(Conflict):           # waited, then the holder reclaimed
                await call(srv, n2, "attach", volume="dg/v", mode="rw")
        assert trio.current_time() >= t_restart + 2.0
    finally:
        srv.close()


def test_lease_terms_cross_the_wire_as_one_message():
    """Issue 11: the client re-read the terms with defaults copied from LeaseTerms."""
    from fencevol.errors import ProtocolError
    from fencevol.lease import LeaseTerms
    t = LeaseTerms(duration=6.0, margin=2.0, guard=1.0)
    assert LeaseTerms.from_wire(t.to_wire()) == t
    assert LeaseTerms.from_wire(None) == LeaseTerms()
    assert LeaseTerms.from_wire(None).to_wire()["renew_interval"] == LeaseTerms().renew_interval
    for bad in ({"duration": "x"}, {"duration": -1}, {"duration": 4, "guard": 3}, [4.0]):
        with pytest.raises(ProtocolError):
            LeaseTerms.from_wire(bad)
