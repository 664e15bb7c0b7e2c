"""``vctl``: administer a volume server (disks, disk groups, volumes, status)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import trio

from fencevol import auth, tls
from fencevol.cli import print_json, print_table, run_main
from fencevol.errors import NotLeader, Unavailable
from fencevol.protocol import messages as proto
from fencevol.protocol.messages import Message, reply_of
from fencevol.rpc import open_client, parse_servers
from fencevol.units import format_size, parse_size

from .server import DEFAULT_PORT, DEFAULT_STATE_DIR

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_KEY = os.path.join(DEFAULT_STATE_DIR, "cluster.key")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vctl", description="Administer a fencevol volume server.",
        epilog="Environment: FENCEVOL_SERVER, FENCEVOL_KEY_FILE, FENCEVOL_TLS_CA give "
               "defaults for --server, --key-file and --tls-ca.")
    p.add_argument("--server", metavar="HOST:PORT", action="append",
                   help=f"volume server (default {DEFAULT_SERVER}); repeat it, or give "
                        "HOST:PORT,HOST:PORT, for the servers of an HA control plane: "
                        "the leader answers")
    p.add_argument("--key-file", metavar="FILE",
                   default=os.environ.get("FENCEVOL_KEY_FILE", DEFAULT_KEY),
                   help=f"cluster key file (default {DEFAULT_KEY})")
    p.add_argument("--tls-ca", metavar="PEM", default=os.environ.get("FENCEVOL_TLS_CA") or None,
                   help="talk TLS to the server, trusting certificates of this CA")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on the server after this long (default 30)")
    _json_flag(p)
    sub = p.add_subparsers(dest="area", required=True, metavar="COMMAND")

    def cmd(parent, name, help_, fn):
        c = parent.add_parser(name, help=help_, description=help_)
        _json_flag(c)
        c.set_defaults(fn=fn)
        return c

    cmd(sub, "status", "server, disks, groups, attachments with lease state", cmd_status)
    c = cmd(sub, "install-units", "install the systemd units fencevol-server.service and "
            "fencevol-client@.service (instance: the node id); runs locally", cmd_install_units)
    c.add_argument("--dir", default="/etc/systemd/system", metavar="DIR",
                   help="where to put them (default /etc/systemd/system)")
    c.add_argument("--config-dir", default="/etc/fencevol", metavar="DIR",
                   help="where the units look for vserver.toml and node-N.toml (default /etc/fencevol)")
    c.add_argument("--bin-dir", default=os.path.dirname(os.path.abspath(sys.argv[0])), metavar="DIR",
                   help="where vserver and vclient are (default: next to this vctl)")

    disk = sub.add_parser("disk", help="initialize and list disks").add_subparsers(
        dest="verb", required=True, metavar="VERB")
    c = cmd(disk, "init", "write a fencevol private region on a disk image or block device",
            cmd_disk_init)
    c.add_argument("path", metavar="PATH")
    c.add_argument("--size", metavar="SIZE", help="create a sparse image of this size if PATH does not exist")
    c.add_argument("--name", help="disk name (default: file name without extension)")
    c.add_argument("--force", action="store_true", help="re-initialize a disk that is in no group")
    cmd(disk, "list", "list known disks", cmd_disk_list)

    c = cmd(disk, "replace", "move a (dead) disk's subdisks to a new disk and resync them "
            "from the other mirror plexes", cmd_disk_replace)
    c.add_argument("old", metavar="OLD", help="name, id or path of the disk to replace")
    c.add_argument("new", metavar="NEW", help="path, name or id of an initialized disk in no group")
    c.add_argument("--no-wait", action="store_true", help="return once the resync started")

    c = cmd(disk, "evacuate", "move every subdisk off a disk to free space in its group "
            "while I/O goes on (a temporary mirror per plex, like pvmove)", cmd_disk_evacuate)
    c.add_argument("disk", metavar="DISK", help="name, id or path")
    c.add_argument("--no-wait", action="store_true", help="start it and return")

    dg = sub.add_parser("dg", help="disk groups").add_subparsers(dest="verb", required=True, metavar="VERB")
    c = cmd(dg, "create", "create a disk group from initialized disks", cmd_dg_create)
    c.add_argument("name", metavar="NAME")
    c.add_argument("disks", nargs="+", metavar="DISK", help="path, name or id of a disk")
    cmd(dg, "list", "list disk groups", cmd_dg_list)
    c = cmd(dg, "import", "import a disk group from its disks alone", cmd_dg_import)
    c.add_argument("name", metavar="NAME")
    c.add_argument("paths", nargs="*", metavar="PATH", help="disk paths (default: scan)")
    c.add_argument("--scan", action="append", metavar="GLOB", help="where to look for disks")
    c = cmd(dg, "repair", "rewrite damaged metadata copies from the newest valid configuration; "
            "reopen failed disks and resync the stale plexes on them", cmd_dg_repair)
    c.add_argument("name", metavar="NAME")
    c = cmd(dg, "add-disk", "add initialized disks to a group", cmd_dg_add_disk)
    c.add_argument("name", metavar="NAME")
    c.add_argument("disks", nargs="+", metavar="DISK", help="path, name or id of a disk in no group")

    vol = sub.add_parser("vol", help="volumes").add_subparsers(dest="verb", required=True, metavar="VERB")
    c = cmd(vol, "create", "create a volume", cmd_vol_create)
    c.add_argument("dg", metavar="DG")
    c.add_argument("name", metavar="NAME")
    c.add_argument("size", metavar="SIZE", help="e.g. 64M, 1G")
    c.add_argument("--layout", choices=["concat", "stripe", "mirror"], default="concat")
    c.add_argument("--columns", type=int, metavar="N", help="stripe columns (default 2)")
    c.add_argument("--mirrors", type=int, metavar="N", help="mirror plexes (default 2)")
    c.add_argument("--stripe-unit", metavar="SIZE", help="stripe unit (default 64K)")
    c.add_argument("--max-subdisk", metavar="SIZE",
                   help="cap subdisk size (more, smaller extents)")
    c = cmd(vol, "list", "list volumes", cmd_vol_list)
    c.add_argument("dg", nargs="?", metavar="DG")
    c = cmd(vol, "show", "show a volume and its extent map", cmd_vol_show)
    c.add_argument("volume", metavar="DG/NAME")
    c = cmd(vol, "resize", "grow (live) or shrink (detached only) a volume", cmd_vol_resize)
    c.add_argument("volume", metavar="DG/NAME")
    c.add_argument("size", metavar="SIZE")
    c = cmd(vol, "remove", "remove a detached volume", cmd_vol_remove)
    c.add_argument("volume", metavar="DG/NAME")
    c = cmd(vol, "resync", "copy an active mirror plex onto the stale ones while I/O goes on "
            "(reopens their disks if they came back)", cmd_vol_resync)
    c.add_argument("volume", metavar="DG/NAME")
    c.add_argument("--no-wait", action="store_true", help="start it and return (progress: vol show)")

    co = sub.add_parser("coord", help="cluster coordinator volumes").add_subparsers(
        dest="verb", required=True, metavar="VERB")
    c = cmd(co, "create", "create and initialize a coordinator volume (patent Figure 5)",
            cmd_coord_create)
    c.add_argument("dg", metavar="DG")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--cluster-id", required=True, metavar="ID")
    c.add_argument("--nodes", default="1,2,3,4,5,6,7,8", metavar="1,2,...",
                   help="node ids of the cluster (default 1-8)")
    c.add_argument("--size", default="1M", metavar="SIZE", help="volume size (default 1M)")
    c.add_argument("--layout", choices=["concat", "mirror"], default="concat")
    c = cmd(co, "show", "show a coordinator's membership and whether its checksum holds",
            cmd_coord_show)
    c.add_argument("volume", metavar="DG/NAME")
    c = cmd(co, "clear", "mark every node as not a member (after a whole-cluster crash)",
            cmd_coord_clear)
    c.add_argument("volume", metavar="DG/NAME")
    c.add_argument("--force", action="store_true",
                   help="clear even though members are still connected (they are NOT fenced)")

    pr = sub.add_parser("pr", help="persistent reservations on disks (like sg_persist)").add_subparsers(
        dest="verb", required=True, metavar="VERB")
    c = cmd(pr, "read-keys", "list registered keys (all disks in groups if DISK is omitted)",
            cmd_pr_read_keys)
    c.add_argument("disk", nargs="?", metavar="DISK")
    c = cmd(pr, "read-reservation", "show the reservation holder and type", cmd_pr_read_reservation)
    c.add_argument("disk", nargs="?", metavar="DISK")
    c = cmd(pr, "preempt", "preempt and abort a key or a node's keys (revokes its delegations)",
            cmd_pr_preempt)
    c.add_argument("disk", nargs="?", metavar="DISK", help="one disk (default: all)")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", metavar="KEY", help="registration key, hex")
    g.add_argument("--node", type=int, metavar="N", help="every key of node N")
    c = cmd(pr, "clear", "clear all registrations of a disk (the server re-registers)", cmd_pr_clear)
    c.add_argument("disk", metavar="DISK")
    c = cmd(pr, "forget", "let a preempted key register again", cmd_pr_forget)
    c.add_argument("key", metavar="KEY")
    c.add_argument("disk", nargs="?", metavar="DISK")

    key = sub.add_parser("key", help="node credentials").add_subparsers(
        dest="verb", required=True, metavar="VERB")
    c = cmd(key, "issue", "write node N's credential (derived from the cluster key, offline): it "
            "lets that node act as itself only -- not as another node, not as an admin", cmd_key_issue)
    c.add_argument("node", type=int, metavar="N")
    c.add_argument("--peers", required=True, metavar="1,2,...",
                   help="the node ids of its cluster (heartbeat keys for each pair)")
    c.add_argument("--out", required=True, metavar="FILE",
                   help="where to write it (created, mode 0600; never overwritten)")
    return p


async def _call(args, req: Message) -> dict:
    """Ask the servers in turn: one that cannot be reached, or is not the leader
    (NotLeader: the request was not run), is skipped. A request that was sent and
    got no answer is not sent again elsewhere -- it may have run. With several
    servers and none leading (an election under way), ask again until --timeout."""
    key = auth.load_key_file(args.key_file)
    servers = parse_servers(args.server or os.environ.get("FENCEVOL_SERVER", DEFAULT_SERVER),
                            DEFAULT_PORT)
    ctx = tls.client_context(args.tls_ca) if args.tls_ca else None
    skipped: list[str] = []
    try:
        with trio.fail_after(args.timeout):
            while True:
                skipped = []
                for address in servers:
                    sent = False
                    try:
                        async with open_client(address, key, "admin", tls=ctx) as client:
                            sent = True
                            result, _ = await client.call(req.OP, req.to_wire())
                    except NotLeader as exc:
                        skipped.append(f"{_where(address)}: {exc}")
                        continue
                    except Unavailable as exc:
                        if sent:
                            raise
                        skipped.append(str(exc))
                        continue
                    reply_of(req.OP, result)       # the reply is checked against its type
                    return result
                if len(servers) == 1:
                    raise Unavailable(skipped[0])
                await trio.sleep(0.2)
    except trio.TooSlowError:
        if len(servers) > 1 and skipped:
            raise Unavailable(f"no server led within {args.timeout:g}s: "
                              + "; ".join(skipped)) from None
        raise Unavailable(f"server {', '.join(map(_where, servers))} did not answer within "
                          f"{args.timeout:g}s") from None


def _where(address: tuple[str, int]) -> str:
    return "%s:%d" % address


def call(args, req: Message) -> dict:
    """Send one typed request; the reply's result object (checked against the
    operation's reply type)."""
    return trio.run(_call, args, req)


