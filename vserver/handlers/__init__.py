"""Every request handler, by resource: ``admin`` (status, disks, groups, volumes),
``leases`` (attach, renew, detach, revoke_ack), ``remote_io`` (read, write, sync),
``fencing`` (coordinator, fence, reservations), ``mirrors`` (plex detach, map
acknowledgement, resync, disk replacement, group growth); ``common`` holds what they share.
Importing this package fills the table (vserver.registry) that ``dispatch`` runs;
vserver.main hands ``dispatch`` to the server.

Blocking disk I/O and the event loop: fdatasync, label and configuration writes,
reservation-table writes and disk initialization run in worker threads. What stays
on the loop is a single O_DIRECT read or write of at most a few blocks (remote I/O
up to 8 MiB, the coordinator's 4 KiB block, a label read when a disk is opened by
an admin operation): each is short next to a thread hop (about 80 µs on these
machines), and the ones under a lock (the coordinator's compare-and-swap) must not
interleave anyway. Each such site says so."""

from ..registry import OPS, dispatch
from . import admin, fencing, leases, mirrors, remote_io    # importing them registers their operations

__all__ = ["OPS", "dispatch", "admin", "fencing", "leases", "mirrors", "remote_io"]
