"""What the staff console (``api/pages/staff/``) needs from domain modules that do not offer
it yet: the cases to choose from, the latest rounds, the insider accounts, a page of the
audit trail, and the release of a round's payouts under an idempotency key.

Each function belongs to the domain module named in its docstring (cases, rounds, ledger,
audit, payouts) and is kept small so that module can take it over as it is; until then the
console calls it here and holds no query of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from claims import idempotency, payouts, rounds
from claims.audit import Actor
from claims.db import get_engine, session_scope
from claims.models import AuditEvent, Case, DistributionRound, LedgerAccount

#: The idempotency scope of a round's release (``POST /api/v1/rounds/{id}/payouts`` uses the
#: same, so a key answers the same whichever way the release came).
RELEASE_SCOPE = "payouts.release"


def case_choices(session: Session) -> list[dict[str, str]]:
    """Every case as ``{"code", "name"}``, by code (for the console's case pickers).
    Belongs to :mod:`claims.cases`."""
    return [{"code": c, "name": n} for c, n in
            session.execute(select(Case.code, Case.name).order_by(Case.code)).all()]


def recent_rounds(session: Session, statuses: Sequence[str] | None = None, *,
                  limit: int = 500) -> list[dict[str, Any]]:
    """The latest rounds of every case (newest first, at most ``limit``; only ``statuses``
    when given) as :func:`claims.rounds.view` shows them. Belongs to :mod:`claims.rounds`."""
    stmt = select(DistributionRound).order_by(DistributionRound.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(DistributionRound.status.in_(statuses))
    return [rounds.view(session, r) for r in session.execute(stmt).scalars().all()]


def insider_accounts(session: Session, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The ledger accounts marked as insiders, ``{"case_id" (the case code), "account_id",
    "reason"}`` by case and account. Belongs to :mod:`claims.ledger`."""
    rows = session.execute(
        select(Case.code, LedgerAccount.account_id, LedgerAccount.insider_reason)
        .join(Case, Case.id == LedgerAccount.case_id)
        .where(LedgerAccount.insider.is_(True))
        .order_by(Case.code, LedgerAccount.account_id).limit(limit)
    ).all()
    return [{"case_id": c, "account_id": a, "reason": r} for c, a, r in rows]


def audit_events(session: Session, *, action: str | None = None, limit: int,
                 offset: int = 0) -> tuple[list[AuditEvent], int]:
    """A page of the audit trail, newest first (only ``action`` when given), and how many
    events there are in all. Belongs to :mod:`claims.audit`."""
    cond = [AuditEvent.action == action] if action else []
    total = session.execute(
        select(func.count()).select_from(AuditEvent).where(*cond)).scalar_one()
    events = session.execute(
        select(AuditEvent).where(*cond).order_by(AuditEvent.id.desc())
        .limit(limit).offset(offset)
    ).scalars().all()
    return list(events), total


def release_once(round_id: int, key: str, actor: Actor, *,
                 engine: Engine | None = None) -> dict[str, Any]:
    """Release a round's payouts (:func:`claims.payouts.release_round`) at most once per
    idempotency ``key``: the same key again answers what the first release answered.
    Belongs to :mod:`claims.payouts` (the API's release does the same)."""
    engine = engine or get_engine()
    outcome = idempotency.begin(engine, RELEASE_SCOPE, key,
                                idempotency.request_hash({"round": round_id}))
    if isinstance(outcome, idempotency.Replay):
        return outcome.response
    try:
        with session_scope(engine) as s:
            body = payouts.release_round(s, round_id, actor=actor, idempotency_key=key)
            idempotency.complete(s, outcome, 202, body)
    except BaseException:
        idempotency.abandon(engine, outcome)
        raise
    return body
