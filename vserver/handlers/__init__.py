"""Every request handler, by resource: ``admin`` (status, disks, groups, volumes),
``leases`` (attach, renew, detach, revoke_ack), ``remote_io`` (read, write, sync),
``fencing`` (coordinator, fence, reservations); ``common`` holds what they share.
Importing this package fills the table (vserver.registry) that ``dispatch`` runs;
vserver.main hands ``dispatch`` to the server."""

from . import admin, fencing, leases, remote_io  # noqa: F401  (register their operations)
from ..registry import OPS, dispatch  # noqa: F401  (re-exported)
