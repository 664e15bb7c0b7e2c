"""Prometheus metrics over real HTTP from both daemons, parsed with the client
library's own text parser: the values follow what happens (writes, renewals,
a plex detach)."""

import os
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from testbed.processes import VENV_BIN, Server, vctl, vctl_json, wait_for

pytestmark = pytest.mark.fuse


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "state", "--metrics", "127.0.0.1:0")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def scrape(address: str) -> dict:
    """{(name, frozenset(labels.items())): value} of every sample."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_from_server_and_node(server, tmp_path, clients):
    for i in range(2):
        vctl(server, "disk", "init", str(tmp_path / f"d{i}.img"), "--size", "64M")
    vctl(server, "dg", "create", "dg1", str(tmp_path / "d0.img"), str(tmp_path / "d1.img"))
    vctl(server, "vol", "create", "dg1", "m", "8M", "--layout", "mirror")
    srv_addr = vctl_json(server, "status")["server"]["metrics"]
    c = clients(1, "dg1/m", extra=("--metrics", "127.0.0.1:0"))
    node_addr = c.status()["metrics"]
    assert srv_addr and node_addr
    fd = os.open(c.path("dg1/m"), os.O_RDWR)
    try:
        for i in range(10):
            os.pwrite(fd, b"x" * 4096, i * 4096)
        assert os.pread(fd, 4096, 0) == b"x" * 4096
    finally:
        os.close(fd)
    n = scrape(node_addr)
    assert value(n, "fencevol_io_ops_total", volume="dg1/m", op="write") == 10
    assert value(n, "fencevol_io_bytes_total", volume="dg1/m", op="write") == 40960
    assert value(n, "fencevol_io_latency_seconds_count", volume="dg1/m", op="write") == 10
    assert value(n, "fencevol_io_latency_seconds_bucket", volume="dg1/m", op="write", le="+Inf") == 10
    assert value(n, "fencevol_io_latency_seconds_sum", volume="dg1/m", op="write") > 0
    assert value(n, "fencevol_io_ops_total", volume="dg1/m", op="read") >= 1
    assert value(n, "fencevol_gate_state", volume="dg1/m", state="open") == 1
    assert value(n, "fencevol_gate_state", volume="dg1/m", state="fenced") == 0
    assert 0 < value(n, "fencevol_lease_remaining_seconds", volume="dg1/m") <= 5
    assert value(n, "fencevol_plex_state", volume="dg1/m", plex="1", state="active") == 1
    assert value(n, "fencevol_server_connected") == 1
    assert ("process_resident_memory_bytes", frozenset()) in n
    renewals = value(n, "fencevol_renewals_total", volume="dg1/m")
    s = scrape(srv_addr)
    assert value(s, "fencevol_server_delegations", state="active") == 1
    assert value(s, "fencevol_server_grants_total") == 1
    assert value(s, "fencevol_server_node_sessions") == 1
    assert value(s, "fencevol_server_plex_state", volume="dg1/m", plex="0", state="active") == 1
    assert value(s, "fencevol_server_disk_failed", group="dg1", disk="d0") == 0
    assert value(s, "fencevol_server_group_generation", group="dg1") >= 1
    server_renewals = value(s, "fencevol_server_renewals_total")
    wait_for(lambda: value(scrape(node_addr), "fencevol_renewals_total", volume="dg1/m") > renewals,
             10, "a renewal")
    assert value(scrape(srv_addr), "fencevol_server_renewals_total") > server_renewals
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://{srv_addr}/nope", timeout=10)
    assert exc.value.code == 404
    exc.value.close()


def test_bad_metrics_address_is_refused(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = "127.0.0.1:%d" % taken.getsockname()[1]
    for bad, message in (("nope", "bad address 'nope'"), (busy, "cannot serve metrics")):
        cp = subprocess.run([str(VENV_BIN / "vserver"), "serve", "--state-dir", str(tmp_path / "s"),
                             "--listen", "127.0.0.1:0", "--metrics", bad], capture_output=True,
                            text=True, timeout=60)
        assert cp.returncode != 0 and message in cp.stderr, cp.stderr
    taken.close()
