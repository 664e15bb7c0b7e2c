"""A cluster on one machine: a server, a disk group with data volumes and a
coordinator, and n nodes heartbeating on loopback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .netfaults import Nft, free_udp_ports
from .processes import Client, Server, vctl


class Cluster:
    """A server, a disk group with data volumes and a coordinator, and ``n`` cluster
    nodes on one machine (heartbeats on loopback, ``links`` links per node)."""

    def __init__(self, workdir: Path, n: int, cluster_id: str = "fvtest", links: int = 1,
                 volumes: tuple[tuple[str, str, tuple[str, ...]], ...] = (("data", "32M", ()),),
                 server_args: tuple[str, ...] = (), node_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.n = n
        self.cluster_id = cluster_id
        self.links = links
        self.volumes = volumes
        self.server = Server(self.workdir / "state", *server_args)
        self.node_args = list(node_args)
        self.ports = {i: free_udp_ports(links) for i in range(1, n + 1)}
        self.nodes: dict[int, Client] = {}
        self.nft = Nft(f"fencevol_{os.getpid()}_{id(self) % 100000}")
        self.disks: list[str] = []

    def hosts(self, link: int) -> str:
        return f"127.0.0.{link + 1}"

    def setup(self, disks: int = 2, disk_size: str = "128M") -> "Cluster":
        self.server.start()
        for i in range(disks):
            p = str(self.workdir / f"disk{i}.img")
            vctl(self.server, "disk", "init", p, "--size", disk_size)
            self.disks.append(p)
        vctl(self.server, "dg", "create", "dg", *self.disks)
        for name, size, args in self.volumes:
            vctl(self.server, "vol", "create", "dg", name, size, *args)
        vctl(self.server, "coord", "create", "dg", "coord", "--cluster-id", self.cluster_id,
             "--nodes", ",".join(str(i) for i in range(1, self.n + 1)))
        return self

    def node_command_args(self, i: int) -> list[str]:
        args = ["--cluster-id", self.cluster_id, "--coordinator", "dg/coord"]
        for link, port in enumerate(self.ports[i]):
            args += ["--heartbeat", f"{self.hosts(link)}:{port}"]
        for j in range(1, self.n + 1):
            if j != i:
                args += ["--peer", f"{j}=" + ",".join(f"{self.hosts(link)}:{p}"
                                                       for link, p in enumerate(self.ports[j]))]
        return args + self.node_args

    def credential(self, i: int) -> str:
        """Node i's own credential (`vctl key issue`): cluster nodes never hold the
        cluster key here, as in a deployment that follows docs/SECURITY.md."""
        path = self.workdir / f"node{i}.cred"
        if not path.exists():
            vctl(self.server, "key", "issue", str(i), "--peers",
                 ",".join(str(j) for j in range(1, self.n + 1)), "--out", str(path))
        return str(path)

    def client(self, i: int, *attach: str, extra: tuple[str, ...] = (),
               env: dict | None = None) -> Client:
        c = Client(self.server, i, self.workdir, *attach,
                   extra=("--key-file", self.credential(i), *self.node_command_args(i), *extra),
                   env=env)
        self.nodes[i] = c
        return c

    def start(self, i: int, *attach: str, extra: tuple[str, ...] = (), wait: bool = True,
              env: dict | None = None) -> Client:
        return self.client(i, *attach, extra=extra, env=env).start(wait=wait)

    def partition(self, side_a, side_b) -> None:
        """Cut every heartbeat link between the nodes of ``side_a`` and ``side_b``."""
        pa = [p for i in side_a for p in self.ports[i]]
        pb = [p for i in side_b for p in self.ports[i]]
        self.nft.drop_between(pa, pb)

    def heal(self) -> None:
        self.nft.remove()

    def cluster_state(self, i: int) -> dict:
        return self.nodes[i].status()["cluster"]

    def stop(self) -> None:
        """Remove the nft table, stop every node (continuing stopped ones first) and
        the server. Each step runs even if an earlier one failed."""
        try:
            self.heal()
        finally:
            for c in self.nodes.values():
                c.stop()
            try:
                self.server.stop()
            except Exception as exc:
                print(f"harness: stopping vserver: {exc!r}", file=sys.stderr)


def partition_resolved(clusters: dict) -> list | None:
    """Given each node's ``cluster`` status (keyed by node id, int or str): the
    member nodes once a partition is resolved -- every node a member or ejected, some
    but not all ejected, and every member's view listing exactly the members --
    else None."""
    states = {n: (c or {}).get("state") for n, c in clusters.items()}
    if any(s not in ("member", "ejected") for s in states.values()):
        return None
    members = sorted((n for n, s in states.items() if s == "member"), key=int)
    if not members or len(members) == len(states):
        return None
    want = sorted(int(n) for n in members)
    return members if all(sorted(clusters[n].get("members", [])) == want for n in members) else None
