"""tools/cluster: a whole fencevol cluster on one machine, for trying fencing out
and for fault-injection scripts.

  tools/cluster up N [--dir DIR] ...   server on fresh images, disk group "dg" with
                                       volume "data" and coordinator "coord", N nodes
  tools/cluster up N --hosts ...       the same with every node a "host": its own
                                       network namespace and its own loop devices
                                       over the images (its own page cache)
  tools/cluster status [--json]        every node's view (membership, gates)
  tools/cluster partition A B          cut the heartbeats between node sets A and B
  tools/cluster heal                   remove every cut
  tools/cluster down                   stop everything, unmount, remove nft rules,
                                       namespaces, interfaces and loop devices
  tools/cluster start-node ID          (re)start one node with its recorded arguments
  tools/cluster start-server           (re)start the server with its arguments
  tools/cluster up N --ha ...          an HA control plane instead of one server: 3 etcd
                                       members (tools/etcd) and 2 servers, one leading
  tools/cluster kill-leader [--restart]   kill -9 the leading server (--restart: start
                                       it again, as a standby)
  tools/cluster cut-etcd [K]           cut server K (default: the leader) off from etcd

Everything it starts or creates is recorded in DIR/cluster.json (pids, ports,
addresses, namespaces, loop devices, mounts, node ids, command lines);
tools/fault/* find processes there, never by name. Partition rules live in the nft
table named there (in every node namespace with --hosts), which `heal` and `down`
delete. --hosts: tools/hostsnet.py."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

from testbed.etcd import EtcdCluster
from testbed.ha import find_leader
from testbed.netfaults import free_ports, free_udp_ports, Nft
from testbed.processes import (
    ENV,
    VENV_BIN,
    alive,
    force_unmount,
    launch,
    mounted,
    spawn,
    vctl,
    wait_for,
    wait_line_in_file,
)
from testbed.hostsnet import HostsNet

from fencevol.errors import Unavailable
from vclient import control

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "cluster"
HOSTS_HB_PORT = 7790          # every node namespace has its own ports


def state_path(d: Path) -> Path:
    return d / "cluster.json"


def load(d: Path) -> dict:
    try:
        return json.loads(state_path(d).read_text())
    except FileNotFoundError:
        raise SystemExit(f"cluster: no cluster in {d} (run `tools/cluster up N --dir {d}`)") from None


def save(d: Path, st: dict) -> None:
    tmp = state_path(d).with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
    tmp.replace(state_path(d))


class _ServerRef:
    """Enough of testbed.processes.Server for vctl(): address and key."""

    def __init__(self, st: dict):
        self.address = st["server"]["address"]
        self.key_file = st["server"]["key_file"]

    @property
    def env(self):
        return dict(ENV, FENCEVOL_SERVER=self.address, FENCEVOL_KEY_FILE=self.key_file)


def stop_pid(pid: int | None, timeout: float = 15) -> None:
    if not alive(pid):
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def start_server(d: Path, st: dict) -> None:
    srv = st["server"]
    proc, line = launch(srv["argv"], Path(srv["log"]), "vserver", 20, detached=True)
    srv["pid"] = proc.pid
    srv["address"] = line.rsplit(" ", 1)[-1]
    save(d, st)


# -- the HA control plane (--ha) ------------------------------------------------------------------

HA_SERVERS, HA_MEMBERS = 2, 3


def build_ha(d: Path, st: dict, args) -> None:
    """3 etcd members, each also serving on one loopback address per server
    (127.0.1.K: `cut-etcd K` drops exactly that server's etcd traffic), and 2
    servers sharing one cluster key; waits for a leader."""
    from fencevol import auth
    hosts = [f"127.0.1.{k + 1}" for k in range(HA_SERVERS)]
    etcd = EtcdCluster.create(d / "etcd", HA_MEMBERS, hosts)
    st["ha"] = {"etcd_dir": str(d / "etcd"), "servers": []}
    save(d, st)
    etcd.start()
    key_file = str(d / "cluster.key")
    auth.create_key_file(key_file)
    ports = free_ports(HA_SERVERS, socket.SOCK_STREAM)
    for k in range(HA_SERVERS):
        sd = d / f"server{k + 1}"
        st["ha"]["servers"].append({
            "argv": [str(VENV_BIN / "vserver"), "serve", "--state-dir", str(sd), "--key-file", key_file,
                     "--listen", f"127.0.0.1:{ports[k]}", "--lease", str(args.lease),
                     "--etcd", ",".join(etcd.endpoints_via(hosts[k]))],
            "log": str(d / f"vserver{k + 1}.log"), "state_dir": str(sd),
            "address": f"127.0.0.1:{ports[k]}", "etcd_host": hosts[k], "pid": 0})
    st["server"] = {"address": ",".join(s["address"] for s in st["ha"]["servers"]),
                    "key_file": key_file, "log": str(d / "vserver1.log"), "ha": True}
    for k in range(HA_SERVERS):
        start_ha_server(d, st, k)
    wait_for(lambda: ha_leader(st) is not None, 30, "an HA leader")


def start_ha_server(d: Path, st: dict, k: int) -> None:
    srv = st["ha"]["servers"][k]
    if alive(srv.get("pid")):
        raise SystemExit(f"cluster: server {k + 1} is running (pid {srv['pid']})")
    srv["pid"] = spawn(srv["argv"], Path(srv["log"]), detached=True).pid
    save(d, st)


def ha_leader(st: dict) -> int | None:
    """The index of the server that answers as the leader, if one does."""
    servers = st["ha"]["servers"]
    return find_leader([s["address"] for s in servers], st["server"]["key_file"],
                       lambda k: alive(servers[k].get("pid")))


def current_leader(st: dict, timeout: float = 15) -> int:
    """The leading server's index, waiting out an election in progress."""
    try:
        found = wait_for(lambda: (k := ha_leader(st)) is not None and (k,), timeout, "a leader",
                         interval=0.2)
        return found[0]                 # (index,): index 0 is a leader too
    except TimeoutError:
        raise SystemExit(f"cluster: no server has led for {timeout:g}s") from None


def kill_leader(d: Path, st: dict, restart: bool) -> None:
    k = current_leader(st)
    srv = st["ha"]["servers"][k]
    os.kill(srv["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(srv["pid"]), 10, f"server {k + 1} to die")
    print(f"killed the leader: server {k + 1} (pid {srv['pid']}, {srv['address']})")
    if restart:
        start_ha_server(d, st, k)
        print(f"server {k + 1} restarted (pid {srv['pid']}); it stands by")


def cut_etcd(st: dict, k: int | None) -> int:
    if k is None:
        k = current_leader(st)
    if not 0 <= k < len(st["ha"]["servers"]):
        raise SystemExit(f"cluster: no server {k + 1}")
    etcd = EtcdCluster.load(Path(st["ha"]["etcd_dir"]))
    Nft(st["nft_table"]).drop_tcp_to(st["ha"]["servers"][k]["etcd_host"], etcd.client_ports)
    return k


def stop_ha(st: dict) -> None:
    for srv in st["ha"]["servers"]:
        stop_pid(srv.get("pid"))
    if (Path(st["ha"]["etcd_dir"]) / "etcd.json").exists():
        EtcdCluster.load(Path(st["ha"]["etcd_dir"])).stop()


def start_nodes(d: Path, st: dict, nodes: list[str]) -> None:
    """Launch the nodes together (they join concurrently), then wait for each."""
    procs = {}
    for node in nodes:
        n = st["nodes"][node]
        if alive(n.get("pid")):
            raise SystemExit(f"cluster: node {node} is running (pid {n['pid']}); stop it first")
        for b in n.get("bindfs", {}).values():
            if not alive(b.get("pid")):
                force_unmount(b["mount"])
                b["pid"] = start_bindfs(Path(b["source"]), Path(b["mount"]))
        if not mounted(n["mount"]):
            os.makedirs(n["mount"], exist_ok=True)
        procs[node] = spawn(n["argv"], Path(n["log"]), detached=True)
        n["pid"] = procs[node].pid
    save(d, st)
    for node, proc in procs.items():
        n = st["nodes"][node]
        wait_line_in_file(proc, Path(n["log"] + ".out"), 60, f"vclient {node} (log {n['log']})")


def start_node(d: Path, st: dict, node: str) -> None:
    start_nodes(d, st, [node])


def start_bindfs(source: Path, mountpoint: Path) -> int:
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["bindfs", "-f", "-o", "direct_io", str(source), str(mountpoint)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: mounted(mountpoint), 10, f"bindfs at {mountpoint}")
    return proc.pid


def cmd_up(args) -> int:
    d = Path(args.dir).resolve()
    if state_path(d).exists():
        old = json.loads(state_path(d).read_text())
        ha_alive = any(alive(s.get("pid")) for s in (old.get("ha") or {}).get("servers", []))
        if ha_alive or alive(old.get("server", {}).get("pid")) or any(alive(n.get("pid")) for n in old["nodes"].values()):
            raise SystemExit(f"cluster: a cluster is running in {d}; `tools/cluster down --dir {d}` first")
        down(d, old, quiet=True)
    if not 1 <= args.nodes <= 16:
        raise SystemExit("cluster: between 1 and 16 nodes")
    if args.ha and args.hosts:
        raise SystemExit("cluster: --ha runs on loopback; it does not combine with --hosts yet")
    if args.hosts and args.disk_paths:
        raise SystemExit("cluster: --hosts gives every node its own devices already; "
                         "--disk-paths does not combine with it")
    subprocess.run(["rm", "-rf", str(d)], check=True)
    (d / "images").mkdir(parents=True)
    tag = zlib.crc32(str(d).encode())
    st = {"dir": str(d), "cluster_id": args.cluster_id, "coordinator": "dg/coord",
          "volume": "dg/data", "nft_table": f"fencevol_c{tag:08x}", "links": args.links,
          "nodes": {}, "disks": {}, "hosts": None}
    try:
        build(d, st, args, f"{tag & 0xFFFFFF:06x}")
    except BaseException:
        down(d, st, quiet=True)
        raise
    if not args.quiet:
        print_summary(st)
    return 0


def build(d: Path, st: dict, args, tag: str) -> None:
    n = args.nodes
    net = None
    listen = "127.0.0.1:0"
    if args.hosts:
        net = HostsNet.plan(tag, list(range(1, n + 1)), args.links)
        st["hosts"] = net.to_json()
        save(d, st)                    # recorded before it exists: `down` can undo a partial create
        net.create()
        st["hosts"] = net.to_json()
        listen = f"{net.server_ip()}:0"
    if args.ha:
        build_ha(d, st, args)
    else:
        server_argv = [str(VENV_BIN / "vserver"), "serve", "--state-dir", str(d / "state"),
                       "--listen", listen, "--lease", str(args.lease)]
        st["server"] = {"argv": server_argv, "log": str(d / "vserver.log"),
                        "state_dir": str(d / "state"), "key_file": str(d / "state" / "cluster.key")}
        start_server(d, st)
        # Pin the port so restarts keep it.
        st["server"]["argv"][st["server"]["argv"].index("--listen") + 1] = st["server"]["address"]
        save(d, st)
    ref = _ServerRef(st)
    disks = []
    for k in range(args.disks):
        sub = d / "images" / f"disk{k}"
        sub.mkdir()
        path = str(sub / f"disk{k}.img")
        vctl(ref, "disk", "init", path, "--size", args.disk_size)
        disks.append(path)
        st["disks"][f"disk{k}"] = path
    vctl(ref, "dg", "create", "dg", *disks)
    layout = ["--layout", "mirror"] if args.disks >= 2 else []
    vctl(ref, "vol", "create", "dg", "data", args.size, *layout)
    vctl(ref, "coord", "create", "dg", "coord", "--cluster-id", st["cluster_id"],
         "--nodes", ",".join(str(i) for i in range(1, n + 1)))
    if net is not None:
        net.attach_disks(st["disks"])
        st["hosts"] = net.to_json()
        save(d, st)
        links = {i: [f"{net.node_ip(i, link)}:{HOSTS_HB_PORT}" for link in range(args.links)]
                 for i in range(1, n + 1)}
    else:
        links = {i: [f"127.0.0.{link + 1}:{p}" for link, p in enumerate(free_udp_ports(args.links))]
                 for i in range(1, n + 1)}
    for i in range(1, n + 1):
        credential = str(d / f"node{i}.cred")      # its own, not the cluster key
        vctl(ref, "key", "issue", str(i), "--peers", ",".join(str(j) for j in range(1, n + 1)),
             "--out", credential)
        argv = (net.enter(i) if net else []) + [
            str(VENV_BIN / "vclient"), "run", "--node-id", str(i), "--server", ref.address,
            "--key-file", credential, "--mount", str(d / f"node{i}"),
            "--control", str(d / f"node{i}.sock"), "--cluster-id", st["cluster_id"],
            "--coordinator", "dg/coord", "--pause-timeout", str(args.pause_timeout),
            "--hb-timeout", str(args.hb_timeout)] + list(args.node_arg)
        for addr in links[i]:
            argv += ["--heartbeat", addr]
        for j in range(1, n + 1):
            if j != i:
                argv += ["--peer", f"{j}=" + ",".join(links[j])]
        mode = "ex" if args.failover and i == 1 else "rw"
        if not args.failover or i == 1:
            argv += ["--attach", f"dg/data:{mode}"]
        node = {"argv": argv, "mount": str(d / f"node{i}"), "control": str(d / f"node{i}.sock"),
                "log": str(d / f"node{i}.log"), "heartbeat": links[i],
                "ports": [int(a.rsplit(":", 1)[1]) for a in links[i]],
                "file": str(d / f"node{i}" / "dg" / "data"), "bindfs": {}}
        if net is not None:
            node["netns"] = net.netns(i)
            node["ips"] = [net.node_ip(i, link) for link in range(args.links)]
            node["disk_devices"] = net.loops[str(i)]
            for name, dev in net.loops[str(i)].items():
                node["argv"] += ["--disk-path", f"{name}={dev}"]
        if args.disk_paths:
            for name, path in st["disks"].items():
                m = d / "paths" / f"node{i}" / name
                node["bindfs"][name] = {"source": str(Path(path).parent), "mount": str(m),
                                        "pid": start_bindfs(Path(path).parent, m)}
                node["argv"] += ["--disk-path", f"{name}={m / Path(path).name}"]
        st["nodes"][str(i)] = node
        save(d, st)
    start_nodes(d, st, [str(i) for i in range(1, n + 1)])


def partition(st: dict, side_a: list[str], side_b: list[str]) -> None:
    """Cut every heartbeat link between the two node sets."""
    for n in side_a + side_b:
        if n not in st["nodes"]:
            raise SystemExit(f"cluster: no node {n}")
    if set(side_a) & set(side_b):
        raise SystemExit("cluster: a node cannot be on both sides")
    if st.get("hosts"):
        HostsNet.from_json(st["hosts"]).partition(st["nft_table"], [int(n) for n in side_a],
                                                  [int(n) for n in side_b])
    else:
        ports = lambda side: [p for n in side for p in st["nodes"][n]["ports"]]  # noqa: E731
        Nft(st["nft_table"]).drop_between(ports(side_a), ports(side_b))


def isolate(st: dict, node: str, peers_too: bool) -> None:
    """Cut ``node`` off from the server (and its peers): --hosts only."""
    if node not in st["nodes"]:
        raise SystemExit(f"cluster: no node {node}")
    if not st.get("hosts"):
        raise SystemExit("cluster: isolating a node needs the hosts test bed (tools/cluster up --hosts)")
    HostsNet.from_json(st["hosts"]).cut_server(st["nft_table"], int(node), peers_too)


def heal(st: dict) -> None:
    if st.get("hosts"):
        HostsNet.from_json(st["hosts"]).heal(st["nft_table"])
    else:
        Nft(st["nft_table"]).remove()


def print_summary(st: dict) -> None:
    print(f"cluster {st['cluster_id']} in {st['dir']} (state: {st['dir']}/cluster.json)")
    if st.get("ha"):
        for k, srv in enumerate(st["ha"]["servers"]):
            print(f"server{k + 1} pid {srv['pid']}  {srv['address']}  log {srv['log']}")
        print(f"etcd    {HA_MEMBERS} members (tools/etcd status --dir {st['ha']['etcd_dir']})")
    else:
        print(f"server  pid {st['server']['pid']}  {st['server']['address']}  log {st['server']['log']}")
    print(f"volume  {st['volume']} (file NODE_MOUNT/dg/data)   coordinator {st['coordinator']}")
    for i, n in sorted(st["nodes"].items(), key=lambda kv: int(kv[0])):
        print(f"node {i}  pid {n['pid']}  mount {n['mount']}  heartbeat {' '.join(n['heartbeat'])}")
    print(f"\nexport FENCEVOL_SERVER={st['server']['address']} FENCEVOL_KEY_FILE={st['server']['key_file']}")
    print(f"vclient status --control {st['nodes']['1']['control']}      tools/cluster down --dir {st['dir']}")


STATUS_TIMEOUT = 2.0          # a stopped or stalled node does not answer


def node_status(n: dict) -> dict | None:
    """A node's status (its control socket, asked directly: no process to start);
    None if it is not running, an error entry if it does not answer in time."""
    if not alive(n.get("pid")):
        return None
    try:
        return control.request(n["control"], "status", timeout=STATUS_TIMEOUT)
    except Unavailable as exc:
        return {"error": f"not answering (stopped or stalled?): {exc}"}


def cmd_status(args) -> int:
    d = Path(args.dir).resolve()
    st = load(d)
    nodes = sorted(st["nodes"].items(), key=lambda kv: int(kv[0]))
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:     # one stalled node
        answers = list(pool.map(node_status, [n for _, n in nodes]))   # costs one timeout
    out = dict(zip([i for i, _ in nodes], answers))
    if args.json:
        print(json.dumps({"cluster": st, "nodes": out}, indent=2))
        return 0
    for i, s in out.items():
        if s is None:
            print(f"node {i}: not running")
        elif "error" in s:
            print(f"node {i}: {s['error']}")
        else:
            c = s.get("cluster", {})
            gates = ", ".join(f"{v['name']}={v['gate']['state']}" for v in s["volumes"]) or "no volumes"
            print(f"node {i}: {c.get('state')} generation {c.get('generation')} members {c.get('members')}"
                  f" reachable {c.get('reachable')}  {gates}")
    return 0


def down(d: Path, st: dict, quiet: bool = False) -> None:
    heal(st)
    for pidfile in d.glob("stall-*.pid"):          # tools/fault/stall's strace
        try:
            stop_pid(int(pidfile.read_text()))
        except ValueError:
            pass
        pidfile.unlink(missing_ok=True)
    for n in st["nodes"].values():
        stop_pid(n.get("pid"))
        force_unmount(n["mount"])
        for b in n.get("bindfs", {}).values():
            stop_pid(b.get("pid"))
            force_unmount(b["mount"])
    stop_pid(st.get("server", {}).get("pid"))
    if st.get("ha"):
        stop_ha(st)
    if st.get("hosts"):
        net = HostsNet.from_json(st["hosts"])
        net.destroy()
        st["hosts"] = net.to_json()
        if state_path(d).exists():
            save(d, st)
    if not quiet:
        extra = "; namespaces, interfaces and loop devices removed" if st.get("hosts") else ""
        print(f"cluster in {d} stopped; nftables table {st['nft_table']} removed{extra}")


def cmd_down(args) -> int:
    d = Path(args.dir).resolve()
    down(d, load(d))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start a cluster of N nodes")
    up.add_argument("nodes", type=int, metavar="N")
    for p in [up] + [sub.add_parser(c, help=h) for c, h in (
            ("down", "stop everything this tool started"),
            ("status", "show every node's view"),
            ("partition", "cut the heartbeats between two node sets, e.g. 1,2 3"),
            ("isolate", "cut a node off from the server, and with --peers from its peers "
                        "(--hosts only)"),
            ("heal", "remove every cut"),
            ("start-node", "(re)start one node"), ("start-server", "(re)start the server"),
            ("kill-leader", "--ha: kill -9 the leading server"),
            ("cut-etcd", "--ha: cut a server (default: the leader) off from etcd"))]:
        p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"where it lives (default {DEFAULT_DIR})")
        if p.prog.endswith("status"):
            p.add_argument("--json", action="store_true")
        if p.prog.endswith("start-node"):
            p.add_argument("node", metavar="ID")
        if p.prog.endswith("partition"):
            p.add_argument("side_a", metavar="A")
            p.add_argument("side_b", metavar="B")
        if p.prog.endswith("kill-leader"):
            p.add_argument("--restart", action="store_true", help="start it again (a standby)")
        if p.prog.endswith("cut-etcd"):
            p.add_argument("server", nargs="?", type=int, metavar="K", help="server number (1, 2)")
        if p.prog.endswith("isolate"):
            p.add_argument("node", metavar="ID")
            p.add_argument("--peers", action="store_true", help="from its peers too")
    up.add_argument("--links", type=int, default=1, choices=[1, 2], help="heartbeat links per node")
    up.add_argument("--disks", type=int, default=2, help="backing images (default 2)")
    up.add_argument("--disk-size", default="128M")
    up.add_argument("--size", default="64M", help="size of dg/data (a mirror with 2+ disks)")
    up.add_argument("--failover", action="store_true",
                    help="node 1 attaches dg/data exclusively, the others stand by (Figure 9)")
    up.add_argument("--disk-paths", action="store_true",
                    help="give every node its own bindfs path to each disk (for tools/fault/cut-disk)")
    up.add_argument("--cluster-id", default="fvcluster")
    up.add_argument("--lease", type=float, default=4.0)
    up.add_argument("--pause-timeout", type=float, default=30.0)
    up.add_argument("--hb-timeout", type=float, default=1.25)
    up.add_argument("--hosts", action="store_true",
                    help="every node in its own network namespace on its own loop devices over "
                         "the images, as hosts on a SAN (tools/hostsnet.py)")
    up.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="an extra vclient argument for every node (repeat; e.g. "
                         "--node-arg=--watchdog-slack --node-arg=0.3)")
    up.add_argument("--ha", action="store_true",
                    help="an HA control plane: 3 etcd members and 2 servers (docs/HA.md)")
    up.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.cmd == "up":
        return cmd_up(args)
    if args.cmd == "down":
        return cmd_down(args)
    if args.cmd == "status":
        return cmd_status(args)
    d = Path(args.dir).resolve()
    st = load(d)
    if args.cmd == "partition":
        partition(st, args.side_a.split(","), args.side_b.split(","))
        print(f"partitioned {{{args.side_a}}} | {{{args.side_b}}} (nft table {st['nft_table']}"
              + (", in every node namespace)" if st.get("hosts") else ")"))
        return 0
    if args.cmd == "isolate":
        isolate(st, args.node, args.peers)
        print(f"node {args.node} cut off from the server" + (" and its peers" if args.peers else "")
              + f" (nft table {st['nft_table']} in its namespace)")
        return 0
    if args.cmd == "heal":
        heal(st)
        print(f"healed (nft table {st['nft_table']} removed)")
        return 0
    if args.cmd in ("kill-leader", "cut-etcd") and not st.get("ha"):
        raise SystemExit(f"cluster: {args.cmd} needs an HA control plane (tools/cluster up N --ha)")
    if args.cmd == "kill-leader":
        kill_leader(d, st, args.restart)
        return 0
    if args.cmd == "cut-etcd":
        k = cut_etcd(st, None if args.server is None else args.server - 1)
        print(f"server {k + 1} cut off from etcd (nft table {st['nft_table']}; tools/cluster heal)")
        return 0
    if args.cmd == "start-server" and st.get("ha"):
        stopped = [k for k, s in enumerate(st["ha"]["servers"]) if not alive(s.get("pid"))]
        if not stopped:
            raise SystemExit("cluster: every server is running")
        for k in stopped:
            start_ha_server(d, st, k)
            print(f"server {k + 1} started (pid {st['ha']['servers'][k]['pid']})")
        return 0
    if args.cmd == "start-server":
        if alive(st["server"].get("pid")):
            raise SystemExit(f"cluster: the server is running (pid {st['server']['pid']})")
        start_server(d, st)
    else:
        if args.node not in st["nodes"]:
            raise SystemExit(f"cluster: no node {args.node}")
        start_node(d, st, args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
