"""Access modes of an attach (patent ¶0037) and their conflict matrix.

=====  ===============  =================================================
mode   name             meaning
=====  ===============  =================================================
rw     read-write       read and write; no restriction on others
ro     read-only        read only; no restriction on others
ew     exclusive-write  the only writer; others may attach read-only
ex     exclusive        read and write; nobody else may attach
=====  ===============  =================================================

Conflicts are symmetric and only between different nodes.
"""

from __future__ import annotations

from .errors import InvalidArgument

RW, RO, EW, EX = "rw", "ro", "ew", "ex"
MODES = (RW, RO, EW, EX)
MODE_NAMES = {RW: "read-write", RO: "read-only", EW: "exclusive-write", EX: "exclusive"}
_ALIASES = {name: mode for mode, name in MODE_NAMES.items()} | {m: m for m in MODES}

# Pairs (unordered) that may coexist on one volume for two different nodes.
_COMPATIBLE = {
    frozenset((RO,)), frozenset((RO, RW)), frozenset((RW,)), frozenset((RO, EW)),
}


def parse_mode(text: str) -> str:
    mode = _ALIASES.get(str(text).strip().lower())
    if mode is None:
        raise InvalidArgument(
            f"unknown access mode {text!r}: use rw, ro, ew or ex "
            "(read-write, read-only, exclusive-write, exclusive)")
    return mode


def conflicts(a: str, b: str) -> bool:
    """True when delegations in modes ``a`` and ``b`` may not be held at the same time
    by two different nodes."""
    return frozenset((a, b)) not in _COMPATIBLE


def can_write(mode: str) -> bool:
    return mode != RO
