"""Fuzz targets (hypothesis) for the frame decoder and the server's request
handlers: whatever arrives, the answer is a frame or a ``ProtocolError``, a result
or a ``FencevolError`` -- never another exception (which the server would turn into
an "internal" error) -- and the server still works afterwards.

Bounded for CI (``FENCEVOL_FUZZ_EXAMPLES``, default 150 per target); run longer with
e.g. ``FENCEVOL_FUZZ_EXAMPLES=20000 .venv/bin/pytest --timeout 0 tests/unit/test_fuzz.py``."""

import os
import struct
import tempfile

import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_delegations import TERMS, FakeSession, call, connect

from fencevol import wire
from fencevol.errors import FencevolError, ProtocolError
from fencevol.protocol.base import Message, message
from fencevol.protocol.messages import OPERATIONS, PingReply
from vserver.handlers import OPS, dispatch
from vserver.server import Settings, VolumeServer

EXAMPLES = int(os.environ.get("FENCEVOL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- the frame decoder ------------------------------------------------------------------


def frame_of(body: bytes, payload: bytes = b"") -> bytes:
    head = wire.HEADER.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(body), len(payload),
                            wire.zlib.crc32(payload) if payload else 0, 0)[:16]
    return head + struct.pack(">I", wire.crc32c(body, wire.crc32c(head))) + body + payload


json_text = st.one_of(
    st.binary(max_size=200),                                      # not JSON at all
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=20).map(lambda v: wire.json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),      # deep nesting
    st.integers(1, 6000).map(lambda n: b'{"id": ' + b"9" * n + b"}"),  # huge integers
)


@FUZZ
@given(frames=st.lists(st.tuples(json_text, st.binary(max_size=64)), min_size=1, max_size=4),
       garbage=st.binary(max_size=64), cut=st.integers(0, 1 << 16), chunk=st.integers(1, 97),
       flip=st.one_of(st.none(), st.tuples(st.integers(0, 1 << 16), st.integers(1, 255))))
def test_frame_decoder_gives_frames_or_protocol_errors(frames, garbage, cut, chunk, flip):
    data = bytearray(b"".join(frame_of(b, p) for b, p in frames))
    if flip is not None and data:
        data[flip[0] % len(data)] ^= flip[1]
    data = bytes(data[: cut % (len(data) + 1)]) + garbage
    dec = wire.FrameDecoder()
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i:i + chunk])
            while True:
                frame = dec.next_frame()
                if frame is None:
                    break
                msg, payload = frame
                assert isinstance(msg, dict) and isinstance(payload, bytes)
    except ProtocolError:
        pass


# -- the request handlers -----------------------------------------------------------------

@message
class FragileRequest(Message):
    """A planted operation for the self-test below."""
    OP = "fragile"
    size: int | None = None


def safe_text(s: str) -> bool:
    """Never a path outside the test's directory: fuzzed admin requests create files."""
    return not s.startswith("/") and "\0" not in s


names = st.sampled_from(["dg", "dg/v", "dg/coord", "dg/nope", "v", "coord", "nope", "", "d1", "c"])
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                 st.integers(-3, 4096), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=12).filter(safe_text), names,
                 st.sampled_from(["rw", "ro", "ex", "ew", "WE", "EA", "mirror", "stripe", "1M", "64K"]))
value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["node", "incarnation", "key", "id", "path"]), c, max_size=3), max_leaves=8)
ARGS = ["cluster_id", "coordinator", "delegation", "delegations", "dg", "disk", "disks",
        "expected_generation", "force", "key", "kind", "layout", "length", "mode", "name", "node",
        "nodes", "offset", "path", "paths", "plex", "scan", "size", "sync", "victims", "volume", "wait",
        "copies", "stripe_unit", "type", "incarnation"]


def args_of(op: str, request=None):
    """Arguments for ``op``: mostly its own fields (so requests get past the typed
    check into the handler), sometimes another operation's."""
    request = request or OPERATIONS.get(op, (None,))[0]
    own = sorted(request.__dataclass_fields__) if request else []
    keys = st.sampled_from(own) if own else st.sampled_from(ARGS)
    return st.dictionaries(keys, value, max_size=5) | st.dictionaries(st.sampled_from(ARGS), value,
                                                                      max_size=3)


