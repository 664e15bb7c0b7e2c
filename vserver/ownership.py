"""Which server manages a disk group: a delta lease in the owner-lease block of
each of the group's disks (sanlock's delta lease, without a lockspace of host ids).

Without it, a second server could import a group a live server is serving and both
would allocate the same extents (issue 12). The record names the owner (server id,
address, host, pid), an ``epoch`` that grows with every change of owner, and a
``counter`` that grows with every renewal. Nobody's clock is compared with anyone
else's: a server that finds another's record waits until it has seen the record
*not change* for ``expiry`` seconds on its own clock.

* **acquire**: read every disk's block. Free (never written, or released), or our
  own record (this state directory -- its lock excludes a second process): claim.
  Another server's: watch it; any change means the owner is alive -- refuse, naming
  it. No change for ``expiry``: it lapsed -- claim. To claim, write a record with
  epoch + 1 to every disk, wait ``settle``, read back: a concurrent claimer that
  wrote later has overwritten ours on some disk, and we back off (both may back
  off; neither ever owns twice).
* **renew** every ``renew`` seconds: read, and write counter + 1 only if every disk
  still holds our epoch -- otherwise the group was taken over and we stop managing
  it.
* **confirm** before every metadata write the group's owner makes (configuration,
  repair) and before granting: our epoch on every disk; if the last renewal is
  older than ``expiry - guard`` (an acquirer can take over after ``expiry`` of
  silence), renew and read back first. A woken stale owner is refused here.
* **release** on a clean shutdown: an owner field of "" -- the next server claims
  at once.

What the lease alone cannot exclude, and what narrows it (docs/OPERATIONS.md): a
server frozen *between* a successful confirm and the write it guards, for longer
than ``expiry``, lands one stale write after the new owner took over. So the new
owner's first configuration jumps the generation by ``TAKEOVER_JUMP``, and every
configuration write re-reads each disk and refuses a newer generation, then fills
both slots (vserver.storage.write_config): frozen past that read too, the late
write replaces at most one of two newest copies, with a far lower generation, and
readers keep the newest.

The decisions are plain functions of what was read (``judge``); the waiting is in
``acquire``, on the trio clock passed in by the caller's run."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field

import trio

from fencevol import ondisk
from fencevol.errors import FencevolError, InUse, InvalidArgument

log = logging.getLogger("vserver.ownership")

TAKEOVER_JUMP = 1 << 20       # generations the new owner skips (see the module docstring)


class NotOwner(InUse):
    """This server does not (or no longer) manage the disk group."""

    code = "not_owner"


@dataclass(frozen=True)
class OwnerTerms:
    renew: float = 2.0         # seconds between renewals
    expiry: float = 10.0       # no renewal seen for this long: the owner is gone
    settle: float = 1.0        # after claiming: wait this long, then read back
    guard: float = 2.0         # an owner stops writing this long before ``expiry``

    def __post_init__(self):
        if not (0 < self.renew and 2 * self.renew <= self.expiry - self.guard and self.settle > 0):
            raise InvalidArgument("owner lease: need renew > 0, 2 x renew <= expiry - guard, "
                                  "settle > 0")


@dataclass(frozen=True)
class OwnerRecord:
    group: str                 # disk group id
    owner: str                 # server id; "" when released
    address: str = ""
    host: str = ""
    pid: int = 0
    epoch: int = 0
    counter: int = 0

    def to_json(self) -> dict:
        return {"group": self.group, "owner": self.owner, "address": self.address,
                "host": self.host, "pid": self.pid, "epoch": self.epoch}

    @classmethod
    def from_slot(cls, st: ondisk.SlotState) -> "OwnerRecord":
        d = json.loads(st.payload)
        return cls(str(d["group"]), str(d["owner"]), str(d.get("address", "")),
                   str(d.get("host", "")), int(d.get("pid", 0)), int(d["epoch"]), st.generation)

    def describe(self) -> str:
        return (f"server {self.owner[:12]} at {self.address or '?'} (host {self.host or '?'}, "
                f"pid {self.pid})")


DAMAGED = "damaged"
Reading = OwnerRecord | None | str        # a record, never written, or DAMAGED


@dataclass(frozen=True)
class Me:
    server_id: str
    address: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


# -- judging what was read (pure) ----------------------------------------------------------------

FREE, MINE, HELD, SUPERSEDED = "free", "mine", "held", "superseded"


def superseded(owner: str, me: str) -> bool:
    """Is ``owner`` an earlier leader of the same HA control plane as ``me``
    ("ha:CLUSTER:EPOCH", vserver.leader)? etcd elected ``me`` only after that
    leader's etcd lease had ended, and it writes nothing once its lease may have
    ended: its record is left over (or one late write), not a live owner's."""
    a, b = owner.split(":"), me.split(":")
    if len(a) != 3 or len(b) != 3 or a[0] != "ha" or b[0] != "ha" or a[1] != b[1]:
        return False
    try:
        return int(a[2]) < int(b[2])
    except ValueError:
        return False


