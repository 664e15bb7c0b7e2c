import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import Server  # noqa: E402


@pytest.fixture
def server(tmp_path):
    """A running vserver on a fresh state directory; stopped even if the test fails."""
    srv = Server(tmp_path / "state")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
