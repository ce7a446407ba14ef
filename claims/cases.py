"""Cases: a scheme whose seized records and recovered funds are handled together.

A case is identified by its CODE (docs/api.md: ``[a-z0-9][a-z0-9-]{1,63}``); ``case_id`` in
claims, claim CSVs and query filters is that code. Operators open and close cases; closing a
case stops new filings (a filing for an unknown or closed case is refused naming ``case_id``).

An optional ``deadline`` is the last day (UTC) on which claims are accepted: from the next day
on, :func:`get_open_case` refuses filings exactly as if the case were closed. A deadline in the
past is refused when the case is created.

Every change is audited in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.db import get_one
from claims.errors import CaseClosed, Conflict, IllegalTransition, InvalidInput
from claims.models import Case, Claim, utcnow
from claims.validators import ValidationFailed, validate_case_code

__all__ = [
    "MAX_NAME_LEN",
    "case_view",
    "claim_counts",
    "close_case",
    "create_case",
    "get_case_by_code",
    "get_open_case",
    "parse_deadline",
]

MAX_NAME_LEN = 300


def _today() -> dt.date:
    return utcnow().date()


def parse_deadline(value: object) -> dt.date | None:
    """``None``/blank → ``None``; a ``date`` or ``YYYY-MM-DD`` → ``date`` (field ``deadline``)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise InvalidInput([{"field": "deadline", "message": "must be a date (YYYY-MM-DD)"}])
    text = value.strip()
    if not text:
        return None
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            [{"field": "deadline", "message": "must be a real date in the form YYYY-MM-DD"}]
        ) from None


def case_view(case: Case) -> dict:
    """The public, JSON-native view of a case (CLI ``--json``, audit events)."""
    return {
        "code": case.code,
        "name": case.name,
        "status": case.status,
        "deadline": case.deadline.isoformat() if case.deadline else None,
        "created_at": case.created_at.isoformat() if case.created_at else None,
        "closed_at": case.closed_at.isoformat() if case.closed_at else None,
    }


def _validate_code(code: object) -> str:
    try:
        return validate_case_code(code, field="code")
    except ValidationFailed as exc:
        raise InvalidInput([exc.as_dict()]) from None


def create_case(
    session: Session,
    code: str,
    name: str,
    deadline: dt.date | str | None = None,
    actor: Actor | None = None,
) -> Case:
    """Open a new case. A bad code/name/deadline → ``InvalidInput`` naming every bad field;
    an existing code → ``Conflict``."""
    errors: list[dict] = []
    try:
        code = _validate_code(code)
    except InvalidInput as exc:
        errors.extend(exc.errors)
    clean_name = " ".join(name.split()) if isinstance(name, str) else ""
    if not clean_name:
        errors.append({"field": "name", "message": "is required"})
    elif len(clean_name) > MAX_NAME_LEN:
        errors.append(
            {"field": "name", "message": f"must be at most {MAX_NAME_LEN} characters"}
        )
    try:
        when = parse_deadline(deadline)
    except InvalidInput as exc:
        errors.extend(exc.errors)
        when = None
    if when is not None and when < _today():
        errors.append({"field": "deadline", "message": "is in the past"})
    if errors:
        raise InvalidInput(errors)

    if session.execute(select(Case.id).where(Case.code == code)).first() is not None:
        raise Conflict(f"case {code} already exists")
    case = Case(code=code, name=clean_name, deadline=when, status="open")
    session.add(case)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "case.create", "case", code, after=case_view(case)
    )
    return case


def get_case_by_code(session: Session, code: str, *, for_update: bool = False) -> Case:
    """The case with this code, or ``NotFound``."""
    return get_one(session, select(Case).where(Case.code == code), lock=for_update,
                   missing=f"no case {code!r}" if isinstance(code, str) else "no such case")


def is_open(case: Case, today: dt.date | None = None) -> bool:
    if case.status != "open":
        return False
    return case.deadline is None or (today or _today()) <= case.deadline


_OPEN_CASE = select(Case.__table__.c.id, Case.__table__.c.code, Case.__table__.c.name,
                    Case.__table__.c.status, Case.__table__.c.deadline).where(
    Case.__table__.c.code == bindparam("code"))


def get_open_case(session: Session, code: object) -> Any:
    """The case a claim is filed for, as a row (``id``, ``code``, ``name``, ``status``,
    ``deadline``: one light query, on every filing's path); unknown, closed or past its
    deadline → ``InvalidInput`` naming ``case_id`` (``CaseClosed`` for a closed case)."""
    if not isinstance(code, str) or not code.strip():
        raise InvalidInput([{"field": "case_id", "message": "is required"}])
    case = session.execute(_OPEN_CASE, {"code": code.strip()}).first()
    if case is None:
        raise InvalidInput([{"field": "case_id", "message": "no open case has this code"}])
    if case.status != "open":
        raise CaseClosed([{"field": "case_id", "message": "this case is closed to new claims"}])
    if not is_open(case):
        raise CaseClosed(
            [{"field": "case_id", "message": "the deadline for claims in this case has passed"}]
        )
    return case


def close_case(session: Session, code: str, actor: Actor | None = None) -> Case:
    """Stop filings. Closing a closed case → ``IllegalTransition`` (a ``Conflict``)."""
    case = get_case_by_code(session, code, for_update=True)
    if case.status == "closed":
        raise IllegalTransition(f"case {code} is already closed")
    before = case_view(case)
    case.status = "closed"
    case.closed_at = utcnow()
    session.add(case)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "case.close", "case", case.code,
        before=before, after=case_view(case),
    )
    return case


def claim_counts(session: Session, code: str) -> dict[str, int]:
    """How many claims of the case are in each status (statuses without claims left out)."""
    return dict(session.execute(
        select(Claim.status, func.count()).join(Case, Case.id == Claim.case_id)
        .where(Case.code == code).group_by(Claim.status)).all())


def case_choices(session: Session) -> list[dict[str, str]]:
    """Every case as ``{"code", "name"}``, by code (the console's case pickers)."""
    return [{"code": c, "name": n} for c, n in
            session.execute(select(Case.code, Case.name).order_by(Case.code)).all()]