def _problems(items) -> None:
    for it in items:
        for p in it.get("problems", []):
            print(f"  ! {it.get('name') or it.get('path')}: {p}")


# --- commands ---------------------------------------------------------------------------
def cmd_status(args) -> None:
    st = call(args, proto.StatusRequest())
    if args.json:
        return print_json(st)
    s = st["server"]
    print(f"server {s['listen']}  id {s['id'][:12]}  pid {s['pid']}  up {s['uptime']:.0f}s  "
          f"state {s['state_dir']}")
    if s.get("ha"):
        ha = s["ha"]
        print(f"HA leader of {ha['cluster']} (epoch {ha['epoch']}, leading for {ha['leader_for']:.0f}s) "
              f"on etcd {','.join(ha['etcd'])}")
    lease = s["lease"]
    print(f"lease {lease['duration']:g}s + margin {lease['margin']:g}s"
          + (f"  grace {s['grace_remaining']:.1f}s left" if s["grace_remaining"] > 0 else ""))
    print()
    _print_disks(st["disks"])
    print()
    _print_groups(st["groups"])
    print()
    if st["attachments"]:
        print_table([(a["volume"], a["node"], a["mode"], a["state"],
                      "yes" if a["connected"] else "no", f"{a['lease_remaining']:.1f}s")
                     for a in st["attachments"]],
                    ["VOLUME", "NODE", "MODE", "STATE", "CONNECTED", "LEASE LEFT"])
    else:
        print("no attachments")
    if st["nodes"]:
        print()
        print_table([(n["node"], n["peer"]) for n in st["nodes"]], ["NODE", "PEER"])
    if st.get("degraded"):
        print()
        for v in st["degraded"]:
            _print_plex_states({"name": v["volume"], **v})


