"""The server's view of cluster coordinators: reading and writing a coordinator
volume's membership block, and checking a data attach's registration key against
the memberships it holds (is the key this node's current identity?)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fencevol import coord, directio
from fencevol.coord import format_key
from fencevol.errors import FencevolError, InvalidArgument, IOFailure

from . import mirrors
from .storage import Group, volume_read, volume_write

if TYPE_CHECKING:
    from .server import VolumeServer

log = logging.getLogger("vserver.fencing")


def read_membership(srv: VolumeServer, group: Group, vol) -> coord.Membership:
    """One O_DIRECT 4 KiB read on the event loop (cheaper than a thread hop; the
    compare-and-swap calls it under its lock), from an active plex: the next one
    if a mirror's plex cannot be read."""
    emap = srv.extent_map(group, vol)
    error: OSError | None = None
    for p in emap.readable:
        try:
            raw = volume_read(group, emap, emap.plexes[p], 0, min(vol.size, coord.BLOCK))
        except OSError as exc:
            error = exc
            continue
        return coord.decode(raw, f"coordinator {group.name}/{vol.name}")
    raise IOFailure(f"coordinator {group.name}/{vol.name} cannot be read: {error}")


async def write_membership(srv: VolumeServer, group: Group, vol, m: coord.Membership) -> None:
    """Write the block to every writable plex, active ones first. A mirror plex
    that fails is detached (before the caller acknowledges) if an active one took
    the block; if none did, IOFailure."""
    emap = srv.extent_map(group, vol)
    data = coord.encode(m)
    fds: set[int] = set()
    failed: list[int] = []
    error: OSError | None = None
    for p in emap.readable + [p for p in emap.writable if p not in emap.readable]:
        try:
            # The block goes out with O_DIRECT on the loop; the fdatasync waits in a thread.
            fds |= volume_write(group, emap, [emap.plexes[p]], 0, data)
        except OSError as exc:
            failed.append(p)
            error = exc
    if failed and not set(emap.readable) - set(failed):
        raise IOFailure(f"coordinator {group.name}/{vol.name} could not be written: {error}")
    await trio.to_thread.run_sync(directio.fdatasync_all, fds)
    if failed:
        await mirrors.detach_on_server(srv, group, vol, failed, str(error))


def check_registration_key(srv: VolumeServer, node: int, key: int) -> None:
    """Refuse a data attach's key that is not this node's current identity (issue
    10, finding 9). Against each coordinator volume here: a key with a cluster's
    bits must be that cluster's member's current incarnation (an earlier one was
    fenced or is a stale process; a later one was never joined); a member of a
    cluster must use its cluster's key (a stand-alone key would escape the fence,
    which preempts by cluster); any other key must be a stand-alone one. A
    coordinator that cannot be read is skipped and logged: it cannot say who is a
    member, and refusing every attach would not make the cluster safer."""
    # The coordinator reads below are synchronous O_DIRECT reads of one 4 KiB block
    # each, on the event loop: attach is not on the data path, and a thread hop per
    # coordinator would cost more than the read.
    bits = coord.key_cluster(key)
    incarnation = coord.key_incarnation(key)
    clusters: dict[int, tuple[str, coord.Membership]] = {}
    for group in srv.groups.values():
        for vol in group.config.volumes:
            if vol.kind != "coordinator":
                continue
            name = f"{group.name}/{vol.name}"
            try:
                m = read_membership(srv, group, vol)
            except (FencevolError, OSError, KeyError) as exc:
                log.warning("attach of node %d: coordinator %s unreadable (%s); its membership "
                            "is not checked", node, name, exc)
                continue
            clusters[coord.cluster_bits(m.cluster_id)] = (name, m)
    if bits in clusters:
        name, m = clusters[bits]
        rec = m.record(node)
        if rec is None or not rec.is_member:
            raise InvalidArgument(f"key {format_key(key)} is of cluster {m.cluster_id} ({name}), which "
                                  f"node {node} is not a member of; join the cluster first")
        if rec.incarnation != incarnation:
            raise InvalidArgument(f"key {format_key(key)} is incarnation {incarnation} of node {node}, "
                                  f"but cluster {m.cluster_id} lists incarnation {rec.incarnation} "
                                  "(a stale or fenced process); rejoin for a current key")
        return
    for name, m in clusters.values():
        if node in m.members:
            raise InvalidArgument(f"node {node} is a member of cluster {m.cluster_id} ({name}); "
                                  f"its key must carry that cluster's bits, not {format_key(key)}")
    if bits != coord.cluster_bits(""):
        raise InvalidArgument(f"key {format_key(key)}: its cluster bits name no cluster whose "
                              "coordinator is on this server, and it is not a stand-alone key")
