"""Payouts: release a round, pay every allocation exactly once, reconcile, settle
(docs/payouts.md; the payout states and the finance endpoints: docs/api.md).

Model
-----
One :class:`~claims.models.Payout` per (round, claim) — unique in the database, with an
idempotency key derived from both (:func:`payout_key`). A payout's ``rail`` follows its
network: ``ethereum`` → ``evm`` (the program's wallet pays through
:mod:`claims.payouts.rails.evm`), anything else (``tron``) → ``custodian`` (instructions for
a custodian, its confirmations imported: :mod:`claims.payouts.rails.custodian`). States move
forward only (:data:`ALLOWED`)::

    pending → signed → broadcast → confirmed | failed          (EVM rail)
    pending → exported → confirmed | failed                     (custodian rail)
    pending ⇄ held                                              (finance, or the executor when
                                                                 the claim is not payable)
    failed → pending                                            (retry: a new attempt)
    signed | broadcast → pending                                (the signed transaction was
                                                                 proven expired: a new attempt)
    broadcast → signed                                          (its batch reverted: the halves
                                                                 are signed as new attempts)

``Payout.attempt`` is the number of the payout's current (or next) attempt; every attempt
has a :class:`~claims.models.PayoutAttempt` row (the transaction or export it went out with,
the address read then, and how it ended). A payout is never created twice: a retry is a new
attempt of the same payout.

The package
-----------
- :mod:`~claims.payouts.common` — states, moves, rails, keys, who may act;
- :mod:`~claims.payouts.release` — release a round (one release at a time), hold, resume,
  retry one payout;
- :mod:`~claims.payouts.execution` — run a released round on its rails, resumable;
- :mod:`~claims.payouts.records` — what both rails record: payable now or held, attempts,
  notices;
- :mod:`~claims.payouts.reconciliation` — reconcile, mismatches, stop and restart, settle;
- :mod:`~claims.payouts.views` — totals, listings and the wallet for finance;
- :mod:`~claims.payouts.rails` — the EVM rail and its executor, the custodian rail.

This ``__init__`` re-exports the public names (``from claims import payouts;
payouts.release_round(...)``).
"""

from claims.payouts.common import (
    ACTIVE,
    ALLOWED,
    BATCH_SIZE,
    BLOCKING_FLAGS,
    EVM_NETWORKS,
    IN_FLIGHT,
    INSERT_CHUNK,
    RAIL_CUSTODIAN,
    RAIL_EVM,
    STATES,
    check_move,
    parse_payout_id,
    payout_key,
    rail_for,
    require_finance,
)
from claims.payouts.execution import (
    RoundRun,
    RunResult,
    active_counts,
    due_rounds,
    execute_in_background,
    execute_round,
    fund_in_process,
    round_pk,
    work_left,
)
from claims.payouts.rails.evm import default_rail
from claims.payouts.reconciliation import (
    maybe_settle,
    reconcile_round,
    record_mismatch,
    resolve_mismatch,
    restart_round,
    stop_round,
)
from claims.payouts.records import (
    Candidate,
    classify,
    close_attempts,
    hold_many,
    notify_outcomes,
    open_attempts,
    paid_context,
)
from claims.payouts.release import (
    RELEASE_SCOPE,
    ReleasePlan,
    finish_release,
    hold_payout,
    plan_release,
    release_once,
    release_refusal,
    release_round,
    resume_payout,
    retry_payout,
)
from claims.payouts.views import (
    get_payout,
    get_payout_view,
    list_mismatches,
    list_payouts,
    mismatch_view,
    open_mismatches,
    payout_view,
    state_totals,
    summary,
    summary_with_wallet,
    wallet_view,
)

__all__ = [
    "ACTIVE", "ALLOWED", "BATCH_SIZE", "BLOCKING_FLAGS", "EVM_NETWORKS", "INSERT_CHUNK",
    "IN_FLIGHT", "RAIL_CUSTODIAN", "RAIL_EVM", "RELEASE_SCOPE", "STATES", "Candidate",
    "ReleasePlan", "RoundRun", "RunResult", "active_counts", "check_move", "classify",
    "close_attempts", "default_rail", "due_rounds", "execute_in_background", "execute_round",
    "finish_release", "fund_in_process", "get_payout", "get_payout_view", "hold_many",
    "hold_payout", "list_mismatches", "list_payouts", "maybe_settle", "mismatch_view",
    "notify_outcomes", "open_attempts", "open_mismatches", "paid_context", "parse_payout_id",
    "payout_key", "payout_view", "plan_release", "rail_for", "reconcile_round",
    "record_mismatch", "release_once", "release_refusal", "release_round", "require_finance",
    "resolve_mismatch", "restart_round", "resume_payout", "retry_payout", "round_pk",
    "state_totals", "stop_round", "summary", "summary_with_wallet", "wallet_view", "work_left",
]
