"""The server's coordinator compare-and-swap, fence and reservation enforcement,
called in-process under trio's MockClock (virtual time, real metadata files)."""

import os

import pytest
import trio
from test_delegations import FakeSession, call, connect, make_server

from fencevol import coord
from fencevol.errors import ChecksumError, Conflict, InUse, InvalidArgument, ReservationConflict, Revoked
from vserver.handlers import dispatch
from vserver.server import VolumeServer

CID = "c"


def key(node, incarnation):
    return coord.registration_key(CID, node, incarnation)


def skey(node, incarnation):
    """A stand-alone node's key (no cluster)."""
    return coord.registration_key("", node, incarnation)


async def make_cluster_server(tmp_path) -> VolumeServer:
    """make_server's group (data volume dg/v) plus a coordinator for nodes 1 and 2."""
    srv = await make_server(tmp_path)
    await call(srv, FakeSession(), "coord_create", dg="dg", name="coord", cluster_id=CID, nodes=[1, 2])
    return srv


async def op(srv, sess, name, payload=b"", **args):
    return await dispatch(srv, sess, {"op": name, "args": args}, payload)


async def read_coord(srv, sess) -> tuple[str, coord.Membership]:
    r = await call(srv, sess, "attach", volume="dg/coord", mode="ew")
    deleg = r["delegation"]["id"]
    _, raw = await op(srv, sess, "read", delegation=deleg, offset=0, length=coord.BLOCK)
    return deleg, coord.decode(raw)


async def write_coord(srv, sess, deleg, expected, new):
    await op(srv, sess, "coord_write", coord.encode(new), delegation=deleg,
             expected_generation=expected)


async def join(srv, sess, node, incarnation):
    deleg, m = await read_coord(srv, sess)
    new = m.changed({node: {"is_member": True, "incarnation": incarnation}})
    await write_coord(srv, sess, deleg, m.generation, new)
    await call(srv, sess, "detach", delegation=deleg)
    return new


async def test_coordinator_write_is_a_compare_and_swap(tmp_path, autojump_clock):
    srv = await make_cluster_server(tmp_path)
    try:
        n1 = connect(srv, 1)
        deleg, m = await read_coord(srv, n1)
        await write_coord(srv, n1, deleg, m.generation, m.changed({1: {"is_member": True}}))
        with pytest.raises(Conflict, match="someone else changed"):
            await write_coord(srv, n1, deleg, m.generation, m.changed({2: {"is_member": True}}))
        with pytest.raises(InvalidArgument, match="next generation"):
            stale = m.changed({1: {"is_member": False}})          # generation m+1 again
            await write_coord(srv, n1, deleg, m.generation + 1, stale)
        await call(srv, n1, "detach", delegation=deleg)
        _, now = await read_coord(srv, connect(srv, 2))
        assert now.generation == m.generation + 1 and now.members == {1}   # the first write only
    finally:
        srv.close()


async def test_fence_is_for_members_and_spares_a_rejoined_incarnation(tmp_path, autojump_clock):
    srv = await make_cluster_server(tmp_path)
    try:
        n1, n2 = connect(srv, 1), connect(srv, 2)
        await join(srv, n1, 1, 1)
        await join(srv, n2, 2, 1)
        await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 1))
        d2 = (await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1)))
        victims = [{"node": 2, "incarnation": 1}]
        # Node 2 is still a member: nobody may fence it.
        with pytest.raises(InvalidArgument, match="still a member"):
            await call(srv, n1, "fence", coordinator="dg/coord", victims=victims)
        # Node 1 removes node 2 (the race), then fences; a non-member may not.
        deleg, m = await read_coord(srv, n1)
        await write_coord(srv, n1, deleg, m.generation, m.changed({2: {"is_member": False}}))
        await call(srv, n1, "detach", delegation=deleg)
        with pytest.raises(InvalidArgument, match="only members may fence"):
            await call(srv, n2, "fence", coordinator="dg/coord", victims=[{"node": 1, "incarnation": 1}])
        r = await call(srv, n1, "fence", coordinator="dg/coord", victims=victims)
        assert r["fenced"] == [2] and r["preempted"] == 1
        # Its delegation is gone, its remote writes refused, its old key cannot come back.
        with pytest.raises(Revoked):
            await op(srv, n2, "write", b"x" * 512, delegation=d2["delegation"]["id"], offset=0)
        with pytest.raises((ReservationConflict, InvalidArgument)):
            await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
        assert key(2, 1) in next(iter(srv.disks.values())).pr.preempted
        # Node 2 rejoins as incarnation 2; a late fence of incarnation 1 (a slow
        # survivor) must leave the new key registered and its writes working.
        await join(srv, n2, 2, 2)
        d2 = await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 2))
        await call(srv, n1, "fence", coordinator="dg/coord", victims=victims)
        keys = (await call(srv, FakeSession(), "pr_read_keys"))["disks"][0]["keys"]
        assert coord.format_key(key(2, 2)) in {k["key"] for k in keys}
        assert coord.format_key(key(2, 1)) not in {k["key"] for k in keys}
        await op(srv, n2, "write", b"y" * 512, delegation=d2["delegation"]["id"], offset=0)
    finally:
        srv.close()


