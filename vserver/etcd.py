"""A small etcd v3 client for the HA control plane, over etcd's JSON gateway
(``POST /v3/...``, keys and values base64) with httpx on trio (docs/HA.md says
why not a gRPC client). It knows the calls the leader needs -- lease grant,
keep-alive and revoke, range, and transactions -- and fails over between the
endpoints it was given: a member that does not answer is skipped, the next one
asked.

Every call is bounded by ``timeout``; an unreachable cluster is ``Unavailable``.
Nothing here decides anything: vserver.leader does."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import httpx

from fencevol.errors import InvalidArgument, Unavailable

log = logging.getLogger("vserver.etcd")


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_wire(cls, kv: dict) -> "KeyValue":
        return cls(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                   int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                   int(kv.get("lease", 0)))


# -- transaction parts (the JSON gateway's field names) -----------------------------------------

def cmp_create_revision(key: str, revision: int) -> dict:
    """True while ``key`` was created at ``revision`` (0: does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod_revision(key: str, revision: int) -> dict:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put(key: str, value: bytes | str, lease: int = 0) -> dict:
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def get(key: str) -> dict:
    return {"request_range": {"key": b64(key)}}


def parse_endpoints(text: str) -> list[str]:
    """``URL[,URL...]`` as given to --etcd; each http(s)://HOST:PORT."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise InvalidArgument("--etcd needs at least one endpoint URL")
    for u in urls:
        if not u.startswith(("http://", "https://")) or "://" not in u or not u.split("://", 1)[1]:
            raise InvalidArgument(f"bad etcd endpoint {u!r}: expected http://HOST:PORT")
    return urls


class EtcdClient:
    def __init__(self, endpoints: list[str], timeout: float = 1.0):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._current = 0           # the endpoint that answered last: ask it first
        self._http = httpx.AsyncClient(timeout=timeout)
        self.calls = 0              # round trips, for the benchmarks

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict) -> dict:
        """POST ``body`` to /v3/``path``; the first endpoint that answers wins."""
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._current + i) % n
            url = f"{self.endpoints[idx]}/v3/{path}"
            # Point at the next member while waiting: if the caller gives up on a
            # member that hangs (a cancelled keep-alive), its next call asks another.
            self._current = (idx + 1) % n
            try:
                self.calls += 1
                r = await self._http.post(url, json=body)
            except httpx.HTTPError as exc:
                errors.append(f"{self.endpoints[idx]}: {type(exc).__name__}")
                continue
            if r.status_code != 200:
                # 503/"etcdserver: no leader", a member without quorum: try another
                errors.append(f"{self.endpoints[idx]}: HTTP {r.status_code} {r.text.strip()[:120]}")
                continue
            self._current = idx
            try:
                return r.json()
            except ValueError:
                errors.append(f"{self.endpoints[idx]}: not JSON")
        raise Unavailable(f"etcd /v3/{path}: no endpoint answered ({'; '.join(errors)})")

    # -- leases --------------------------------------------------------------------------------
    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL seconds)."""
        r = await self.call("lease/grant", {"TTL": str(ttl)})
        if r.get("error"):
            raise Unavailable(f"etcd lease grant: {r['error']}")
        return int(r["ID"]), int(r["TTL"])

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; its TTL from now, 0 if it no longer exists."""
        r = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(r.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    # -- keys ----------------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        r = await self.call("kv/range", {"key": b64(key)})
        kvs = r.get("kvs", [])
        return KeyValue.from_wire(kvs[0]) if kvs else None

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] = ()) -> tuple[bool, int, list[dict]]:
        """(succeeded, the revision after it, the responses of the branch taken)."""
        r = await self.call("kv/txn", {"compare": compare, "success": success,
                                       "failure": list(failure)})
        return bool(r.get("succeeded", False)), int(r["header"]["revision"]), r.get("responses", [])


def range_kvs(response: dict) -> list[KeyValue]:
    """The key-values of one ``request_range`` response of a transaction."""
    return [KeyValue.from_wire(kv) for kv in response.get("response_range", {}).get("kvs", [])]
