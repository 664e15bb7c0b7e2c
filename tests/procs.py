"""Real processes for integration tests: start, await readiness, always stop."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """Next stdout line of ``proc``; fail at once if it exits, or after ``timeout``."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} not ready after {timeout}s")
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"{what} exited with {proc.wait()} before it was ready")
            buf += chunk
    finally:
        sel.close()
    return buf.decode().splitlines()[0]


class Server:
    """A ``vserver serve`` subprocess on its own state directory."""

    def __init__(self, state_dir: Path, *extra: str, log: Path | None = None):
        self.state_dir = Path(state_dir)
        self.extra = list(extra)
        self.log = log or self.state_dir.parent / f"{self.state_dir.name}-vserver.log"
        self.proc: subprocess.Popen | None = None
        self.address = ""

    @property
    def key_file(self) -> str:
        return str(self.state_dir / "cluster.key")

    @property
    def env(self) -> dict:
        return dict(ENV, FENCEVOL_SERVER=self.address, FENCEVOL_KEY_FILE=self.key_file)

    def start(self, listen: str | None = None) -> "Server":
        listen = listen or (self.address or "127.0.0.1:0")
        self._close_pipe()
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "vserver"), "serve", "--state-dir", str(self.state_dir),
             "--listen", listen, *self.extra],
            stdout=subprocess.PIPE, stderr=logf, env=ENV, start_new_session=True)
        logf.close()
        line = read_line(self.proc, 20, "vserver")
        self.address = line.rsplit(" ", 1)[-1]
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc and self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_pipe()

    def restart(self) -> "Server":
        self.stop()
        return self.start(self.address)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def vctl(server: Server, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``vctl`` against ``server``; with ``check`` a failure shows its stderr."""
    cp = subprocess.run([str(VENV_BIN / "vctl"), *args], env=server.env, capture_output=True,
                        text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError(f"vctl {' '.join(args)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def vctl_json(server: Server, *args: str):
    return json.loads(vctl(server, *args, "--json").stdout)
