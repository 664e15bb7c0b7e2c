"""Start and stop real fencevol processes: await their readiness lines, always
clean up. Used by the tests, tools/bench and tools/cluster."""

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
                 detached: bool = False):
        self.detached = detached
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

    def start(self, listen: str | None = None) -> "Server":
        listen = listen or (self.address or "127.0.0.1:0")
        self._close_pipe()
        self.proc, line = launch([str(VENV_BIN / "vserver"), "serve", "--state-dir", str(self.state_dir),
                                  "--listen", listen, *self.extra], self.log, "vserver", 20,
                                 self.detached)
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


def attach_loop(image, direct_io: bool = False) -> str:
    """A new loop device over ``image`` (``losetup -f``); detach it with
    ``detach_loop``. Two loop devices over one image behave like two hosts on one
    SAN LUN: each has its own page cache."""
    cmd = ["losetup", "-f", "--show"] + (["--direct-io=on"] if direct_io else []) + [str(image)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise RuntimeError(f"losetup {image}: {cp.stderr.strip()}")
    return cp.stdout.strip()


def detach_loop(dev: str) -> None:
    subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)


def loops_over(prefix: str) -> list[str]:
    """Loop devices whose backing file lies under ``prefix``."""
    cp = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True,
                        text=True, timeout=30)
    out = []
    for line in cp.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(prefix):
            out.append(parts[0])
    return out


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


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ports that were free a moment ago (the kernel picks; small race accepted)."""
    import socket
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class Nft:
    """One nftables table of drop rules on loopback UDP ports; ``remove`` deletes
    the whole table (idempotent), so nothing is left behind."""

    def __init__(self, table: str):
        self.table = table
        self.created = False

    def _nft(self, *args: str) -> None:
        cp = subprocess.run(["nft", *args], capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)}: {cp.stderr.strip()}")

    def _ensure(self) -> None:
        if not self.created:
            self._nft("add", "table", "inet", self.table)
            self._nft("add", "chain", "inet", self.table, "input",
                      "{ type filter hook input priority 0; policy accept; }")
            self.created = True

    def drop_between(self, ports_a, ports_b) -> None:
        """Drop UDP both ways between any port of ``ports_a`` and any of ``ports_b``,
        both directions in one nft transaction (the cut is instantaneous)."""
        self._ensure()
        a = "{ " + ", ".join(str(p) for p in ports_a) + " }"
        b = "{ " + ", ".join(str(p) for p in ports_b) + " }"
        script = (f"add rule inet {self.table} input udp sport {a} udp dport {b} drop\n"
                  f"add rule inet {self.table} input udp sport {b} udp dport {a} drop\n")
        cp = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"nft: {cp.stderr.strip()}")

    def drop_from(self, ports_a, ports_b) -> None:
        """Drop UDP from any port of ``ports_a`` to any of ``ports_b`` only (a
        one-way cut: B no longer hears A, A still hears B)."""
        self._ensure()
        a = "{ " + ", ".join(str(p) for p in ports_a) + " }"
        b = "{ " + ", ".join(str(p) for p in ports_b) + " }"
        self._nft("add", "rule", "inet", self.table, "input", "udp", "sport", a, "udp", "dport", b, "drop")

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10)
        self.created = False


class Cluster:
    """A server, a disk group with data volumes and a coordinator, and ``n`` cluster
    nodes on one machine (heartbeats on loopback, ``links`` links per node)."""

    def __init__(self, workdir: Path, n: int, cluster_id: str = "fvtest", links: int = 1,
                 volumes: tuple[tuple[str, str, tuple[str, ...]], ...] = (("data", "32M", ()),),
                 server_args: tuple[str, ...] = (), node_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.n = n
        self.cluster_id = cluster_id
        self.links = links
        self.volumes = volumes
        self.server = Server(self.workdir / "state", *server_args)
        self.node_args = list(node_args)
        self.ports = {i: free_udp_ports(links) for i in range(1, n + 1)}
        self.nodes: dict[int, Client] = {}
        self.nft = Nft(f"fencevol_{os.getpid()}_{id(self) % 100000}")
        self.disks: list[str] = []

    def hosts(self, link: int) -> str:
        return f"127.0.0.{link + 1}"

    def setup(self, disks: int = 2, disk_size: str = "128M") -> "Cluster":
        self.server.start()
        for i in range(disks):
            p = str(self.workdir / f"disk{i}.img")
            vctl(self.server, "disk", "init", p, "--size", disk_size)
            self.disks.append(p)
        vctl(self.server, "dg", "create", "dg", *self.disks)
        for name, size, args in self.volumes:
            vctl(self.server, "vol", "create", "dg", name, size, *args)
        vctl(self.server, "coord", "create", "dg", "coord", "--cluster-id", self.cluster_id,
             "--nodes", ",".join(str(i) for i in range(1, self.n + 1)))
        return self

    def node_command_args(self, i: int) -> list[str]:
        args = ["--cluster-id", self.cluster_id, "--coordinator", "dg/coord"]
        for link, port in enumerate(self.ports[i]):
            args += ["--heartbeat", f"{self.hosts(link)}:{port}"]
        for j in range(1, self.n + 1):
            if j != i:
                args += ["--peer", f"{j}=" + ",".join(f"{self.hosts(link)}:{p}"
                                                       for link, p in enumerate(self.ports[j]))]
        return args + self.node_args

    def credential(self, i: int) -> str:
        """Node i's own credential (`vctl key issue`): cluster nodes never hold the
        cluster key here, as in a deployment that follows docs/SECURITY.md."""
        path = self.workdir / f"node{i}.cred"
        if not path.exists():
            vctl(self.server, "key", "issue", str(i), "--peers",
                 ",".join(str(j) for j in range(1, self.n + 1)), "--out", str(path))
        return str(path)

    def client(self, i: int, *attach: str, extra: tuple[str, ...] = (),
               env: dict | None = None) -> Client:
        c = Client(self.server, i, self.workdir, *attach,
                   extra=("--key-file", self.credential(i), *self.node_command_args(i), *extra),
                   env=env)
        self.nodes[i] = c
        return c

    def start(self, i: int, *attach: str, extra: tuple[str, ...] = (), wait: bool = True,
              env: dict | None = None) -> Client:
        return self.client(i, *attach, extra=extra, env=env).start(wait=wait)

    def partition(self, side_a, side_b) -> None:
        """Cut every heartbeat link between the nodes of ``side_a`` and ``side_b``."""
        pa = [p for i in side_a for p in self.ports[i]]
        pb = [p for i in side_b for p in self.ports[i]]
        self.nft.drop_between(pa, pb)

    def heal(self) -> None:
        self.nft.remove()

    def cluster_state(self, i: int) -> dict:
        return self.nodes[i].status()["cluster"]

    def stop(self) -> None:
        """Remove the nft table, stop every node (continuing stopped ones first) and
        the server. Each step runs even if an earlier one failed."""
        try:
            self.heal()
        finally:
            for c in self.nodes.values():
                c.stop()
            try:
                self.server.stop()
            except Exception as exc:
                print(f"harness: stopping vserver: {exc!r}", file=sys.stderr)


def partition_resolved(clusters: dict) -> list | None:
    """Given each node's ``cluster`` status (keyed by node id, int or str): the
    member nodes once a partition is resolved -- every node a member or ejected, some
    but not all ejected, and every member's view listing exactly the members --
    else None."""
    states = {n: (c or {}).get("state") for n, c in clusters.items()}
    if any(s not in ("member", "ejected") for s in states.values()):
        return None
    members = sorted((n for n, s in states.items() if s == "member"), key=int)
    if not members or len(members) == len(states):
        return None
    want = sorted(int(n) for n in members)
    return members if all(sorted(clusters[n].get("members", [])) == want for n in members) else None


def parse_writer_log(path: Path) -> list[tuple]:
    """tools/writer.py's log: (time, seq, slot, outcome, errno or issue time), with
    outcome "ok", "err", "acked" or "fsync-err" (seq and slot -1: an fsync failed,
    the writes since the last good one are not acknowledged)."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        p = line.split()
        if len(p) >= 4 and p[1].isdigit():
            extra = p[4] if len(p) > 4 else "0"
            out.append((float(p[0]), int(p[1]), int(p[2]), p[3],
                        float(extra) if p[3] == "ok" else int(extra)))
        elif len(p) == 5 and p[3] == "fsync-err":
            out.append((float(p[0]), -1, -1, "fsync-err", int(p[4])))
    return out


