"""The node's connection to the volume server: connect with backoff, reconnect,
and pipelined calls. While disconnected every call raises ``Unavailable``.

Given several servers (an HA control plane, vserver.leader), it connects to the
first that answers -- standbys do not listen -- and, when that connection ends or
stops answering, goes on to the next one."""

from __future__ import annotations

import logging
import math
import secrets
import ssl
from typing import Awaitable, Callable

import trio

from fencevol import rpc
from fencevol.errors import AuthError, InUse, ProtocolError, Unavailable
from fencevol.protocol.messages import Message, reply_of

log = logging.getLogger("vclient.link")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
STABLE = 2.0      # a connection that lasted less than this is retried with backoff
CONNECT_TIMEOUT = 5.0
HA_CONNECT_TIMEOUT = 1.5   # several servers: a frozen one must not hold the node up long
HA_BACKOFF_MAX = 0.25      # ... and a new leader is found within a few tries, not seconds later


class ServerLink:
    def __init__(self, addresses: list[tuple[str, int]], key: bytes, node_id: int,
                 on_push: Callable[[dict, bytes], None],
                 on_connect: Callable[[], Awaitable[None]], tls: ssl.SSLContext | None = None):
        if not addresses:
            raise ValueError("ServerLink needs at least one server address")
        self.addresses = list(addresses)
        self.address = self.addresses[0]      # the one connected to, or tried last
        self.key = key
        self.node_id = node_id
        self.on_push = on_push
        self.on_connect = on_connect
        self.tls = tls
        self.client: rpc.RpcClient | None = None
        self.server_info: dict = {}
        self.connects = 0
        self.last_error = ""
        self.connected_since = 0.0
        self.instance = secrets.token_hex(8)     # this process, across reconnects

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.is_closed

    @property
    def where(self) -> str:
        return "%s:%d" % self.address

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up. ``task_status.started()`` fires after the first
        successful connect (and ``on_connect``). A wrong cluster key is fatal."""
        backoff, started, failures = BACKOFF_MIN, False, 0
        n = len(self.addresses)
        idx = 0
        timeout = CONNECT_TIMEOUT if n == 1 else HA_CONNECT_TIMEOUT
        backoff_max = BACKOFF_MAX if n == 1 else HA_BACKOFF_MAX
        while True:
            self.address = self.addresses[idx]
            try:
                client = await rpc.connect(self.address, self.key, "node", self.node_id,
                                           timeout=timeout, instance=self.instance, tls=self.tls)
            except AuthError:
                raise
            except (Unavailable, ProtocolError, InUse) as exc:
                failures += 1
                self.last_error = str(exc)
                idx = (idx + 1) % n
                if idx != 0:
                    log.debug("server %s unreachable (%s); trying the next one", self.where, exc)
                    continue
                level = logging.WARNING if failures <= n or backoff >= backoff_max else logging.DEBUG
                log.log(level, "server %s unreachable (%s); retrying in %.1fs",
                        ", ".join("%s:%d" % a for a in self.addresses), exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, backoff_max)
                continue
            failures = 0
            self.connects += 1
            self.server_info = client.hello.get("server", {})
            client.on_push = self.on_push
            self.client = client
            self.connected_since = trio.current_time()
            log.info("connected to server %s", self.where)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run)
                try:
                    await self.on_connect()
                except Unavailable as exc:
                    log.warning("reclaim after connect failed: %s", exc)
                if not started:
                    started = True
                    task_status.started()
                await client.closed_event.wait()
                nursery.cancel_scope.cancel()
            self.client = None
            await client.aclose()
            if n > 1:
                idx = (idx + 1) % n     # the leader went away: the next one is likelier
            if trio.current_time() - self.connected_since >= STABLE:
                backoff = BACKOFF_MIN
                log.warning("lost connection to server %s; reconnecting", self.where)
            else:        # dropped right after connecting: do not hammer the server
                log.warning("lost connection to server %s; reconnecting in %.1fs", self.where, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, backoff_max)

    async def drop(self, why: str) -> None:
        """Give up on the current server (it stopped answering) and go on to the
        next one; only with several servers."""
        client = self.client
        if client is not None and len(self.addresses) > 1:
            log.warning("server %s: %s; trying the other servers", self.where, why)
            await client.aclose()

    async def call(self, op: str, args: dict | None = None, payload: bytes = b"",
                   timeout: float = math.inf) -> tuple[dict, bytes]:
        client = self.client
        if client is None or client.is_closed:
            raise Unavailable(f"not connected to server {self.where}")
        return await client.call(op, args, payload, timeout)

    async def request(self, msg: Message, payload: bytes = b"",
                      timeout: float = math.inf) -> tuple[Message, bytes]:
        """Send a typed request; its typed reply (checked) and the reply's payload."""
        result, data = await self.call(msg.OP, msg.to_wire(), payload, timeout)
        return reply_of(msg.OP, result), data
