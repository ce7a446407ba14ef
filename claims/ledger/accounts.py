"""Reading the ledger back: a case's totals, one account, and marking an insider."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.cases import get_case_by_code
from claims.errors import NotFound
from claims.models import Case, LedgerAccount
from claims.money import format_amount


def ledger_summary(session: Session, case_code: str) -> dict[str, Any]:
    """``{"accounts", "deposits", "withdrawals", "net_winners", "total_net_loss"}``
    (docs/api.md): counts as ints, amounts as decimal strings; a case without a ledger gives
    zeros. ``withdrawals`` includes bonuses; ``net_winners`` counts accounts with withdrawals ≥
    deposits; ``total_net_loss`` = Σ max(0, deposits − withdrawals). Insider accounts count
    like any other (the ledger is reported as seized)."""
    case = get_case_by_code(session, case_code)
    row = session.execute(text(
        "SELECT count(*), coalesce(sum(deposits), 0), coalesce(sum(withdrawals), 0), "
        "coalesce(sum(CASE WHEN withdrawals >= deposits THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(CASE WHEN deposits > withdrawals THEN deposits - withdrawals ELSE 0 END), 0) "
        "FROM ledger_account WHERE case_id = :c"
    ), {"c": case.id}).one()
    accounts, deposits, withdrawals, winners, loss = (int(x) for x in row)
    return {
        "accounts": accounts,
        "deposits": format_amount(deposits),
        "withdrawals": format_amount(withdrawals),
        "net_winners": winners,
        "total_net_loss": format_amount(loss),
    }


def get_account(session: Session, case_code: str, account_id: str) -> LedgerAccount:
    """The ledger account ``account_id`` of the case; unknown case or account → ``NotFound``."""
    case = get_case_by_code(session, case_code)
    acct = session.execute(
        select(LedgerAccount).where(
            LedgerAccount.case_id == case.id, LedgerAccount.account_id == account_id.strip()
        )
    ).scalar_one_or_none()
    if acct is None:
        raise NotFound(f"no ledger account {account_id.strip()!r} in case {case.code}")
    return acct


def mark_insider(
    session: Session,
    case_code: str,
    account_id: str,
    reason: str | None = None,
    actor: Actor | None = None,
) -> LedgerAccount:
    """Mark a promoter/insider account (audited). Unknown case or account → ``NotFound``.
    Marking an insider again with the same reason changes nothing and records nothing."""
    acct = get_account(session, case_code, account_id)
    reason = " ".join((reason or "").split()) or "marked insider by the operator"
    if acct.insider and acct.insider_reason == reason:
        return acct
    before = {"insider": acct.insider, "insider_reason": acct.insider_reason}
    acct.insider = True
    acct.insider_reason = reason
    session.add(acct)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "ledger.mark_insider", "ledger_account",
        f"{case_code}/{acct.account_id}", before=before,
        after={"insider": True, "insider_reason": reason},
    )
    return acct


def insider_accounts(session: Session, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The ledger accounts marked as insiders, ``{"case_id" (the case code), "account_id",
    "reason"}`` by case and account."""
    rows = session.execute(
        select(Case.code, LedgerAccount.account_id, LedgerAccount.insider_reason)
        .join(Case, Case.id == LedgerAccount.case_id)
        .where(LedgerAccount.insider.is_(True))
        .order_by(Case.code, LedgerAccount.account_id).limit(limit)
    ).all()
    return [{"case_id": c, "account_id": a, "reason": r} for c, a, r in rows]