class WriterProc:
    """tools/writer.py as a subprocess, and its log parsed."""

    def __init__(self, file, node: int, slots: str, log: Path, control: str | None = None,
                 interval: float = 0.01, fsync_every: int = 0):
        self.log = Path(log)
        cmd = [sys.executable, str(Path(__file__).parent / "writer.py"), "--file", str(file),
               "--node", str(node), "--slots", slots, "--log", str(log),
               "--interval", str(interval), "--fsync-every", str(fsync_every)]
        if control:
            cmd += ["--control", control]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def entries(self) -> list[tuple]:
        """(time, seq, slot, outcome, errno) per line ("ok", "err" or "acked")."""
        return parse_writer_log(self.log)

    def oks_after(self, t: float) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "ok" and e[0] >= t]

    def fsync_errors(self) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "fsync-err"]

    def errors_after(self, t: float) -> list[tuple]:
        return [e for e in self.entries() if e[3] == "err" and e[0] >= t]

    def stop(self, timeout: float = 30) -> bool:
        """TERM, then KILL; never raises. False if the process is still there (it is
        blocked on a stopped FUSE daemon: continue or stop that daemon first)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    return False
        if self.proc.stderr and not self.proc.stderr.closed:
            self.proc.stderr.close()
        return True


def extent_map_from_show(show: dict):
    """A volume's ExtentMap rebuilt from ``vctl vol show --json`` (disk paths as the
    server knows them), for reading backing images directly."""
    from fencevol.extents import ExtentMap
    disks, index, plexes = [], {}, []
    for p in show["plexes"]:
        cols = []
        for c in p["columns"]:
            col = []
            for sd in c["subdisks"]:
                if sd["disk_id"] not in index:
                    index[sd["disk_id"]] = len(disks)
                    disks.append({"id": sd["disk_id"], "path": sd["path"], "name": sd["disk"]})
                col.append([index[sd["disk_id"]], sd["disk_offset"], sd["length"]])
            cols.append(col)
        plexes.append(cols)
    return ExtentMap({"size": show["size"], "stripe_unit": show["stripe_unit"],
                      "plexes": plexes, "disks": disks})


def read_backing(emap, plex: int, offset: int, length: int) -> bytes:
    """Read a volume range of one plex straight from the backing images."""
    out = bytearray(length)
    for disk, doff, boff, n in emap.plexes[plex].segments(offset, length):
        with open(emap.disks[disk].path, "rb") as f:
            f.seek(doff)
            out[boff:boff + n] = f.read(n)
    return bytes(out)


# -- TLS test certificates (openssl CLI) -----------------------------------------------------
def make_ca(d, name: str) -> str:
    """A throw-away CA in directory ``d``; returns its certificate's path."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem", "-days", "2",
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    return f"{d}/{name}.pem"


def make_server_cert(d, ca: str) -> tuple[str, str]:
    """A server certificate for 127.0.0.1/localhost signed by CA ``ca`` (made by
    make_ca in ``d``); returns (certificate, key) paths."""
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/srv.key", "-out", f"{d}/srv.csr", "-subj", "/CN=vserver"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", f"{d}/srv.csr", "-CA", f"{d}/{ca}.pem",
                    "-CAkey", f"{d}/{ca}.key", "-CAcreateserial", "-out", f"{d}/srv.pem", "-days", "2",
                    "-extfile", f"{d}/ext"], check=True, capture_output=True)
    return f"{d}/srv.pem", f"{d}/srv.key"
