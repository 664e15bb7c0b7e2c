"""Hosts on one machine for tools/cluster --hosts: each node in its own network
namespace, on its own loop devices over the shared disk images.

One machine hides what differs between hosts. This test bed puts back the two
differences that matter to fencing:

* **separate page caches**: every node opens the disks through loop devices of its
  own (``losetup`` over the same image files), as two hosts open one SAN LUN --
  a buffered read on one returns what its own cache holds, not what another node
  wrote;
* **a network between them**: every node lives in a network namespace with its own
  interface(s) on a bridge per heartbeat link, and reaches the server (in the root
  namespace, on the bridge's address) and its peers over veth pairs. A partition is
  a firewall inside the node namespaces (nftables, dropping the other side's
  addresses), as on real hosts.

Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking networks):
one /24 per link, never routed off this machine -- a node namespace has no default
route, and the root namespace gets an ``unreachable`` route for each /24 (lower
priority than the bridge's), so nothing for these addresses can leave through the
machine's real interface even while the bridge is being torn down.

Everything created is recorded (``to_json``) and ``destroy`` removes it all, also
after a partial ``create``. Processes are started inside a namespace with
``nsenter --net`` (the mount namespace stays shared, so FUSE mounts are visible
everywhere) and keep their pid.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import asdict, dataclass, field

NET = ipaddress.ip_network("198.18.0.0/15")
HOST_BASE = 10                  # node i is .(10 + i); the bridge (server) is .1
ROUTE_METRIC = 4095


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, input=input)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def _subnets_in_use() -> set[str]:
    out = _run("ip", "-o", "-4", "addr", "show").stdout + _run("ip", "-4", "route", "show").stdout
    used = set()
    for word in out.split():
        addr = word.split("/")[0]
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if ip in NET:
            used.add(str(ipaddress.ip_network(f"{ip}/24", strict=False)))
    return used


@dataclass
class HostsNet:
    tag: str                                  # 6 hex digits naming everything created
    nodes: list[int]
    subnets: list[str]                        # one /24 per heartbeat link
    created: dict = field(default_factory=lambda: {"bridges": [], "netns": [], "routes": []})
    loops: dict = field(default_factory=dict)  # node -> {disk name: /dev/loopN}

    @classmethod
    def plan(cls, tag: str, nodes: list[int], links: int) -> "HostsNet":
        """Pick ``links`` free /24s in 198.18.0.0/15 (starting from one derived from
        ``tag``, so clusters in different directories rarely collide)."""
        used = _subnets_in_use()
        subnets = list(NET.subnets(new_prefix=24))
        start = int(tag, 16) % len(subnets)
        chosen = []
        for k in range(len(subnets)):
            net = str(subnets[(start + k) % len(subnets)])
            if net not in used:
                chosen.append(net)
                if len(chosen) == links:
                    return cls(tag, nodes, chosen)
        raise RuntimeError("no free /24 left in 198.18.0.0/15")

    # -- names and addresses ----------------------------------------------------------------
    def netns(self, node: int) -> str:
        return f"fv{self.tag}n{node}"

    def bridge(self, link: int) -> str:
        return f"fv{self.tag}b{link}"

    def _host_if(self, node: int, link: int) -> str:
        return f"fv{self.tag}h{node}l{link}"

    def _addr(self, link: int, host: int) -> str:
        return str(ipaddress.ip_network(self.subnets[link])[host])

    def server_ip(self) -> str:
        return self._addr(0, 1)

    def node_ip(self, node: int, link: int = 0) -> str:
        return self._addr(link, HOST_BASE + node)

    def enter(self, node: int) -> list[str]:
        """Command prefix running a program in ``node``'s namespace (same pid)."""
        return ["nsenter", f"--net=/run/netns/{self.netns(node)}", "--"]

    # -- life cycle ---------------------------------------------------------------------------------
    def create(self) -> None:
        for link, subnet in enumerate(self.subnets):
            _run("ip", "route", "add", "unreachable", subnet, "metric", str(ROUTE_METRIC))
            self.created["routes"].append(subnet)
            br = self.bridge(link)
            _run("ip", "link", "add", br, "type", "bridge")
            self.created["bridges"].append(br)
            _run("ip", "addr", "add", f"{self._addr(link, 1)}/24", "dev", br)
            _run("ip", "link", "set", br, "up")
        for node in self.nodes:
            ns = self.netns(node)
            _run("ip", "netns", "add", ns)
            self.created["netns"].append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            for link in range(len(self.subnets)):
                outside, inside = self._host_if(node, link), f"eth{link}"
                _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside,
                     "netns", ns)
                _run("ip", "link", "set", outside, "master", self.bridge(link))
                _run("ip", "link", "set", outside, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.node_ip(node, link)}/24", "dev", inside)
                _run("ip", "-n", ns, "link", "set", inside, "up")

    def attach_disks(self, disks: dict[str, str], direct_io: bool = False) -> None:
        """Give every node its own loop device over each image (``disks``: name ->
        image path); recorded in ``loops``."""
        from .disks import attach_loop
        for node in self.nodes:
            mine = self.loops.setdefault(str(node), {})
            for name, image in disks.items():
                mine[name] = attach_loop(image, direct_io)

    def destroy(self) -> None:
        """Remove everything created (idempotent; the processes must be gone)."""
        from .disks import detach_loop
        for devs in self.loops.values():
            for dev in devs.values():
                detach_loop(dev)
        self.loops = {}
        for ns in self.created["netns"]:
            _run("ip", "netns", "del", ns, check=False)       # takes its veth pairs along
        for br in self.created["bridges"]:
            _run("ip", "link", "del", br, check=False)
        for subnet in self.created["routes"]:
            _run("ip", "route", "del", "unreachable", subnet, "metric", str(ROUTE_METRIC), check=False)
        self.created = {"bridges": [], "netns": [], "routes": []}

    def leftovers(self) -> list[str]:
        """What of this test bed still exists (for checks after ``destroy``)."""
        out = []
        names = _run("ip", "-o", "link", "show").stdout
        out += [f"interface {w.rstrip(':').split('@')[0]}" for w in names.split()
                if w.startswith(f"fv{self.tag}")]
        out += [f"netns {ns}" for ns in _run("ip", "netns", "list").stdout.split()
                if ns.startswith(f"fv{self.tag}")]
        return out

    # -- partitions -------------------------------------------------------------------------------------
    def partition(self, table: str, side_a: list[int], side_b: list[int]) -> None:
        """Every node of one side drops everything from the other side's addresses,
        on every link (one nft transaction per namespace)."""
        for mine, theirs in ((side_a, side_b), (side_b, side_a)):
            ips = ", ".join(self.node_ip(n, link) for n in theirs for link in range(len(self.subnets)))
            for node in mine:
                script = (f"add table inet {table}\n"
                          f"add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n"
                          f"add rule inet {table} input ip saddr {{ {ips} }} drop\n")
                _run("ip", "netns", "exec", self.netns(node), "nft", "-f", "-", input=script)

    def cut_server(self, table: str, node: int, peers_too: bool = False) -> None:
        """``node`` loses the server (and with ``peers_too`` every peer): its
        namespace drops everything to and from those addresses."""
        ips = [self.server_ip()]
        if peers_too:
            ips += [self.node_ip(n, link) for n in self.nodes if n != node
                    for link in range(len(self.subnets))]
        addrs = ", ".join(ips)
        script = (f"add table inet {table}\n"
                  f"add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n"
                  f"add chain inet {table} output {{ type filter hook output priority 0; policy accept; }}\n"
                  f"add rule inet {table} input ip saddr {{ {addrs} }} drop\n"
                  f"add rule inet {table} output ip daddr {{ {addrs} }} drop\n")
        _run("ip", "netns", "exec", self.netns(node), "nft", "-f", "-", input=script)

    def heal(self, table: str) -> None:
        for node in self.nodes:
            _run("ip", "netns", "exec", self.netns(node), "nft", "delete", "table", "inet", table,
                 check=False)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "HostsNet":
        return cls(**d)
