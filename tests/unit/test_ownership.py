"""Disk-group ownership (vserver/ownership.py): the judgement of what was read, and
two in-process servers on the same disk image under trio's MockClock -- including
the case the lease alone cannot exclude, an old owner's configuration write that
lands after the takeover (frozen between its check and its write)."""

import pytest
import trio
from test_delegations import TERMS, FakeSession, call, connect, make_server

from vserver import ownership, storage
from vserver.handlers import dispatch
from vserver.handlers.common import next_config
from vserver.ownership import (DAMAGED, FREE, HELD, MINE, SUPERSEDED, Me, NotOwner, OwnerRecord,
                               judge, superseded)
from vserver.server import Settings, VolumeServer


def real_threads(clock):
    """Let virtual time jump only after 20 ms without activity, so a lease write in a
    worker thread lands before the clock runs past it: with the default 0, a slow
    write lets the other server's watching run ahead and the timing checks fail."""
    clock.autojump_threshold = 0.02


def rec(owner, epoch=1, counter=1, group="g"):
    return OwnerRecord(group, owner, "127.0.0.1:1", "h", 1, epoch, counter)


def test_judging_the_owner_blocks():
    assert judge([None, None], "g", "me")[0] == FREE
    assert judge([rec(""), rec("")], "g", "me")[0] == FREE                  # released
    assert judge([rec("me"), rec("")], "g", "me")[0] == MINE                # a half-done release
    assert judge([rec("other"), None], "g", "me") == (HELD, rec("other"))
    assert judge([rec("me"), DAMAGED], "g", "me")[0] == HELD                # someone writing
    assert judge([rec("me", 1), rec("other", 2)], "g", "me") == (HELD, rec("other", 2))
    assert judge([rec("other", group="older-group")], "g", "me")[0] == FREE  # a reused disk


def test_an_ha_leader_supersedes_only_earlier_leaders_of_its_own_control_plane():
    me = "ha:prod:9"
    assert superseded("ha:prod:5", me) and not superseded("ha:prod:9", me)
    assert not superseded("ha:prod:12", me)                 # a later leader: it is deposed
    assert not superseded("ha:test:5", me)                  # another control plane
    assert not superseded("5f3a0c", me) and not superseded("ha:prod:x", me)
    assert judge([rec("ha:prod:5"), rec("ha:prod:5")], "g", me)[0] == SUPERSEDED
    assert judge([rec("ha:prod:5"), rec("")], "g", me)[0] == SUPERSEDED
    assert judge([rec("ha:prod:5"), rec("ha:prod:12")], "g", me)[0] == HELD
    assert judge([rec("ha:prod:5"), DAMAGED], "g", me)[0] == HELD
    assert judge([rec("ha:test:5")], "g", me)[0] == HELD


async def test_a_new_ha_leader_takes_over_at_once_and_a_late_write_of_the_old_one_does_not_win(
        tmp_path, autojump_clock):
    real_threads(autojump_clock)
    a = await make_server(tmp_path)
    group = a.groups["dg"]
    fds, gid, terms = group.fds, group.config.id, a.settings.owner
    try:
        ownership.release(fds, group.ownership)
        group.ownership = None
        old = await ownership.acquire(fds, gid, "dg", Me("ha:c:5"), terms)
        t0 = trio.current_time()
        new = await ownership.acquire(fds, gid, "dg", Me("ha:c:9"), terms)
        assert trio.current_time() - t0 <= terms.settle          # no watching for expiry
        assert new.took_over and new.epoch == old.epoch + 1     # the caller jumps the generation
        # The old leader's renewal, frozen before its write, lands now.
        old.counter += 1
        ownership.write_all(fds[:1], old.record())
        await ownership.renew(fds, new, "dg")                   # still ours: rewritten
        await ownership.confirm(fds, new, "dg")
        assert ownership.confirms(ownership.read_all(fds), gid, "ha:c:9", new.epoch)
        with pytest.raises(NotOwner):
            await ownership.confirm(fds, old, "dg")
        # A later leader's record is not a late write: the older one steps down.
        newer = await ownership.acquire(fds, gid, "dg", Me("ha:c:14"), terms)
        with pytest.raises(NotOwner, match="took it over"):
            await ownership.renew(fds, new, "dg")
        assert newer.took_over
    finally:
        a.close(release=False)


