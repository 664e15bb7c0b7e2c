"""Lease arithmetic for delegations (sans-IO; times are monotonic seconds).

Each side measures on its own monotonic clock:

* the client counts a lease from the moment it *sent* the attach/renew request
  (never later than the server's grant) and stops writing ``guard`` seconds before
  it ends, so a write that started finishes inside the lease;
* the server counts from when it granted or renewed, and treats the delegation as
  gone only ``margin`` seconds after the lease ends (covers clock-rate skew and
  message delay).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument, ProtocolError


@dataclass(frozen=True)
class LeaseTerms:
    duration: float = 4.0
    """Lease length granted by the server."""
    margin: float = 1.0
    """Server-side safety margin after the lease ends."""
    guard: float = 0.5
    """Client-side: stop writing this long before the lease ends."""

    def __post_init__(self):
        if not (self.duration > 0 and self.margin >= 0 and self.guard >= 0):
            raise InvalidArgument("lease duration must be > 0, margin and guard >= 0")
        if self.guard >= self.duration / 2:
            raise InvalidArgument(
                f"lease guard {self.guard}s must be under half the lease ({self.duration}s)")

    def to_wire(self) -> dict:
        """The terms as the server announces them (hello, attach and renew replies)."""
        return {"duration": self.duration, "guard": self.guard, "margin": self.margin,
                "renew_interval": self.renew_interval}

    @classmethod
    def from_wire(cls, d: object) -> "LeaseTerms":
        """Terms a server announced; missing ones are this class's defaults, bad ones
        a ``ProtocolError`` (never silently replaced)."""
        if d is None:
            return cls()
        try:
            if not isinstance(d, dict):
                raise TypeError
            kw = {k: float(d[k]) for k in ("duration", "margin", "guard") if k in d}
            return cls(**kw)
        except (TypeError, ValueError, InvalidArgument) as exc:
            raise ProtocolError(f"server announced bad lease terms {d!r}: {exc}") from None

    @property
    def renew_interval(self) -> float:
        """How often a client renews: four tries before the guard window begins."""
        return (self.duration - self.guard) / 4

    def client_write_deadline(self, request_sent_at: float, duration: float | None = None) -> float:
        """Client clock: writes are allowed strictly before this instant."""
        return request_sent_at + (self.duration if duration is None else duration) - self.guard

    def server_expiry(self, granted_at: float) -> float:
        """Server clock: the lease ends here (renewal after this is refused)."""
        return granted_at + self.duration

    def server_safe_after(self, granted_at: float) -> float:
        """Server clock: from here on the holder can no longer be writing (S2)."""
        return granted_at + self.duration + self.margin