def judge(readings: list[Reading], group_id: str, me: str) -> tuple[str, OwnerRecord | None]:
    """(FREE | MINE | HELD | SUPERSEDED, the newest record). HELD: another server's
    record, or a damaged block (someone may be writing it right now), or records of
    different owners on different disks. SUPERSEDED: only records of earlier
    leaders of our own HA control plane -- take over at once."""
    records = [r for r in readings if isinstance(r, OwnerRecord) and r.group == group_id]
    newest = max(records, key=lambda r: (r.epoch, r.counter), default=None)
    if any(r == DAMAGED for r in readings):
        return HELD, newest
    owners = {r.owner for r in records} - {""}      # "": released
    if owners and all(superseded(o, me) for o in owners):
        return SUPERSEDED, newest
    if not owners:
        return FREE, newest
    if owners == {me}:
        return MINE, newest
    return HELD, newest


def confirms(readings: list[Reading], group_id: str, me: str, epoch: int) -> bool:
    """Does every disk hold our record of ``epoch``?"""
    return all(isinstance(r, OwnerRecord) and r.group == group_id and r.owner == me
               and r.epoch == epoch for r in readings)


def only_late_writes(readings: list[Reading], group_id: str, me: str, epoch: int) -> bool:
    """Every disk holds our record of ``epoch`` or a record of a leader we
    superseded (its renewal, frozen before the write, landed late): still ours."""
    return all(isinstance(r, OwnerRecord) and r.group == group_id
               and ((r.owner == me and r.epoch == epoch) or superseded(r.owner, me))
               for r in readings)


# -- I/O -----------------------------------------------------------------------------------------

class DiskFailed(OSError):
    """The owner block of the disk behind ``fd`` could not be read or written: the
    caller marks that disk failed and goes on with the others."""

    def __init__(self, fd: int, error: OSError):
        super().__init__(error.errno, error.strerror)
        self.fd = fd
        self.error = error


def read_all(fds: list[int]) -> list[Reading]:
    out: list[Reading] = []
    for fd in fds:
        try:
            st = ondisk.read_owner(fd)
        except OSError as exc:
            raise DiskFailed(fd, exc) from None
        if st.payload is not None:
            try:
                out.append(OwnerRecord.from_slot(st))
            except (KeyError, TypeError, ValueError):
                out.append(DAMAGED)
        else:
            out.append(DAMAGED if st.problem else None)
    return out


def write_all(fds: list[int], rec: OwnerRecord) -> None:
    for fd in fds:
        try:
            ondisk.write_owner(fd, rec.counter, rec.to_json())
        except OSError as exc:
            raise DiskFailed(fd, exc) from None


@dataclass
class Ownership:
    """This server's lease on one group."""
    group: str
    me: Me
    terms: OwnerTerms
    epoch: int
    counter: int
    renewed_at: float          # trio clock of the last write that proved it ours
    took_over: bool            # the previous owner was another server
    lost: str = ""             # why this server no longer manages the group

    def record(self) -> OwnerRecord:
        return OwnerRecord(self.group, self.me.server_id, self.me.address, self.me.host,
                           self.me.pid, self.epoch, self.counter)


