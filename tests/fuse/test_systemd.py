"""Running under systemd: the notification sequence on a real NOTIFY_SOCKET (READY
only once the listener or the mount is up, WATCHDOG from the event loop, STOPPING
on SIGTERM), and the shipped unit files as `systemd-analyze verify` sees them."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from testbed.processes import Server, VENV_BIN, mounted, vctl

pytestmark = pytest.mark.fuse


class NotifySocket:
    """What systemd listens on: a datagram socket; ``next`` gives one message as a
    dict of its fields."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 20) -> dict:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, field: str, timeout: float = 20) -> list[dict]:
        """Messages up to and including the first that carries ``field``."""
        out, deadline = [], time.monotonic() + timeout
        while not out or field not in out[-1]:
            out.append(self.next(max(0.01, deadline - time.monotonic())))
        return out

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        yield ns
    finally:
        ns.close()


def env_for(ns: NotifySocket) -> dict:
    return {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "200000"}     # keep-alive every 0.1 s


@pytest.mark.timeout(60)
def test_server_notifies_ready_watchdog_stopping(tmp_path, notify):
    srv = Server(tmp_path / "state", env=env_for(notify))
    try:
        srv.start(wait=False)
        ready = notify.next()
        assert ready.get("READY") == "1" and ready["MAINPID"] == str(srv.proc.pid), ready
        address = ready["STATUS"].rsplit(" ", 1)[-1]
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()   # listening at READY
        beats = [notify.next() for _ in range(5)]
        assert all(b == {"WATCHDOG": "1"} for b in beats), beats
        # A stopped process feeds nothing: the keep-alive comes from the event loop.
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            while True:
                notify.next(timeout=0.05)      # drain what was sent before the stop landed
        except (TimeoutError, socket.timeout):
            pass
        with pytest.raises((TimeoutError, socket.timeout)):
            notify.next(timeout=0.5)
        os.kill(srv.proc.pid, signal.SIGCONT)
        assert notify.next() == {"WATCHDOG": "1"}
        srv.proc.send_signal(signal.SIGTERM)
        tail = notify.until("STOPPING")
        assert all(m == {"WATCHDOG": "1"} for m in tail[:-1]), tail
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()


@pytest.mark.timeout(90)
def test_client_notifies_ready_after_the_mount(server, dg, clients, tmp_path, notify):
    c = clients(1, "dg1/cat", start=False)
    c.env = env_for(notify)
    c.start(wait=False)
    ready = notify.until("READY", timeout=30)[-1]
    assert mounted(c.mount) and (c.mount / "dg1" / "cat").exists(), ready   # mounted at READY
    assert "1 volume(s)" in ready["STATUS"], ready
    assert notify.next() == {"WATCHDOG": "1"}
    c.proc.send_signal(signal.SIGTERM)
    stopping = notify.until("STOPPING")[-1]
    assert stopping["STOPPING"] == "1", stopping
    assert c.proc.wait(20) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_install_and_verify(server, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    out = vctl(server, "install-units", "--dir", str(units), "--config-dir", "/etc/fencevol").stdout
    assert out.count("installed") == 2, out
    server_unit = (units / "fencevol-server.service").read_text()
    assert f"ExecStart={VENV_BIN}/vserver serve --config /etc/fencevol/vserver.toml" in server_unit
    assert "Type=notify" in server_unit and "WatchdogSec=" in server_unit
    shutil.copy(units / "fencevol-client@.service", units / "fencevol-client@3.service")
    for name in ("fencevol-server.service", "fencevol-client@3.service"):
        cp = subprocess.run(["systemd-analyze", "verify", str(units / name)], capture_output=True,
                            text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
    # The check can fail: a broken unit is refused.
    broken = units / "broken.service"
    broken.write_text(server_unit.replace("Type=notify", "Type=notifyy").replace(
        f"{VENV_BIN}/vserver", "/nonexistent/vserver"))
    cp = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode != 0, cp.stderr
    bad = vctl(server, "install-units", "--dir", str(tmp_path / "nope"), check=False)
    assert bad.returncode != 0 and "not a directory" in bad.stderr
