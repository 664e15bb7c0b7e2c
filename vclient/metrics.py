"""The node's Prometheus metrics, read from its state at scrape time (see
fencevol/metrics.py): per volume the gate, lease, renewals, pauses, rejected
writes, fences, I/O operations, bytes and latency, plex states; for the cluster
member its membership generation and incarnation, races and fences with their
durations, heartbeats per link."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fencevol.metrics import latency_family

from .gate import CLOSED, FENCED, OPEN, PAUSED

if TYPE_CHECKING:
    from .node import Node

GATE_STATES = (OPEN, PAUSED, FENCED, CLOSED)


def collect(node: "Node"):
    vols = list(node.volumes.values())
    gate = GaugeMetricFamily("fencevol_gate_state", "1 for the fence gate's current state",
                             labels=["volume", "state"])
    lease = GaugeMetricFamily("fencevol_lease_remaining_seconds",
                              "time left before writes pause without a renewal", labels=["volume"])
    renewals = CounterMetricFamily("fencevol_renewals", "delegation renewals", labels=["volume"])
    pauses = CounterMetricFamily("fencevol_pauses", "times writes were paused", labels=["volume"])
    rejected = CounterMetricFamily("fencevol_writes_rejected", "writes the gate failed",
                                   labels=["volume"])
    fences = CounterMetricFamily("fencevol_gate_fences", "times the gate was fenced", labels=["volume"])
    ops = CounterMetricFamily("fencevol_io_ops", "reads and writes served", labels=["volume", "op"])
    nbytes = CounterMetricFamily("fencevol_io_bytes", "bytes read and written", labels=["volume", "op"])
    plexes = GaugeMetricFamily("fencevol_plex_state", "1 for each plex's state in this node's map",
                               labels=["volume", "plex", "state"])
    detaches = CounterMetricFamily("fencevol_plex_detaches", "plex detaches this node asked for",
                                   labels=["volume"])
    for v in vols:
        d = v.gate.describe()
        for st in GATE_STATES:
            gate.add_metric([v.name, st], 1.0 if d["state"] == st else 0.0)
        lease.add_metric([v.name], d["lease_remaining"])
        renewals.add_metric([v.name], d["renewals"])
        pauses.add_metric([v.name], d["pauses"])
        rejected.add_metric([v.name], d["writes_rejected"])
        fences.add_metric([v.name], d["fences"])
        ops.add_metric([v.name, "read"], v.reads)
        ops.add_metric([v.name, "write"], v.writes)
        nbytes.add_metric([v.name, "read"], v.bytes_read)
        nbytes.add_metric([v.name, "write"], v.bytes_written)
        detaches.add_metric([v.name], v.plex_detaches)
        for p, st in enumerate(v.map.states if v.map else []):
            plexes.add_metric([v.name, str(p), st], 1.0)
    yield from (gate, lease, renewals, pauses, rejected, fences, ops, nbytes, plexes, detaches)
    yield latency_family("fencevol_io_latency_seconds", "request latency through the data path",
                         ["volume", "op"],
                         [([v.name, "read"], v.read_latency) for v in vols]
                         + [([v.name, "write"], v.write_latency) for v in vols])
    link = GaugeMetricFamily("fencevol_server_connected", "1 while connected to a volume server")
    link.add_metric([], 1.0 if node.link.connected else 0.0)
    yield link
    c = node.cluster
    if c is None:
        return
    for name, help_, value in (
            ("fencevol_membership_generation", "the cluster membership generation", c.generation),
            ("fencevol_incarnation", "this node's incarnation", c.incarnation),
            ("fencevol_members", "cluster members in this node's view", len(c.members))):
        g = GaugeMetricFamily(name, help_)
        g.add_metric([], value)
        yield g
    state = GaugeMetricFamily("fencevol_member_state", "1 for this node's membership state",
                              labels=["state"])
    state.add_metric([c.state], 1.0)
    yield state
    s = c.stats
    for name, help_, value in (
            ("fencevol_races", "coordinator races run", s.races),
            ("fencevol_races_won", "coordinator races won", s.races_won),
            ("fencevol_race_seconds", "time spent racing for the coordinator", s.race_seconds),
            ("fencevol_fences_requested", "fences this node asked the server for", s.fences_requested),
            ("fencevol_fences_done", "fences the server confirmed", s.fences_done),
            ("fencevol_fence_seconds", "time from asking to confirmed, summed", s.fence_seconds)):
        f = CounterMetricFamily(name, help_)
        f.add_metric([], value)
        yield f
    hb = c.hb
    sent = CounterMetricFamily("fencevol_heartbeats_sent", "heartbeats sent", labels=["link"])
    recv = CounterMetricFamily("fencevol_heartbeats_received", "heartbeats accepted", labels=["link"])
    for i in range(len(hb.sent_on)):
        sent.add_metric([str(i)], hb.sent_on[i])
        recv.add_metric([str(i)], hb.received_on[i])
    yield sent
    yield recv
