"""tools/check end to end: a short seeded run passes, and the checker catches a
node whose fence gate is disabled (the self-test switch)."""

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.fuse, pytest.mark.nft]

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path, *args, timeout=600):
    return subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/check.py"),
                           "--dir", str(tmp_path / "runs"), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_short_run_passes(tmp_path):
    cp = run_check(tmp_path, "--trials", "2", "--seed", "1", "--faults",
                   "partition,pause,kill,server-restart,partition-pause-racer")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert "summary: 2/2 trials passed" in cp.stdout
    rows = [line for line in cp.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert len(rows) == 2 and all(" ok " in r for r in rows)


@pytest.mark.timeout(600)
def test_checker_catches_a_disabled_gate(tmp_path):
    cp = run_check(tmp_path, "--trials", "1", "--seed", "7", "--faults", "partition",
                   "--max-faults", "1", "--disable-gate-for-self-test")
    assert cp.returncode == 1, cp.stdout[-3000:]
    assert "VIOLATION" in cp.stdout and "(a)" in cp.stdout, cp.stdout[-3000:]
    assert "replay: tools/check --seed 7 --first-trial 1" in cp.stdout
    assert list((tmp_path / "runs").glob("seed-7/trial-0001/node*.log"))   # kept for replay
