"""Sizes with units: parsing (``256M``, ``1G``, ``4096``) and human formatting."""

from __future__ import annotations

import re

from .errors import InvalidArgument

SECTOR = 512
_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, *, align: int = SECTOR, what: str = "size") -> int:
    """Parse a byte count with an optional binary unit (K, M, G, T, P; ``KiB``/``KB``
    accepted and also mean 1024). The result must be positive and a multiple of
    ``align``; anything else raises ``InvalidArgument`` with a one-line reason."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise InvalidArgument(
                f"bad {what} {text!r}: expected a number with an optional unit K, M, G or T "
                "(e.g. 256M)")
        number, unit = m.group(1), m.group(2).upper()
        mult = _MULT[unit]
        if "." in number:
            # Decimal fractions are exact only when they land on whole bytes.
            from fractions import Fraction
            exact = Fraction(number) * mult
            if exact.denominator != 1:
                raise InvalidArgument(f"bad {what} {text!r}: not a whole number of bytes")
            value = int(exact)
        else:
            value = int(number) * mult
    if value <= 0:
        raise InvalidArgument(f"bad {what} {text!r}: must be greater than zero")
    if align and value % align:
        raise InvalidArgument(
            f"bad {what} {text!r}: {value} bytes is not a multiple of {align} bytes")
    return value


def format_size(n: int) -> str:
    """``268435456`` -> ``256 MiB``; exact values keep no decimals."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult:
            if n % mult == 0:
                return f"{n // mult} {unit}"
            return f"{n / mult:.1f} {unit}"
    return f"{n} B"
