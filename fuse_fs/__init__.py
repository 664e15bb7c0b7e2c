"""The FUSE filesystem: one regular file per attached volume, ``MOUNT/DG/VOL``.

Only this package imports pyfuse3. It is thin: handlers find the volume and call
its data path; domain errors become errno values at this boundary only."""
