"""The volume server's Prometheus metrics, read from its state at scrape time (see
fencevol/metrics.py): delegations by state, node sessions, grants, renewals and
fences with their durations, per group the configuration generation, owner-lease
age and failed disks, per mirror the plex states and resync progress, and the HA
role."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .delegations import ACTIVE, RESTORED, REVOKED, REVOKING
from .model import PLEX_STATES

if TYPE_CHECKING:
    from .server import VolumeServer


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, help_)
    g.add_metric([], value)
    return g


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, help_)
    c.add_metric([], value)
    return c


def collect(srv: "VolumeServer"):
    now = trio.current_time()
    delegs = GaugeMetricFamily("fencevol_server_delegations", "delegations by state", labels=["state"])
    for st in (ACTIVE, REVOKING, REVOKED, RESTORED):
        delegs.add_metric([st], sum(1 for d in srv.table.by_id.values() if d.state == st))
    yield delegs
    yield _gauge("fencevol_server_node_sessions", "nodes connected", len(srv.sessions))
    c = srv.counters
    yield _counter("fencevol_server_grants", "delegations granted", c["grants"])
    yield _counter("fencevol_server_renewals", "delegation renewals granted", c["renewals"])
    yield _counter("fencevol_server_renewals_refused", "delegation renewals refused",
                   c["renewals_refused"])
    yield _counter("fencevol_server_fences", "fences completed", c["fences"])
    yield _counter("fencevol_server_fence_seconds", "time the fences took, summed", c["fence_seconds"])
    yield _counter("fencevol_server_plex_detaches", "mirror plexes detached", c["plex_detaches"])
    gen = GaugeMetricFamily("fencevol_server_group_generation", "configuration generation",
                            labels=["group"])
    age = GaugeMetricFamily("fencevol_server_owner_lease_age_seconds",
                            "time since this server last renewed the group's owner lease",
                            labels=["group"])
    failed = GaugeMetricFamily("fencevol_server_disk_failed", "1 for a disk with I/O errors",
                               labels=["group", "disk"])
    plexes = GaugeMetricFamily("fencevol_server_plex_state", "1 for each mirror plex's state",
                               labels=["volume", "plex", "state"])
    done = GaugeMetricFamily("fencevol_server_resync_done_bytes", "bytes a resync has copied",
                             labels=["volume"])
    size = GaugeMetricFamily("fencevol_server_resync_size_bytes", "bytes a resync copies in all",
                             labels=["volume"])
    for g in srv.groups.values():
        gen.add_metric([g.name], g.config.generation)
        if g.ownership is not None:
            age.add_metric([g.name], max(0.0, now - g.ownership.renewed_at))
        for disk in g.disks.values():
            failed.add_metric([g.name, disk.name], 1.0 if disk.failed else 0.0)
        for v in g.config.volumes:
            key = f"{g.name}/{v.name}"
            if len(v.plexes) > 1:
                for p, st in enumerate(v.plex_states):
                    for s in PLEX_STATES:
                        plexes.add_metric([key, str(p), s], 1.0 if st == s else 0.0)
            run = srv.resyncs.get(key)
            if run is not None and run.running:
                done.add_metric([key], run.done)
                size.add_metric([key], run.size)
    yield from (gen, age, failed, plexes, done, size)
    if srv.leader is not None:
        yield _gauge("fencevol_server_ha_leader", "1 while this server leads", 1.0 if srv.leader.valid() else 0.0)
