"""The notification outbox: rows written in the same transaction as the state change they
announce. Delivery (rendering, SMTP/Maildir) lives in ``notifications/``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlmodel import Session

from claims.audit import bind_value, bulk_insert, jsonable
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
    """Queue notifications (claim, kind, context, to_email or None for the claim's email).

    ``claim`` is anything with the claim's ``id``, ``reference``, ``language`` and ``email``
    (a model object or a plain row)."""
    return enqueue_texts(session, [
        (claim, kind, json.dumps({"reference": claim.reference, **jsonable(context or {})}),
         to_email)
        for claim, kind, context, to_email in items
    ])


def enqueue_texts(session: Session, items: Iterable[tuple[Claim, str, str, str | None]]) -> int:
    """:func:`enqueue_many` with each context already as JSON text — the text
    :func:`context_text` gives (hot paths build it without the generic conversion)."""
    return enqueue_rows(session, [
        (claim.id, kind, claim.language, to_email or claim.email, context)
        for claim, kind, context, to_email in items
    ])


def enqueue_rows(session: Session, items: Iterable[tuple[int, str, str, str, str]]) -> int:
    """:func:`enqueue_texts` with each notification as ``(claim_id, kind, language,
    to_email, context_text)`` (hot paths that hold the claim's values, not a claim)."""
    now = bind_value(session, Notification.__table__.c.created_at, utcnow())
    rows = []
    for claim_id, kind, language, to_email, context in items:
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        rows.append((claim_id, kind, language, to_email, context, "pending", 0, now, now))
    bulk_insert(session, Notification.__table__, _COLUMNS, rows)
    return len(rows)


def context_text(reference: str, context: dict) -> str:
    """The stored context of a notification: the claim's reference, then ``context``
    (JSON-native values), as JSON text."""
    return json.dumps({"reference": reference, **context})


_COLUMNS = ("claim_id", "kind", "language", "to_email", "context", "state", "attempts",
            "next_attempt_at", "created_at")
