"""Outbox delivery: claim a batch of due notifications, render, send, record the outcome.

A notification is *claimed* (state ``sending``, committed) before it is sent and marked
``sent`` after, so a crash in between causes at most one resend — with the same Message-ID,
derived from the notification id — and a rerun never sends a delivered message again.
Claims older than :data:`LEASE` are taken over (the worker that held them died).
Temporary failures are retried with exponential backoff; permanent ones are recorded with
the reason. On PostgreSQL several workers take batches with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import Engine, and_, bindparam, or_, select, update

from claims.db import get_engine, is_sqlite, session_scope
from claims.models import Notification, utcnow
from claims.settings import Settings, get_settings

log = logging.getLogger("restitution.notifications")

LEASE = dt.timedelta(minutes=10)
MAX_ATTEMPTS = 8
BACKOFF_BASE = dt.timedelta(seconds=30)


def backoff(attempts: int) -> dt.timedelta:
    """30 s, 1 min, 2 min, 4 min … capped at 6 h."""
    return min(BACKOFF_BASE * (2 ** max(0, attempts - 1)), dt.timedelta(hours=6))


@dataclass
class DeliveryReport:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: "DeliveryReport") -> None:
        self.sent += other.sent
        self.retry += other.retry
        self.failed += other.failed
        self.batches += other.batches
        self.errors.extend(other.errors[:20])

    def as_dict(self) -> dict:
        return {"sent": self.sent, "retry": self.retry, "failed": self.failed, "batches": self.batches}


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_batch(engine: Engine, limit: int, *, now: dt.datetime | None = None) -> list[Notification]:
    """Take up to ``limit`` due notifications for this worker (committed before sending)."""
    now = now or utcnow()
    due = or_(
        and_(Notification.state == "pending", Notification.next_attempt_at <= now),
        and_(Notification.state == "sending", Notification.claimed_at < now - LEASE),
    )
    with session_scope(engine) as s:
        stmt = select(Notification).where(due).order_by(Notification.id).limit(limit)
        if not is_sqlite(engine):
            stmt = stmt.with_for_update(skip_locked=True)
        rows = s.execute(stmt).scalars().all()
        if not rows:
            return []
        ids = [n.id for n in rows]
        s.execute(
            update(Notification)
            .where(Notification.id.in_(ids))
            .values(state="sending", claimed_at=now, claimed_by=_worker_id(),
                    attempts=Notification.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        for n in rows:
            n.attempts += 1
        s.expunge_all()
        return rows


def _host(public_url: str) -> str:
    return urlsplit(public_url).hostname or "localhost"


def deliver_batch(engine: Engine, limit: int = 2000, *, settings: Settings | None = None,
                  transport=None) -> DeliveryReport:
    """Claim, render, send and record one batch. Returns what happened."""
    from notifications.render import render
    from notifications.transport import transport_from_settings

    settings = settings or get_settings()
    batch = claim_batch(engine, limit)
    report = DeliveryReport()
    if not batch:
        return report
    report.batches = 1
    transport = transport or transport_from_settings(settings.smtp_url, settings.maildir)
    messages, rendered, outcomes = [], [], {}
    for n in batch:
        try:
            msg = render(
                n.kind, n.language, dict(n.context or {}),
                public_url=settings.public_url, mail_from=settings.mail_from, to=n.to_email,
                notification_id=n.id, domain_for_message_id=_host(settings.public_url),
            )
        except Exception as exc:  # a message that cannot be rendered will never be
            outcomes[n.id] = ("failed", f"render: {type(exc).__name__}: {exc}")
            continue
        messages.append(msg)
        rendered.append(n)
    if messages:
        results = transport.send_many(messages)
        for n, res in zip(rendered, results):
            outcomes[n.id] = (_outcome(res), _reason(res))
    now = utcnow()
    sent_ids, others = [], []
    for n in batch:
        outcome, reason = outcomes[n.id]
        if outcome == "sent":
            sent_ids.append(n.id)
            report.sent += 1
        elif outcome == "retry" and n.attempts < MAX_ATTEMPTS:
            others.append({"b_id": n.id, "v_state": "pending", "v_next": now + backoff(n.attempts),
                           "v_error": reason})
            report.retry += 1
        else:
            others.append({"b_id": n.id, "v_state": "failed", "v_next": n.next_attempt_at,
                           "v_error": reason or "too many attempts"})
            report.failed += 1
            report.errors.append(f"notification {n.id}: {reason}")
    # Only the worker holding the claim (state still ``sending``) records the outcome.
    table = Notification.__table__
    with session_scope(engine) as s:
        conn = s.connection()
        for i in range(0, len(sent_ids), 900):
            conn.execute(
                update(table)
                .where(table.c.id.in_(sent_ids[i : i + 900]), table.c.state == "sending")
                .values(state="sent", sent_at=now, last_error=None)
            )
        if others:
            conn.execute(
                update(table)
                .where(table.c.id == bindparam("b_id"), table.c.state == "sending")
                .values(state=bindparam("v_state"), next_attempt_at=bindparam("v_next"),
                        last_error=bindparam("v_error")),
                others,
            )
    if report.failed:
        log.warning("%d notification(s) failed permanently", report.failed)
    return report


def _outcome(result) -> str:
    status = getattr(result, "status", None) or getattr(result, "outcome", None)
    status = getattr(status, "value", status)
    if status in ("delivered", "sent", "ok"):
        return "sent"
    if status in ("temporary", "retry", "temporary_failure"):
        return "retry"
    return "failed"


def _reason(result) -> str | None:
    return getattr(result, "reason", None) or getattr(result, "error", None)


def deliver_pending(engine: Engine | None = None, *, batch_size: int = 2000,
                    max_batches: int | None = None, settings: Settings | None = None,
                    transport=None) -> DeliveryReport:
    """Deliver every due notification once (``restitution notify``)."""
    engine = engine or get_engine()
    total = DeliveryReport()
    while max_batches is None or total.batches < max_batches:
        rep = deliver_batch(engine, batch_size, settings=settings, transport=transport)
        if rep.batches == 0:
            break
        total.add(rep)
    return total
