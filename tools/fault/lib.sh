# Shared by tools/fault/*: find the cluster's published state (cluster.json written
# by tools/cluster) and read it with jq. Sourced, not run.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_DIR=${FENCEVOL_CLUSTER_DIR:-$ROOT/cluster}
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) CLUSTER_DIR=$2; shift 2 ;;
        --dir=*) CLUSTER_DIR=${1#--dir=}; shift ;;
        -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
STATE=$CLUSTER_DIR/cluster.json
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
[ -f "$STATE" ] || die "no cluster in $CLUSTER_DIR (tools/cluster up N, or --dir DIR)"
command -v jq >/dev/null || die "jq is missing (run tools/setup)"
q() { jq -r "$@" "$STATE"; }
node_field() {   # node_field ID FIELD
    local v; v=$(q --arg n "$1" ".nodes[\$n].$2 // empty")
    [ -n "$v" ] || die "no node $1 in $STATE"
    echo "$v"
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
VCTL() { FENCEVOL_SERVER=$(q .server.address) FENCEVOL_KEY_FILE=$(q .server.key_file) "$ROOT/.venv/bin/vctl" "$@"; }
