"""``vclient``: the node agent (``run``) and its local commands."""

from __future__ import annotations

import argparse
import glob
import logging
import os

import trio

from fencevol.cli import print_json, print_table, run_main, setup_logging
from fencevol.clock import BOOTTIME
from fencevol.errors import InvalidArgument
from fencevol.metrics import parse_listen
from fencevol.modes import parse_mode
from fencevol.rpc import parse_address, parse_servers
from fencevol.units import format_size

from . import config, control
from .cluster import ClusterOptions
from .node import Node, NodeOptions

DEFAULT_SERVER = "127.0.0.1:7745"
DEFAULT_KEY = "/var/lib/fencevol/cluster.key"


def _volume_spec(text: str) -> tuple[str, str]:
    name, _, mode = text.partition(":")
    if name.count("/") != 1:
        raise argparse.ArgumentTypeError(f"bad volume {text!r}: expected DG/VOL[:MODE]")
    try:
        return name, parse_mode(mode or "rw")
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _disk_path(text: str) -> tuple[str, str]:
    disk, sep, path = text.partition("=")
    if not sep or not disk or not path:
        raise argparse.ArgumentTypeError(f"bad --disk-path {text!r}: expected DISK=PATH")
    return disk, path


def _peer(text: str) -> tuple[int, list[tuple[str, int]]]:
    node, sep, addrs = text.partition("=")
    try:
        nid = int(node)
        if not sep or not 1 <= nid <= 65535:
            raise ValueError
        return nid, [parse_address(a) for a in addrs.split(",") if a]
    except (ValueError, InvalidArgument):
        raise argparse.ArgumentTypeError(
            f"bad --peer {text!r}: expected ID=HOST:PORT[,HOST:PORT] (one address per link)") from None


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vclient", description="fencevol volume client (node agent)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the node agent in the foreground",
                       description="Connect to the volume server, attach volumes and mount them "
                       "as files MOUNT/DG/VOL. SIGTERM/SIGINT unmount cleanly.")
    r.add_argument("--config", metavar="FILE",
                   help="TOML configuration (docs/OPERATIONS.md); flags override it")
    r.add_argument("--node-id", type=int, metavar="N", help="this node's id (1-65535; required)")
    r.add_argument("--server", metavar="HOST:PORT", action="append",
                   help=f"volume server (default {DEFAULT_SERVER}); repeat it, or give "
                        "HOST:PORT,HOST:PORT, for the servers of an HA control plane")
    r.add_argument("--key-file", metavar="FILE",
                   help=f"this node's credential (`vctl key issue`) or the cluster key "
                        f"(default {DEFAULT_KEY})")
    r.add_argument("--tls-ca", metavar="PEM",
                   help="talk TLS to the server, trusting certificates of this CA")
    r.add_argument("--mount", metavar="DIR", help="mount point (required)")
    r.add_argument("--attach", action="append", type=_volume_spec,
                   metavar="DG/VOL[:MODE]", help="attach at start (repeatable; MODE rw|ro|ew|ex)")
    r.add_argument("--pause-timeout", type=float, metavar="SECONDS",
                   help="how long paused I/O waits before failing with EIO (default 30)")
    r.add_argument("--control", metavar="PATH",
                   help="control socket (default /run/fencevol/vclient-N.sock)")
    r.add_argument("--disk-path", action="append", type=_disk_path, metavar="DISK=PATH",
                   help="open disk DISK (id or name) at PATH instead of the server's path")
    r.add_argument("--remote-disk", action="append", metavar="DISK",
                   help="reach DISK (id or name) only through the server's remote I/O")
    r.add_argument("--max-tasks", type=int, help="FUSE requests in flight (default 99)")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    r.add_argument("--log-format", choices=["text", "json"],
                   help="json: one object per line with node id, incarnation, generation, volume "
                        "and event fields (for journald and log shippers; default text)")
    w = r.add_argument_group("watchdog self-fencing (docs/FENCING.md)")
    w.add_argument("--watchdog", choices=["on", "off"],
                   help="kill this agent before the server can declare it fenced when it stops "
                        "making progress or a write outlives its lease (default on; off is "
                        "unsafe on shared disks)")
    w.add_argument("--watchdog-slack", type=float, metavar="S",
                   help="time left for the kill before the server's fence wait ends (default 0.5)")
    w.add_argument("--hw-watchdog", metavar="DEVICE",
                   help="also keep this watchdog device (e.g. /dev/watchdog) alive: a whole-host "
                        "hang then resets the host")
    c = r.add_argument_group("cluster membership and fencing (docs/FENCING.md)")
    c.add_argument("--cluster-id", metavar="ID", help="run as a member of this cluster")
    c.add_argument("--coordinator", metavar="DG/NAME", help="the cluster's coordinator volume")
    c.add_argument("--heartbeat", action="append", type=_address, metavar="HOST:PORT",
                   help="listen for heartbeats here; repeat for a second link")
    c.add_argument("--peer", action="append", type=_peer,
                   metavar="ID=HOST:PORT[,HOST:PORT]", help="another node and its link addresses")
    c.add_argument("--hb-interval", type=float, metavar="S",
                   help="heartbeat interval (default 0.25)")
    c.add_argument("--hb-timeout", type=float, metavar="S",
                   help="a peer is lost after this long unheard (default 1.25)")
    c.add_argument("--race-timeout", type=float, metavar="S",
                   help="how long a racer may try to get the coordinator (default 10)")
    c.add_argument("--join-timeout", type=float, metavar="S",
                   help="how long join and leave retry for the coordinator (default 15)")
    c.add_argument("--no-join", action="store_true", default=None, help="do not join at start (`vclient join` later)")

    def local(name, help_):
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--node-id", type=int, metavar="N",
                       help="which running vclient (default: the only one)")
        c.add_argument("--control", metavar="PATH", help="its control socket")
        c.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return c

    local("status", "show the running vclient: server link, volumes, gates, disks")
    a = local("attach", "attach a volume to the running vclient")
    a.add_argument("volume", metavar="DG/VOL")
    a.add_argument("--mode", default="rw", help="rw, ro, ew or ex (default rw)")
    d = local("detach", "detach a volume from the running vclient")
    d.add_argument("volume", metavar="DG/VOL")
    local("join", "join (or rejoin) the cluster: new incarnation, new key, fresh delegations")
    local("leave", "leave the cluster gracefully and detach the data volumes")
    return p


