"""tools/check end to end: short seeded runs pass (also on the hosts test bed), and
each verdict fires on a deliberately broken build or run while a control run on
the same seed passes."""

import json
import subprocess
import zlib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.fuse, pytest.mark.nft]

ROOT = Path(__file__).resolve().parents[2]


def run_check(runs: Path, *args, timeout=400):
    """tools/check with its trials under ``runs``; whatever happens, every cluster
    it left (a timeout kills it mid-trial) is taken down."""
    try:
        return subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/check.py"),
                               "--dir", str(runs), "--json", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        for state in runs.glob("seed-*/trial-*/cluster.json"):
            subprocess.run([str(ROOT / "tools/cluster"), "down", "--dir", str(state.parent)],
                           capture_output=True, timeout=120)


def results(cp) -> list[dict]:
    out = cp.stdout
    return json.loads(out[out.index("\n[") + 1:])


@pytest.mark.timeout(600)
def test_short_run_passes(tmp_path):
    cp = run_check(tmp_path / "runs", "--trials", "2", "--seed", "1", "--faults",
                   "partition,pause,kill,server-restart,partition-pause-racer,stall")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert "summary: 2/2 trials passed" in cp.stdout
    for r in results(cp):
        assert r["violations"] == [] and r["writes"] > 1000 and r["acked"] > 500, r
        assert r["takeovers"] >= 1 or r["faults"] == ["server-restart"], r


@pytest.mark.timeout(600)
def test_short_run_on_separate_hosts_passes_and_leaves_nothing(tmp_path):
    # Seed 2 draws isolate (cut off from the server and its peers: judged on disk and
    # by its lease) and then stall.
    cp = run_check(tmp_path / "runs", "--trials", "1", "--seed", "2", "--hosts", "--faults",
                   "isolate,stall", "--max-faults", "2")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    assert "on separate hosts" in cp.stdout and "summary: 1/1 trials passed" in cp.stdout
    assert results(cp)[0]["faults"] == ["isolate", "stall"]
    trial = (tmp_path / "runs" / "seed-2" / "trial-0001").resolve()
    tag = f"fv{zlib.crc32(str(trial).encode()) & 0xFFFFFF:06x}"          # tools/cluster's names
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    loops = subprocess.run(["losetup", "-l", "-n"], capture_output=True, text=True).stdout
    assert tag not in netns and tag not in links and str(tmp_path) not in loops, (netns, links, loops)


SELF_TESTS = [
    # break, seed, faults (and options), the verdict it must draw, a phrase of it
    ("no-gate", 7, ("partition",), "(a)", "fenced"),
    # A node cut off from the server but heard by its peers: only its lease stops it.
    ("no-lease", 4, ("isolate-server", "--hosts"), "(a)", "its lease (4s) had run out"),
    ("no-watchdog", 3, ("stall",), "(a)", "a write of the fenced node landed on it"),
    ("lost-ack", 5, ("partition",), "(b)", "acknowledged record"),
    ("split-brain", 6, ("partition",), "(c)", ""),
    ("dead-writer", 8, ("partition",), "(d)", "writer died"),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind,seed,faults,verdict,phrase", SELF_TESTS, ids=[t[0] for t in SELF_TESTS])
def test_checker_self_test(tmp_path, kind, seed, faults, verdict, phrase):
    """The broken run draws the verdict; the same run on a correct build passes."""
    args = ("--trials", "1", "--seed", str(seed), "--faults", *faults, "--max-faults", "1")
    control = run_check(tmp_path / "control", *args)
    assert control.returncode == 0, "control run: " + control.stdout[-3000:] + control.stderr[-1000:]
    broken = run_check(tmp_path / "broken", *args, "--self-test", kind)
    assert broken.returncode == 1, broken.stdout[-3000:] + broken.stderr[-1000:]
    found = [v for r in results(broken) for v in r["violations"] if v.startswith(verdict)]
    assert found and any(phrase in v for v in found), broken.stdout[-3000:]
    if kind == "no-gate":
        assert "replay: tools/check --seed 7 --first-trial 1" in broken.stdout
        assert list((tmp_path / "broken").glob("seed-7/trial-0001/node*.log"))   # kept for replay