async def test_remote_write_with_a_preempted_key_is_refused(tmp_path, autojump_clock):
    """The server enforces the reservation on its own I/O path: a node whose key an
    admin preempted cannot write through the server, whatever its gate says."""
    srv = await make_cluster_server(tmp_path)
    try:
        n2 = connect(srv, 2)
        await join(srv, n2, 2, 1)
        d = await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
        await op(srv, n2, "write", b"a" * 512, delegation=d["delegation"]["id"], offset=0)

        async def acknowledge():               # the holder acks the revoke push
            while not n2.conn.sent:
                await trio.sleep(0.01)
            await call(srv, n2, "revoke_ack", delegation=d["delegation"]["id"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(acknowledge)
            await call(srv, FakeSession(), "pr_preempt", key=coord.format_key(key(2, 1)))
        with pytest.raises((Revoked, ReservationConflict)):
            await op(srv, n2, "write", b"b" * 512, delegation=d["delegation"]["id"], offset=0)
    finally:
        srv.close()


def corrupt_slot(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset + 40)
        b = f.read(1)
        f.seek(offset + 40)
        f.write(bytes([b[0] ^ 0xFF]))


async def fenceable(tmp_path):
    """Nodes 1 and 2 members, both attached with keys; node 2 then removed."""
    srv = await make_cluster_server(tmp_path)
    n1, n2 = connect(srv, 1), connect(srv, 2)
    await join(srv, n1, 1, 1)
    await join(srv, n2, 2, 1)
    await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 1))
    await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
    deleg, m = await read_coord(srv, n1)
    await write_coord(srv, n1, deleg, m.generation, m.changed({2: {"is_member": False}}))
    await call(srv, n1, "detach", delegation=deleg)
    return srv, n1, n2


async def test_fence_covers_a_disk_with_a_damaged_older_label(tmp_path, autojump_clock):
    """Issue 10, finding 1: a CRC error in the unused older label copy made the fence
    skip the disk and report success with nothing preempted."""
    from fencevol import ondisk
    srv, n1, n2 = await fenceable(tmp_path)
    try:
        disk = next(iter(srv.disks.values()))
        older = 1 - disk.areas[ondisk.LABEL].best.slot
        corrupt_slot(disk.path, ondisk.slot_offset(ondisk.LABEL, older))
        disk.reload()
        assert disk.problems
        r = await call(srv, n1, "fence", coordinator="dg/coord", victims=[{"node": 2, "incarnation": 1}])
        assert r["preempted"] == 1
        disk.reload()                                  # persisted, not only in memory
        assert key(2, 1) not in disk.pr.registrations and key(2, 1) in disk.pr.preempted
        with pytest.raises((ReservationConflict, InvalidArgument)):
            await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
    finally:
        srv.close()


