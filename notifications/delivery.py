"""Outbox delivery: claim a batch of due notifications, render, send, record the outcome.

A notification is *claimed* (state ``sending``, committed) before it is sent and marked
``sent`` after, so a crash in between causes at most one resend — with the same Message-ID,
derived from the notification id — and a rerun never sends a delivered message again.
Claims older than :data:`LEASE` are taken over (the worker that held them died).
Temporary failures are retried with exponential backoff; permanent ones are recorded with
the reason. On PostgreSQL several workers take batches with ``FOR UPDATE SKIP LOCKED``; on
SQLite a claim is one ``BEGIN IMMEDIATE`` transaction, so workers never take the same row.

Secrets a message carries (:data:`SECRET_KEYS`: a new access token, an address-change code)
are blanked in the stored context once the notification is sent or has failed for good: the
message holds them, the database need not.

Speed: a batch is claimed and marked with bulk statements on plain rows (no ORM objects), and
:func:`deliver_pending` uses every core for a large backlog (:func:`deliver_pending`'s
``workers``): helper processes run the same claim → render → send → mark loop against the
same database, exactly as several ``restitution notify`` commands would.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, and_, bindparam, func, or_, select, update

from claims.db import for_update, is_sqlite, session_scope
from claims.models import Case, Claim, Notification, utcnow
from claims.settings import Settings, get_settings

log = logging.getLogger("restitution.notifications")

LEASE = dt.timedelta(minutes=10)
MAX_ATTEMPTS = 8
BACKOFF_BASE = dt.timedelta(seconds=30)
#: context keys that hold a secret for the recipient only, blanked once the message is sent
SECRET_KEYS = ("access_token", "code")
#: a backlog at least this large is shared among processes (``workers=None``): a helper
#: process pays for its start-up (imports) before it delivers anything (bench/notify.py)
PARALLEL_MIN_DUE = 20_000
MAX_WORKERS = 8

_TABLE = Notification.__table__
_C = _TABLE.c


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


@dataclass(slots=True)
class Claimed:
    """A claimed notification: what delivery needs of the row (``attempts`` counts this one)."""

    id: int
    kind: str
    language: str
    to_email: str
    context: dict[str, Any]
    attempts: int


@dataclass(slots=True)
class Batch:
    """The notifications one claim took, in id order, and what identifies the claim."""

    items: list[Claimed]
    claimed_by: str
    claimed_at: dt.datetime

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)

    def __getitem__(self, i: int) -> Claimed:
        return self.items[i]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _due(now: dt.datetime):  # noqa: ANN202
    return or_(
        and_(_C.state == "pending", _C.next_attempt_at <= now),
        and_(_C.state == "sending", _C.claimed_at < now - LEASE),
    )


def claim_batch(engine: Engine, limit: int, *, now: dt.datetime | None = None) -> Batch:
    """Take up to ``limit`` due notifications for this worker (committed before sending).

    One statement: ``UPDATE … WHERE id IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED])
    RETURNING …`` (SQLite ≥ 3.35 and PostgreSQL alike)."""
    now = now or utcnow()
    worker = _worker_id()
    due = for_update(select(_C.id).where(_due(now)).order_by(_C.id).limit(limit), engine,
                     skip_locked=True)
    stmt = (
        update(_TABLE)
        .where(_C.id.in_(due))
        .values(state="sending", claimed_at=now, claimed_by=worker, attempts=_C.attempts + 1)
        .returning(_C.id, _C.kind, _C.language, _C.to_email, _C.context, _C.attempts)
    )
    with session_scope(engine) as s:
        rows = s.connection().execute(stmt).all()
    rows.sort(key=lambda r: r[0])
    return Batch([Claimed(r[0], r[1], r[2], r[3], r[4] or {}, r[5]) for r in rows], worker, now)


def count_due(engine: Engine, *, at_least: int | None = None, now: dt.datetime | None = None) -> int:
    """How many notifications are due; with ``at_least``, counting stops there."""
    inner = select(_C.id).where(_due(now or utcnow()))
    if at_least is not None:
        inner = inner.limit(at_least)
    with session_scope(engine, write=False) as s:
        return int(s.connection().execute(select(func.count()).select_from(inner.subquery())).scalar_one())


def count_sent(session, case_code: str) -> int:
    """How many notices about the claims of case ``case_code`` have been sent."""
    return session.execute(
        select(func.count()).select_from(Notification)
        .join(Claim, Claim.id == Notification.claim_id).join(Case, Case.id == Claim.case_id)
        .where(Case.code == case_code, Notification.state == "sent")).scalar_one()


def _host(public_url: str) -> str:
    return urlsplit(public_url).hostname or "localhost"


def _blanked(context: dict[str, Any]) -> dict[str, Any] | None:
    """The context with its secrets blanked, or ``None`` when it holds none."""
    if not any(context.get(key) for key in SECRET_KEYS):
        return None
    return {k: ("" if k in SECRET_KEYS and v else v) for k, v in context.items()}


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
    public_url, mail_from = settings.public_url, settings.mail_from
    domain = _host(public_url)
    messages, rendered, outcomes = [], [], {}
    for n in batch:
        try:
            msg = render(
                n.kind, n.language, n.context,
                public_url=public_url, mail_from=mail_from, to=n.to_email,
                notification_id=n.id, domain_for_message_id=domain,
            )
        except Exception as exc:  # a message that cannot be rendered will never be
            outcomes[n.id] = ("failed", f"render: {type(exc).__name__}: {exc}")
            continue
        messages.append(msg)
        rendered.append(n)
    if messages:
        results = transport.send_many(messages)
        del messages
        for n, res in zip(rendered, results):
            outcomes[n.id] = (_outcome(res), _reason(res))
    now = utcnow()
    retry, failed, blank = [], [], []
    for n in batch:
        outcome, reason = outcomes[n.id]
        if outcome == "sent":
            report.sent += 1
        elif outcome == "retry" and n.attempts < MAX_ATTEMPTS:
            retry.append({"b_id": n.id, "v_next": now + backoff(n.attempts), "v_error": reason})
            report.retry += 1
            continue
        else:
            failed.append({"b_id": n.id, "v_error": reason or "too many attempts"})
            report.failed += 1
            report.errors.append(f"notification {n.id}: {reason}")
        context = _blanked(n.context)
        if context is not None:
            blank.append({"b_id": n.id, "v_context": context})
    # Only the worker holding the claim (state still ``sending``, the claim's worker and time)
    # records the outcome: failures first, then every row of the claim still sending was sent.
    mine = and_(_C.state == "sending", _C.claimed_by == batch.claimed_by, _C.claimed_at == batch.claimed_at)
    one = and_(_C.id == bindparam("b_id"), mine)
    with session_scope(engine) as s:
        conn = s.connection()
        if blank:
            conn.execute(update(_TABLE).where(one).values(context=bindparam("v_context", type_=_C.context.type)),
                         blank)
        if retry:
            conn.execute(update(_TABLE).where(one).values(
                state="pending", next_attempt_at=bindparam("v_next"), last_error=bindparam("v_error")), retry)
        if failed:
            conn.execute(update(_TABLE).where(one).values(state="failed", last_error=bindparam("v_error")), failed)
        if report.sent:
            conn.execute(
                update(_TABLE)
                .where(_C.id.between(batch[0].id, batch[-1].id), mine)
                .values(state="sent", sent_at=now, last_error=None)
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


# --------------------------------------------------------------------------- several processes


def _shareable_url(engine: Engine) -> str | None:
    """The URL another process can open for the same database, or ``None`` (in-memory SQLite)."""
    url = engine.url
    if is_sqlite(engine):
        db = url.database or ""
        if db in ("", ":memory:") or "mode=memory" in str(url):
            return None
    return url.render_as_string(hide_password=False)


def _auto_workers(engine: Engine, batch_size: int, max_batches: int | None) -> int:
    cores = min(os.cpu_count() or 1, MAX_WORKERS)
    if cores <= 1 or (max_batches is not None and max_batches * batch_size < PARALLEL_MIN_DUE):
        return 1
    if count_due(engine, at_least=PARALLEL_MIN_DUE) < PARALLEL_MIN_DUE:
        return 1
    return min(cores, max_batches or cores)


_pool_lock = threading.Lock()
_pool = None  # a ProcessPoolExecutor kept for the life of the process (its start-up is paid once)
_pool_size = 0


def _helpers(n: int):  # noqa: ANN202
    """A pool of at least ``n`` helper processes, started fresh (``spawn``: safe from a process
    with threads, such as a Prefect worker) and kept warm for later backlogs."""
    global _pool, _pool_size
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _pool_lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_helper_init)
            _pool_size = n
        return _pool


def helper_count() -> int:
    """How many helper processes are kept (0 when none were started or they were stopped)."""
    return _pool_size if _pool is not None else 0


def stop_helpers() -> None:
    """Stop the helper processes (they are started again when needed)."""
    global _pool, _pool_size
    with _pool_lock:
        pool, _pool, _pool_size = _pool, None, 0
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(stop_helpers)


def _helper_init() -> None:
    from notifications.render import warm_up

    warm_up()


def _helper_run(url: str, batch_size: int, max_batches: int | None, settings: Settings) -> DeliveryReport:
    """One helper process's share: the delivery loop on its own engine and transport."""
    from claims.db import get_engine

    return _deliver_loop(get_engine(url), batch_size, max_batches, settings, None)