def _control_path(args) -> str:
    if args.control:
        return args.control
    if args.node_id is not None:
        return control.default_path(args.node_id)
    found = sorted(glob.glob(os.path.join(control.RUN_DIR, "vclient-*.sock")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidArgument(f"no running vclient found in {control.RUN_DIR}; give --node-id or --control")
    raise InvalidArgument(f"{len(found)} vclients are running; give --node-id or --control")


RUN_DEFAULTS = {
    "server": None, "key_file": os.environ.get("FENCEVOL_KEY_FILE", DEFAULT_KEY),
    "tls_ca": os.environ.get("FENCEVOL_TLS_CA") or None, "attach": [], "pause_timeout": 30.0,
    "control": None, "disk_path": [], "remote_disk": [], "max_tasks": 99, "log_level": "info",
    "log_format": "text", "metrics": None, "watchdog": "on", "watchdog_slack": 0.5,
    "hw_watchdog": "", "cluster_id": None, "coordinator": None, "heartbeat": [], "peer": [],
    "hb_interval": 0.25, "hb_timeout": 1.25, "race_timeout": 10.0, "join_timeout": 15.0,
    "no_join": False,
}
PARSERS = {"volume": _volume_spec, "address": _address, "peer": _peer}


def cmd_run(args) -> int:
    settings = config.load(args.config, PARSERS) if args.config else {}
    config.apply(args, settings, RUN_DEFAULTS)
    if args.node_id is None:
        raise InvalidArgument("the node id is required: --node-id N (or node_id in --config)")
    if not args.mount:
        raise InvalidArgument("a mount point is required: --mount DIR (or mount in --config)")
    setup_logging(f"vclient-{args.node_id}", args.log_level, args.log_format)
    from . import selftest
    if os.environ.get(selftest.SWITCH):
        if selftest.apply(os.environ[selftest.SWITCH]) in selftest.WITHOUT_WATCHDOG:
            args.watchdog = "off"
    if not 1 <= args.node_id <= 65535:
        raise InvalidArgument("--node-id must be between 1 and 65535")
    if args.watchdog == "off":
        logging.getLogger("vclient").warning(
            "watchdog off: a write admitted just before this agent stalls could land after "
            "the survivors took over (unsafe on shared disks)")
    elif args.hw_watchdog and not os.path.exists(args.hw_watchdog):
        raise InvalidArgument(f"--hw-watchdog {args.hw_watchdog}: no such device")
    cluster = None
    if args.cluster_id or args.coordinator or args.peer or args.heartbeat:
        if not (args.cluster_id and args.coordinator and args.heartbeat):
            raise InvalidArgument("cluster mode needs --cluster-id, --coordinator and --heartbeat")
        peers = dict(args.peer)
        if len(peers) != len(args.peer):
            raise InvalidArgument("a node id is given twice with --peer")
        if args.node_id in peers:
            raise InvalidArgument(f"--peer names this node's own id {args.node_id}")
        cluster = ClusterOptions(
            cluster_id=args.cluster_id, coordinator=args.coordinator, links=args.heartbeat,
            peers=peers, interval=args.hb_interval, timeout=args.hb_timeout,
            join_timeout=args.join_timeout, race_timeout=args.race_timeout,
            auto_join=not args.no_join)
    opts = NodeOptions(
        node_id=args.node_id,
        servers=parse_servers(args.server or os.environ.get("FENCEVOL_SERVER", DEFAULT_SERVER), 7745),
        key_file=args.key_file,
        mount=os.path.abspath(args.mount), attach=args.attach, pause_timeout=args.pause_timeout,
        control_path=args.control or "", disk_paths=dict(args.disk_path),
        remote_disks=set(args.remote_disk), max_tasks=args.max_tasks,
        watchdog=args.watchdog == "on", watchdog_slack=args.watchdog_slack,
        hw_watchdog=args.hw_watchdog, cluster=cluster, tls_ca=args.tls_ca or "",
        metrics=parse_listen(args.metrics) if args.metrics else None)
    trio.run(Node(opts).run, clock=BOOTTIME)
    return 0


def print_status(st: dict) -> None:
    srv = st["server"]
    link = "connected" if srv["connected"] else f"DISCONNECTED ({srv['last_error'] or 'connecting'})"
    print(f"node {st['node']}  pid {st['pid']}  mount {st['mount']}  key {st['key']}")
    print(f"server {srv['address']}  {link}  ({srv.get('credential', '?')}"
          + (", TLS)" if srv.get("tls") else ", no TLS)"))
    wd = st.get("watchdog") or {}
    if wd.get("enabled"):
        print(f"watchdog pid {wd['pid']}  {wd['state']}  budget {wd['budget']:.2f}s  longest without a "
              f"ping {wd['worst_ping_gap']:.3f}s" + (f"  DOWN: {wd['down']} (writes paused)" if wd["down"] else ""))
    else:
        print("watchdog OFF: a write admitted before a stall could land after a fence (unsafe)")
    c = st.get("cluster")
    if c:
        print(f"cluster {c['cluster_id']}  state {c['state']}" + (f" ({c['reason']})" if c["reason"] else "")
              + f"  generation {c['generation']}  members {c['members']}  reachable {c['reachable']}")
        for p in c["problems"]:
            print(f"  ! {p}")
    if not st["volumes"]:
        print("no volumes attached")
        return
    print()
    rows = []
    for v in st["volumes"]:
        g = v["gate"]
        rows.append((v["name"], v["mode"], format_size(v["size"]), g["state"] + (
            f" ({g['reason']})" if g["reason"] else ""), f"{g['lease_remaining']:.1f}s",
            g["renewals"], g["pauses"], g["writes_rejected"]))
    print_table(rows, ["VOLUME", "MODE", "SIZE", "GATE", "LEASE", "RENEWALS", "PAUSES", "REJECTED"])
    remote = [(v["name"], d["name"], d["reason"]) for v in st["volumes"] for d in v["disks"]
              if d["access"] == "remote"]
    failed = [(v["name"], d["name"], d["error"]) for v in st["volumes"] for d in v["disks"] if d["error"]]
    if remote:
        print()
        print_table(remote, ["VOLUME", "REMOTE DISK", "WHY"])
    if failed:
        print()
        print_table(failed, ["VOLUME", "FAILED DISK", "ERROR"])


def cmd_local(args) -> int:
    path = _control_path(args)
    if args.command == "status":
        st = control.request(path, "status")
        print_json(st) if args.json else print_status(st)
    elif args.command == "attach":
        v = control.request(path, "attach", {"volume": args.volume, "mode": parse_mode(args.mode)})
        print_json(v) if args.json else print(
            f"attached {v['name']} ({v['mode_name']}), {format_size(v['size'])}")
    elif args.command == "detach":
        r = control.request(path, "detach", {"volume": args.volume})
        print_json(r) if args.json else print(f"detached {r['detached']}")
    else:
        c = control.request(path, args.command, timeout=120)
        print_json(c) if args.json else print(
            f"node state {c['state']} in cluster {c['cluster_id']}: generation {c['generation']}, "
            f"members {c['members']}, incarnation {c['incarnation']}")
    return 0


def main(argv: list[str] | None = None) -> None:
    def _main() -> int:
        args = build_parser().parse_args(argv)
        return cmd_run(args) if args.command == "run" else cmd_local(args)
    run_main("vclient", _main)


if __name__ == "__main__":
    main()
