"""vclient's configuration file: every key checked, flags override the file."""

import pytest

from fencevol.errors import InvalidArgument
from vclient import config
from vclient.main import PARSERS, RUN_DEFAULTS, build_parser

FULL = """
node_id = 3
servers = ["10.0.0.1:7745", "10.0.0.2:7745"]
key_file = "/etc/fencevol/node-3.key"
tls_ca = "/etc/fencevol/ca.pem"
mount = "/mnt/fencevol"
attach = ["dg1/data", "dg1/logs:ro"]
pause_timeout = 20
control = "/run/fencevol/vclient-3.sock"
remote_disks = ["d9"]
max_tasks = 64
log_level = "warning"
log_format = "json"
metrics = "127.0.0.1:9743"

[disk_paths]
d0 = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"

[watchdog]
enabled = true
slack = 0.4
hardware = "/dev/watchdog"

[cluster]
id = "prod"
coordinator = "dg1/coord"
heartbeat = ["10.1.0.3:7800", "10.2.0.3:7800"]
interval = 0.2
timeout = 1.0
race_timeout = 8
join_timeout = 12
join = false

[cluster.peers]
1 = ["10.1.0.1:7800", "10.2.0.1:7800"]
2 = ["10.1.0.2:7800", "10.2.0.2:7800"]
"""


def run_args(tmp_path, text: str, *flags: str):
    path = tmp_path / "node.toml"
    path.write_text(text)
    args = build_parser().parse_args(["run", "--config", str(path), *flags])
    config.apply(args, config.load(str(path), PARSERS), RUN_DEFAULTS)
    return args


def test_every_key_lands_on_its_option(tmp_path):
    a = run_args(tmp_path, FULL)
    assert a.node_id == 3 and a.server == ["10.0.0.1:7745", "10.0.0.2:7745"]
    assert a.attach == [("dg1/data", "rw"), ("dg1/logs", "ro")]
    assert a.disk_path == [("d0", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4")] and a.remote_disk == ["d9"]
    assert (a.pause_timeout, a.max_tasks, a.log_level, a.log_format) == (20.0, 64, "warning", "json")
    assert (a.watchdog, a.watchdog_slack, a.hw_watchdog) == ("on", 0.4, "/dev/watchdog")
    assert (a.cluster_id, a.coordinator, a.no_join) == ("prod", "dg1/coord", True)
    assert a.heartbeat == [("10.1.0.3", 7800), ("10.2.0.3", 7800)]
    assert dict(a.peer) == {1: [("10.1.0.1", 7800), ("10.2.0.1", 7800)],
                            2: [("10.1.0.2", 7800), ("10.2.0.2", 7800)]}
    assert (a.hb_interval, a.hb_timeout, a.race_timeout, a.join_timeout) == (0.2, 1.0, 8.0, 12.0)
    assert a.metrics == "127.0.0.1:9743"


def test_flags_override_the_file_and_defaults_fill_the_rest(tmp_path):
    a = run_args(tmp_path, 'node_id = 3\nmount = "/mnt/a"\nattach = ["dg1/x"]\n',
                 "--mount", "/mnt/b", "--attach", "dg1/y:ro", "--pause-timeout", "5")
    assert a.mount == "/mnt/b" and a.attach == [("dg1/y", "ro")] and a.pause_timeout == 5.0
    assert a.node_id == 3 and a.max_tasks == 99 and a.watchdog == "on" and a.peer == []


@pytest.mark.parametrize("text, message", [
    ("bogus = 1", "unknown key 'bogus'"),
    ("[cluster]\nhb = 1", "unknown key cluster.'hb'"),
    ("[watchdog]\nenabled = 1", "watchdog.enabled must be true or false"),
    ('node_id = "3"', "node_id must be an integer"),
    ('attach = ["dg1"]', "attach: bad volume 'dg1'"),
    ('attach = ["dg1/v:xx"]', "attach:"),
    ('[cluster]\nheartbeat = ["nope"]', "cluster.heartbeat: bad address 'nope'"),
    ('[cluster.peers]\n2 = ["h:x"]', "cluster.peers.2"),
    ('log_format = "xml"', "log_format must be one of text, json"),
    ("pause_timeout = -1", "pause_timeout must be a number"),
    ("disk_paths = 3", "[disk_paths] must be a table"),
    ("node_id = [3", "not valid TOML"),
])
def test_bad_files_are_one_line_errors_naming_the_key(tmp_path, text, message):
    with pytest.raises(InvalidArgument) as exc:
        run_args(tmp_path, text)
    assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidArgument, match="not found"):
        config.load(str(tmp_path / "nope.toml"), PARSERS)
