"""Prefect flows over ``claims/``: thin orchestration, one task per batch of claims.

Prefect reads its settings from the environment when it is imported, so every module of this
package calls :func:`configure_prefect` at import time *before* ``import prefect``, and the CLI
calls it before it imports a flow module. This module itself never imports Prefect.
"""

from __future__ import annotations

import os

# What the project's embedded defaults need from Prefect (docs/configuration.md).
# ``setdefault``: a user's own settings (environment) always win.
_DEFAULTS = {
    # The ephemeral server's first start migrates a fresh SQLite database: give it time.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # Our database is the source of truth; Prefect keeps no results (and so no caches).
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def configure_prefect() -> None:
    """Set Prefect's environment defaults for this project (idempotent, cheap).

    ``PREFECT_HOME`` goes under ``./var/prefect`` of the working directory (beside the
    generated keys and the default database); telemetry is off; the ephemeral server gets
    time to migrate its fresh database on a first start; logging defaults to WARNING; results
    are not persisted.
    """
    if "PREFECT_HOME" not in os.environ:
        from claims.settings import var_dir

        os.environ["PREFECT_HOME"] = str(var_dir() / "prefect")
    for name, value in _DEFAULTS.items():
        os.environ.setdefault(name, value)
