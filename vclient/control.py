"""The local control channel of a running ``vclient``: a Unix socket (mode 0600)
speaking one JSON object per line each way.

Request ``{"op": "status"|"attach"|"detach", "args": {...}}``; response
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code", "message"}}``.
Default path: ``/run/fencevol/vclient-<node id>.sock``."""

from __future__ import annotations

import json
import logging
import os
import socket as pysocket

import trio

from fencevol.errors import (
    FencevolError,
    InvalidArgument,
    ProtocolError,
    Unavailable,
    from_wire,
)

log = logging.getLogger("vclient.control")

RUN_DIR = "/run/fencevol"
MAX_LINE = 1 << 20


def default_path(node_id: int) -> str:
    return os.path.join(RUN_DIR, f"vclient-{node_id}.sock")


async def listen(path: str) -> trio.SocketListener:
    """Bind the control socket; a stale socket file is replaced, a live one refused."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise InvalidArgument(f"another vclient is running with control socket {path}")
        finally:
            probe.close()
    sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return trio.SocketListener(sock)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


async def serve(listener: trio.SocketListener, node) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        try:
            async with stream:
                while True:
                    while b"\n" not in buf:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                        if len(buf) > MAX_LINE:
                            raise ProtocolError("control request too long")
                    line, buf = buf.split(b"\n", 1)
                    try:
                        req = json.loads(line)
                        if not isinstance(req, dict):
                            raise ValueError("not an object")
                        result = await node.control_request(str(req.get("op")), req.get("args") or {})
                        reply = {"ok": True, "result": result}
                    except FencevolError as exc:
                        reply = {"ok": False, "error": exc.to_wire()}
                    except ValueError as exc:
                        reply = {"ok": False, "error": {"code": "protocol", "message": f"bad request: {exc}"}}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
            return
        except Exception:
            log.exception("control request failed")

    await trio.serve_listeners(handle, [listener])


def request(path: str, op: str, args: dict | None = None, timeout: float = 60.0) -> dict:
    """Blocking client used by the ``vclient`` CLI."""
    s = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as exc:
            raise Unavailable(f"no running vclient at {path} ({exc.strerror}); "
                              "is `vclient run` up for this node?") from None
        s.sendall(json.dumps({"op": op, "args": args or {}}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise Unavailable("vclient closed the control connection")
            buf += data
    except pysocket.timeout:
        raise Unavailable(f"vclient at {path} did not answer within {timeout:g}s") from None
    except OSError as exc:          # it went away mid-request (killed, say)
        raise Unavailable(f"vclient at {path} went away: {exc.strerror or exc}") from None
    finally:
        s.close()
    reply = json.loads(buf.split(b"\n", 1)[0])
    if not reply.get("ok"):
        raise from_wire(reply.get("error"))
    return reply["result"]