def _print_disks(disks) -> None:
    if not disks:
        print("no disks")
        return
    print_table([(d["name"], format_size(d["size"]) if "size" in d else "-",
                  format_size(d["free"]) if "free" in d else "-", d.get("group") or "-",
                  d["state"], d["path"]) for d in disks],
                ["DISK", "SIZE", "FREE", "GROUP", "STATE", "PATH"])
    _problems(disks)


def _print_groups(groups) -> None:
    if not groups:
        print("no disk groups")
        return
    print_table([(g["name"], len(g["disks"]), g["volumes"], format_size(g["size"]),
                  format_size(g["free"]), g["generation"], g["state"]) for g in groups],
                ["GROUP", "DISKS", "VOLUMES", "SIZE", "FREE", "GEN", "STATE"])
    _problems(groups)


def cmd_disk_init(args) -> None:
    d = call(args, proto.DiskInitRequest(
        path=os.path.abspath(args.path), force=args.force, name=args.name or None,
        size=parse_size(args.size, align=1 << 20, what="disk size") if args.size else None))
    if args.json:
        return print_json(d)
    print(f"initialized disk {d['name']} ({d['id']}) at {d['path']}: "
          f"{format_size(d['public_size'])} usable")


def cmd_disk_list(args) -> None:
    disks = call(args, proto.DiskListRequest())["disks"]
    if args.json:
        return print_json(disks)
    _print_disks(disks)


