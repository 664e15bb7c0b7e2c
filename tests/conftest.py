import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))

from harness import Server  # noqa: E402


@pytest.fixture
def server(tmp_path):
    """A running vserver on a fresh state directory; stopped even if the test fails."""
    srv = Server(tmp_path / "state")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clients(server, tmp_path):
    """Factory for vclient processes; every one is stopped and unmounted at the end."""
    started = []

    def make(node_id, *attach, extra=(), start=True, wait=True):
        from harness import Client
        c = Client(server, node_id, tmp_path, *attach, extra=extra)
        started.append(c)
        if start:
            c.start(wait=wait)
        return c

    try:
        yield make
    finally:
        for c in started:
            c.stop()
