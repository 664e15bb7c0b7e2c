"""What a hostile or vanished client can make the server hold (issue 10, finding 7):
the real server in-process, real TCP connections on loopback, real clock."""

import trio
from test_delegations import TERMS, FakeSession, call, connect

from fencevol import coord, wire
from fencevol.rpc import ConnectionClosed, FramedConnection, client_handshake, open_client, parse_address
from vserver import limits
from vserver.handlers import dispatch
from vserver.server import Settings, VolumeServer

MiB = 1 << 20


async def serving(tmp_path, nursery, **limits_) -> tuple[VolumeServer, tuple[str, int]]:
    srv = VolumeServer(Settings(state_dir=str(tmp_path / "state"), listen=("127.0.0.1", 0),
                                lease=TERMS, **limits_), dispatch)
    srv.open_state()
    await nursery.start(srv.serve)
    return srv, parse_address(srv.listen_address)


async def session(addr, key, role="admin", node=None) -> FramedConnection:
    conn = FramedConnection(await trio.open_tcp_stream(*addr))
    await client_handshake(conn, key, role, node)
    return conn


async def closed_by_server(conn: FramedConnection) -> bool:
    try:
        await conn.receive()          # the error frame, if any, then EOF
        await conn.receive()
    except (ConnectionClosed, trio.BrokenResourceError, OSError, Exception):
        return True
    return False


async def test_partial_frames_are_bounded_per_session_and_overall_and_time_out(tmp_path):
    """20 connections x 20 MiB partial frames held 860 MB. Now each frame is charged
    whole before its body is read: at most one 3 MiB frame per 4 MiB session and two
    in the 8 MiB server budget; the stalled senders are dropped after the frame
    timeout, the room comes back, and a well-behaved client still gets answers."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery, session_memory=4 * MiB,
                                      server_memory=8 * MiB, frame_timeout=1.0)
            frame = wire.encode({"id": 1, "op": "ping", "args": {}}, b"x" * (3 * MiB))
            conns = [await session(addr, srv.key) for _ in range(10)]
            try:
                for conn in conns:
                    await conn.stream.send_all(frame[:MiB])      # and then nothing
                charge = limits.frame_charge(len(frame) - wire.HEADER_SIZE - 3 * MiB, 3 * MiB)
                while srv.memory.used < 2 * charge:              # two admitted, eight wait
                    await srv.memory.changed()
                for conn in conns:
                    assert await closed_by_server(conn)          # each times out in turn
            finally:
                for conn in conns:
                    await conn.aclose()
            assert srv.memory.peak <= 8 * MiB and srv.memory.used == 0
            async with open_client(addr, srv.key) as client:
                await client.call("ping")
            nursery.cancel_scope.cancel()
        srv.close()


async def test_an_attach_waiting_on_a_conflict_ends_when_its_client_goes_away(tmp_path):
    """A blocked attach held its request (and its memory) until its wait ran out,
    long after the client vanished; now it ends when the connection does."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery)
            admin = FakeSession()
            await call(srv, admin, "disk_init", path=str(tmp_path / "d1.img"), size=64 * MiB)
            await call(srv, admin, "dg_create", name="dg", disks=[str(tmp_path / "d1.img")])
            await call(srv, admin, "vol_create", dg="dg", name="v", size=MiB)
            await call(srv, connect(srv, 1), "attach", volume="dg/v", mode="ex")   # a live holder
            conn = await session(addr, srv.key, "node", 2)
            await conn.send({"id": 1, "op": "attach", "args": {
                "volume": "dg/v", "mode": "ex", "wait": 500,
                "key": coord.registration_key("", 2, 1)}})
            while srv.memory.used == 0:                          # the request is waiting
                await srv.memory.changed()
            await conn.aclose()
            with trio.fail_after(5):                              # not 500 s
                while srv.memory.used:
                    await srv.memory.changed()
            keys = next(iter(srv.disks.values())).pr.registrations
            assert coord.registration_key("", 2, 1) not in keys   # and it left no key behind
            nursery.cancel_scope.cancel()
        srv.close()
