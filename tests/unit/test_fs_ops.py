"""VolumeFS handlers called directly (no mount): errno translation, namespace rules."""

import errno
import logging
import os

import pyfuse3
import pytest

from fencevol.errors import Fenced
from fuse_fs.fs import VolumeFS


class FakeVolume:
    def __init__(self, size=1 << 20, writable=True, fail=None):
        self.size = size
        self.writable_mode = writable
        self.fail = fail
        self.synced = 0

    async def read(self, off, size):
        if self.fail:
            raise self.fail
        return bytes(min(size, max(0, self.size - off)))

    async def write(self, off, buf):
        if self.fail:
            raise self.fail
        return len(buf)

    async def fsync(self):
        self.synced += 1


class Source:
    def __init__(self, **vols):
        self.volumes = {k.replace("__", "/"): v for k, v in vols.items()}


async def open_volume(fs, dg, name, flags=os.O_RDWR):
    dg_attr = await fs.lookup(pyfuse3.ROOT_INODE, dg.encode(), None)
    attr = await fs.lookup(dg_attr.st_ino, name.encode(), None)
    return attr, await fs.open(attr.st_ino, flags, None)


async def test_lookup_getattr_and_io():
    fs = VolumeFS(Source(dg__a=FakeVolume(), dg__b=FakeVolume(writable=False)))
    attr, fi = await open_volume(fs, "dg", "a")
    assert attr.st_size == 1 << 20 and attr.st_mode & 0o777 == 0o660
    assert fi.direct_io
    assert len(await fs.read(fi.fh, 0, 4096)) == 4096
    assert await fs.write(fi.fh, 0, b"xyz") == 3
    await fs.flush(fi.fh)
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await open_volume(fs, "dg", "b", os.O_WRONLY)
    assert exc.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.lookup(pyfuse3.ROOT_INODE, b"nodg", None)
    assert exc.value.errno == errno.ENOENT


async def test_errors_become_errno_and_never_escape(caplog):
    vol = FakeVolume(fail=RuntimeError("bug"))
    fs = VolumeFS(Source(dg__a=vol))
    _, fi = await open_volume(fs, "dg", "a")
    with caplog.at_level(logging.ERROR, logger="fuse_fs"):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await fs.read(fi.fh, 0, 10)
    assert exc.value.errno == errno.EIO
    assert "unexpected error in FUSE read" in caplog.text
    vol.fail = Fenced("node ejected")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.write(fi.fh, 0, b"x")
    assert exc.value.errno == errno.EIO
    vol.fail = OSError(errno.ENOSPC, "full")
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.write(fi.fh, 0, b"x")
    assert exc.value.errno == errno.ENOSPC


async def test_namespace_changes_refused():
    fs = VolumeFS(Source(dg__a=FakeVolume()))
    attr, _ = await open_volume(fs, "dg", "a")
    for call in (fs.create(1, b"x", 0o644, 0, None), fs.unlink(1, b"a", None),
                 fs.mkdir(1, b"d", 0o755, None), fs.rename(1, b"a", 1, b"b", 0, None)):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await call
        assert exc.value.errno == errno.EPERM
    from types import SimpleNamespace
    fields = SimpleNamespace(update_size=True, update_mode=False, update_uid=False,
                             update_gid=False)    # SetattrFields is read-only from Python
    new = pyfuse3.EntryAttributes()
    new.st_size = 0
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await fs.setattr(attr.st_ino, new, fields, None, None)
    assert exc.value.errno == errno.EPERM