def _disk_ref(ref: str) -> str:
    return os.path.abspath(ref) if ("/" in ref or os.path.exists(ref)) else ref


def cmd_dg_create(args) -> None:
    g = call(args, proto.DgCreateRequest(name=args.name, disks=[_disk_ref(d) for d in args.disks]))
    if args.json:
        return print_json(g)
    print(f"created disk group {g['name']} ({g['id']}) on {', '.join(g['disks'])}: "
          f"{format_size(g['free'])} free")


def cmd_dg_list(args) -> None:
    groups = call(args, proto.DgListRequest())["groups"]
    if args.json:
        return print_json(groups)
    _print_groups(groups)


def cmd_dg_import(args) -> None:
    g = call(args, proto.DgImportRequest(name=args.name, paths=[os.path.abspath(p) for p in args.paths],
                                         scan=args.scan or []))
    if args.json:
        return print_json(g)
    print(f"imported disk group {g['name']} ({g['id']}, generation {g['generation']}): "
          f"{len(g['disks'])} disks, {g['volumes']} volumes")
    _problems([g])


def cmd_dg_repair(args) -> None:
    r = call(args, proto.DgRepairRequest(name=args.name))
    if args.json:
        return print_json(r)
    print("repaired: " + (", ".join(r["repaired"]) or "nothing was damaged; copies rewritten"))


def cmd_vol_create(args) -> None:
    v = call(args, proto.VolCreateRequest(
        dg=args.dg, name=args.name, size=parse_size(args.size, what="volume size"),
        layout=args.layout, columns=args.columns, mirrors=args.mirrors,
        stripe_unit=parse_size(args.stripe_unit, align=4096, what="stripe unit")
        if args.stripe_unit else None,
        max_subdisk=parse_size(args.max_subdisk, align=1, what="subdisk size")
        if args.max_subdisk else None))
    if args.json:
        return print_json(v)
    print(f"created volume {v['name']}: {format_size(v['size'])} {_layout_text(v)}, "
          f"{v['extents']} subdisk(s)")


