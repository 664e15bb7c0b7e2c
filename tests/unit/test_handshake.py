"""The handshake state machines (fencevol/protocol/handshake.py), both sides fed
into each other without sockets: what the server and every client run."""

import pytest

from fencevol import auth
from fencevol.errors import AuthError, InUse, ProtocolError
from fencevol.protocol.handshake import ClientHandshake, ServerHandshake

KEY = b"k" * 32


def run(client_key, role="admin", node=None, server_key=KEY, require=False):
    server = ServerHandshake(server_key, "test", require)
    client = ClientHandshake(client_key, role, node, "inst")
    who = server.receive_auth(client.receive_hello(server.hello()))
    info = client.receive_reply(who.reply({"id": "s1"}))
    return who, info


def test_cluster_key_and_node_credentials():
    who, info = run(KEY)
    assert (who.role, who.node, who.credential, info["server"]["id"]) == ("admin", None, "cluster", "s1")
    who, _ = run(auth.node_key(KEY, 2), "node", 2)
    assert (who.role, who.node, who.credential, who.instance) == ("node", 2, "node", "inst")
    with pytest.raises(AuthError, match="node 3 credential"):
        run(auth.node_key(KEY, 2), "node", 3)              # node 2's credential as node 3
    with pytest.raises(AuthError):
        run(auth.node_key(KEY, 2), "admin")                # or as an admin
    with pytest.raises(AuthError, match="wants node credentials"):
        run(KEY, "node", 2, require=True)
    with pytest.raises(AuthError):
        run(b"x" * 32)


def test_a_recorded_auth_request_is_worthless_against_a_new_nonce():
    server = ServerHandshake(KEY, "test")
    client = ClientHandshake(KEY, "admin")
    recorded = client.receive_hello(server.hello())
    again = ServerHandshake(KEY, "test")
    again.hello()
    with pytest.raises(AuthError):
        again.receive_auth(recorded)


def test_the_client_checks_the_server_proof_and_relays_its_errors():
    server = ServerHandshake(b"y" * 32, "test")                   # an impostor without our key
    client = ClientHandshake(KEY, "admin")
    request = client.receive_hello(server.hello())
    with pytest.raises(AuthError, match="failed to prove"):
        client.receive_reply({"ok": True, "proof": "00" * 32, "server": {}})
    client = ClientHandshake(KEY, "node", 2)
    client.receive_hello(ServerHandshake(KEY, "test").hello())
    with pytest.raises(InUse, match="already connected"):
        client.receive_reply({"ok": False, "error": InUse("node id 2 is already connected").to_wire()})
    assert request["op"] == "auth"


@pytest.mark.parametrize("field,value,error", [
    ("op", "status", "expected an auth request"), ("protocol", 99, "protocol 99"),
    ("client_nonce", "short", "client nonce"), ("role", "root", "unknown role"),
    ("node_id", 0, "node_id"), ("node_id", True, "node_id"),
])
def test_malformed_auth_requests_are_protocol_errors(field, value, error):
    server = ServerHandshake(KEY, "test")
    request = ClientHandshake(KEY, "node", 2).receive_hello(server.hello())
    with pytest.raises(ProtocolError, match=error):
        server.receive_auth(request | {field: value})


def test_out_of_order_use_is_refused():
    server = ServerHandshake(KEY, "test")
    with pytest.raises(ProtocolError, match="out of order"):
        server.receive_auth({})                                 # before its hello
    client = ClientHandshake(KEY, "admin")
    with pytest.raises(ProtocolError, match="out of order"):
        client.receive_reply({"ok": True})                       # before the hello
    with pytest.raises(ProtocolError, match="not a fencevol server"):
        ClientHandshake(KEY, "admin").receive_hello({"hello": "smtp"})
