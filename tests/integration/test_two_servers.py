"""One owner per disk group (issue 12) with two real vserver processes and no etcd:
the owner-lease block on the disks keeps a second server off a group a live server
manages, lets it take over once the first is gone, and refuses the old owner's
writes when it wakes up."""

import os
import signal

import pytest
from testbed.processes import Server, vctl, vctl_json

pytestmark = pytest.mark.integration

# Renewed every 0.6 s, taken over after 3 s of silence; short delegation leases, as
# the owner stops renewing them a lease + margin before its owner lease could lapse.
LEASE = ("--owner-lease", "3", "--lease", "1", "--lease-margin", "0.3", "--lease-guard", "0.2")


def offsets(server, volume):
    show = vctl_json(server, "vol", "show", volume)
    return {(sd["disk_id"], sd["disk_offset"], sd["length"]) for p in show["plexes"]
            for c in p["columns"] for sd in c["subdisks"]}


def overlaps(a, b):
    return any(da == db and oa < ob + lb and ob < oa + la
               for da, oa, la in a for db, ob, lb in b)


@pytest.mark.timeout(90)
def test_a_second_server_is_kept_off_until_the_owner_is_gone_and_a_woken_owner_is_refused(tmp_path):
    img = str(tmp_path / "disk0.img")
    a = Server(tmp_path / "a", *LEASE)
    b = Server(tmp_path / "b", *LEASE)
    c = Server(tmp_path / "c", *LEASE)
    try:
        a.start()
        vctl(a, "disk", "init", img, "--size", "128M")
        vctl(a, "dg", "create", "dg", img)
        vctl(a, "vol", "create", "dg", "v1", "16M")
        b.start()

        # 1. While A lives, B's import is refused and names A.
        cp = vctl(b, "dg", "import", "dg", img, check=False)
        assert cp.returncode != 0 and "managed by server" in cp.stderr, cp.stderr
        assert a.address in cp.stderr, cp.stderr
        assert vctl_json(b, "dg", "list") == []

        # 2. A freezes (SIGSTOP: renewals stop). B takes the group over once A's
        #    record has not changed for the lease, and allocates next to A's volume.
        os.kill(a.pid, signal.SIGSTOP)
        vctl(b, "dg", "import", "dg", img)
        vctl(b, "vol", "create", "dg", "v2", "16M")
        assert not overlaps(offsets(b, "dg/v1"), offsets(b, "dg/v2"))

        # 3. A wakes up believing it still owns the group: its writes are refused,
        #    naming the new owner, and change nothing.
        os.kill(a.pid, signal.SIGCONT)
        cp = vctl(a, "vol", "create", "dg", "v3", "16M", check=False)
        assert cp.returncode != 0 and "took it over" in cp.stderr, cp.stderr
        assert b.address in cp.stderr, cp.stderr
        assert sorted(v["volume"] for v in vctl_json(b, "vol", "list")) == ["v1", "v2"]
        (group,) = vctl_json(a, "dg", "list")            # A says so in its status
        assert group["state"] == "degraded" and "took it over" in " ".join(group["problems"])

        # 4. B stops cleanly (releases the group): a third server imports it at once
        #    and sees B's configuration, not anything of A's.
        a.stop()
        b.stop()
        c.start()
        vctl(c, "dg", "import", "dg", img)
        assert sorted(v["volume"] for v in vctl_json(c, "vol", "list")) == ["v1", "v2"]
        assert "taken over" not in c.log_text()           # released, not lapsed
    finally:
        for s in (a, b, c):
            s.stop()
