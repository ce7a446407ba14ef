"""The notification outbox: rows written in the same transaction as the state change they
announce. Delivery (rendering, SMTP/Maildir) lives in ``notifications/``."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import insert
from sqlmodel import Session

from claims.audit import jsonable
from claims.models import Claim, Notification, utcnow

KINDS = (
    "received",
    "needs_info",
    "approved",
    "rejected",
    "dispute_received",
    "dispute_settled",
    "address_change_requested",
    "address_changed",
    "allocated",
    "paid",
    "failed",
    "token_reset",
)


def enqueue(
    session: Session,
    claim: Claim,
    kind: str,
    context: dict | None = None,
    *,
    to_email: str | None = None,
) -> None:
    enqueue_many(session, [(claim, kind, context or {}, to_email)])


def enqueue_many(
    session: Session, items: Iterable[tuple[Claim, str, dict, str | None]]
) -> int:
    """Queue notifications (claim, kind, context, to_email or None for the claim's email)."""
    now = utcnow()
    rows = []
    for claim, kind, context, to_email in items:
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        ctx = {"reference": claim.reference, **jsonable(context or {})}
        rows.append(
            {
                "claim_id": claim.id,
                "kind": kind,
                "language": claim.language,
                "to_email": to_email or claim.email,
                "context": ctx,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    if rows:
        session.connection().execute(insert(Notification.__table__), rows)
    return len(rows)
