"""Every handler fed malformed fields (issue 11): for each operation, requests that
differ from a well-formed one in one field -- a value of the wrong JSON type, a
required field missing, an unknown field -- are refused with a one-line
``InvalidArgument`` naming the field; nothing changes (state files, every disk's
metadata, the delegation table) and the server keeps answering. In-process under
MockClock, then once over a real TCP connection."""

import hashlib
import os
import tempfile

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delegations import FakeSession, call, connect
from test_fuzz import fuzz_server
from test_server_limits import serving

from fencevol import coord, ondisk
from fencevol.errors import InvalidArgument
from fencevol.protocol.base import field_spec
from fencevol.protocol.messages import OPERATIONS
from fencevol.rpc import open_client
from vserver.handlers import OPS, dispatch
from vserver.server import VolumeServer

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=5)


def well_formed(tmp: str) -> dict[str, dict]:
    """One plausible request per operation (whether it would succeed does not
    matter: only the malformed field is under test)."""
    key = coord.registration_key("", 1, 1)
    deleg = {"delegation": "d-1"}
    return {
        "status": {}, "ping": {}, "disk_list": {}, "dg_list": {}, "vol_list": {"dg": "dg"},
        "disk_init": {"path": os.path.join(tmp, "new.img"), "size": "64M", "name": "n", "force": False},
        "dg_create": {"name": "g2", "disks": ["d1"]},
        "dg_import": {"name": "dg", "paths": [os.path.join(tmp, "d1.img")], "scan": []},
        "dg_repair": {"name": "dg"},
        "vol_create": {"dg": "dg", "name": "v2", "size": "1M", "layout": "stripe", "kind": "data",
                       "columns": 1, "mirrors": 1, "stripe_unit": "64K", "max_subdisk": "1M",
                       "cluster_id": ""},
        "vol_show": {"volume": "dg/v"}, "vol_remove": {"volume": "dg/v"},
        "vol_resize": {"volume": "dg/v", "size": "2M"}, "vol_resync": {"volume": "dg/v"},
        "disk_replace": {"old": "d1", "new": os.path.join(tmp, "new.img")},
        "disk_evacuate": {"disk": "d1"},
        "dg_add_disk": {"name": "dg", "disks": [os.path.join(tmp, "new.img")]},
        "map_ack": deleg | {"generation": 3},
        "plex_detach": deleg | {"plexes": [1], "generation": 3, "reason": "EIO"},
        "attach": {"volume": "dg/v", "mode": "rw", "key": key, "wait": 0.0},
        "renew": {"delegations": ["d-1"]}, "detach": deleg, "revoke_ack": deleg,
        "read": deleg | {"offset": 0, "length": 4096, "plex": 0},
        "write": deleg | {"offset": 0, "plex": 0, "sync": True}, "sync": deleg,
        "coord_create": {"dg": "dg", "name": "c2", "cluster_id": "c2", "nodes": [1, 2],
                         "size": "1M", "layout": "concat"},
        "coord_show": {"volume": "dg/coord"}, "coord_clear": {"volume": "dg/coord", "force": True},
        "coord_write": deleg | {"expected_generation": 1},
        "fence": {"coordinator": "dg/coord", "victims": [2, {"node": 2, "incarnation": 1}]},
        "pr_read_keys": {"disk": "d1"}, "pr_read_reservation": {"disk": "d1"},
        "pr_preempt": {"disk": "d1", "node": 2}, "pr_clear": {"disk": "d1"},
        "pr_forget": {"key": "0x1", "disk": "d1"},
    }


def accepts(request, name: str, value) -> bool:
    try:
        request.from_wire({name: value})
    except InvalidArgument as exc:
        return f"{name} must" not in str(exc) and f"{name}[" not in str(exc) \
            and f"{name}:" not in str(exc)
    return True


@st.composite
def malformed(draw, op: str, base: dict):
    """(args, what the error must mention)."""
    request = OPERATIONS[op][0]
    spec = field_spec(request)
    kinds = ["unknown"] + (["missing"] if any(r for _, r in spec.values()) else []) \
        + (["wrong"] if spec else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown":
        return base | {"forse": draw(json_value)}, "unknown argument 'forse'"
    if kind == "missing":
        name = draw(st.sampled_from(sorted(n for n, (_, r) in spec.items() if r)))
        return {k: v for k, v in base.items() if k != name}, f"missing argument '{name}'"
    name = draw(st.sampled_from(sorted(spec)))
    bad = draw(json_value.filter(lambda v: not accepts(request, name, v)))
    return base | {name: bad}, name


def snapshot(srv: VolumeServer, tmp: str) -> tuple:
    """Everything a request could change: files (state directory, disk images'
    metadata areas), the delegation table, the groups' configurations."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(tmp)):
        for f in sorted(files):
            path = os.path.join(root, f)
            digest.update(path.encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(ondisk.PRIVATE_SIZE))
    return (digest.hexdigest(), sorted((d.id, d.state) for d in srv.table.by_id.values()),
            sorted((g.name, g.config.generation) for g in srv.groups.values()), sorted(srv.disks))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_handler_refuses_malformed_fields_and_changes_nothing(data):
    async def scenario(tmp):
        srv = await fuzz_server(tmp)     # disk d1, group dg, volume v, coordinator
        try:
            admin, node = FakeSession(), connect(srv, 1)
            await call(srv, node, "attach", volume="dg/v")       # a real delegation exists
            base = well_formed(tmp)
            before = snapshot(srv, tmp)
            for op in sorted(OPS):
                args, mention = data.draw(malformed(op, base[op]), label=op)
                sess = node if OPS[op].role == "node" else admin
                with pytest.raises(InvalidArgument) as err:
                    await dispatch(srv, sess, {"op": op, "args": args}, b"x" * 512)
                text = str(err.value)
                assert mention in text and "\n" not in text, (op, args, text)
                assert text.startswith(f"{op} request"), text
            assert snapshot(srv, tmp) == before
            status, _ = await dispatch(srv, admin, {"op": "status", "args": {}}, b"")
            assert [g["name"] for g in status["groups"]] == ["dg"]
        finally:
            srv.close()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(scenario, tmp, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_well_formed_requests_pass_the_typed_check():
    """The base requests are well formed (else the test above proves little)."""
    for op, args in well_formed("/tmp").items():
        OPERATIONS[op][0].from_wire(args)
    assert set(well_formed("/tmp")) == set(OPS)


async def test_malformed_requests_over_tcp_get_error_replies_and_the_server_lives(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery)
            async with open_client(addr, srv.key, "admin") as admin:
                for op, (request, _) in sorted(OPERATIONS.items()):
                    if OPS[op].role == "node":
                        continue
                    with pytest.raises(InvalidArgument, match=f"{op} request: unknown argument"):
                        await admin.call(op, {"forse": 1})
                    if any(r for _, r in field_spec(request).values()):
                        with pytest.raises(InvalidArgument, match="missing argument"):
                            await admin.call(op, {})
                result, _ = await admin.call("status")
                assert result["server"]["listen"] == srv.listen_address
            nursery.cancel_scope.cancel()
        srv.close()
