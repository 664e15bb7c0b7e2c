import os

import pytest

from testbed.processes import Server


@pytest.fixture
def server(tmp_path, request):
    """A running vserver on a fresh state directory (extra flags from a
    ``server_args`` mark); stopped even if the test fails."""
    mark = request.node.get_closest_marker("server_args")
    srv = Server(tmp_path / "state", *(mark.args if mark else ()))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clients(server, tmp_path):
    """Factory for vclient processes; every one is stopped and unmounted at the end."""
    started = []

    def make(node_id, *attach, extra=(), start=True, wait=True):
        from testbed.processes import Client
        c = Client(server, node_id, tmp_path, *attach, extra=extra)
        started.append(c)
        if start:
            c.start(wait=wait)
        return c

    try:
        yield make
    finally:
        for c in started:
            c.stop()


@pytest.fixture
def loop_devices():
    """Factory for loop devices over an image; all are detached at the end."""
    from testbed.disks import attach_loop, detach_loop
    made = []

    def attach(image, direct_io=False):
        dev = attach_loop(image, direct_io)
        made.append(dev)
        return dev

    try:
        yield attach
    finally:
        for dev in made:
            detach_loop(dev)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """After the session: no fencevol mount, nftables table, loop device or daemon of
    this session (under its base temp directory) may remain. Leftovers are cleaned up and reported
    as an error, so leaks cannot hide; a demo running beside the tests is left alone."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    import subprocess

    from testbed.processes import force_unmount
    leaks = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if " fuse.fencevol " in line]
    mounts = [m for m in mounts if m.startswith(base)]
    for m in mounts:
        leaks.append(f"mount {m}")
        force_unmount(m)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    for line in tables.splitlines():
        if f"fencevol_{os.getpid()}_" in line:      # testbed.cluster.Cluster names tables by pid
            leaks.append(line.strip())
            subprocess.run(["nft", "delete"] + line.split()[1:], capture_output=True)
    from testbed.disks import detach_loop, loops_over
    for dev in loops_over(base):
        leaks.append(f"loop device {dev}")
        detach_loop(dev)
    procs = subprocess.run(["pgrep", "-f", "-a", "vclient run|vserver serve|tools/writer.py|etcd --name"],
                           capture_output=True, text=True).stdout.splitlines()
    procs = [p for p in procs if base in p]
    for p in procs:
        leaks.append(f"process {p[:120]}")
        subprocess.run(["kill", "-9", p.split()[0]], capture_output=True)
    assert not leaks, "tests left these behind: " + "; ".join(leaks)