async def test_fence_that_cannot_be_persisted_is_refused(tmp_path, autojump_clock):
    """The reservation slot the fence must write is damaged: the server stops
    honouring the key at once but does not report the fence done (the survivors
    keep their writes paused and retry); after `dg repair` it succeeds."""
    from fencevol import ondisk
    srv, n1, n2 = await fenceable(tmp_path)
    try:
        disk = next(iter(srv.disks.values()))
        target = disk.areas[ondisk.PR].next_slot
        corrupt_slot(disk.path, ondisk.slot_offset(ondisk.PR, target))
        disk.reload()
        victims = [{"node": 2, "incarnation": 1}]
        with pytest.raises(ChecksumError, match="not on every disk"):
            await call(srv, n1, "fence", coordinator="dg/coord", victims=victims)
        with pytest.raises((ReservationConflict, ChecksumError, InvalidArgument)):   # refused
            await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
        await call(srv, FakeSession(), "dg_repair", name="dg")
        assert key(2, 1) in disk.pr.preempted          # the repair persisted what memory held
        with pytest.raises((ReservationConflict, InvalidArgument)):   # no window before the retry
            await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))
        r = await call(srv, n1, "fence", coordinator="dg/coord", victims=victims)
        assert r["fenced"] == [2]
        disk.reload()
        assert key(2, 1) in disk.pr.preempted
    finally:
        srv.close()


def zero_slot(path, kind, slot):
    from fencevol import ondisk
    with open(path, "r+b") as f:
        f.seek(ondisk.slot_offset(kind, slot))
        f.write(bytes(4096))


async def test_a_zeroed_newest_reservation_copy_does_not_roll_back_a_fence(tmp_path, autojump_clock):
    """Issue 10, finding 2: zeroing the newest copy of the reservation table brought
    back the previous one, with the fenced key registered again, as "ok"."""
    from fencevol import ondisk
    srv, n1, n2 = await fenceable(tmp_path)
    try:
        await call(srv, n1, "fence", coordinator="dg/coord", victims=[{"node": 2, "incarnation": 1}])
        disk = next(iter(srv.disks.values()))
        zero_slot(disk.path, ondisk.PR, disk.areas[ondisk.PR].best.slot)
        disk.reload()                                   # as a restarted server would read it
        assert key(2, 1) in disk.pr.registrations        # the older copy is what is left...
        assert any("wiped" in p for p in disk.problems)  # ...and it is reported, not "ok"
        with pytest.raises(ChecksumError, match="reservation table is damaged or missing a copy"):
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 1))   # even a member
        r = await call(srv, FakeSession(), "dg_repair", name="dg")
        assert any("rewritten from generation" in x and "fence again" in x for x in r["repaired"]), r
    finally:
        srv.close()


async def test_a_zeroed_newest_configuration_everywhere_is_reported_and_repaired_knowingly(
        tmp_path, autojump_clock):
    from fencevol import ondisk
    srv = await make_cluster_server(tmp_path)
    try:
        admin = FakeSession()
        await call(srv, admin, "vol_create", dg="dg", name="late", size=1 << 20)
        for disk in srv.disks.values():
            zero_slot(disk.path, ondisk.CONFIG, disk.areas[ondisk.CONFIG].best.slot)
            disk.reload()
            assert any("wiped" in p for p in disk.problems)
        group = srv.groups["dg"]
        with pytest.raises(ChecksumError):
            group.check_writable()                      # no volume goes on the rolled-back map
        r = await call(srv, admin, "dg_repair", name="dg")
        assert any("falls back to generation" in x for x in r["repaired"]), r
        assert all(not d.problems for d in srv.disks.values())
    finally:
        srv.close()


async def test_remote_io_offsets_past_the_volume_are_refused_cleanly(tmp_path, autojump_clock):
    """Issue 10, finding 8: a read at offset >= 2**63 gave an internal OverflowError."""
    srv = await make_cluster_server(tmp_path)
    try:
        n1 = connect(srv, 1)
        await join(srv, n1, 1, 1)
        d = await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 1))
        for offset in (2 ** 63, (1 << 20) + 1, -1):
            with pytest.raises(InvalidArgument, match="offset must be"):
                await op(srv, n1, "read", delegation=d["delegation"]["id"], offset=offset, length=512)
    finally:
        srv.close()


