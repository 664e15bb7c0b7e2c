"""Configuring the HA control plane: server lists for nodes and vctl, etcd
endpoints and lease terms for the server; bad input is a one-line error."""

import subprocess
import sys

import pytest

from fencevol.errors import InvalidArgument
from fencevol.rpc import parse_servers
from vserver.etcd import parse_endpoints
from vserver.leader import HaSettings, HaTerms


def test_server_lists():
    assert parse_servers("a:1", 7745) == [("a", 1)]
    assert parse_servers(["a:1,b", "c:3"], 7745) == [("a", 1), ("b", 7745), ("c", 3)]
    with pytest.raises(InvalidArgument, match="twice"):
        parse_servers(["a:1", "a:1"], 7745)
    with pytest.raises(InvalidArgument):
        parse_servers(",", 7745)


def test_etcd_settings():
    assert parse_endpoints("http://h:1, http://g:2/") == ["http://h:1", "http://g:2"]
    for bad in ("", "h:2379", "ftp://h:1", "http://"):
        with pytest.raises(InvalidArgument):
            parse_endpoints(bad)
    with pytest.raises(InvalidArgument):
        HaTerms(ttl=1)
    with pytest.raises(InvalidArgument):
        HaTerms(ttl=2, margin=1)
    with pytest.raises(InvalidArgument, match="cluster name"):
        HaSettings(("http://h:1",), cluster="a/b")


@pytest.mark.parametrize("args, message", [
    (["--ha-cluster", "x"], "need --etcd"),
    (["--etcd", "h:2379"], "bad etcd endpoint"),
    (["--etcd", "http://127.0.0.1:1", "--etcd-lease", "1"], "ttl >= 2"),
])
def test_bad_ha_flags_are_one_line_errors(tmp_path, args, message):
    cp = subprocess.run([sys.executable, "-m", "vserver.main", "serve", "--state-dir",
                         str(tmp_path), *args], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2 and message in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state.json").exists()            # nothing changed