def _layout_text(v: dict) -> str:
    if v["layout"] == "stripe":
        return f"stripe ({v['columns']} columns, unit {format_size(v['stripe_unit'])})"
    if v["layout"] == "mirror":
        return f"mirror ({v['mirrors']} plexes)"
    return v["layout"]


def _attached_text(v: dict) -> str:
    return ", ".join(f"{a['node']}:{a['mode']}" + ("" if a["state"] == "active" else f"({a['state']})")
                     for a in v["attached"]) or "-"


def cmd_vol_list(args) -> None:
    vols = call(args, proto.VolListRequest(dg=args.dg or None))["volumes"]
    if args.json:
        return print_json(vols)
    if not vols:
        print("no volumes")
        return
    print_table([(v["name"], format_size(v["size"]), _layout_text(v), v["kind"], v["extents"],
                  _state_text(v), _attached_text(v)) for v in vols],
                ["VOLUME", "SIZE", "LAYOUT", "KIND", "EXTENTS", "STATE", "ATTACHED (NODE:MODE)"])


def _state_text(v: dict) -> str:
    states = v.get("plex_states") or ["active"]
    if all(st == "active" for st in states):
        return "ok"
    r = v.get("resync")
    return "degraded" + (f" (resync {r['percent']}%)" if r else "")


def cmd_vol_show(args) -> None:
    v = call(args, proto.VolShowRequest(volume=args.volume))
    if args.json:
        return print_json(v)
    _print_volume(v)


def _print_volume(v: dict) -> None:
    print(f"volume {v['name']}  id {v['id']}")
    print(f"  size {format_size(v['size'])} ({v['size']} bytes)  layout {_layout_text(v)}  kind {v['kind']}")
    print(f"  attached: {_attached_text(v)}")
    if len(v.get("plex_states") or []) > 1 or v.get("resync"):
        print("  ", end="")
        _print_plex_states(v)
    rows = []
    for p in v["plexes"]:
        for c in p["columns"]:
            for sd in c["subdisks"]:
                rows.append((p["plex"], c["column"], sd["column_offset"], sd["length"], sd["disk"],
                             sd["disk_offset"], sd["path"]))
    print()
    print_table(rows, ["PLEX", "COL", "COL_OFFSET", "LENGTH", "DISK", "DISK_OFFSET", "PATH"])


def cmd_vol_resize(args) -> None:
    t0 = time.monotonic()
    v = call(args, proto.VolResizeRequest(volume=args.volume,
                                          size=parse_size(args.size, what="volume size")))
    if args.json:
        return print_json(v)
    print(f"resized {v['name']} to {format_size(v['size'])} in {time.monotonic() - t0:.2f}s")


UNITS = ("fencevol-server.service", "fencevol-client@.service")


