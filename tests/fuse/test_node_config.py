"""``vclient run --config FILE`` with a real server and mount: the file alone runs
a node (JSON logs with its fields included); a disk whose server path this host
does not have is reported loudly and is mapped from the file; flags override it."""

import json
import os

import pytest
from testbed.processes import VENV_BIN, Client, vctl

pytestmark = pytest.mark.fuse


class ConfiguredClient(Client):
    """A vclient started with ``--config`` and nothing else but ``extra`` flags."""

    def __init__(self, server, node_id, workdir, config_path, extra=()):
        super().__init__(server, node_id, workdir, extra=extra)
        self.config_path = str(config_path)

    def command(self):
        return [str(VENV_BIN / "vclient"), "run", "--config", self.config_path, *self.extra]


@pytest.fixture
def configured(tmp_path):
    made = []

    def make(*args, **kw):
        c = ConfiguredClient(*args, **kw)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


def write_config(path, server, tmp_path, node_id, **more) -> None:
    lines = [f"node_id = {node_id}", f'servers = ["{server.address}"]',
             f'key_file = "{server.key_file}"', f'mount = "{tmp_path / f"mnt{node_id}"}"',
             f'control = "{tmp_path / f"vclient-{node_id}.sock"}"', 'attach = ["dg1/v"]',
             'log_format = "json"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in more.items() if not isinstance(v, dict)]
    for table, values in ((k, v) for k, v in more.items() if isinstance(v, dict)):
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def test_config_file_runs_a_node_and_maps_a_disk(server, tmp_path, configured):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "server-view"          # the path the server knows the disk by
    link.symlink_to(real)
    vctl(server, "disk", "init", str(link / "d0.img"), "--size", "64M")
    vctl(server, "dg", "create", "dg1", str(link / "d0.img"))
    vctl(server, "vol", "create", "dg1", "v", "8M")
    link.unlink()                           # ... which this "host" does not have
    cfg = tmp_path / "node-1.toml"
    write_config(cfg, server, tmp_path, 1)
    c = configured(server, 1, tmp_path, cfg).start()
    st = c.volume_status("dg1/v")
    assert [d["access"] for d in st["disks"]] == ["remote"], st
    lines = [json.loads(line) for line in c.log_text().splitlines() if line.startswith("{")]
    loud = [ln for ln in lines if "NO LOCAL PATH" in ln["message"]]
    assert loud and loud[0]["level"] == "error" and "--disk-path d0=PATH" in loud[0]["message"], lines
    ready = [ln for ln in lines if ln["event"].startswith("vclient.node_ready")]
    assert ready and ready[0]["node_id"] == 1 and ready[0]["pid"] == c.proc.pid, lines
    attached = [ln for ln in lines if ln.get("volume") == "dg1/v"]
    assert attached, lines
    with open(c.path("dg1/v"), "r+b", buffering=0) as f:
        f.write(b"x" * 4096)
    c.stop()
    # Mapped in the file: local again. A flag overrides the file's log format.
    write_config(cfg, server, tmp_path, 1, disk_paths={"d0": str(real / "d0.img")})
    c = configured(server, 1, tmp_path, cfg, extra=("--log-format", "text")).start()
    st = c.volume_status("dg1/v")
    assert [d["access"] for d in st["disks"]] == ["local"], st
    assert "NO LOCAL PATH" not in c.log_text().split("received SIGTERM")[-1]
    with open(c.path("dg1/v"), "rb", buffering=0) as f:
        assert f.read(4096) == b"x" * 4096
    assert not c.log_text().rstrip().splitlines()[-1].startswith("{")


def test_bad_config_is_one_line_and_mounts_nothing(server, tmp_path, configured):
    cfg = tmp_path / "node-2.toml"
    write_config(cfg, server, tmp_path, 2, watchdog={"enabled": "yes"})
    c = configured(server, 2, tmp_path, cfg)
    c.start(wait=False)
    assert c.proc.wait(30) == 2
    err = c.log_text().strip().splitlines()
    assert err == [f"vclient: error: {cfg}: watchdog.enabled must be true or false"], err
    assert not os.path.ismount(tmp_path / "mnt2")
