"""Small checksummed JSON files in the server's state directory.

File form: ``{"format": 1, "crc32c": <of the canonical JSON of data>, "data": ...}``,
replaced atomically (write temp, fsync, rename, fsync directory)."""

from __future__ import annotations

import json
import os

from fencevol.crc import crc32c
from fencevol.errors import ChecksumError

FORMAT = 1


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write(path: str, data) -> None:
    body = {"format": FORMAT, "crc32c": crc32c(_canonical(data)), "data": data}
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read(path: str, default=None):
    """The file's data, ``default`` if it does not exist; ``ChecksumError`` if damaged."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return default
    try:
        body = json.loads(raw)
        data = body["data"]
        ok = body.get("format") == FORMAT and body.get("crc32c") == crc32c(_canonical(data))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ChecksumError(f"state file {path} is damaged (checksum or format); "
                            "move it aside to start without it")
    return data
