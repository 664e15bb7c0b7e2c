"""Network faults on one machine: nftables drop rules between loopback UDP ports
(heartbeat links), one table per test bed, removed whole."""

from __future__ import annotations

import socket
import subprocess


def free_ports(n: int, kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> list[int]:
    """Ports (UDP by default, ``socket.SOCK_STREAM`` for TCP) that were free a moment
    ago (the kernel picks; small race accepted)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    return free_ports(n, socket.SOCK_DGRAM, host)


class Nft:
    """One nftables table of drop rules on loopback UDP ports; ``remove`` deletes
    the whole table (idempotent), so nothing is left behind."""

    def __init__(self, table: str):
        self.table = table
        self.created = False

    def _nft(self, *args: str) -> None:
        cp = subprocess.run(["nft", *args], capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)}: {cp.stderr.strip()}")

    def _ensure(self) -> None:
        if not self.created:
            self._nft("add", "table", "inet", self.table)
            self._nft("add", "chain", "inet", self.table, "input",
                      "{ type filter hook input priority 0; policy accept; }")
            self.created = True

    def drop_between(self, ports_a, ports_b) -> None:
        """Drop UDP both ways between any port of ``ports_a`` and any of ``ports_b``,
        both directions in one nft transaction (the cut is instantaneous)."""
        self._ensure()
        a = "{ " + ", ".join(str(p) for p in ports_a) + " }"
        b = "{ " + ", ".join(str(p) for p in ports_b) + " }"
        script = (f"add rule inet {self.table} input udp sport {a} udp dport {b} drop\n"
                  f"add rule inet {self.table} input udp sport {b} udp dport {a} drop\n")
        cp = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"nft: {cp.stderr.strip()}")

    def drop_from(self, ports_a, ports_b) -> None:
        """Drop UDP from any port of ``ports_a`` to any of ``ports_b`` only (a
        one-way cut: B no longer hears A, A still hears B)."""
        self._ensure()
        a = "{ " + ", ".join(str(p) for p in ports_a) + " }"
        b = "{ " + ", ".join(str(p) for p in ports_b) + " }"
        self._nft("add", "rule", "inet", self.table, "input", "udp", "sport", a, "udp", "dport", b, "drop")

    def drop_tcp_to(self, host: str, ports) -> None:
        """Drop TCP to ``host`` on any of ``ports`` (a server cut off from etcd:
        it reaches etcd through its own loopback address, testbed.ha)."""
        self._ensure()
        p = "{ " + ", ".join(str(x) for x in ports) + " }"
        self._nft("add", "rule", "inet", self.table, "input", "ip", "daddr", host, "tcp", "dport",
                  p, "drop")

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10)
        self.created = False
