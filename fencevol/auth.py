"""Cluster key and the HMAC-SHA256 challenge-response used at connect.

The key file holds 32 random bytes as 64 hex digits and a newline, mode 0600.
Handshake (docs/PROTOCOL.md): the server sends a nonce; the client answers with
``HMAC(key, "client" | server_nonce | client_nonce)``; the server proves itself with
``HMAC(key, "server" | client_nonce | server_nonce)``. Neither side sends the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat

from .errors import AuthError

KEY_BYTES = 32


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
    """Read a key file; a missing, unreadable, group/world-accessible or malformed
    file raises ``AuthError`` with a one-line reason."""
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
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise AuthError(f"cluster key file {path} is malformed (expected {KEY_BYTES * 2} hex digits)")
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
