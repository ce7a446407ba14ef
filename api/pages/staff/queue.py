"""The caseworker's review pages (the auditor reads them): the queue with its filters, one
claim with its ledger evidence and flags explained, and the decision and settlement forms
(:mod:`claims.review`)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from api.deps import ReadSessionDep
from api.pages.staff.common import (
    CaseworkerAction,
    CaseworkerPage,
    amount_or_error,
    done,
    field_errors,
    not_found,
    page_links,
    render,
)
from api.pages.staff_auth import ConsoleStaff, check_csrf
from claims import cases, review
from claims.db import session_scope
from claims.errors import DomainError, InvalidInput, NotFound
from claims.models import FLAG_CODES, ClaimStatus

router = APIRouter(include_in_schema=False)

QUEUE_PAGE = 50

#: What each flag means, for the caseworker (docs/lifecycle.md "Flags").
FLAG_EXPLAINED = {
    "no_ledger_match": "No ledger account matches this claim: approving it needs a recognized "
                       "loss you establish from the evidence.",
    "amount_differs": "The claimed amount and the ledger's net loss differ by more than "
                      "max(1 USDT, 1 %). Approving keeps the ledger's net loss unless you enter "
                      "another recognized loss.",
    "net_winner": "The account withdrew at least what it deposited: it has no loss to repay.",
    "duplicate_identity": "Another claim of the case has the same full name and date of birth "
                          "under another IIN.",
    "duplicate_account": "Another claim of the case matched the same ledger account.",
    "duplicate_wallet": "Another claim of the case uses the same payout address.",
    "duplicate_email": "Another claim of the case uses the same e-mail address.",
    "insider": "The matched ledger account is marked as an insider / promoter.",
    "blocked_address": "The payout address is on the blocked list.",
    "address_changed": "The payout address changed after approval; its payouts are held.",
    "missing_evidence": "No ledger match and neither evidence transaction hashes nor documents.",
}
assert set(FLAG_EXPLAINED) == set(FLAG_CODES)


@router.get("/staff/queue", response_class=HTMLResponse)
def queue(
    request: Request, staff: CaseworkerPage, session: ReadSessionDep,
    case_id: str = "", status: str = "", flag: str = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    filters = {"case_id": case_id.strip() or None, "status": status or None,
               "flag": flag or None}
    errors: dict[str, str] = {}
    data = {"items": [], "total": 0}
    try:
        data = review.review_queue(session, **filters, limit=QUEUE_PAGE,
                                   offset=(page - 1) * QUEUE_PAGE)
    except InvalidInput as exc:
        errors = field_errors(exc)
    pages = max(1, -(-data["total"] // QUEUE_PAGE))
    prev_url, next_url = page_links("/staff/queue", {k: v for k, v in filters.items() if v},
                                    page, pages)
    return render(request, "queue.html", staff, status=422 if errors else 200,
                  items=data["items"], total=data["total"], page=page, pages=pages,
                  prev_url=prev_url, next_url=next_url,
                  filters=filters, errors=errors, cases=cases.case_choices(session),
                  statuses=[s.value for s in ClaimStatus], flag_codes=FLAG_CODES)


def _claim_page(request: Request, staff: ConsoleStaff, session, reference: str, *,
                status: int = 200, **extra: Any) -> HTMLResponse:
    try:
        claim = review.claim_for_staff(session, reference)
    except NotFound as exc:
        return not_found(request, staff, exc)
    extra.setdefault("form", {})
    return render(request, "claim.html", staff, status=status, c=claim,
                  explained=FLAG_EXPLAINED, can_decide=staff.role == "caseworker", **extra)


@router.get("/staff/claims/{reference}", response_class=HTMLResponse)
def claim_page(reference: str, request: Request, staff: CaseworkerPage,
               session: ReadSessionDep) -> HTMLResponse:
    return _claim_page(request, staff, session, reference)


@router.post("/staff/claims/{reference}/decision", response_class=HTMLResponse)
def claim_decision(
    reference: str, request: Request, staff: CaseworkerAction, session: ReadSessionDep,
    decision: Annotated[str, Form(max_length=32)] = "",
    reason: Annotated[str, Form(max_length=10_000)] = "",
    recognized_loss: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    check_csrf(staff, csrf_token)
    errors: dict[str, str] = {}
    amount = amount_or_error(recognized_loss, "recognized_loss", errors, required=False)
    if not errors:
        try:
            with session_scope() as s:
                review.decide(s, reference, decision=decision, reason=reason,
                              recognized_loss=amount, actor=staff.actor)
            return done(f"/staff/claims/{quote(reference)}", "decided")
        except NotFound as exc:
            return not_found(request, staff, exc)
        except DomainError as exc:
            errors = field_errors(exc) or {"form": str(exc)}
            code = exc.status
    else:
        code = 422
    session.rollback()  # see what the failed attempt left (nothing)
    return _claim_page(request, staff, session, reference, status=code, errors=errors,
                       form={"decision": decision, "reason": reason,
                             "recognized_loss": recognized_loss})


@router.post("/staff/claims/{reference}/settle", response_class=HTMLResponse)
def claim_settle(
    reference: str, request: Request, staff: CaseworkerAction, session: ReadSessionDep,
    amount: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=10_000)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    check_csrf(staff, csrf_token)
    errors: dict[str, str] = {}
    value = amount_or_error(amount, "amount", errors)
    code = 422
    if not errors:
        try:
            with session_scope() as s:
                review.settle(s, reference, amount=value, reason=reason, actor=staff.actor)
            return done(f"/staff/claims/{quote(reference)}", "settled")
        except NotFound as exc:
            return not_found(request, staff, exc)
        except DomainError as exc:
            errors = {f"settle_{k}": v for k, v in field_errors(exc).items()} \
                or {"settle_form": str(exc)}
            code = exc.status
    else:
        errors = {f"settle_{k}": v for k, v in errors.items()}
    session.rollback()
    return _claim_page(request, staff, session, reference, status=code, errors=errors,
                       form={"settle_amount": amount, "settle_reason": reason})
