"""Cluster key, node credentials and the HMAC-SHA256 challenge-response used at
connect (docs/SECURITY.md).

The cluster key file holds 32 random bytes as 64 hex digits and a newline, mode
0600: whoever holds it may act as any node and as an admin. A **node credential**
(``vctl key issue``) lets one node act as itself only::

    fencevol-node-credential v1 node=N
    <64 hex: node key = HMAC(cluster key, "fencevol node key v1|N")>
    peer=P <64 hex: heartbeat key of the pair {N, P}>      (one line per peer)

Handshake (docs/PROTOCOL.md): the server sends a nonce; the client answers with
``HMAC(key, "client" | server_nonce | client_nonce)``; the server proves itself with
``HMAC(key, "server" | client_nonce | server_nonce)``, with the key the client
proved -- the cluster key, or node N's key. Neither side sends a key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field

from .errors import AuthError

KEY_BYTES = 32
CREDENTIAL_MAGIC = "fencevol-node-credential v1"
MAX_KEY_FILE = 1 << 16


def node_key(cluster_key: bytes, node: int) -> bytes:
    return hmac.new(cluster_key, b"fencevol node key v1|%d" % node, hashlib.sha256).digest()


def pair_key(cluster_key: bytes, a: int, b: int) -> bytes:
    """The heartbeat key of the pair {a, b}: only the two nodes (and holders of the
    cluster key) can make a tag the other accepts as from its peer."""
    lo, hi = min(a, b), max(a, b)
    return hmac.new(cluster_key, b"fencevol heartbeat pair v1|%d|%d" % (lo, hi), hashlib.sha256).digest()


@dataclass
class Credential:
    """What a process proves at connect and tags heartbeats with: the cluster key
    (``node`` None: any node, admin) or one node's credential."""
    key: bytes
    node: int | None = None
    pairs: dict[int, bytes] = field(default_factory=dict)
    cluster_key: bytes | None = None

    @property
    def kind(self) -> str:
        return "cluster key" if self.node is None else f"node {self.node} credential"

    def pair(self, me: int, peer: int) -> bytes | None:
        if self.cluster_key is not None:
            return pair_key(self.cluster_key, me, peer)
        return self.pairs.get(peer) if me == self.node else None


def issue_credential(cluster_key: bytes, node: int, peers: list[int]) -> str:
    lines = [f"{CREDENTIAL_MAGIC} node={node}", node_key(cluster_key, node).hex()]
    lines += [f"peer={p} {pair_key(cluster_key, node, p).hex()}" for p in sorted(set(peers) - {node})]
    return "\n".join(lines) + "\n"


def write_secret_file(path: str, text: str) -> None:
    """Create ``path`` (O_EXCL, mode 0600) holding ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_credential(path: str) -> Credential:
    """A cluster key file or a node credential file (see the module docstring)."""
    text = _read_secret_file(path)
    if not text.startswith(CREDENTIAL_MAGIC):
        key = _parse_hex(text, path)
        return Credential(key=key, cluster_key=key)
    lines = text.splitlines()
    try:
        head = lines[0][len(CREDENTIAL_MAGIC):].strip()
        if not head.startswith("node="):
            raise ValueError
        node = int(head[5:])
        if not 1 <= node <= 65535:
            raise ValueError
        key = _parse_hex(lines[1], path)
        pairs = {}
        for line in lines[2:]:
            if not line.strip():
                continue
            peer, _, hexkey = line.partition(" ")
            if not peer.startswith("peer="):
                raise ValueError
            pairs[int(peer[5:])] = _parse_hex(hexkey, path)
    except (ValueError, IndexError):
        raise AuthError(f"node credential file {path} is malformed (see `vctl key issue --help`)") from None
    return Credential(key=key, node=node, pairs=pairs)


def create_key_file(path: str) -> bytes:
    """Create a new key file (O_EXCL, mode 0600) and return the key."""
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_key_file(path: str) -> bytes:
    """Read a cluster key file; a missing, unreadable, group/world-accessible or
    malformed file raises ``AuthError`` with a one-line reason."""
    text = _read_secret_file(path)
    if text.startswith(CREDENTIAL_MAGIC):
        raise AuthError(f"{path} is a node credential; this needs the cluster key")
    return _parse_hex(text, path)


def _read_secret_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)       # a FIFO must not hang us
    except FileNotFoundError:
        raise AuthError(f"cluster key file {path} does not exist "
                        "(copy it from the server's state directory, see docs/SECURITY.md)") from None
    except OSError as exc:
        raise AuthError(f"cannot read cluster key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuthError(f"cluster key file {path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"cluster key file {path} is accessible by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        text = os.read(fd, MAX_KEY_FILE).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return text


def _parse_hex(text: str, path: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise AuthError(f"key file {path} is malformed (expected {KEY_BYTES * 2} hex digits)")
    return key


def new_nonce() -> str:
    return secrets.token_hex(16)


def client_proof(key: bytes, server_nonce: str, client_nonce: str) -> str:
    return hmac.new(key, b"client|" + server_nonce.encode() + b"|" + client_nonce.encode(),
                    hashlib.sha256).hexdigest()


def server_proof(key: bytes, server_nonce: str, client_nonce: str) -> str:
    return hmac.new(key, b"server|" + client_nonce.encode() + b"|" + server_nonce.encode(),
                    hashlib.sha256).hexdigest()


def proofs_equal(a: object, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())