async def test_registrations_do_not_pile_up(tmp_path, autojump_clock):
    """Issue 10, finding 6: keys were never removed; after ~510 attaches every
    attach failed ("does not fit its slot") while status said ok. Detaches, failed
    attaches and a node's earlier incarnations now leave no key behind."""
    srv = await make_cluster_server(tmp_path)      # nodes 1 and 2 stand-alone here
    try:
        disk = next(iter(srv.disks.values()))
        n1, n2 = connect(srv, 1), connect(srv, 2)
        for inc in range(1, 601):                          # 600 attach/detach cycles
            d = await call(srv, n1, "attach", volume="dg/v", mode="rw", key=skey(1, inc))
            await call(srv, n1, "detach", delegation=d["delegation"]["id"])
        assert {k for k in disk.pr.registrations if coord.key_node(k) == 1} == set()
        for inc in range(1, 301):                          # restarts that never detached
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=skey(1, 1000 + inc))
            srv.table.by_id.clear()                        # the holder vanished, lease gone
        assert [k for k in disk.pr.registrations if coord.key_node(k) == 1] == [skey(1, 1300)]
        held = await call(srv, n2, "attach", volume="dg/v", mode="ex", key=skey(2, 1))
        with pytest.raises(Conflict):                      # a refused attach keeps no key
            await call(srv, n1, "attach", volume="dg/v", mode="ex", key=skey(1, 2000))
        assert skey(1, 2000) not in disk.pr.registrations
        status = await call(srv, FakeSession(), "status")
        assert all(d["state"] == "ok" for d in status["disks"]), status["disks"]
        assert held
        for n in range(10, 560):                           # a table really filling up is said
            disk.pr.register(skey(n, 1), n, 0.0)
        status = await call(srv, FakeSession(), "status")
        assert any("reservation table" in p and "full" in p for p in status["disks"][0]["problems"])
    finally:
        srv.close()


async def test_a_damaged_newest_label_copy_keeps_the_disk_in_its_group(tmp_path, autojump_clock):
    """Issue 10, finding 5: one flipped byte in the newest label copy left the older
    copy (no group): the disk was 'missing', repair and import refused, attach hit a
    KeyError, and the message suggested `disk init --force`."""
    from fencevol import ondisk
    from vserver.server import Settings
    from vserver.storage import Disk
    srv = await make_cluster_server(tmp_path)
    path = next(iter(srv.disks.values())).path
    disk = Disk.open(path)
    try:
        corrupt_slot(path, ondisk.slot_offset(ondisk.LABEL, disk.areas[ondisk.LABEL].best.slot))
    finally:
        disk.close()
    srv.close()
    srv = VolumeServer(Settings(state_dir=str(tmp_path / "state"), lease=srv.terms))
    srv.open_state()                                    # a restart reads the damaged label
    await srv.claim_loaded_groups()
    try:
        assert "dg" in srv.groups and not srv.groups["dg"].missing
        disk = next(iter(srv.disks.values()))
        assert any("membership recovered" in p for p in disk.problems)
        n1 = connect(srv, 1)
        await call(srv, n1, "attach", volume="dg/v", mode="rw", key=skey(1, 1))  # no KeyError
        admin = FakeSession()
        with pytest.raises(Exception) as exc:
            await call(srv, admin, "disk_init", path=path)
        assert "--force" not in str(exc.value) and "belongs to disk group dg" in str(exc.value)
        r = await call(srv, admin, "dg_repair", name="dg")
        assert r["repaired"]
        disk.reload()
        assert disk.label.dg_name == "dg" and not disk.problems
    finally:
        srv.close()


async def test_attach_keys_must_be_the_nodes_current_identity(tmp_path, autojump_clock):
    """Issue 10, finding 9: a key whose cluster bits were not the cluster's was
    accepted (and a member's stand-alone key escapes the fence, which preempts by
    cluster). Keys are checked against the coordinators on this server."""
    srv = await make_cluster_server(tmp_path)
    try:
        n1, n2 = connect(srv, 1), connect(srv, 2)
        foreign = coord.registration_key("other-cluster", 1, 1)
        with pytest.raises(InvalidArgument, match="name no cluster"):
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=foreign)
        with pytest.raises(InvalidArgument, match="not a member"):      # cluster key before join
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 1))
        await join(srv, n1, 1, 3)
        with pytest.raises(InvalidArgument, match="lists incarnation 3"):   # a stale process
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 2))
        with pytest.raises(InvalidArgument, match="lists incarnation 3"):   # never joined
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 4))
        with pytest.raises(InvalidArgument, match="must carry that cluster's bits"):
            await call(srv, n1, "attach", volume="dg/v", mode="rw", key=skey(1, 3))
        await call(srv, n1, "attach", volume="dg/v", mode="rw", key=key(1, 3))
        await call(srv, n2, "attach", volume="dg/v", mode="rw", key=skey(2, 9))   # not a member
        keys = set(next(iter(srv.disks.values())).pr.registrations) - {srv.server_key}
        assert keys == {key(1, 3), skey(2, 9)}            # nothing refused left a key behind
    finally:
        srv.close()


