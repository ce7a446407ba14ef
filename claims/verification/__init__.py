"""Verification: every pending claim checked against the scheme's seized ledger.

docs/lifecycle.md ("Verification") is the rule book; this package is the only place that
implements it, and docs/operations.md says how a run is started. Pure domain: no Prefect, no
HTTP (``flows/verify.py`` orchestrates it, ``restitution verify`` starts it).

- :mod:`~claims.verification.matching` — which ledger account a claim is (the match rules);
- :mod:`~claims.verification.flags` — the flags and the clusters of duplicate claims;
- :mod:`~claims.verification.batch` — the batch steps (match, decide) and the run;
- :mod:`~claims.verification.rows` — claims read as plain rows, in chunks, locked.
"""

from claims.verification.batch import (
    APPROVE_RULE,
    BATCH_SIZE,
    add_counts,
    decide_batch,
    decide_ids,
    default_actor,
    empty_counts,
    empty_run_counts,
    id_ranges,
    id_runs,
    ids_in_runs,
    match_batch,
    match_range,
    pending_case_codes,
    pending_claim_ids,
    run_verification,
)
from claims.verification.flags import amount_differs
from claims.verification.matching import MATCH_RULES, Match, find_matches

__all__ = [
    "APPROVE_RULE",
    "BATCH_SIZE",
    "MATCH_RULES",
    "Match",
    "add_counts",
    "amount_differs",
    "decide_batch",
    "decide_ids",
    "default_actor",
    "empty_counts",
    "empty_run_counts",
    "find_matches",
    "id_ranges",
    "id_runs",
    "ids_in_runs",
    "match_batch",
    "match_range",
    "pending_case_codes",
    "pending_claim_ids",
    "run_verification",
]
