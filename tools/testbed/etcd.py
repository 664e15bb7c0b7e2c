"""A real etcd cluster on loopback for tests and the demo (Debian's etcd-server,
installed by tools/setup): N members, each with its own data directory and a
client and a peer port, started together and awaited until every member is
healthy; ``stop`` leaves no process and no data behind.

Talks to it through etcd's v3 JSON gateway (plain HTTP + JSON, keys and values
base64): the same path the control plane will use from trio (issue 12), with no
client library in between."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .netfaults import free_ports

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Member:
    name: str
    client: str                 # http://127.0.0.1:PORT
    peer: str
    data_dir: str
    log: str
    pid: int = 0


@dataclass
class EtcdCluster:
    workdir: Path
    members: list[Member] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)   # more loopback addresses to serve on
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)  # ours only

    @property
    def endpoints(self) -> list[str]:
        return [m.client for m in self.members]

    def endpoints_via(self, host: str) -> list[str]:
        """The client endpoints as reached through ``host`` (one of ``extra_hosts``):
        a client given these can be cut off from etcd alone (drop traffic to
        ``host``), the others keep their path."""
        return [m.client.replace("127.0.0.1", host) for m in self.members]

    @property
    def client_ports(self) -> list[int]:
        return [int(m.client.rsplit(":", 1)[1]) for m in self.members]

    @classmethod
    def create(cls, workdir: Path, n: int, extra_hosts: list[str] = ()) -> "EtcdCluster":
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * n, socket.SOCK_STREAM)
        members = [Member(f"m{i + 1}", f"http://127.0.0.1:{ports[2 * i]}",
                          f"http://127.0.0.1:{ports[2 * i + 1]}",
                          str(workdir / f"m{i + 1}.etcd"), str(workdir / f"m{i + 1}.log"))
                   for i in range(n)]
        return cls(workdir, members, list(extra_hosts))

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        if not os.path.exists(ETCD):
            raise RuntimeError("etcd is not installed (tools/setup installs Debian's etcd-server)")
        initial = ",".join(f"{m.name}={m.peer}" for m in self.members)
        token = f"fencevol-{os.getpid()}-{int(time.time())}"
        for m in self.members:
            listen = ",".join([m.client] + self.endpoints_via_member(m))
            cmd = [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                   "--listen-client-urls", listen, "--advertise-client-urls", m.client,
                   "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", token, "--heartbeat-interval", "100",
                   "--election-timeout", "1000"]
            with open(m.log, "ab") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
            m.pid = proc.pid
            self.procs[m.name] = proc
        deadline = time.monotonic() + timeout
        while not all(self.healthy(m) for m in self.members):
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"etcd members not healthy after {timeout}s (logs in {self.workdir})")
            time.sleep(0.1)
        self.save()
        return self

    def endpoints_via_member(self, m: Member) -> list[str]:
        return [m.client.replace("127.0.0.1", h) for h in self.extra_hosts]

    def healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(m.client + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        for m in self.members:
            if m.pid:
                try:
                    os.killpg(m.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for m in self.members:
            if m.pid:
                self._reap(m)
            shutil.rmtree(m.data_dir, ignore_errors=True)
        (self.workdir / "etcd.json").unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """kill -9 one member (a crash)."""
        m = next(m for m in self.members if m.name == name)
        os.killpg(m.pid, signal.SIGKILL)
        self._reap(m)

    def _reap(self, m: Member) -> None:
        proc = self.procs.pop(m.name, None)
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        else:
            _wait_gone(m.pid)
        m.pid = 0

    def save(self) -> None:
        (self.workdir / "etcd.json").write_text(json.dumps(
            {"members": [m.__dict__ for m in self.members], "extra_hosts": self.extra_hosts},
            indent=1))

    @classmethod
    def load(cls, workdir: Path) -> "EtcdCluster":
        data = json.loads((Path(workdir) / "etcd.json").read_text())
        return cls(Path(workdir), [Member(**m) for m in data["members"]],
                   data.get("extra_hosts", []))

    # -- the v3 JSON gateway --------------------------------------------------------------------
    def call(self, path: str, body: dict, member: Member | None = None) -> dict:
        """POST ``body`` to /v3/``path`` on ``member`` (default: the first live one)."""
        targets = [member] if member else [m for m in self.members if m.pid]
        last: Exception | None = None
        for m in targets:
            req = urllib.request.Request(f"{m.client}/v3/{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read())
            except (OSError, urllib.error.URLError) as exc:
                last = exc
        raise RuntimeError(f"etcd /v3/{path}: {last}")

    def put(self, key: str, value: str) -> None:
        self.call("kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str) -> str | None:
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for a member another process started (tools/etcd down) to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
