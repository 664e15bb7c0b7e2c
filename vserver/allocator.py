"""Volume layout and space allocation (sans-IO).

Functions take a ``GroupConfig`` and return new ``Volume`` objects; they never
modify the config, so a failure (``NoSpace``, ``InvalidArgument``) leaves it
untouched. Placement is in ``ALLOC_UNIT`` granules; the volume's logical size may
be smaller than what its plexes hold.

Policy: a column takes the best-fitting single free extent when one exists, else
the largest free extents first. Stripe columns sit on distinct disks; mirror
plexes sit on disjoint sets of disks.
"""

from __future__ import annotations

import uuid

from fencevol.errors import InvalidArgument, NoSpace
from fencevol.units import SECTOR, format_size

from .model import GroupConfig, Subdisk, Volume, check_name, plex_capacity

ALLOC_UNIT = 64 << 10
DEFAULT_STRIPE_UNIT = 64 << 10
MAX_COLUMNS = 64
MAX_MIRRORS = 8

FreeMap = dict[str, list[tuple[int, int]]]


def _up(n: int, a: int = ALLOC_UNIT) -> int:
    return -(-n // a) * a


def _down(n: int, a: int = ALLOC_UNIT) -> int:
    return n // a * a


def free_map(cfg: GroupConfig) -> FreeMap:
    """Free, aligned extents ``(start, end)`` per disk, in disk order."""
    used: dict[str, list[tuple[int, int]]] = {d.id: [] for d in cfg.disks}
    for v in cfg.volumes:
        for sd in v.subdisks():
            used[sd.disk].append((sd.offset, sd.end))
    free: FreeMap = {}
    for d in cfg.disks:
        spans, pos, end = [], _up(d.public_offset), _down(d.size)
        for s, e in sorted(used[d.id]):
            if s > pos:
                spans.append((pos, _down(s)))
            pos = max(pos, _up(e))
        if pos < end:
            spans.append((pos, end))
        free[d.id] = [(s, e) for s, e in spans if e > s]
    return free


def free_bytes(free: FreeMap, disk_id: str) -> int:
    return sum(e - s for s, e in free[disk_id])


def _carve(free: FreeMap, disk: str, start: int, n: int) -> None:
    """Remove ``[start, start + n)`` from ``free[disk]`` (it lies inside one extent)."""
    spans = free[disk]
    for i, (s, e) in enumerate(spans):
        if s <= start and start + n <= e:
            repl = [(s, start)] if start > s else []
            if start + n < e:
                repl.append((start + n, e))
            spans[i:i + 1] = repl
            return
    raise AssertionError("carve outside free space")


def _extend_column(free: FreeMap, col: list[Subdisk], extra: int, disks: list[str],
                   max_piece: int | None) -> list[Subdisk]:
    """Return ``col`` grown by ``extra`` bytes (a multiple of ALLOC_UNIT) on ``disks``;
    ``free`` is updated. Raises ``NoSpace`` (``free`` is then partly consumed: callers
    work on a copy)."""
    col = list(col)
    # 1. Grow the last subdisk in place when free space follows it.
    if col and extra and (max_piece is None or col[-1].length < max_piece):
        last = col[-1]
        for s, e in free.get(last.disk, []):
            if s == last.end:
                n = min(extra, e - s)
                if max_piece is not None:
                    n = min(n, max_piece - last.length)
                _carve(free, last.disk, s, n)
                col[-1] = Subdisk(last.disk, last.offset, last.length + n)
                extra -= n
                break
    if not extra:
        return col
    # 2. A single best-fitting extent.
    if max_piece is None or extra <= max_piece:
        fits = [(e - s, di, s, d) for di, d in enumerate(disks) for s, e in free[d] if e - s >= extra]
        if fits:
            _, _, s, d = min(fits)
            _carve(free, d, s, extra)
            col.append(Subdisk(d, s, extra))
            return col
    # 3. Largest extents first, cut to max_piece.
    spans = sorted(((e - s, di, s, d) for di, d in enumerate(disks) for s, e in free[d]),
                   key=lambda t: (-t[0], t[1], t[2]))
    for size, _, s, d in spans:
        while size and extra:
            n = min(size, extra, max_piece or size)
            _carve(free, d, s, n)
            col.append(Subdisk(d, s, n))
            s, size, extra = s + n, size - n, extra - n
        if not extra:
            return col
    raise NoSpace("not enough free space")


def _copy(free: FreeMap) -> FreeMap:
    return {d: list(spans) for d, spans in free.items()}


def _column_need(size: int, columns: int, stripe_unit: int) -> int:
    if stripe_unit <= 0:
        return _up(size)
    rows = -(-size // (stripe_unit * columns))
    return _up(rows * stripe_unit)


def _column_capacity(col: list[Subdisk]) -> int:
    return sum(sd.length for sd in col)


def _total_free(free: FreeMap) -> int:
    return sum(free_bytes(free, d) for d in free)


def _no_space(cfg: GroupConfig, what: str, free: FreeMap) -> NoSpace:
    return NoSpace(f"not enough space in disk group {cfg.name} for {what} "
                   f"({format_size(_total_free(free))} free in all)")


def create_volume(cfg: GroupConfig, name: str, size: int, layout: str = "concat", *,
                  columns: int | None = None, mirrors: int | None = None,
                  stripe_unit: int | None = None, max_subdisk: int | None = None,
                  kind: str = "data", cluster_id: str = "") -> Volume:
    """Lay out a new volume. ``max_subdisk`` caps subdisk length (more extents)."""
    check_name(name, "volume")
    if any(v.name == name for v in cfg.volumes):
        from fencevol.errors import AlreadyExists
        raise AlreadyExists(f"volume {cfg.name}/{name} already exists")
    if size <= 0 or size % SECTOR:
        raise InvalidArgument(f"volume size must be a positive multiple of {SECTOR} bytes")
    if max_subdisk is not None and (max_subdisk < ALLOC_UNIT or max_subdisk % ALLOC_UNIT):
        raise InvalidArgument(f"subdisk size cap must be a multiple of {format_size(ALLOC_UNIT)}")
    free = _copy(free_map(cfg))
    disks = [d.id for d in cfg.disks]
    what = f"{format_size(size)} {layout} volume {name}"
    if layout == "concat":
        if columns not in (None, 1) or mirrors not in (None, 1):
            raise InvalidArgument("concat takes neither --columns nor --mirrors")
        try:
            plexes = [[_extend_column(free, [], _up(size), disks, max_subdisk)]]
        except NoSpace:
            raise _no_space(cfg, what, free_map(cfg)) from None
        su = 0
    elif layout == "stripe":
        ncols = 2 if columns is None else columns
        su = DEFAULT_STRIPE_UNIT if stripe_unit is None else stripe_unit
        if mirrors not in (None, 1):
            raise InvalidArgument("stripe takes no --mirrors")
        if not 2 <= ncols <= MAX_COLUMNS:
            raise InvalidArgument(f"a stripe needs 2 to {MAX_COLUMNS} columns, not {ncols}")
        if su < 4096 or su % 4096 or su > (16 << 20):
            raise InvalidArgument("stripe unit must be a multiple of 4 KiB, at most 16 MiB")
        need = _column_need(size, ncols, su)
        ranked = sorted(disks, key=lambda d: -free_bytes(free, d))
        chosen = [d for d in ranked if free_bytes(free, d) >= need][:ncols]
        if len(chosen) < ncols:
            raise NoSpace(
                f"a {ncols}-column stripe of {format_size(size)} needs {ncols} disks with "
                f"{format_size(need)} free each; disk group {cfg.name} has {len(chosen)}")
        chosen.sort(key=disks.index)
        plexes = [[_extend_column(free, [], need, [d], max_subdisk) for d in chosen]]
    elif layout == "mirror":
        nplex = 2 if mirrors is None else mirrors
        if columns not in (None, 1):
            raise InvalidArgument("mirror takes no --columns")
        if not 2 <= nplex <= MAX_MIRRORS:
            raise InvalidArgument(f"a mirror needs 2 to {MAX_MIRRORS} plexes, not {nplex}")
        plexes, taken = [], set()
        for _ in range(nplex):
            allowed = [d for d in disks if d not in taken]
            try:
                col = _extend_column(free, [], _up(size), allowed, max_subdisk)
            except NoSpace:
                raise NoSpace(
                    f"a {nplex}-way mirror of {format_size(size)} needs {nplex} disjoint sets of "
                    f"disks with that much space; disk group {cfg.name} cannot provide them") from None
            taken |= {sd.disk for sd in col}
            plexes.append([col])
        su = 0
    else:
        raise InvalidArgument(f"unknown layout {layout!r}: use concat, stripe or mirror")
    return Volume(id=uuid.uuid4().hex, name=name, size=size, layout=layout, plexes=plexes,
                  stripe_unit=su, kind=kind, cluster_id=cluster_id)


def resize_volume(cfg: GroupConfig, vol: Volume, new_size: int) -> Volume:
    """Return ``vol`` at ``new_size``: growing allocates (same placement rules),
    shrinking trims subdisks from the end. ``cfg`` is not modified."""
    if new_size <= 0 or new_size % SECTOR:
        raise InvalidArgument(f"volume size must be a positive multiple of {SECTOR} bytes")
    free = _copy(free_map(cfg))
    disks = [d.id for d in cfg.disks]
    need = _column_need(new_size, vol.columns, vol.stripe_unit)
    plexes = []
    for p, plex in enumerate(vol.plexes):
        other_plexes = {sd.disk for q, pl in enumerate(vol.plexes) if q != p
                        for col in pl for sd in col}
        new_plex = []
        for c, col in enumerate(plex):
            cap = _column_capacity(col)
            if cap < need:
                other_cols = {sd.disk for k, cl in enumerate(plex) if k != c for sd in cl}
                own = list(dict.fromkeys(sd.disk for sd in col))
                allowed = own + [d for d in disks
                                 if d not in own and d not in other_cols and d not in other_plexes]
                try:
                    col = _extend_column(free, col, need - cap, allowed, None)
                except NoSpace:
                    raise NoSpace(
                        f"not enough space in disk group {cfg.name} to grow {vol.name} to "
                        f"{format_size(new_size)} with its {vol.layout} layout") from None
            elif cap > need:
                col = _trim(col, need)
            new_plex.append(col)
        plexes.append(new_plex)
    new = Volume(id=vol.id, name=vol.name, size=new_size, layout=vol.layout, plexes=plexes,
                 stripe_unit=vol.stripe_unit, kind=vol.kind, cluster_id=vol.cluster_id,
                 plex_states=list(vol.plex_states), resync_done=min(vol.resync_done, new_size))
    assert all(plex_capacity(pl, new.stripe_unit) >= new_size for pl in new.plexes)
    return new


def _trim(col: list[Subdisk], keep: int) -> list[Subdisk]:
    out, pos = [], 0
    for sd in col:
        if pos >= keep:
            break
        n = min(sd.length, keep - pos)
        out.append(Subdisk(sd.disk, sd.offset, n))
        pos += n
    return out


def relocate_plex(cfg: GroupConfig, vol: Volume, plex: int, disk_id: str) -> list[list[Subdisk]]:
    """A copy of plex ``plex`` of ``vol`` with every subdisk on ``disk_id`` replaced
    by free space elsewhere in the group, column offsets unchanged: disks holding
    the volume's other plexes are avoided while others have room (a mirror keeps
    its copies on separate disks), the plex's other columns likewise. ``cfg`` is
    not modified; NoSpace if it does not fit."""
    free = _copy(free_map(cfg))
    free.pop(disk_id, None)
    others = {sd.disk for q, pl in enumerate(vol.plexes) if q != plex for col in pl for sd in col}
    out = []
    for c, col in enumerate(vol.plexes[plex]):
        own_cols = {sd.disk for k, cl in enumerate(vol.plexes[plex]) if k != c for sd in cl}
        candidates = [d.id for d in cfg.disks if d.id != disk_id]
        preferred = [d for d in candidates if d not in others and d not in own_cols]
        new_col: list[Subdisk] = []
        for sd in col:
            if sd.disk != disk_id:
                new_col.append(sd)
                continue
            for allowed in (preferred, [d for d in candidates if d not in own_cols], candidates):
                trial = _copy(free)
                try:
                    piece = _extend_column(trial, [], sd.length, allowed, None)
                except NoSpace:
                    continue
                free = trial
                new_col.extend(piece)
                break
            else:
                raise NoSpace(f"no room in disk group {cfg.name} for {format_size(sd.length)} of "
                              f"{vol.name} off its disk")
        out.append(new_col)
    return out