def test_owner_terms_are_checked():
    with pytest.raises(Exception, match="owner lease"):
        ownership.OwnerTerms(renew=3, expiry=5, guard=1)


async def second_server(tmp_path) -> VolumeServer:
    srv = VolumeServer(Settings(state_dir=str(tmp_path / "b"), lease=TERMS))
    srv.open_state()
    return srv


async def test_a_live_owner_keeps_others_off_and_a_frozen_one_is_taken_over(tmp_path, autojump_clock):
    real_threads(autojump_clock)
    a = await make_server(tmp_path)                 # created dg: owns it
    b = await second_server(tmp_path)
    img = str(tmp_path / "d1.img")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a._ownership_loop)          # A renews
            t0 = trio.current_time()
            with pytest.raises(NotOwner, match="managed by server"):
                await call(b, FakeSession(), "dg_import", name="dg", paths=[img])
            assert trio.current_time() - t0 <= 2 * a.settings.owner.renew    # seen renewing: refused
            nursery.cancel_scope.cancel()                  # A freezes: no more renewals
        a_group = a.groups["dg"]
        a_cfg = a_group.config

        t0 = trio.current_time()
        await call(b, FakeSession(), "dg_import", name="dg", paths=[img])
        assert trio.current_time() - t0 >= b.settings.owner.expiry         # waited it out
        g = b.groups["dg"]
        assert g.config.generation >= a_cfg.generation + ownership.TAKEOVER_JUMP
        await call(b, FakeSession(), "vol_create", dg="dg", name="w", size=1 << 20)
        newest = b.groups["dg"].config

        # A's configuration write that passed its ownership check just before it
        # froze runs now: the disk holds a newer generation, and it is refused.
        stale = next_config(a_cfg, [])              # it would drop every volume
        with pytest.raises(NotOwner, match="another server manages the group"):
            storage.write_config(a_group, stale)
        # Worse: frozen after that check too, one slot write lands (the slot A's
        # memory says is free).
        a_disk = next(iter(a_group.disks.values()))
        a_disk.write_area(storage.ondisk.CONFIG, stale.to_json(), stale.generation)
        disk = storage.Disk.open(img)
        try:
            survivor = storage.group_from_disks("dg", [disk]).config
        finally:
            disk.close()
        assert survivor.generation == newest.generation            # B's copy still wins
        assert sorted(v.name for v in survivor.volumes) == ["v", "w"]

        # A, awake, is refused: for metadata and for grants.
        with pytest.raises(NotOwner, match="took it over"):
            await call(a, FakeSession(), "vol_create", dg="dg", name="x", size=1 << 20)
        with pytest.raises(NotOwner):
            await call(a, connect(a, 1), "attach", volume="dg/v")
        for op, args in (("pr_clear", {"disk": "d1"}), ("pr_preempt", {"node": 1})):
            with pytest.raises(NotOwner):                  # nor its reservation tables
                await call(a, FakeSession(), op, **args)

        # A renewal of A's, frozen before its write, lands after the takeover: A's
        # record is back on the disk, but the newer configuration still says A lost.
        a_group.ownership.lost = ""
        ownership.write_all(a_group.fds, a_group.ownership.record())
        with pytest.raises(NotOwner, match="another server managed the group since"):
            await call(a, connect(a, 1), "attach", volume="dg/v")
    finally:
        b.close()
        a.close()


