"""tools/etcd: start or stop a real etcd cluster on loopback ports (Debian's
etcd-server) for tests, the demo and the HA control plane's development.

  tools/etcd up 3 [--dir DIR]     start 3 members, wait until each is healthy,
                                  print the client endpoints (--json: all details)
  tools/etcd status [--dir DIR]   health of each member
  tools/etcd down [--dir DIR]     stop every member, remove their data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.etcd import EtcdCluster

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/etcd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start N members on loopback")
    up.add_argument("n", type=int, metavar="N")
    for p in (up, sub.add_parser("status", help="health of each member"),
              sub.add_parser("down", help="stop every member, remove their data")):
        p.add_argument("--dir", default=str(ROOT / "etcd-run"), help="working directory")
        p.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    workdir = Path(args.dir).resolve()
    try:
        if args.command == "up":
            if not 1 <= args.n <= 7:
                ap.error("N must be 1-7")
            if (workdir / "etcd.json").exists():
                print(f"tools/etcd: a cluster is already up in {workdir}; `tools/etcd down` first",
                      file=sys.stderr)
                return 1
            cluster = EtcdCluster.create(workdir, args.n).start()
            if args.json:
                print(json.dumps({"endpoints": cluster.endpoints,
                                  "members": [m.__dict__ for m in cluster.members]}, indent=1))
            else:
                print(",".join(cluster.endpoints))
            return 0
        if not (workdir / "etcd.json").exists():
            print(f"tools/etcd: no cluster in {workdir}", file=sys.stderr)
            return 1 if args.command == "status" else 0
        cluster = EtcdCluster.load(workdir)
        if args.command == "status":
            health = {m.name: {"endpoint": m.client, "healthy": cluster.healthy(m)}
                      for m in cluster.members}
            if args.json:
                print(json.dumps(health, indent=1))
            else:
                for name, h in health.items():
                    print(f"{name}  {h['endpoint']}  {'healthy' if h['healthy'] else 'DOWN'}")
            return 0 if all(h["healthy"] for h in health.values()) else 1
        cluster.stop()
        print(f"etcd cluster in {workdir} stopped, data removed")
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"tools/etcd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