def cmd_install_units(args) -> None:
    from importlib import resources

    from fencevol.errors import InvalidArgument
    for tool in ("vserver", "vclient"):
        if not os.access(os.path.join(args.bin_dir, tool), os.X_OK):
            raise InvalidArgument(f"no {tool} in {args.bin_dir}; give --bin-dir")
    if not os.path.isdir(args.dir):
        raise InvalidArgument(f"{args.dir} is not a directory")
    written = []
    for name in UNITS:
        text = resources.files("fencevol").joinpath("systemd", name).read_text()
        text = text.replace("@BINDIR@", args.bin_dir).replace("@CONFDIR@", args.config_dir)
        path = os.path.join(args.dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        written.append(path)
    if args.json:
        return print_json({"installed": written})
    for path in written:
        print(f"installed {path}")
    print("next: systemctl daemon-reload; systemctl enable --now fencevol-server "
          "fencevol-client@N (configuration in " + args.config_dir + ")")


def cmd_vol_resync(args) -> None:
    v = call(args, proto.VolResyncRequest(volume=args.volume))
    if not args.no_wait:
        v = _wait_resync(args, [v["name"]])[0]
    if args.json:
        return print_json(v)
    _print_plex_states(v)


def cmd_disk_replace(args) -> None:
    g = call(args, proto.DiskReplaceRequest(old=args.old, new=args.new))
    if not args.no_wait:
        vols = call(args, proto.VolListRequest(dg=g["name"]))["volumes"]
        _wait_resync(args, [v["name"] for v in vols if v.get("resync")])
    if args.json:
        return print_json(g)
    print(f"disk {args.old} replaced by {args.new} in disk group {g['name']}")


def cmd_disk_evacuate(args) -> None:
    r = call(args, proto.DiskEvacuateRequest(disk=args.disk))
    if not args.no_wait:
        _wait_evacuation(args, r["disk"], r["volumes"])
    if args.json:
        return print_json(r)
    print(f"disk {r['disk']}: " + (f"{', '.join(r['volumes'])} moved off it" if r["volumes"]
                                   else "nothing on it"))


def _wait_evacuation(args, disk: str, volumes: list[str]) -> None:
    """Until no volume has a subdisk on ``disk``; the resync of each temporary plex
    shows a bar. An evacuation that stopped fails the command."""
    from fencevol.errors import IOFailure
    for name in volumes:
        while True:
            v = call(args, proto.VolShowRequest(volume=name))
            if v.get("resync"):
                _wait_resync(args, [name])
                continue
            if not any(sd["disk"] == disk for p in v["plexes"] for c in p["columns"]
                       for sd in c["subdisks"]):
                break
            d = [x for x in call(args, proto.DiskListRequest())["disks"] if x["name"] == disk]
            stopped = [p for x in d for p in x.get("problems", []) if p.startswith("evacuation stopped")]
            if stopped:
                raise IOFailure(f"disk {disk}: {stopped[0]}")
            time.sleep(0.2)


def cmd_dg_add_disk(args) -> None:
    g = call(args, proto.DgAddDiskRequest(name=args.name, disks=args.disks))
    if args.json:
        return print_json(g)
    print(f"disk group {g['name']}: {len(g['disks'])} disks, {format_size(g['free'])} free")


def _wait_resync(args, names: list[str]) -> list[dict]:
    """Poll each volume until its resync ends; a progress bar on a terminal
    (tqdm draws nothing elsewhere), nothing otherwise. A resync that stops with an
    error fails the command."""
    from tqdm import tqdm

    from fencevol.errors import IOFailure
    out = []
    for name in names:
        v = call(args, proto.VolShowRequest(volume=name))
        size = os.get_terminal_size(sys.stderr.fileno()) if sys.stderr.isatty() else None
        unsized = size is not None and not (size.columns and size.lines)   # e.g. script(1)'s pty
        bar = tqdm(total=v["size"], unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"resync {name}", disable=None if not args.json else True,
                   ncols=80 if unsized else None, nrows=24 if unsized else None)
        try:
            while v.get("resync"):
                r = v["resync"]
                if r.get("error") and not r.get("running"):
                    raise IOFailure(f"resync of {name} stopped at {r['percent']}%: {r['error']}")
                bar.update(r["done"] - bar.n)
                time.sleep(0.2)
                v = call(args, proto.VolShowRequest(volume=name))
            bar.update(v["size"] - bar.n)
        finally:
            bar.close()
        out.append(v)
    return out


def _print_plex_states(v: dict) -> None:
    states = v.get("plex_states") or []
    text = ", ".join(f"plex {p} {st}" for p, st in enumerate(states))
    r = v.get("resync")
    if r:
        text += (f"; resync {r['percent']}% ({format_size(r['done'])} of {format_size(r['size'])}"
                 + (f", {format_size(r['rate'])}/s" if r.get("rate") else "") + ")"
                 + (f" error: {r['error']}" if r.get("error") else ""))
    print(f"{v['name']}: {text}")


def cmd_vol_remove(args) -> None:
    r = call(args, proto.VolRemoveRequest(volume=args.volume))
    if args.json:
        return print_json(r)
    print(f"removed volume {r['removed']}")


def _parse_nodes(text: str) -> list[int]:
    from fencevol.errors import InvalidArgument
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise InvalidArgument(f"bad --nodes {text!r}: expected comma-separated node ids") from None


def _print_membership(m: dict) -> None:
    print(f"cluster {m['cluster_id']}  generation {m['generation']}  members {m['members']}")
    print_table([(r["node_id"], "yes" if r["is_member"] else "no", r["incarnation"],
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["changed_at"])))
                 for r in m["records"]], ["NODE", "MEMBER", "INCARNATION", "CHANGED"])


