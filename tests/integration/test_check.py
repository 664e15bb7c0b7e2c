"""tools/check end to end: short seeded runs pass (also on the hosts test bed), and
the checker catches a node whose fence gate is disabled and a node without a
watchdog whose stalled write lands on a takeover (the self-test switches)."""

import subprocess
import zlib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.fuse, pytest.mark.nft]

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path, *args, timeout=600):
    return subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/check.py"),
                           "--dir", str(tmp_path / "runs"), *args],
                          capture_output=True, text=True, timeout=timeout)


def rows(stdout: str, n: int) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip().split(" ")[0] in map(str, range(1, n + 1))]


@pytest.mark.timeout(600)
def test_short_run_passes(tmp_path):
    cp = run_check(tmp_path, "--trials", "2", "--seed", "1", "--faults",
                   "partition,pause,kill,server-restart,partition-pause-racer,stall")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert "summary: 2/2 trials passed" in cp.stdout
    assert len(rows(cp.stdout, 2)) == 2 and all(" ok " in r for r in rows(cp.stdout, 2))
    assert " 0 takeovers" not in cp.stdout, cp.stdout[-2000:]


@pytest.mark.timeout(600)
def test_short_run_on_separate_hosts_passes_and_leaves_nothing(tmp_path):
    cp = run_check(tmp_path, "--trials", "1", "--seed", "2", "--hosts", "--faults", "partition,stall")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert "on separate hosts" in cp.stdout and "summary: 1/1 trials passed" in cp.stdout
    trial = (tmp_path / "runs" / "seed-2" / "trial-0001").resolve()
    tag = f"fv{zlib.crc32(str(trial).encode()) & 0xFFFFFF:06x}"          # tools/cluster's names
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    loops = subprocess.run(["losetup", "-l", "-n"], capture_output=True, text=True).stdout
    assert tag not in netns and tag not in links and str(tmp_path) not in loops, (netns, links, loops)


@pytest.mark.timeout(600)
def test_checker_catches_a_disabled_gate(tmp_path):
    cp = run_check(tmp_path, "--trials", "1", "--seed", "7", "--faults", "partition",
                   "--max-faults", "1", "--disable-gate-for-self-test")
    assert cp.returncode == 1, cp.stdout[-3000:]
    assert "VIOLATION" in cp.stdout and "(a)" in cp.stdout, cp.stdout[-3000:]
    assert "replay: tools/check --seed 7 --first-trial 1" in cp.stdout
    assert list((tmp_path / "runs").glob("seed-7/trial-0001/node*.log"))   # kept for replay


@pytest.mark.timeout(600)
def test_checker_catches_a_stalled_write_without_watchdog(tmp_path):
    """The issue's first case: a node stalls right after its gate admitted a write;
    without the watchdog the write lands on the survivor's takeover."""
    cp = run_check(tmp_path, "--trials", "1", "--seed", "3", "--faults", "stall",
                   "--max-faults", "1", "--disable-watchdog-for-self-test")
    assert cp.returncode == 1, cp.stdout[-3000:]
    assert "a write of the fenced node landed on it" in cp.stdout, cp.stdout[-3000:]