async def test_a_released_group_is_claimed_at_once_and_a_restart_keeps_its_own(tmp_path, autojump_clock):
    real_threads(autojump_clock)
    a = await make_server(tmp_path)
    img = str(tmp_path / "d1.img")
    a.close()                                       # clean stop: releases the group
    b = await second_server(tmp_path)
    try:
        t0 = trio.current_time()
        await call(b, FakeSession(), "dg_import", name="dg", paths=[img])
        assert trio.current_time() - t0 < b.settings.owner.expiry
        assert not b.groups["dg"].ownership.took_over
        epoch = b.groups["dg"].ownership.epoch
    finally:
        b.close()
    # The same state directory restarted (its lock excludes a second process) after a
    # crash -- no release -- claims its own record without waiting.
    b = await second_server(tmp_path)
    try:
        b.groups["dg"].ownership = None
        t0 = trio.current_time()
        await b.claim_loaded_groups()
        assert b.groups["dg"].ownership.epoch == epoch + 1
        assert trio.current_time() - t0 < b.settings.owner.expiry
        result, _ = await dispatch(b, FakeSession(), {"op": "vol_list", "args": {}}, b"")
        assert [v["volume"] for v in result["volumes"]] == ["v"]
    finally:
        b.close()


async def test_an_owner_whose_lease_renewals_stall_stops_renewing_delegations_first(
        tmp_path, autojump_clock, monkeypatch):
    """A's owner-lease renewals stop (its disk I/O stalls, say) while it keeps
    answering nodes from memory. Before B can take the group over, A must have
    stopped renewing delegations for a lease + margin: else A's node writes on
    under a renewed lease while B grants the volume to another node."""
    real_threads(autojump_clock)
    a = await make_server(tmp_path)
    b = await second_server(tmp_path)
    img = str(tmp_path / "d1.img")
    try:
        write_all = ownership.write_all

        def a_cannot_write(fds, rec):               # A's writes to its disks stall and fail
            if rec.owner == a.server_id:
                raise OSError(5, "I/O error")
            write_all(fds, rec)

        monkeypatch.setattr(ownership, "write_all", a_cannot_write)
        n1 = connect(a, 1)
        deleg = (await call(a, n1, "attach", volume="dg/v"))["delegation"]["id"]
        renewed = []

        async def node_renews():                    # A's node, renewing every second
            while True:
                await trio.sleep(1)
                sent = trio.current_time()
                result = (await call(a, n1, "renew", delegations=[deleg]))["results"][deleg]
                if result["ok"]:
                    renewed.append(sent)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(node_renews)
            await call(b, FakeSession(), "dg_import", name="dg", paths=[img])
            taken_over = trio.current_time()
            nursery.cancel_scope.cancel()
        assert renewed, "A never renewed"
        # The node's last lease (counted from its request) ended before the takeover.
        assert renewed[-1] + TERMS.duration + TERMS.margin <= taken_over
    finally:
        b.close()
        a.close(release=False)


async def test_a_server_gets_its_group_back_after_another_preempted_its_key(tmp_path, autojump_clock):
    """B takes the group over and preempts A's reservation key (a tombstone). When
    A owns the group again (B stopped; or, with etcd, leadership went back to A), A
    must serve it: servers are kept apart by the owner lease, not by tombstones.
    Found by tools/check --ha: a leader that got the group back dropped it."""
    a = await make_server(tmp_path)
    img = str(tmp_path / "d1.img")
    a_key = a.server_key
    a.close()
    b = await second_server(tmp_path)
    try:
        await call(b, FakeSession(), "dg_import", name="dg", paths=[img])
        disk = next(iter(b.groups["dg"].disks.values()))
        assert a_key in disk.pr.preempted
    finally:
        b.close()
    a = VolumeServer(Settings(state_dir=str(tmp_path / "state"), lease=TERMS))
    a.open_state()
    try:
        await a.claim_loaded_groups()
        assert "dg" in a.groups and not a.group_errors
        pr = next(iter(a.groups["dg"].disks.values())).pr
        assert a_key in pr.registrations and pr.reservation[0] == a_key
        await call(a, connect(a, 1), "attach", volume="dg/v")
    finally:
        a.close()
