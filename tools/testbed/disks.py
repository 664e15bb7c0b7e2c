"""Loop devices over disk images: two loop devices over one image behave like two
hosts on one SAN LUN, each with its own page cache."""

from __future__ import annotations

import subprocess


def attach_loop(image, direct_io: bool = False) -> str:
    """A new loop device over ``image`` (``losetup -f``); detach it with
    ``detach_loop``. Two loop devices over one image behave like two hosts on one
    SAN LUN: each has its own page cache."""
    cmd = ["losetup", "-f", "--show"] + (["--direct-io=on"] if direct_io else []) + [str(image)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise RuntimeError(f"losetup {image}: {cp.stderr.strip()}")
    return cp.stdout.strip()


def detach_loop(dev: str) -> None:
    subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)


def loops_over(prefix: str) -> list[str]:
    """Loop devices whose backing file lies under ``prefix``."""
    cp = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True,
                        text=True, timeout=30)
    out = []
    for line in cp.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(prefix):
            out.append(parts[0])
    return out


class VanishingDir:
    """A directory behind a bindfs mount; ``vanish()`` kills bindfs, so every open
    descriptor under it fails with I/O errors (a disk that dies mid-run);
    ``revive()`` mounts it again (the disk is back: open it afresh)."""

    def __init__(self, tmp_path):
        self.real = tmp_path / "real"
        self.path = tmp_path / "via"
        self.real.mkdir()
        self.path.mkdir()
        self.proc = None
        self.revive()

    def revive(self):
        from testbed.processes import force_unmount, mounted, wait_for
        if self.proc is not None and self.proc.poll() is None:
            return
        force_unmount(self.path)          # the dead mount of the killed bindfs
        self.proc = subprocess.Popen(["bindfs", "-f", "-o", "direct_io", str(self.real),
                                      str(self.path)], stderr=subprocess.DEVNULL)
        wait_for(lambda: mounted(self.path), 10, "bindfs mount")

    def vanish(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        from testbed.processes import force_unmount
        self.vanish()
        force_unmount(self.path)
