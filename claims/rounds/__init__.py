"""Distribution rounds over the database: prepare, approve, disputes settled, read models.

The plan itself is :mod:`claims.allocation`'s (docs/allocation.md); this package feeds it the
case's claims, stores the result as a snapshot, and keeps every round's money balanced
(docs/allocation.md, "Round money")::

    allocated + reserved + released + undistributed == pool

- :mod:`~claims.rounds.prepare` — :func:`preview_round` and :func:`prepare_round` (caseworker):
  the case's payable claims, solved and stored in bulk;
- :mod:`~claims.rounds.approve` — :func:`approve_round`: four eyes
  (:func:`approval_refusal`) and the snapshot check (:func:`snapshot_problems`);
- :mod:`~claims.rounds.settle` — :func:`on_dispute_settled`: a settled dispute's reserves
  become allocated or released;
- :mod:`~claims.rounds.views` — the round's JSON, its plan CSV and the ``allocated`` notices;
- :mod:`~claims.rounds.store` — the counting statuses, the money invariant, a round by id.

Every change writes its audit event in the caller's transaction; the money invariant is
checked before anything is written (:class:`RoundInvariantError`). Nothing here knows HTTP,
the terminal or Prefect.
"""

from claims.rounds.approve import approval_refusal, approve_round, snapshot_problems
from claims.rounds.prepare import (
    claim_amounts,
    prepare_round,
    prepare_round_committed,
    preview_round,
    validate_request,
)
from claims.rounds.settle import on_dispute_settled
from claims.rounds.store import (
    COUNTING,
    RoundInvariantError,
    check_invariant,
    get_round,
    parse_round_id,
)
from claims.rounds.views import (
    ROUND_CSV_COLUMNS,
    get_round_view,
    list_rounds,
    plan_csv_rows,
    plan_csv_text,
    recent_rounds,
    round_view,
    view,
)

__all__ = [
    "COUNTING", "ROUND_CSV_COLUMNS", "RoundInvariantError", "approval_refusal", "approve_round",
    "check_invariant", "claim_amounts", "get_round", "get_round_view", "list_rounds",
    "on_dispute_settled", "parse_round_id", "plan_csv_rows", "plan_csv_text", "prepare_round",
    "prepare_round_committed", "preview_round", "recent_rounds", "round_view",
    "snapshot_problems", "validate_request", "view",
]
