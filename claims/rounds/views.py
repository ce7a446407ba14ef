"""What a round shows: its JSON for staff (docs/api.md, "Rounds"), its plan CSV (docs/formats.md,
"A round's plan") and the ``allocated`` notices its victims get."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from claims import outbox
from claims.allocation import PLAN_COLUMNS
from claims.cases import get_case_by_code
from claims.models import Allocation, Case, Claim, DistributionRound, StaffUser
from claims.money import format_amount, format_rate, parse_rate, rate_percent
from claims.rounds.store import INSERT_BATCH, get_round

#: Columns of a stored round's CSV: the Plan CSV output columns first, then extras.
ROUND_CSV_COLUMNS = (*PLAN_COLUMNS, "paid_before", "released")


# ------------------------------------------------------------------ staff views


def round_view(rnd: DistributionRound, *, case_code: str | None = None,
               prepared_by: str | None = None, approved_by: str | None = None) -> dict[str, Any]:
    """The round's JSON (``id, status, pool, rate, allocated, reserved, released,
    undistributed, claims``) plus extras. ``claims`` counts the round's allocation rows: the
    payable claims it was prepared over (net winners and de minimis removals included)."""
    rate = parse_rate(rnd.rate)
    return {
        "id": str(rnd.id),
        "status": rnd.status,
        "pool": format_amount(rnd.pool),
        "rate": format_rate(rate),
        "allocated": format_amount(rnd.allocated),
        "reserved": format_amount(rnd.reserved),
        "released": format_amount(rnd.released),
        "undistributed": format_amount(rnd.undistributed),
        "claims": rnd.claims_count,
        "case_id": case_code,
        "number": rnd.number,
        "method": rnd.method,
        "min_payout": format_amount(rnd.min_payout),
        "rate_exact": rnd.rate,
        "rate_percent": rate_percent(rate),
        "prepared_by": prepared_by,
        "approved_by": approved_by,
        "prepared_at": rnd.prepared_at.isoformat() if rnd.prepared_at else None,
        "approved_at": rnd.approved_at.isoformat() if rnd.approved_at else None,
        "released_at": rnd.released_at.isoformat() if rnd.released_at else None,
        "stopped_reason": rnd.stopped_reason,
    }


def _views(session: Session, rounds: Sequence[DistributionRound]) -> list[dict[str, Any]]:
    staff_ids = {i for r in rounds for i in (r.prepared_by, r.approved_by) if i is not None}
    names = dict(session.execute(
        select(StaffUser.id, StaffUser.username).where(StaffUser.id.in_(staff_ids))
    ).all()) if staff_ids else {}
    case_ids = {r.case_id for r in rounds}
    codes = dict(session.execute(
        select(Case.id, Case.code).where(Case.id.in_(case_ids))
    ).all()) if case_ids else {}
    return [
        round_view(r, case_code=codes.get(r.case_id), prepared_by=names.get(r.prepared_by),
                   approved_by=names.get(r.approved_by))
        for r in rounds
    ]


def view(session: Session, rnd: DistributionRound) -> dict[str, Any]:
    """:func:`round_view` of one round, with its case's code and its staff members' names."""
    return _views(session, [rnd])[0]


def get_round_view(session: Session, round_id: object) -> dict[str, Any]:
    """:func:`view` of the round ``round_id`` (``NotFound`` if none)."""
    return view(session, get_round(session, round_id))


def list_rounds(session: Session, case_code: str) -> list[dict[str, Any]]:
    """Every round of the case (stale attempts included), by number then id."""
    case = get_case_by_code(session, case_code)
    rounds = session.execute(
        select(DistributionRound).where(DistributionRound.case_id == case.id)
        .order_by(DistributionRound.number, DistributionRound.id)
    ).scalars().all()
    return _views(session, rounds)


def recent_rounds(session: Session, statuses: Sequence[str] | None = None, *,
                  limit: int = 500) -> list[dict[str, Any]]:
    """The latest rounds of every case (newest first, at most ``limit``; only ``statuses``
    when given) as :func:`view` shows them."""
    stmt = select(DistributionRound).order_by(DistributionRound.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(DistributionRound.status.in_(statuses))
    return _views(session, session.execute(stmt).scalars().all())


# ------------------------------------------------------------------ the plan CSV


def plan_csv_rows(session: Session, round_id: object,
                  chunk: int = INSERT_BATCH) -> Iterator[dict[str, str]]:
    """The round's plan lines (``ROUND_CSV_COLUMNS``: the Plan CSV output columns of
    :data:`claims.allocation.PLAN_COLUMNS`, then ``paid_before`` and ``released``) in claim
    order, ``claim_id`` = the claim's reference, amounts as decimal strings. For a freshly
    prepared round the Plan columns equal :func:`claims.allocation.plan_rows` of the same
    solve."""
    rnd = get_round(session, round_id)
    fmt = format_amount
    last = 0
    while True:
        rows = session.execute(
            select(Allocation.claim_id, Claim.reference, Allocation.net_loss, Allocation.amount,
                   Allocation.reserved, Allocation.excluded, Allocation.paid_before,
                   Allocation.released)
            .join(Claim, Claim.id == Allocation.claim_id)
            .where(Allocation.round_id == rnd.id, Allocation.claim_id > last)
            .order_by(Allocation.claim_id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        for cid, ref, loss, amount, reserved, excluded, pb, released in rows:
            yield {
                "claim_id": ref,
                "net_loss": fmt(loss),
                "allocation": fmt(amount),
                "reserved": fmt(reserved),
                "excluded": excluded or "",
                "paid_before": fmt(pb),
                "released": fmt(released),
            }
        last = rows[-1][0]


def plan_csv_text(session: Session, round_id: object) -> str:
    """The round's plan as CSV text (header ``ROUND_CSV_COLUMNS``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROUND_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(plan_csv_rows(session, round_id))
    return buf.getvalue()


# ------------------------------------------------------------------ notices


def notify_allocated(session: Session, rnd: DistributionRound,
                     claim_ids: Sequence[int] | None = None) -> int:
    """Queue the ``allocated`` notice (amount, the round's rate in percent, round number) for
    the round's claims with a positive allocation (or for ``claim_ids`` only), in batches;
    returns how many."""
    percent = rate_percent(parse_rate(rnd.rate))
    stmt = (
        select(Claim.id, Claim.reference, Claim.language, Claim.email, Allocation.amount)
        .join(Allocation, Allocation.claim_id == Claim.id)
        .where(Allocation.round_id == rnd.id, Allocation.amount > 0)
        .order_by(Claim.id)
    )
    if claim_ids is not None:
        stmt = stmt.where(Claim.id.in_(list(claim_ids)))
    sent = 0
    result = session.execute(stmt)
    while batch := result.fetchmany(INSERT_BATCH):
        sent += outbox.enqueue_batch(session, [
            (row, "allocated", {"amount": format_amount(row.amount), "rate_percent": percent,
                                "round": rnd.number}, None)
            for row in batch
        ])
    return sent
