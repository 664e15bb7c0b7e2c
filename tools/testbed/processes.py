"""Start and stop real fencevol processes -- the server, nodes, vctl -- await
their readiness lines, poll their published state, and always clean up (no
process, no mount left behind)."""

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


def wait_line_in_file(proc: subprocess.Popen, path: Path, timeout: float, what: str) -> str:
    """First line of ``path`` (a detached daemon's stdout); fail fast if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if "\n" in text:
            return text.splitlines()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s")
        time.sleep(0.02)


def spawn(cmd: list[str], log: Path, detached: bool = False, env: dict | None = None):
    """Start a daemon in its own session with stderr appended to ``log``; its stdout
    goes to a pipe, or for detached daemons to ``log``.out (no pipe to outlive).
    ``env`` adds to the harness environment."""
    env = ENV if env is None else dict(ENV, **env)
    with open(log, "ab") as logf:
        if detached:
            with open(str(log) + ".out", "wb") as outf:
                return subprocess.Popen(cmd, stdout=outf, stderr=logf, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def launch(cmd: list[str], log: Path, what: str, timeout: float, detached: bool = False,
           env: dict | None = None):
    """``spawn`` and wait for the daemon's readiness line; return both."""
    proc = spawn(cmd, log, detached, env)
    if detached:
        return proc, wait_line_in_file(proc, Path(str(log) + ".out"), timeout, what)
    return proc, read_line(proc, timeout, what)


class Server:
    """A ``vserver serve`` subprocess on its own state directory."""

    def __init__(self, state_dir: Path, *extra: str, log: Path | None = None,
                 detached: bool = False, env: dict | None = None):
        self.detached = detached
        self.spawn_env = env
        self.state_dir = Path(state_dir)
        self.extra = list(extra)
        self.log = log or self.state_dir.parent / f"{self.state_dir.name}-vserver.log"
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.tls_ca = ""                 # set: vctl and clients talk TLS, trusting this CA

    @property
    def key_file(self) -> str:
        return str(self.state_dir / "cluster.key")

    @property
    def env(self) -> dict:
        env = dict(ENV, FENCEVOL_SERVER=self.address, FENCEVOL_KEY_FILE=self.key_file)
        return env | ({"FENCEVOL_TLS_CA": self.tls_ca} if self.tls_ca else {})

    def start(self, listen: str | None = None, wait: bool = True) -> "Server":
        """``wait``: for its readiness line (an HA standby prints it only once elected)."""
        listen = listen or (self.address or "127.0.0.1:0")
        self._close_pipe()
        if not wait:
            self.proc = spawn([str(VENV_BIN / "vserver"), "serve", "--state-dir", str(self.state_dir),
                               "--listen", listen, *self.extra], self.log, self.detached,
                              self.spawn_env)
            self.address = listen
            return self
        self.proc, line = launch([str(VENV_BIN / "vserver"), "serve", "--state-dir", str(self.state_dir),
                                  "--listen", listen, *self.extra], self.log, "vserver", 20,
                                 self.detached, self.spawn_env)
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


def alive(pid: int | None) -> bool:
    """Is ``pid`` a running (not zombie) fencevol daemon -- vclient, vserver, or the
    bindfs/strace a test bed started -- and not a reused pid of another program?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:       # a zombie or a reused pid of another program does not count
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return not zombie and any(w in cmdline for w in (b"vclient", b"vserver", b"bindfs", b"strace"))


def mounted(path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def force_unmount(path) -> None:
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=10)
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


class Client:
    """A ``vclient run`` subprocess with its own mount point and control socket.
    ``stop`` always leaves no process and no mount behind."""

    def __init__(self, server: Server, node_id: int, workdir: Path, *attach: str,
                 extra: tuple[str, ...] = (), detached: bool = False, env: dict | None = None):
        self.detached = detached
        self.env = env
        self.server = server
        self.node_id = node_id
        self.mount = Path(workdir) / f"mnt{node_id}"
        self.control = str(Path(workdir) / f"vclient-{node_id}.sock")
        self.log = Path(workdir) / f"vclient-{node_id}.log"
        self.attach = list(attach)
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [str(VENV_BIN / "vclient"), "run", "--node-id", str(self.node_id),
               "--server", self.server.address, "--key-file", self.server.key_file,
               "--mount", str(self.mount), "--control", self.control, *self.extra]
        if self.server.tls_ca:
            cmd += ["--tls-ca", self.server.tls_ca]
        for a in self.attach:
            cmd += ["--attach", a]
        return cmd

    def start(self, wait: bool = True, timeout: float = 30) -> "Client":
        if not mounted(self.mount):          # a stale mount is the client's to clear
            self.mount.mkdir(exist_ok=True)
        what = f"vclient {self.node_id} (log {self.log})"
        if not wait:
            self.proc = spawn(self.command(), self.log, env=self.env)
            return self
        self.proc, line = launch(self.command(), self.log, what, timeout, self.detached, self.env)
        assert "mounted" in line, line
        return self

    def path(self, volume: str) -> Path:
        return self.mount / volume

    def status(self) -> dict:
        cp = subprocess.run([str(VENV_BIN / "vclient"), "status", "--json", "--control", self.control],
                            capture_output=True, text=True, timeout=30, env=ENV)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)

    def volume_status(self, volume: str) -> dict:
        return next(v for v in self.status()["volumes"] if v["name"] == volume)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """kill -9: the mount is left stale, as after a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def stop(self) -> int | None:
        """SIGCONT, SIGTERM, then SIGKILL; unmount. Never raises."""
        rc = None
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    try:
                        os.kill(self.proc.pid, signal.SIGCONT)
                        self.proc.terminate()
                    except ProcessLookupError:
                        pass
                    try:
                        rc = self.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(10)
                else:
                    rc = self.proc.returncode
                if self.proc.stdout and not self.proc.stdout.closed:
                    self.proc.stdout.close()
        except Exception as exc:                      # cleanup goes on regardless
            print(f"harness: stopping vclient {self.node_id}: {exc!r}", file=sys.stderr)
        force_unmount(self.mount)
        return rc


def stall(pid: int, seconds: float, log: Path) -> subprocess.Popen:
    """Hold ``pid``'s next I/O submission at syscall entry for ``seconds`` (what
    tools/fault/stall does); returns once strace is attached. Stop the returned
    process when done (it ends by itself with the stall or the tracee)."""
    proc = subprocess.Popen(["strace", "-qq", "-p", str(pid), "-e", "trace=io_submit", "-e",
                             f"inject=io_submit:delay_enter={seconds}s:when=1", "-o", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def traced():
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)

    wait_for(traced, 10, f"strace to attach to {pid}")
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll an external process's published state until ``predicate()`` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