async def test_a_preempted_key_is_refused_on_every_disk(tmp_path, autojump_clock):
    """Issue 10, finding 9: a preempted key was blocked per disk only, so the fenced
    incarnation could attach a volume on another disk."""
    srv = await make_cluster_server(tmp_path)
    try:
        admin = FakeSession()
        await call(srv, admin, "disk_init", path=str(tmp_path / "d2.img"), size=64 << 20)
        await call(srv, admin, "dg_create", name="dg2", disks=[str(tmp_path / "d2.img")])
        await call(srv, admin, "vol_create", dg="dg2", name="w", size=1 << 20)
        n2 = connect(srv, 2)
        await join(srv, n2, 2, 1)
        d = await call(srv, n2, "attach", volume="dg/v", mode="rw", key=key(2, 1))

        async def acknowledge():
            while not n2.conn.sent:
                await trio.sleep(0.01)
            await call(srv, n2, "revoke_ack", delegation=d["delegation"]["id"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(acknowledge)
            await call(srv, admin, "pr_preempt", key=coord.format_key(key(2, 1)))
        with pytest.raises(ReservationConflict, match="was preempted"):
            await call(srv, n2, "attach", volume="dg2/w", mode="rw", key=key(2, 1))
        d2 = srv.groups["dg2"].disks
        assert all(key(2, 1) not in disk.pr.registrations for disk in d2.values())
    finally:
        srv.close()


async def test_coord_clear_is_refused_while_members_are_up(tmp_path, autojump_clock):
    """Issue 10, finding 9: `vctl coord clear` succeeded while nodes were members,
    letting a partitioned node join beside the live cluster."""
    srv = await make_cluster_server(tmp_path)
    try:
        admin = FakeSession()
        n1 = connect(srv, 1)
        before = await join(srv, n1, 1, 1)
        with pytest.raises(InUse, match="node\\(s\\) 1 of cluster c are members and still up"):
            await call(srv, admin, "coord_clear", volume="dg/coord")
        n2 = connect(srv, 2)
        deleg, m = await read_coord(srv, n2)
        await call(srv, n2, "detach", delegation=deleg)
        assert m.generation == before.generation and m.members == {1}    # nothing written
        r = await call(srv, admin, "coord_clear", volume="dg/coord", force=True)
        assert r["forced_live"] == [1] and r["membership"]["generation"] == before.generation + 1
        await join(srv, n1, 1, 2)
        srv._end_session(n1)                        # the whole cluster went down
        srv._end_session(n2)
        srv.table.by_id.clear()
        r = await call(srv, admin, "coord_clear", volume="dg/coord")
        assert r["forced_live"] == [] and not any(x["is_member"] for x in r["membership"]["records"])
    finally:
        srv.close()


async def test_a_truncated_disk_is_not_imported(tmp_path, autojump_clock):
    """Issue 10, finding 9: a disk truncated to 2 MiB imported "successfully"; the
    label's size is now compared with the device's."""
    from vserver.server import Settings
    srv = await make_server(tmp_path)
    srv.close()
    path = str(tmp_path / "d1.img")
    os.truncate(path, 2 << 20)
    fresh = VolumeServer(Settings(state_dir=str(tmp_path / "other"), lease=srv.terms))
    fresh.open_state()
    try:
        with pytest.raises(InvalidArgument, match="truncated: 2 MiB but its label says 64 MiB"):
            await call(fresh, FakeSession(), "dg_import", name="dg", paths=[path])
        assert "dg" not in fresh.groups and not fresh.disks
    finally:
        fresh.close()
    again = VolumeServer(Settings(state_dir=str(tmp_path / "state"), lease=srv.terms))
    again.open_state()                                  # the server that had it says so
    try:
        status = await call(again, FakeSession(), "status")
        assert any("truncated" in p for d in status["disks"] for p in d["problems"]), status["disks"]
    finally:
        again.close()