def _deliver_loop(engine: Engine, batch_size: int, max_batches: int | None, settings: Settings,
                  transport) -> DeliveryReport:
    from notifications.transport import transport_from_settings

    total = DeliveryReport()
    if transport is None:
        transport = transport_from_settings(settings.smtp_url, settings.maildir)
    while max_batches is None or total.batches < max_batches:
        rep = deliver_batch(engine, batch_size, settings=settings, transport=transport)
        if rep.batches == 0:
            break
        total.add(rep)
    return total


def deliver_pending(engine: Engine | None = None, *, batch_size: int = 2000,
                    max_batches: int | None = None, settings: Settings | None = None,
                    transport=None, workers: int | None = None) -> DeliveryReport:
    """Deliver every due notification once (``restitution notify``).

    ``workers`` processes share the work (this one and ``workers - 1`` helpers); by default
    one, or every core (at most :data:`MAX_WORKERS`) when at least :data:`PARALLEL_MIN_DUE`
    notifications are due, the database is not an in-memory one and no ``transport`` object is
    given (it cannot be shared with another process). ``max_batches`` bounds the batches of all
    of them together. The helpers are started with ``spawn`` and kept for later calls; as with
    any ``multiprocessing`` use, a script calling this must guard its work with
    ``if __name__ == "__main__":`` (the helpers import the main module).
    """
    from claims.db import get_engine

    engine = engine or get_engine()
    settings = settings or get_settings()
    url = _shareable_url(engine) if transport is None else None
    if url is None:
        workers = 1
    elif workers is None:
        workers = _auto_workers(engine, batch_size, max_batches)
    workers = max(1, min(workers, max_batches or workers))
    if workers == 1:
        return _deliver_loop(engine, batch_size, max_batches, settings, transport)

    shares: list[int | None] = [None] * workers
    if max_batches is not None:
        shares = [max_batches // workers + (1 if k < max_batches % workers else 0) for k in range(workers)]
    from concurrent.futures.process import BrokenProcessPool

    pool = _helpers(workers - 1)
    futures = [pool.submit(_helper_run, url, batch_size, share, settings) for share in shares[1:]]
    total = DeliveryReport()
    try:
        total.add(_deliver_loop(engine, batch_size, shares[0], settings, None))
    finally:
        broken = False
        for fut in futures:
            try:
                total.add(fut.result())
            except BrokenProcessPool:
                broken = True
        if broken:
            # A helper died (or could not start). What it had claimed is taken over by a later
            # run once its lease has passed; the rest this process delivered itself.
            log.warning("a notification helper process died; its claimed batch waits for its lease")
            stop_helpers()
    return total
