"""``vserver serve``: the volume server daemon (foreground)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tomllib

import trio

from fencevol.cli import run_main, setup_logging
from fencevol.clock import BOOTTIME
from fencevol.errors import InvalidArgument
from fencevol.lease import LeaseTerms
from fencevol.metrics import parse_listen
from fencevol.rpc import parse_address
from fencevol.sdnotify import Notifier
from fencevol.units import parse_size

from .handlers import dispatch
from . import etcd
from .leader import HaSettings, HaTerms, Leadership
from .ownership import OwnerTerms
from .server import DEFAULT_PORT, DEFAULT_STATE_DIR, Settings, VolumeServer

log = logging.getLogger("vserver")
SYSTEMD = Notifier()      # Type=notify under systemd; does nothing elsewhere

CONFIG_KEYS = {"state_dir": str, "listen": str, "key_file": str, "lease_seconds": (int, float),
               "lease_margin_seconds": (int, float), "lease_guard_seconds": (int, float),
               "scan": list, "log_level": str, "require_node_credentials": bool,
               "tls_cert": str, "tls_key": str, "owner_lease_seconds": (int, float),
               "etcd": str, "ha_cluster": str, "etcd_lease_seconds": int, "resync_rate": str,
               "log_format": str, "metrics": str}


def load_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {path}: {exc}") from None
    for k, v in data.items():
        if k not in CONFIG_KEYS:
            raise InvalidArgument(f"config file {path}: unknown key {k!r} "
                                  f"(known: {', '.join(sorted(CONFIG_KEYS))})")
        if not isinstance(v, CONFIG_KEYS[k]) or isinstance(v, bool) and CONFIG_KEYS[k] is not bool:
            raise InvalidArgument(f"config file {path}: {k} has the wrong type")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vserver", description="fencevol volume server")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="run the volume server in the foreground",
                       description="Run the volume server in the foreground. Command-line "
                       "flags override the TOML config file; see docs/OPERATIONS.md.")
    s.add_argument("--config", metavar="FILE", help="TOML config file")
    s.add_argument("--state-dir", metavar="DIR",
                   help=f"state directory (default {DEFAULT_STATE_DIR})")
    s.add_argument("--listen", metavar="HOST:PORT",
                   help=f"control endpoint (default 127.0.0.1:{DEFAULT_PORT})")
    s.add_argument("--key-file", metavar="FILE",
                   help="cluster key (default STATE_DIR/cluster.key, created at first start)")
    s.add_argument("--lease", type=float, metavar="SECONDS", help="delegation lease (default 4)")
    s.add_argument("--lease-margin", type=float, metavar="SECONDS",
                   help="safety margin after a lease ends (default 1)")
    s.add_argument("--lease-guard", type=float, metavar="SECONDS",
                   help="clients stop writing this long before the lease ends (default 0.5)")
    s.add_argument("--scan", action="append", metavar="GLOB",
                   help="where `dg import` looks for disks (repeatable)")
    s.add_argument("--require-node-credentials", action="store_true", default=None,
                   help="refuse node sessions that authenticate with the cluster key (give "
                        "each node its own credential: `vctl key issue`)")
    s.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    s.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    s.add_argument("--owner-lease", type=float, metavar="SECONDS",
                   help="disk-group ownership lease: another server may take a group over "
                        "after this long without renewals (default 10; renewed every fifth)")
    s.add_argument("--etcd", metavar="URL[,URL...]",
                   help="run as one of several servers sharing an etcd cluster: one leads, "
                        "the others stand by (docs/HA.md)")
    s.add_argument("--ha-cluster", metavar="NAME",
                   help="which control plane in that etcd cluster (default 'default')")
    s.add_argument("--etcd-lease", type=int, metavar="SECONDS",
                   help=f"leader lease TTL in etcd (default {HaTerms().ttl}); a dead leader "
                        "is replaced after about this long")
    s.add_argument("--resync-rate", metavar="SIZE",
                   help="copy at most this much per second when resynchronizing a mirror "
                        "plex, e.g. 50M (default: no limit)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    s.add_argument("--log-format", choices=["text", "json"],
                   help="json: one object per line with event and volume fields (default text)")
    return p


def owner_terms(expiry: float) -> OwnerTerms:
    """Renew every fifth of the lease, stop writing a fifth before it ends."""
    return OwnerTerms(renew=expiry / 5, expiry=expiry, settle=min(1.0, expiry / 10),
                      guard=expiry / 5)


def settings_from(args: argparse.Namespace) -> tuple[Settings, str, str]:
    cfg = load_config(args.config) if args.config else {}
    defaults = LeaseTerms()
    lease = LeaseTerms(
        duration=float(args.lease if args.lease is not None else cfg.get("lease_seconds", defaults.duration)),
        margin=float(args.lease_margin if args.lease_margin is not None
                     else cfg.get("lease_margin_seconds", defaults.margin)),
        guard=float(args.lease_guard if args.lease_guard is not None
                    else cfg.get("lease_guard_seconds", defaults.guard)))
    listen = args.listen or cfg.get("listen") or f"127.0.0.1:{DEFAULT_PORT}"
    settings = Settings(
        state_dir=os.path.abspath(args.state_dir or cfg.get("state_dir") or DEFAULT_STATE_DIR),
        listen=parse_address(listen, DEFAULT_PORT),
        key_file=args.key_file or cfg.get("key_file", ""),
        lease=lease,
        scan=list(args.scan or cfg.get("scan", [])),
        require_node_credentials=bool(args.require_node_credentials
                                      or cfg.get("require_node_credentials", False)),
        tls_cert=args.tls_cert or cfg.get("tls_cert", ""),
        tls_key=args.tls_key or cfg.get("tls_key", ""),
        owner=owner_terms(args.owner_lease if args.owner_lease is not None
                          else cfg.get("owner_lease_seconds", OwnerTerms().expiry)),
    )
    metrics = args.metrics or cfg.get("metrics")
    if metrics:
        settings.metrics = parse_listen(metrics)
    rate = args.resync_rate or cfg.get("resync_rate")
    if rate:
        settings.resync_rate = parse_size(rate, what="resync rate")
    endpoints = args.etcd or cfg.get("etcd")
    if endpoints:
        ttl = args.etcd_lease if args.etcd_lease is not None else cfg.get("etcd_lease_seconds",
                                                                           HaTerms().ttl)
        settings.ha = HaSettings(tuple(etcd.parse_endpoints(endpoints)),
                                 args.ha_cluster or cfg.get("ha_cluster", "default"),
                                 HaTerms(ttl=ttl))
    elif args.ha_cluster or args.etcd_lease is not None:
        raise InvalidArgument("--ha-cluster and --etcd-lease need --etcd")
    fmt = args.log_format or cfg.get("log_format", "text")
    if fmt not in ("text", "json"):
        raise InvalidArgument(f"log_format must be text or json, not {fmt!r}")
    return settings, args.log_level or cfg.get("log_level", "info"), fmt


async def serve(settings: Settings) -> None:
    if settings.ha is not None:
        return await serve_ha(settings)
    server = VolumeServer(settings, dispatch)
    server.open_state()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await nursery.start(server.serve)
            SYSTEMD.ready(f"serving on {server.listen_address}")
            nursery.start_soon(SYSTEMD.keep_alive)
    finally:
        server.close()
        log.info("stopped")


class LostLeadership(Exception):
    """The process starts over as a standby (main)."""


async def serve_ha(settings: Settings) -> None:
    """One of several servers on etcd (vserver.leader): stand by until elected,
    load the state the last leader saved, serve; on losing the leadership stop
    serving at once, without touching the disks, and start over."""
    server = VolumeServer(settings, dispatch)
    server.open_local()
    client = etcd.EtcdClient(list(settings.ha.endpoints))
    me = {"id": server.server_id, "listen": "%s:%d" % settings.listen,
          "host": socket.gethostname(), "pid": os.getpid()}
    leadership = Leadership(client, settings.ha, me)
    lost = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            nursery.start_soon(leadership.keep_alive)
            log.info("HA cluster %s on etcd %s: standing by until elected", settings.ha.cluster,
                     ",".join(settings.ha.endpoints))
            SYSTEMD.ready(f"standing by in HA cluster {settings.ha.cluster}")
            nursery.start_soon(SYSTEMD.keep_alive)
            await leadership.campaign()
            if not leadership.lost.is_set():
                state, delegations = await leadership.load()
                server.leader = leadership
                server.load_shared(state or {}, delegations or [])
                await nursery.start(server.serve)
                SYSTEMD.status(f"leader of HA cluster {settings.ha.cluster}, serving on "
                               f"{server.listen_address}")
                await leadership.lost.wait()
            nursery.cancel_scope.cancel()       # stop serving at once
    finally:
        lost = leadership.lost.is_set()
        server.close(release=not lost)
        if not lost:
            await leadership.resign()
        await client.aclose()
        log.info("stopped" if not lost else "stopped serving: leadership lost")
    if lost:
        raise LostLeadership(leadership.lost_reason)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            SYSTEMD.stopping("shutting down")
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> None:
    def _main() -> int:
        args = build_parser().parse_args(argv)
        settings, level, fmt = settings_from(args)
        setup_logging("vserver", level, fmt)
        logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per etcd call otherwise
        try:
            trio.run(serve, settings, clock=BOOTTIME)
        except LostLeadership:
            # A clean slate: nothing of the deposed leader's memory survives.
            log.warning("starting over as a standby")
            logging.shutdown()
            os.execv(sys.executable, [sys.executable, "-m", "vserver.main", *sys.argv[1:]])
        return 0
    run_main("vserver", _main)


if __name__ == "__main__":
    main()
