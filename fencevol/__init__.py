"""fencevol: out-of-band storage virtualization with I/O fencing.

This package holds what the server (``vserver``), the node agent (``vclient``) and
the FUSE layer (``fuse_fs``) share: wire framing, errors, units, checksums, extent
maps, access modes and lease arithmetic. Everything here is sans-IO except
``fencevol.rpc`` (trio streams).
"""

__version__ = "0.1.0"
