"""Control-protocol framing (sans-IO). Format documented in docs/PROTOCOL.md.

A frame is a fixed 20-byte header, a JSON object and an optional raw payload::

    magic  "FV"   2 bytes
    version       u8    (PROTOCOL_VERSION)
    flags         u8    (0; reserved)
    json_len      u32   big-endian
    payload_len   u32
    payload_crc   u32   zlib CRC-32 of the payload (0 when empty)
    header_crc    u32   CRC-32C of the 16 bytes above plus the JSON bytes

Data (remote I/O) travels as the raw payload, never inside the JSON.
"""

from __future__ import annotations

import json
import struct
import zlib

from .crc import crc32c
from .errors import ProtocolError

MAGIC = b"FV"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">2sBBIIII")
HEADER_SIZE = HEADER.size  # 20

MAX_JSON = 4 << 20
MAX_PAYLOAD = 16 << 20
PREAUTH_MAX_JSON = 4096


def encode(message: dict, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialize one frame. The payload is copied once, into the frame."""
    body = json.dumps(message, separators=(",", ":")).encode()
    plen = len(payload)
    pcrc = zlib.crc32(payload) if plen else 0
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, len(body), plen, pcrc, 0)[:16]
    hcrc = crc32c(body, crc32c(head))
    return b"".join((head, struct.pack(">I", hcrc), body, payload))


class FrameDecoder:
    """Accumulates bytes and yields complete ``(message, payload)`` frames.

    Raises ``ProtocolError`` for a bad magic, version, size or checksum; after that
    the stream is unusable and the connection must be closed.
    """

    def __init__(self, max_json: int = MAX_JSON, max_payload: int = MAX_PAYLOAD):
        self.max_json = max_json
        self.max_payload = max_payload
        self._buf = bytearray()
        self._need: tuple[int, int, int, int] | None = None  # json_len, payload_len, pcrc, hcrc

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def header(self) -> tuple[int, int, int, int] | None:
        """``(json_len, payload_len, payload_crc, header_crc)`` of the next frame once
        its header has arrived (checked, limits applied), else ``None``: lets a
        reader reserve room for the whole frame before taking its body."""
        if self._need is None:
            buf = self._buf
            if len(buf) < HEADER_SIZE:
                if buf[: len(MAGIC)] != MAGIC[: len(buf)]:
                    raise ProtocolError("not a fencevol frame (bad magic)")
                return None
            magic, version, _flags, jlen, plen, pcrc, hcrc = HEADER.unpack_from(buf)
            if magic != MAGIC:
                raise ProtocolError("not a fencevol frame (bad magic)")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"frame version {version} not supported (this side speaks {PROTOCOL_VERSION})")
            if jlen > self.max_json:
                raise ProtocolError(f"frame JSON of {jlen} bytes exceeds limit {self.max_json}")
            if plen > self.max_payload:
                raise ProtocolError(
                    f"frame payload of {plen} bytes exceeds limit {self.max_payload}")
            self._need = (jlen, plen, pcrc, hcrc)
        return self._need

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> tuple[dict, bytes] | None:
        """Return the next complete frame, or ``None`` if more bytes are needed."""
        need = self.header()
        if need is None:
            return None
        buf = self._buf
        jlen, plen, pcrc, hcrc = need
        total = HEADER_SIZE + jlen + plen
        if len(buf) < total:
            return None
        body = bytes(buf[HEADER_SIZE:HEADER_SIZE + jlen])
        if crc32c(body, crc32c(bytes(buf[:16]))) != hcrc:
            raise ProtocolError("frame header checksum mismatch")
        payload = bytes(buf[HEADER_SIZE + jlen:total])
        if plen and zlib.crc32(payload) != pcrc:
            raise ProtocolError("frame payload checksum mismatch")
        del buf[:total]
        self._need = None
        try:
            message = json.loads(body)
        except RecursionError:
            raise ProtocolError("frame JSON nests too deeply") from None
        except ValueError as exc:       # bad JSON, bad UTF-8, an integer too long to convert
            raise ProtocolError(f"frame JSON does not parse: {str(exc)[:200]}") from None
        if not isinstance(message, dict):
            raise ProtocolError("frame JSON is not an object")
        return message, payload
