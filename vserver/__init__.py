"""fencevol volume server: disks, disk groups, volumes, delegations, remote I/O."""
