"""The connect-time handshake as two state machines (sans-IO, h11 style): each side
feeds in the messages it received and gets back the messages to send. The server
and every client run the same code; docs/SECURITY.md describes the exchange.

    server                                   client
    hello {nonce Ns}                ->       receive_hello  -> auth {role, node_id,
                                                               instance, Nc, proof}
    receive_auth -> Accepted        <-
    Accepted.reply(info) {proof}    ->       receive_reply  -> the server's info

A proof is ``HMAC(key, "client|" Ns "|" Nc)``; the server answers with ``HMAC(key,
"server|" Nc "|" Ns)`` under the key the client proved: the cluster key, or node
N's credential for a node session as N."""

from __future__ import annotations

from dataclasses import dataclass

from .. import auth
from ..errors import AuthError, ProtocolError, from_wire
from ..wire import PROTOCOL_VERSION

SERVER_NAME = "fencevol-vserver"
ROLES = ("admin", "node")


@dataclass(frozen=True)
class Accepted:
    """A client that proved a key. ``credential``: "cluster" or "node"."""
    role: str
    node: int | None
    instance: str | None
    credential: str
    _key: bytes
    _server_nonce: str
    _client_nonce: str

    def reply(self, server_info: dict) -> dict:
        return {"ok": True, "proof": auth.server_proof(self._key, self._server_nonce, self._client_nonce),
                "server": server_info}


class ServerHandshake:
    def __init__(self, cluster_key: bytes, version: str, require_node_credentials: bool = False):
        self.key = cluster_key
        self.version = version
        self.require_node_credentials = require_node_credentials
        self.nonce = auth.new_nonce()
        self.state = "start"

    def hello(self) -> dict:
        self._step("start", "hello-sent")
        return {"hello": SERVER_NAME, "protocol": PROTOCOL_VERSION, "nonce": self.nonce,
                "version": self.version}

    def receive_auth(self, msg: dict) -> Accepted:
        """Check the client's auth request; ``ProtocolError`` for a malformed one,
        ``AuthError`` for a wrong proof or a refused credential."""
        self._step("hello-sent", "done")
        if msg.get("op") != "auth":
            raise ProtocolError("expected an auth request first")
        if msg.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"client speaks protocol {msg.get('protocol')!r}, "
                                f"server {PROTOCOL_VERSION}")
        cnonce = msg.get("client_nonce")
        if not isinstance(cnonce, str) or not 16 <= len(cnonce) <= 128:
            raise ProtocolError("auth request without a valid client nonce")
        role, node = msg.get("role"), msg.get("node_id")
        if role not in ROLES:
            raise ProtocolError(f"unknown role {role!r}")
        if role == "node" and not (isinstance(node, int) and not isinstance(node, bool)
                                   and 1 <= node <= 65535):
            raise ProtocolError("a node session needs a node_id between 1 and 65535")
        # Bound to what was proved: node N's credential opens node N's session only;
        # the cluster key opens any (unless the server refuses it for nodes).
        proof = msg.get("proof")
        node_key = auth.node_key(self.key, node) if role == "node" else b""
        if node_key and auth.proofs_equal(proof, auth.client_proof(node_key, self.nonce, cnonce)):
            key, credential = node_key, "node"
        elif auth.proofs_equal(proof, auth.client_proof(self.key, self.nonce, cnonce)):
            key, credential = self.key, "cluster"
        else:
            raise AuthError("authentication failed: wrong cluster key"
                            + (f" or node {node} credential" if role == "node" else ""))
        if role == "node" and credential == "cluster" and self.require_node_credentials:
            raise AuthError(f"node {node} authenticated with the cluster key; this server wants "
                            "node credentials (`vctl key issue`)")
        instance = msg.get("instance")
        instance = instance if isinstance(instance, str) and 0 < len(instance) <= 64 else None
        return Accepted(role, node if role == "node" else None, instance, credential, key,
                        self.nonce, cnonce)

    def _step(self, expected: str, then: str) -> None:
        if self.state != expected:
            raise ProtocolError(f"handshake out of order (state {self.state})")
        self.state = then


class ClientHandshake:
    def __init__(self, key: bytes, role: str, node_id: int | None = None, instance: str | None = None):
        if role not in ROLES:
            raise ValueError(role)
        self.key, self.role, self.node_id, self.instance = key, role, node_id, instance
        self.nonce = auth.new_nonce()
        self.server_nonce = ""
        self.hello: dict = {}
        self.state = "start"

    def receive_hello(self, hello: dict) -> dict:
        """Check the server's hello; return the auth request to send."""
        self._step("start", "auth-sent")
        if hello.get("hello") != SERVER_NAME or not isinstance(hello.get("nonce"), str):
            raise ProtocolError("peer is not a fencevol server")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"server speaks protocol {hello.get('protocol')}, "
                                f"this client {PROTOCOL_VERSION}")
        self.hello, self.server_nonce = hello, hello["nonce"]
        return {"op": "auth", "protocol": PROTOCOL_VERSION, "role": self.role,
                "node_id": self.node_id, "instance": self.instance, "client_nonce": self.nonce,
                "proof": auth.client_proof(self.key, self.server_nonce, self.nonce)}

    def receive_reply(self, reply: dict) -> dict:
        """Check the server's answer (its error, or its proof); return the server's
        info (``hello`` plus ``server``)."""
        self._step("auth-sent", "done")
        if not reply.get("ok"):
            raise from_wire(reply.get("error"))
        if not auth.proofs_equal(reply.get("proof"),
                                 auth.server_proof(self.key, self.server_nonce, self.nonce)):
            raise AuthError("server failed to prove it holds the cluster key")
        return self.hello | {"server": reply.get("server", {})}

    def _step(self, expected: str, then: str) -> None:
        if self.state != expected:
            raise ProtocolError(f"handshake out of order (state {self.state})")
        self.state = then
