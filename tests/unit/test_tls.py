"""TLS on the control connection (issue 10): the real server in-process on
loopback TCP, certificates made with the openssl CLI (installed by tools/setup)."""

import pytest
import trio
from testbed.certs import make_ca, make_server_cert
from test_server_limits import serving

from fencevol import auth, tls
from fencevol.errors import AuthError, InvalidArgument, Unavailable
from fencevol.rpc import connect, open_client
from vserver.server import Settings, VolumeServer


async def test_tls_connections_and_their_refusals(tmp_path):
    ca = make_ca(tmp_path, "ca")
    other_ca = make_ca(tmp_path, "other")
    cert, key = make_server_cert(tmp_path, "ca")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            srv, addr = await serving(tmp_path, nursery, tls_cert=cert, tls_key=key)
            ctx = tls.client_context(ca)
            async with open_client(addr, srv.key, "admin", tls=ctx) as admin:     # admin over TLS
                assert "groups" in (await admin.call("status"))[0]
            client = await connect(addr, auth.node_key(srv.key, 2), "node", 2, tls=ctx)  # a node too
            await client.aclose()
            with pytest.raises(AuthError, match="certificate not trusted"):
                await connect(addr, srv.key, "admin", tls=tls.client_context(other_ca))
            with pytest.raises(Unavailable):                          # plain TCP: no session
                await connect(addr, srv.key, "admin", timeout=2)
            nursery.cancel_scope.cancel()
        srv.close()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:                    # TLS client, plain server
            plain, addr = await serving(tmp_path / "p", nursery)
            with pytest.raises(Unavailable, match="does it serve TLS"):
                await connect(addr, plain.key, "admin", tls=tls.client_context(ca), timeout=5)
            nursery.cancel_scope.cancel()
        plain.close()


def test_tls_settings_are_checked_at_start(tmp_path):
    with pytest.raises(InvalidArgument, match="both a certificate"):
        VolumeServer(Settings(state_dir=str(tmp_path), tls_cert="/nonexistent.pem"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        VolumeServer(Settings(state_dir=str(tmp_path), tls_cert=str(tmp_path / "c.pem"),
                              tls_key=str(tmp_path / "k.pem")))
    with pytest.raises(InvalidArgument, match="CA file .* does not exist"):
        tls.client_context(str(tmp_path / "ca.pem"))