async def acquire(fds: list[int], group_id: str, group_name: str, me: Me,
                  terms: OwnerTerms) -> Ownership:
    """Claim the group's lease (see the module docstring); NotOwner naming the
    owner if a live server holds it."""
    readings = read_all(fds)
    verdict, newest = judge(readings, group_id, me.server_id)
    took_over = verdict in (HELD, SUPERSEDED)
    if verdict == HELD:
        first = readings
        watch_until = trio.current_time() + terms.expiry
        while trio.current_time() < watch_until:
            await trio.sleep(min(terms.renew / 2, watch_until - trio.current_time()))
            now = read_all(fds)
            if now != first:
                _, newer = judge(now, group_id, me.server_id)
                who = (newer or newest).describe() if (newer or newest) else "another server"
                raise NotOwner(f"disk group {group_name} is managed by {who}: its lease is being "
                               "renewed; stop that server (or wait for it to fail) first")
    epoch = (newest.epoch if newest else 0) + 1
    counter = max([r.counter for r in readings if isinstance(r, OwnerRecord)], default=0) + 1
    own = Ownership(group_id, me, terms, epoch, counter, 0.0, took_over)
    await trio.to_thread.run_sync(write_all, fds, own.record())
    own.renewed_at = trio.current_time()
    await trio.sleep(terms.settle)
    back = read_all(fds)
    if not confirms(back, group_id, me.server_id, epoch):
        _, other = judge(back, group_id, me.server_id)
        raise NotOwner(f"disk group {group_name}: another server claimed it at the same time"
                       + (f" ({other.describe()})" if other and other.owner else "")
                       + "; try again")
    return own


async def renew(fds: list[int], own: Ownership, group_name: str) -> None:
    """One renewal; sets ``own.lost`` (and raises NotOwner) if the group was taken
    over. I/O errors propagate: the lease simply runs out if they persist."""
    if own.lost:
        raise NotOwner(own.lost)
    readings = read_all(fds)
    if _standing(readings, own) is None:
        raise _lost(readings, own, group_name)
    own.counter += 1
    t0 = trio.current_time()
    await trio.to_thread.run_sync(write_all, fds, own.record())
    own.renewed_at = t0


OURS, LATE_WRITE = "ours", "late write"


def _standing(readings: list[Reading], own: Ownership) -> str | None:
    """OURS; LATE_WRITE (still ours, but a superseded leader's late write is on a
    disk: rewrite ours); or None (lost)."""
    if confirms(readings, own.group, own.me.server_id, own.epoch):
        return OURS
    if only_late_writes(readings, own.group, own.me.server_id, own.epoch):
        log.warning("disk group %s: a late write of an earlier leader on its owner lease; "
                    "rewriting ours", own.group)
        return LATE_WRITE
    return None


def _lost(readings: list[Reading], own: Ownership, group_name: str) -> NotOwner:
    _, other = judge(readings, own.group, own.me.server_id)
    own.lost = ("this server no longer manages it: "
                + (f"{other.describe()} took it over" if other and other.owner
                   else "its lease record changed"))
    return NotOwner(f"disk group {group_name}: {own.lost}; metadata left untouched")


async def confirm(fds: list[int], own: Ownership, group_name: str) -> None:
    """Before a metadata write: is the group still ours? Our epoch must be on every
    disk. If the last renewal is older than ``expiry - guard`` (this server was
    frozen, or its renewals failed), another server may be about to claim it:
    renew now and read back after ``settle``, as a claim does. Disks that cannot
    be read or written: NotOwner (the group cannot be confirmed)."""
    if own.lost:
        raise NotOwner(f"disk group {group_name}: {own.lost}")
    try:
        readings = read_all(fds)        # one 4 KiB O_DIRECT read per disk, on the loop
        standing = _standing(readings, own)
        if standing is None:
            raise _lost(readings, own, group_name)
        if standing == OURS and trio.current_time() - own.renewed_at < own.terms.expiry - own.terms.guard:
            return
        own.counter += 1
        t0 = trio.current_time()
        await trio.to_thread.run_sync(write_all, fds, own.record())
        await trio.sleep(own.terms.settle)
        readings = read_all(fds)
    except DiskFailed:
        raise                           # the caller leaves that disk out and asks again
    except OSError as exc:
        raise NotOwner(f"disk group {group_name}: cannot renew its owner lease: {exc}") from None
    if _standing(readings, own) is None:
        raise _lost(readings, own, group_name)
    own.renewed_at = t0


def release(fds: list[int], own: Ownership) -> None:
    """Clean shutdown: hand the group back (blocking)."""
    if own.lost:
        return
    try:
        if confirms(read_all(fds), own.group, own.me.server_id, own.epoch):
            own.counter += 1
            write_all(fds, OwnerRecord(own.group, "", epoch=own.epoch, counter=own.counter))
    except (OSError, DiskFailed, FencevolError):
        pass                    # the lease runs out instead
