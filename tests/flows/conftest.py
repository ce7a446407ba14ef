"""Flow tests: ONE Prefect test server for the whole session, opt-in.

A test that runs a flow under Prefect asks for the ``prefect_harness`` fixture; the first one
starts ``prefect_test_harness`` (a temporary server on a throw-away SQLite database, ≈ 10 s),
every later one reuses it. Tests that only exercise logic call the plain functions or
``task.fn()`` and never pay for the server. Keep flow tests few.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `.venv/bin/pytest` (unlike `python -m pytest`) leaves the project root off sys.path, and then
# this very directory (tests/flows, no __init__.py) would be imported as a namespace package
# `flows`, shadowing the real one. A regular package anywhere on sys.path wins over that.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)


@pytest.fixture(scope="session")
def prefect_harness():
    from flows import configure_prefect

    configure_prefect()
    from prefect.testing.utilities import prefect_test_harness

    # A fresh server migrates a new database on start: allow more than the default 30 s on
    # a loaded 2-core machine.
    with prefect_test_harness(server_startup_timeout=180):
        yield