request = st.sampled_from(sorted(OPS) + ["nope"]).flatmap(lambda op: st.tuples(
    st.just(op), args_of(op), st.sampled_from(["admin", 1, 2, 3]), st.binary(max_size=1024)))


async def fuzz_server(tmp: str) -> VolumeServer:
    srv = VolumeServer(Settings(state_dir=os.path.join(tmp, "state"), lease=TERMS))
    srv.open_state()
    admin = FakeSession()
    disk = os.path.join(tmp, "d1.img")
    await call(srv, admin, "disk_init", path=disk, size=64 << 20)
    await call(srv, admin, "dg_create", name="dg", disks=[disk])
    await call(srv, admin, "vol_create", dg="dg", name="v", size=1 << 20)
    await call(srv, admin, "coord_create", dg="dg", name="coord", cluster_id="c", nodes=[1, 2])
    return srv


@FUZZ
@given(requests=st.lists(request, min_size=1, max_size=6))
@example(requests=[("pr_preempt", {"key": []}, "admin", b"")])       # found by this target
@example(requests=[("pr_forget", {"key": 1.5}, "admin", b"")])
def test_request_handlers_answer_or_refuse_cleanly(requests):
    async def scenario(tmp):
        srv = await fuzz_server(tmp)
        try:
            sessions = {"admin": FakeSession()} | {n: connect(srv, n) for n in (1, 2, 3)}
            for name, args, who, payload in requests:
                sess = sessions[who]
                if name == "path" or "path" in args and isinstance(args["path"], str):
                    args["path"] = os.path.join(tmp, os.path.basename(args["path"]) or "x")
                with trio.move_on_after(3600):            # virtual time: waits end at once
                    try:
                        await dispatch(srv, sess, {"op": name, "args": args}, payload)
                    except FencevolError:
                        pass
            result, _ = await dispatch(srv, sessions["admin"], {"op": "status", "args": {}}, b"")
            assert "dg" in {g["name"] for g in result["groups"]}
        finally:
            srv.close()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(scenario, tmp, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_fuzz_targets_find_a_planted_bug(monkeypatch):
    """The request target is not vacuous: a handler that fails on some argument
    values is found."""
    from vserver import registry

    async def fragile(srv, sess, req, payload):
        return PingReply(time=1 / (req.size or 0)), b""     # fails on a falsy size

    monkeypatch.setitem(registry.OPS, "fragile", registry.Entry(fragile, "any", FragileRequest, PingReply))

    @settings(max_examples=500, deadline=None, database=None)
    @given(args=st.dictionaries(st.sampled_from(ARGS), value, max_size=5) | args_of("fragile", FragileRequest))
    def probe(args):
        async def one():
            try:
                await dispatch(None, FakeSession(), {"op": "fragile", "args": args}, b"")
            except FencevolError:
                pass
        trio.run(one)

    try:
        probe()
    except (ZeroDivisionError, ExceptionGroup):   # found it (maybe several distinct failures)
        return
    raise AssertionError("the fuzzer did not find a handler failing on size=0")



# -- the handshake ---------------------------------------------------------------------------

@FUZZ
@given(auth_request=st.dictionaries(
    st.sampled_from(["op", "protocol", "role", "node_id", "instance", "client_nonce", "proof"]),
    st.one_of(value, st.just("auth"), st.just(1), st.text(min_size=16, max_size=40)), max_size=7))
def test_the_server_handshake_accepts_or_refuses_cleanly(auth_request):
    from fencevol.errors import AuthError
    from fencevol.protocol.handshake import ServerHandshake
    server = ServerHandshake(b"k" * 32, "fuzz")
    server.hello()
    try:
        server.receive_auth(auth_request)
    except (ProtocolError, AuthError):
        pass
    else:
        raise AssertionError(f"accepted without the key: {auth_request!r}")
