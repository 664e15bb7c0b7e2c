"""trio transport for the control protocol: framed connections, the connect-time
handshake and a pipelined request/response client with server pushes.

Messages (JSON part of a frame, see docs/PROTOCOL.md):

* request   ``{"id": n, "op": "attach", "args": {...}}`` (+ payload)
* response  ``{"id": n, "ok": true, "result": {...}}`` or
            ``{"id": n, "ok": false, "error": {"code": ..., "message": ...}}``
* push      ``{"push": "revoke", ...}`` (server -> client, no id)
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
from contextlib import asynccontextmanager
from typing import Callable

import trio

from . import wire
from .protocol.handshake import ClientHandshake
from .errors import AuthError, FencevolError, ProtocolError, Unavailable, from_wire

log = logging.getLogger("fencevol.rpc")

HANDSHAKE_TIMEOUT = 10.0
RECEIVE_CHUNK = 1 << 18


class ConnectionClosed(Exception):
    """The peer closed the stream (cleanly, between frames)."""


class FramedConnection:
    """A trio stream carrying frames. ``send`` is safe to call from many tasks."""

    def __init__(self, stream: trio.abc.Stream, max_json: int = wire.MAX_JSON,
                 max_payload: int = wire.MAX_PAYLOAD):
        self.stream = stream
        self.decoder = wire.FrameDecoder(max_json, max_payload)
        self._send_lock = trio.Lock()

    async def send(self, message: dict, payload: bytes = b"") -> None:
        data = wire.encode(message, payload)
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> tuple[dict, bytes]:
        """Next frame. Raises ``ConnectionClosed`` at a clean EOF, ``ProtocolError``
        for garbage or a frame cut short by EOF."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(RECEIVE_CHUNK)
            if not data:
                if self.decoder.buffered:
                    raise ProtocolError(
                        f"connection closed inside a frame ({self.decoder.buffered} bytes pending)")
                raise ConnectionClosed()
            self.decoder.feed(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> ``(host, port)``."""
    from .errors import InvalidArgument
    text = str(text).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not port:
        if default_port is None:
            raise InvalidArgument(f"bad address {text!r}: expected HOST:PORT")
        port = str(default_port)
    try:
        p = int(port)
        if not 0 <= p < 65536:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"bad address {text!r}: port must be 0-65535") from None
    return host or "127.0.0.1", p


def parse_servers(values: str | list[str], default_port: int) -> list[tuple[str, int]]:
    """One or several ``--server`` values, each ``HOST:PORT[,HOST:PORT...]``: the
    servers of an HA control plane, in the order to try them. Duplicates refused."""
    from .errors import InvalidArgument
    items = [values] if isinstance(values, str) else list(values)
    out = [parse_address(part, default_port) for v in items for part in str(v).split(",")
           if part.strip()]
    if not out:
        raise InvalidArgument("no server address given")
    if len(set(out)) != len(out):
        raise InvalidArgument("a server address is given twice")
    return out


class RpcClient:
    """Pipelined requests over one authenticated connection.

    ``call`` may be used from many tasks at once; responses are matched by id.
    Pushes go to ``on_push(message, payload)``, a plain function called by the
    reader in stream order (so a push is handled before any response that follows
    it); it may start tasks that make calls. When the connection ends, every
    pending and later ``call`` raises ``Unavailable``."""

    def __init__(self, conn: FramedConnection, hello: dict):
        self.conn = conn
        self.hello = hello
        self.on_push: Callable[[dict, bytes], None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, list] = {}
        self._closed: BaseException | None = None
        self.closed_event = trio.Event()

    @property
    def is_closed(self) -> bool:
        return self._closed is not None

    async def run(self) -> None:
        """Read frames until the connection ends."""
        try:
            while True:
                msg, payload = await self.conn.receive()
                if "push" in msg:
                    if self.on_push is not None:
                        self.on_push(msg, payload)
                    continue
                slot = self._pending.pop(msg.get("id"), None)
                if slot is None:
                    log.warning("response to unknown request id %r dropped", msg.get("id"))
                    continue
                slot[1], slot[2] = msg, payload
                slot[0].set()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(Unavailable(f"connection to server lost ({type(exc).__name__})"))
        except ProtocolError as exc:
            self._fail(Unavailable(f"connection to server dropped: {exc}"))
        finally:
            if self._closed is None:
                self._fail(Unavailable("connection to server closed"))

    def _fail(self, exc: FencevolError) -> None:
        self._closed = exc
        for slot in self._pending.values():
            slot[0].set()
        self._pending.clear()
        self.closed_event.set()

    async def call(self, op: str, args: dict | None = None, payload: bytes = b"",
                   timeout: float = math.inf) -> tuple[dict, bytes]:
        """Send a request and wait for its response; raise the peer's error."""
        if self._closed is not None:
            raise Unavailable(str(self._closed))
        rid = next(self._ids)
        slot = [trio.Event(), None, b""]
        self._pending[rid] = slot
        try:
            await self.conn.send({"id": rid, "op": op, "args": args or {}}, payload)
            with trio.fail_after(timeout):
                await slot[0].wait()
        except trio.TooSlowError:
            raise Unavailable(f"server did not answer {op} within {timeout:g}s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise Unavailable("connection to server lost") from None
        finally:
            self._pending.pop(rid, None)
        msg = slot[1]
        if msg is None:
            raise Unavailable(str(self._closed or "connection to server lost"))
        if not msg.get("ok"):
            raise from_wire(msg.get("error"))
        return msg.get("result") or {}, slot[2]

    async def aclose(self) -> None:
        await self.conn.aclose()


async def client_handshake(conn: FramedConnection, key: bytes, role: str,
                           node_id: int | None = None, instance: str | None = None) -> dict:
    """Authenticate to the server; return its hello (with its proof checked).
    ``instance`` names the client process: the server lets a reconnect of the same
    instance replace its old session, and refuses another process using a node id
    that is still connected."""
    hs = ClientHandshake(key, role, node_id, instance)
    hello, _ = await conn.receive()
    await conn.send(hs.receive_hello(hello))
    reply, _ = await conn.receive()
    return hs.receive_reply(reply)


async def connect(address: tuple[str, int], key: bytes, role: str,
                  node_id: int | None = None, timeout: float = HANDSHAKE_TIMEOUT,
                  instance: str | None = None, tls: ssl.SSLContext | None = None) -> RpcClient:
    host, port = address
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Unavailable(f"cannot connect to server {host}:{port}: {reason}") from None
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=host)
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            await trio.aclose_forcefully(stream)
            raise Unavailable(f"server {host}:{port} did not complete the TLS handshake") from None
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise AuthError(f"server {host}:{port}: TLS certificate not trusted "
                                f"({cause.verify_message})") from None
            raise Unavailable(f"TLS handshake with server {host}:{port} failed: "
                              f"{cause or exc} (does it serve TLS?)") from None
    conn = FramedConnection(stream)
    try:
        with trio.fail_after(timeout):
            hello = await client_handshake(conn, key, role, node_id, instance)
    except trio.TooSlowError:
        await conn.aclose()
        raise Unavailable(f"server {host}:{port} did not complete the handshake") from None
    except (ConnectionClosed, trio.BrokenResourceError, OSError):
        await conn.aclose()
        raise Unavailable(f"server {host}:{port} closed the connection during the handshake") from None
    except BaseException:
        await conn.aclose()
        raise
    return RpcClient(conn, hello)


@asynccontextmanager
async def open_client(address: tuple[str, int], key: bytes, role: str = "admin",
                      node_id: int | None = None, tls: ssl.SSLContext | None = None):
    """Connect, authenticate, and run the reader for the duration of the block.
    Errors raised in the block propagate unwrapped (not as an exception group)."""
    client = await connect(address, key, role, node_id, tls=tls)
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            try:
                yield client
            except BaseException as exc:
                raised = exc
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    if raised is not None:
        raise raised