def cmd_coord_create(args) -> None:
    r = call(args, proto.CoordCreateRequest(
        dg=args.dg, name=args.name, cluster_id=args.cluster_id, nodes=_parse_nodes(args.nodes),
        size=parse_size(args.size, what="coordinator size"), layout=args.layout))
    if args.json:
        return print_json(r)
    print(f"created coordinator {r['name']} for cluster {args.cluster_id}")
    _print_membership(r["membership"])


def cmd_coord_show(args) -> None:
    r = call(args, proto.CoordShowRequest(volume=args.volume))
    if args.json:
        return print_json(r)
    print(f"coordinator {r['name']}  {format_size(r['size'])} {_layout_text(r)}  "
          f"checksum {'ok' if r['checksum_ok'] else 'BAD'}  attached: {_attached_text(r)}")
    if not r["checksum_ok"]:
        print(f"  ! {r['error']}")
        raise SystemExit(1)
    _print_membership(r["membership"])


def cmd_coord_clear(args) -> None:
    r = call(args, proto.CoordClearRequest(volume=args.volume, force=args.force))
    if r.get("forced_live"):
        print(f"WARNING: members {', '.join(map(str, r['forced_live']))} were still up; they are "
              "not fenced and may write beside a newly formed cluster", file=sys.stderr)
    if args.json:
        return print_json(r)
    _print_membership(r["membership"])


def _print_keys(disks: list[dict], reservation_only: bool = False) -> None:
    for d in disks:
        res = d["reservation"]
        res_text = f"{res['key']} {res['type']} ({res['type_name']})" if res else "none"
        print(f"disk {d['disk']} ({d['path']})  PR generation {d['generation']}  reservation {res_text}")
        if not reservation_only:
            for k in d["keys"]:
                print(f"  key {k['key']}  {k['owner']}")
            if d["preempted"]:
                print(f"  preempted: {', '.join(d['preempted'])}")


def cmd_pr_read_keys(args) -> None:
    r = call(args, proto.PrReadKeysRequest(disk=args.disk))
    print_json(r["disks"]) if args.json else _print_keys(r["disks"])


def cmd_pr_read_reservation(args) -> None:
    r = call(args, proto.PrReadReservationRequest(disk=args.disk))
    print_json(r["disks"]) if args.json else _print_keys(r["disks"], reservation_only=True)


def cmd_pr_preempt(args) -> None:
    r = call(args, proto.PrPreemptRequest(disk=args.disk, key=args.key or None,
                                          node=None if args.key else args.node))
    print_json(r["disks"]) if args.json else _print_keys(r["disks"])


def cmd_pr_clear(args) -> None:
    r = call(args, proto.PrClearRequest(disk=args.disk))
    print_json(r["disks"]) if args.json else _print_keys(r["disks"])


def cmd_pr_forget(args) -> None:
    r = call(args, proto.PrForgetRequest(key=args.key, disk=args.disk))
    print_json(r["disks"]) if args.json else _print_keys(r["disks"])


def cmd_key_issue(args) -> None:
    from fencevol.errors import AlreadyExists, InvalidArgument
    if not 1 <= args.node <= 65535:
        raise InvalidArgument(f"node id {args.node} out of range 1-65535")
    try:
        peers = sorted({int(p) for p in args.peers.split(",") if p.strip()})
    except ValueError:
        raise InvalidArgument(f"--peers {args.peers!r}: expected node ids like 1,2,3") from None
    if not peers or not all(1 <= p <= 65535 for p in peers) or len(peers) > 64:
        raise InvalidArgument("--peers: 1 to 64 node ids, each 1-65535")
    text = auth.issue_credential(auth.load_key_file(args.key_file), args.node, peers)
    try:
        auth.write_secret_file(args.out, text)
    except FileExistsError:
        raise AlreadyExists(f"{args.out} exists; remove it first (credentials are never "
                            "overwritten)") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot write {args.out}: {exc.strerror}") from None
    if args.json:
        return print_json({"node": args.node, "peers": [p for p in peers if p != args.node],
                           "path": os.path.abspath(args.out)})
    print(f"node {args.node} credential written to {args.out} (mode 0600); copy it to that node "
          "only and give it to vclient --key-file")


def main(argv: list[str] | None = None) -> None:
    def _main() -> int:
        args = build_parser().parse_args(argv)
        if not hasattr(args, "json"):
            args.json = False
        args.fn(args)
        return 0
    run_main("vctl", _main)


if __name__ == "__main__":
    main()
