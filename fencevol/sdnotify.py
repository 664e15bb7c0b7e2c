"""systemd's service notification protocol (sd_notify(3)): READY, STOPPING, STATUS
and the watchdog keep-alive, sent as datagrams to ``$NOTIFY_SOCKET``. Without that
variable (not started by systemd with ``Type=notify``) every call does nothing.

The keep-alive is sent by a task on the daemon's event loop, every half of
``$WATCHDOG_USEC``: a loop that stalls stops feeding it and systemd restarts the
service. A ``healthy`` callback lets the daemon withhold it on purpose."""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping

import trio

log = logging.getLogger("fencevol.sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):            # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_interval = 0.0
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if self.address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []),
                  f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    async def keep_alive(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Feed systemd's watchdog while ``healthy()``; returns at once if systemd
        asked for no watchdog."""
        if not self.watchdog_interval:
            return
        while True:
            if healthy():
                self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
