"""Prometheus metrics (``--metrics HOST:PORT`` on both daemons).

The official client library (prometheus_client) defines the metric families and
writes the text format. Values are read at scrape time from the daemon's own state
by a collector (vclient/metrics.py, vserver/metrics.py), so the I/O path touches no
metric object: it keeps plain counters and a ``Latency`` histogram (one clock read
and a list increment per request). The endpoint is served on the daemon's trio
loop, where that state lives (a scrape never races the loop), by a small HTTP/1.0
responder: ``GET /metrics``."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily
# The 0.0.4 text format: what generate_latest writes, and what every Prometheus
# version reads (newer library versions call 1.0.0 "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
from prometheus_client.process_collector import ProcessCollector

from .errors import InvalidArgument
from .rpc import parse_address

log = logging.getLogger("fencevol.metrics")

LATENCY_BASE_NS = 16384          # bucket i: below 16.4 µs * 2**i
LATENCY_BUCKETS = 17             # the last finite bound is about 1.07 s


class Latency:
    """A latency histogram cheap enough for the data path: power-of-two buckets."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self):
        self.counts = [0] * (LATENCY_BUCKETS + 1)
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        i = (ns >> 14).bit_length()
        self.counts[i if i < LATENCY_BUCKETS else LATENCY_BUCKETS] += 1
        self.sum_ns += ns

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (upper bound in seconds, count), +Inf last."""
        out, total = [], 0
        for i, n in enumerate(self.counts):
            total += n
            bound = "+Inf" if i == LATENCY_BUCKETS else repr(LATENCY_BASE_NS * (1 << i) / 1e9)
            out.append((bound, total))
        return out


def latency_family(name: str, help_: str, labels: list[str],
                   series: Iterable[tuple[list[str], Latency]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, help_, labels=labels)
    for values, lat in series:
        fam.add_metric(values, lat.buckets(), lat.sum_ns / 1e9)
    return fam


class _Collector:
    def __init__(self, collect: Callable[[], Iterable]):
        self._collect = collect

    def collect(self):
        return self._collect()


def registry_for(collect: Callable[[], Iterable]) -> CollectorRegistry:
    """A registry with the daemon's collector and the process metrics (CPU, memory,
    open files)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(collect))
    ProcessCollector(registry=reg)
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    host, port = parse_address(text)
    if not host:
        raise InvalidArgument(f"bad --metrics {text!r}: expected HOST:PORT")
    return host, port


async def serve(address: tuple[str, int], registry: CollectorRegistry,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise InvalidArgument(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    bound = listeners[0].socket.getsockname()
    log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
    task_status.started(f"{bound[0]}:{bound[1]}")

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                data = b""
                while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                words = data.split(b"\n", 1)[0].split()
                if len(words) >= 2 and words[0] in (b"GET", b"HEAD") \
                        and words[1].split(b"?")[0] in (b"/metrics", b"/"):
                    body = generate_latest(registry)
                    head = f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\n"
                else:
                    body = b"not found: GET /metrics\n"
                    head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                await stream.send_all(head.encode() + (body if words[:1] != [b"HEAD"] else b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:                  # a scrape must never take the daemon down
            log.exception("metrics request failed")
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)
