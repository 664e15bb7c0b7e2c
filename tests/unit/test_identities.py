"""Per-node credentials (issue 10, identities): the real server in-process on
loopback TCP. A node credential opens that node's session only -- not another
node's, not an admin's -- and node sessions cannot run admin operations."""

import pytest
import trio
from test_server_limits import serving

from fencevol import auth
from fencevol.errors import AuthError
from fencevol.rpc import connect, open_client


async def node_call(addr, key, node, op, args=None):
    client = await connect(addr, key, "node", node)
    outcome = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            try:
                outcome.append((await client.call(op, args or {}))[0])
            except Exception as exc:
                outcome.append(exc)
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


async def test_a_node_credential_acts_as_its_node_only(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery)
            two = auth.node_key(srv.key, 2)
            assert (await node_call(addr, two, 2, "ping")) is not None     # itself: yes
            with pytest.raises(AuthError, match="wrong cluster key or node 3 credential"):
                await node_call(addr, two, 3, "ping")                        # another node: no
            with pytest.raises(AuthError, match="wrong cluster key"):
                async with open_client(addr, two, "admin"):                  # an admin: no
                    pass
            with pytest.raises(AuthError, match="admin operation"):
                await node_call(addr, two, 2, "vol_create", {"dg": "dg", "name": "x", "size": 1 << 20})
            with pytest.raises(AuthError, match="admin operation"):          # the cluster key as a node
                await node_call(addr, srv.key, 2, "pr_clear", {"disk": "d1"})
            async with open_client(addr, srv.key, "admin") as admin:        # the cluster key: admin
                await admin.call("status")
            nursery.cancel_scope.cancel()
        srv.close()


async def test_the_server_can_require_node_credentials(tmp_path):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery, require_node_credentials=True)
            with pytest.raises(AuthError, match="wants node credentials"):
                await node_call(addr, srv.key, 2, "ping")
            await node_call(addr, auth.node_key(srv.key, 2), 2, "ping")
            async with open_client(addr, srv.key, "admin") as admin:
                await admin.call("status")
            nursery.cancel_scope.cancel()
        srv.close()
