"""Prefect flow ``verify_claims``: a case's pending claims verified in batches.

The rules are :mod:`claims.verification`'s; this module only orchestrates them
(docs/operations.md). The run is the one :func:`claims.verification.run_verification` drives —
match every pending claim batch by batch, then decide them batch by batch, again until no
claim of the case is ``submitted`` or ``verifying`` — with each batch step a Prefect task run
(one transaction each; ``NO_CACHE``: the database is the source of truth; one retry, safe
because a batch re-reads which of its claims are still pending). Tasks run one after the
other: SQLite has one writer, and each batch is already bulk SQL. Batches are
:data:`claims.verification.BATCH_SIZE` claims: large, because every task run has a fixed
cost in Prefect. Callers in this process run the flow inside
:func:`flows.common.no_heartbeat` (the CLI, the bench): a heartbeat thread would add waiting
to the end of every run.

While it runs, a progress artifact (``verify-CODE``) shows the share of batch steps done
(updated at most every :data:`PROGRESS_EVERY` seconds: each update is a round trip to the
Prefect server that the batches would wait for, and a person watching needs no more); at
the end a table artifact (``verify-CODE-counts``) gives the counts by outcome, match rule and
flag. :func:`run_verification` is the same run without Prefect (bench, ``--direct``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flows import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from claims import verification  # noqa: E402
from claims.db import get_engine, session_scope  # noqa: E402
from claims.verification import run_verification  # noqa: E402,F401  (the no-Prefect path)
from flows.common import Progress, counts_rows  # noqa: E402

__all__ = ["decide_claims_batch", "match_claims_batch", "run_verification", "throttled",
           "verify_claims"]

SECTIONS = {"match_rules": "match rule", "flags": "flag"}
# Seconds between two updates of the progress artifact (the last step is always shown).
PROGRESS_EVERY = 5.0


def throttled(update: Callable[..., None], every: float = PROGRESS_EVERY) -> Callable[..., None]:
    """``update(done, total, …)`` passed on at most once per ``every`` seconds, and always
    when ``done == total``."""
    last = [float("-inf")]

    def on_progress(done: int, total: int, *rest) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every:
            last[0] = now
            update(done, total, *rest)

    return on_progress


@task(name="verify-match-batch", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def match_claims_batch(case_id: int, lo: int, hi: int) -> dict:
    """Step 1 on the case's pending claims with ids ``lo..hi``; the counts carry their ``ids``."""
    with session_scope(get_engine()) as session:
        return verification.match_range(session, case_id, lo, hi)


@task(name="verify-decide-batch", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def decide_claims_batch(case_id: int, runs: list[tuple[int, int]]) -> dict:
    """Step 2 on the claims matched by one step-1 batch, given as runs of consecutive ids
    (:func:`claims.verification.id_runs`): Prefect inspects every element of a task's
    parameters, which for a batch's list of ids costs more than the task run itself."""
    with session_scope(get_engine()) as session:
        return verification.decide_ids(session, case_id, verification.ids_in_runs(runs))


def _decide(case_id: int, ids: list[int]) -> dict:
    return decide_claims_batch(case_id, verification.id_runs(ids))


@flow(name="verify-claims", log_prints=False)
def verify_claims(case_code: str, batch_size: int = verification.BATCH_SIZE) -> dict:
    """Verify every pending claim of case ``case_code``; returns the counts (see
    :func:`claims.verification.empty_counts`, plus ``batches`` and ``rounds``)."""
    progress = Progress(
        key=f"verify-{case_code}", description=f"Verification of case {case_code}: batch steps done"
    )
    counts = verification.run_verification(
        case_code,
        batch_size=batch_size,
        match=match_claims_batch,
        decide=_decide,
        on_progress=throttled(progress.update),
    )
    progress.update(1, 1)
    create_table_artifact(
        table=counts_rows(counts, sections=SECTIONS),
        key=f"verify-{case_code}-counts",
        description=(
            f"Verification of case {case_code}: {counts['verified']} claims verified, "
            f"{counts['approved']} approved by rule, {counts['flagged']} flagged for review"
        ),
    )
    return counts
