"""An HA control plane for tests, ``tools/cluster up --ha`` and the demo: a real
etcd cluster and several ``vserver serve --etcd`` processes on it (one leads, the
others stand by). Each server reaches etcd through its own loopback address
(127.0.1.K), so a fault can cut one server off from etcd alone; vctl and the
nodes are given every server's address. Duck-types ``testbed.processes.Server``
(``address``, ``key_file``, ``env``, ``tls_ca``) for ``Client`` and ``vctl``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from .etcd import EtcdCluster
from .netfaults import Nft, free_ports
from .processes import ENV, VENV_BIN, Server, wait_for


def leader_status(address: str, key_file: str, timeout: float = 2) -> dict | None:
    """The status of the server at ``address`` if it answers as the leader, else
    None (a standby does not listen; a leader in doubt answers not_leader)."""
    cp = subprocess.run([str(VENV_BIN / "vctl"), "--server", address, "--key-file", key_file,
                         "--timeout", str(timeout), "status", "--json"], env=ENV,
                        capture_output=True, text=True, timeout=timeout + 10)
    return json.loads(cp.stdout) if cp.returncode == 0 else None


def find_leader(addresses: list[str], key_file: str, running) -> int | None:
    """The index of the address whose server leads; ``running(k)``: is server k's
    process alive (a dead one is not asked)."""
    for k, address in enumerate(addresses):
        if running(k) and leader_status(address, key_file):
            return k
    return None


class HaControlPlane:
    def __init__(self, workdir: Path, servers: int = 2, members: int = 3, etcd_lease: int = 2,
                 extra: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_file = str(self.workdir / "cluster.key")
        self.hosts = [f"127.0.1.{k + 1}" for k in range(servers)]
        self.etcd = EtcdCluster.create(self.workdir / "etcd", members, self.hosts)
        ports = free_ports(servers, socket.SOCK_STREAM)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.servers = [
            Server(self.workdir / f"server{k + 1}", "--key-file", self.key_file,
                   "--etcd", ",".join(self.etcd.endpoints_via(self.hosts[k])),
                   "--etcd-lease", str(etcd_lease), *extra, detached=True)
            for k in range(servers)]
        self.nft = Nft(f"fvha{os.getpid()}")
        self.tls_ca = ""

    # -- what Client and vctl use ------------------------------------------------------------
    @property
    def address(self) -> str:
        return ",".join(self.addresses)

    @property
    def env(self) -> dict:
        return dict(ENV, FENCEVOL_SERVER=self.address, FENCEVOL_KEY_FILE=self.key_file)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "HaControlPlane":
        self.etcd.start()
        if not os.path.exists(self.key_file):
            from fencevol import auth
            auth.create_key_file(self.key_file)
        for s, addr in zip(self.servers, self.addresses):
            s.start(addr, wait=False)
        self.wait_leader(timeout)
        return self

    def start_server(self, k: int) -> None:
        """(Re)start server ``k`` (0-based); it stands by if another one leads."""
        self.servers[k].start(self.addresses[k], wait=False)

    def status(self, k: int, timeout: float = 2) -> dict | None:
        """Server ``k``'s status if it answers as the leader, else None."""
        return leader_status(self.addresses[k], self.key_file, timeout)

    def leader(self) -> int | None:
        return find_leader(self.addresses, self.key_file,
                           lambda k: self.servers[k].proc is not None
                           and self.servers[k].proc.poll() is None)

    def wait_leader(self, timeout: float = 30, other_than: int | None = None) -> int:
        def found():
            k = self.leader()
            return k is not None and k != other_than and (k,)
        return wait_for(found, timeout, "an HA leader", interval=0.1)[0]

    def kill_leader(self) -> tuple[int, float]:
        """kill -9 the leader; (its index, monotonic time of the kill)."""
        k = self.leader()
        if k is None:
            raise RuntimeError("no leader to kill")
        self.servers[k].kill()
        return k, time.monotonic()

    def cut_from_etcd(self, k: int) -> None:
        """Server ``k`` can no longer reach any etcd member (nodes still reach it)."""
        self.nft.drop_tcp_to(self.hosts[k], self.etcd.client_ports)

    def heal(self) -> None:
        self.nft.remove()

    def stop(self) -> None:
        """No server, etcd member or nft table left behind; never raises."""
        self.nft.remove()
        for s in self.servers:
            try:
                s.stop()
            except Exception as exc:
                print(f"harness: stopping {s.state_dir}: {exc!r}")
        self.etcd.stop()

    def log_text(self) -> str:
        return "".join(s.log_text() for s in self.servers)
