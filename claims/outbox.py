"""The notification outbox: rows written in the same transaction as the state change they
announce. Delivery (rendering, SMTP/Maildir) lives in ``notifications/``.

:func:`enqueue` queues one notice, :func:`enqueue_batch` many (one bulk insert)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlmodel import Session

from claims.audit import json_default
from claims.db.bulk import bind_value, bulk_insert
from claims.models import Notification, utcnow

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


class Recipient(NamedTuple):
    """Whom a notice is about and goes to: what :func:`enqueue_batch` reads of a claim, for
    callers that hold the claim's values rather than the claim."""

    id: int
    reference: str
    language: str
    email: str


def enqueue(
    session: Session,
    claim: Any,
    kind: str,
    context: dict | None = None,
    *,
    to_email: str | None = None,
) -> None:
    """Queue one notice of ``kind`` about ``claim`` (see :func:`enqueue_batch`)."""
    enqueue_batch(session, [(claim, kind, context, to_email)])


def enqueue_batch(
    session: Session, items: Iterable[tuple[Any, str, dict | None, str | None]]
) -> int:
    """Queue notices ``(claim, kind, context, to_email)``; returns how many.

    ``claim`` is anything with the claim's ``id``, ``reference``, ``language`` and ``email``
    (a model object, a plain row, a :class:`Recipient`); ``to_email`` ``None`` sends to the
    claim's email. The stored context is the claim's reference, then ``context``."""
    now = bind_value(session, Notification.__table__.c.created_at, utcnow())
    rows = []
    for claim, kind, context, to_email in items:
        if kind not in KINDS:
            raise ValueError(f"unknown notification kind {kind!r}")
        text = _encode({"reference": claim.reference, **context} if context
                       else {"reference": claim.reference})
        rows.append((claim.id, kind, claim.language, to_email or claim.email, text,
                     "pending", 0, now, now))
    bulk_insert(session, Notification.__table__, _COLUMNS, rows)
    return len(rows)


_encode = json.JSONEncoder(default=json_default).encode
_COLUMNS = ("claim_id", "kind", "language", "to_email", "context", "state", "attempts",
            "next_attempt_at", "created_at")
