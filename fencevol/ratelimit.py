"""Rate-limited error logging for what outsiders can trigger at will (forged
heartbeats, connection floods): bounded log volume and bounded memory."""

from __future__ import annotations

import logging


class RateLimitedLog:
    """At most one line per kind of problem per ``interval`` seconds, saying how many
    were dropped since the last; at most ``cap`` kinds remembered (the oldest is
    forgotten first). What outsiders send is theirs to repeat: one line per source
    forever would be a log flood and a memory leak."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, cap: int = 64):
        self.logger, self.interval, self.cap = logger, interval, cap
        self._last: dict[str, list] = {}              # kind -> [logged at, dropped since]

    def __call__(self, kind: str, now: float, message: str, *args) -> None:
        entry = self._last.get(kind)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        dropped = entry[1] if entry is not None else 0
        self._last.pop(kind, None)
        while len(self._last) >= self.cap:
            del self._last[next(iter(self._last))]
        self._last[kind] = [now, 0]
        if dropped:
            message += " (%d more like it in the last %.0f s)"
            args += (dropped, self.interval)
        self.logger.error(message, *args)
