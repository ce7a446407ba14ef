"""What the flows share: batching by id ranges, the artifacts a person watches, and how a
flow is run inside the calling process.

A Prefect task run has a fixed cost and the ephemeral server tires after a few thousand of
them (docs/operations.md): flows cut their work into batches of thousands of ids, pass
``(first, last)`` id ranges or id lists to one task per batch, and return counts, never rows.
"""

from __future__ import annotations

from flows import configure_prefect

configure_prefect()

from collections.abc import Iterator, Mapping  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402
from uuid import UUID  # noqa: E402

from claims.verification import id_ranges  # noqa: E402,F401  (re-exported for every flow)

__all__ = ["Progress", "counts_rows", "id_ranges", "no_heartbeat"]


@contextmanager
def no_heartbeat() -> Iterator[None]:
    """Flow runs started inside this block (called from this process: the CLI, the bench)
    send no heartbeats.

    Heartbeats let an automation on the server mark a *deployment's* run ``Crashed`` when its
    worker dies (Prefect's "detect zombie flows"); a run called in-process has its caller
    watching and this project sets up no such automation. With heartbeats on (Prefect's
    default), every flow run ends by joining the heartbeat thread, which sleeps in steps of a
    second: a short run would wait longer for it than it works. The environment
    cannot turn them off (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` must be an integer ≥ 30);
    Prefect's settings context can. Runs of deployments (``restitution worker``) keep them.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class Progress:
    """A Prefect progress artifact (0–100 %) kept up to date while a flow runs.

    Create it inside a flow run; ``update(done, total)`` after every batch. The artifact is
    a convenience for whoever watches the UI: if Prefect refuses it, the flow goes on.
    """

    def __init__(self, key: str, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.description = description
        self.id: UUID | None = None
        self._last = -1.0
        try:
            self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        except Exception:  # pragma: no cover - a UI nicety must not fail the work
            self.id = None

    def update(self, done: int, total: int, *_: Any) -> None:
        if self.id is None or total <= 0:
            return
        from prefect.artifacts import update_progress_artifact

        pct = round(100.0 * min(done, total) / total, 1)  # a percentage, not money
        if pct == self._last:
            return
        self._last = pct
        try:
            update_progress_artifact(artifact_id=self.id, progress=pct)
        except Exception:  # pragma: no cover
            pass


def counts_rows(counts: Mapping[str, Any], *, sections: Mapping[str, str]) -> list[dict]:
    """Counts as table rows ``{"kind", "name", "claims"}`` for ``create_table_artifact``:
    plain integer counts first (kind ``outcome``), then each nested dict named in
    ``sections`` (dict key → kind), sorted by name."""
    rows = [
        {"kind": "outcome", "name": k, "claims": v}
        for k, v in counts.items()
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    for key, kind in sections.items():
        for name, n in sorted((counts.get(key) or {}).items()):
            rows.append({"kind": kind, "name": name, "claims": n})
    return rows
