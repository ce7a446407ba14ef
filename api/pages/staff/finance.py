"""Finance's pages (the auditor reads them): the rounds to pay, one round's payouts by state
(refreshing itself while payouts run) with hold / resume / retry, mismatches, the
custodian's files and reconciliation, and the release with its confirmation step
(:mod:`claims.payouts`, :mod:`claims.payouts.rails.custodian`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from api.deps import ReadSessionDep
from api.pages.staff.common import (
    HEADERS,
    FinanceAction,
    FinancePage,
    done,
    error_text,
    not_found,
    render,
)
from api.pages.staff_auth import ConsoleStaff, check_csrf
from api.routes import payouts as payouts_api
from claims import idempotency, payouts, rounds
from claims.db import get_engine, session_scope
from claims.errors import DomainError, InvalidInput, NotFound
from claims.models import PayoutState
from claims.payouts.rails import custodian

router = APIRouter(include_in_schema=False)

PAYOUT_PAGE = 100
ACTIVE_PAYOUTS = ("pending", "signed", "broadcast")
PAYABLE_ROUNDS = ("approved", "released", "settled", "stopped")


@router.get("/staff/finance", response_class=HTMLResponse)
def finance_page(request: Request, staff: FinancePage, session: ReadSessionDep) -> HTMLResponse:
    return render(request, "finance.html", staff,
                  rounds=rounds.recent_rounds(session, PAYABLE_ROUNDS))


def _finance_round(request: Request, staff: ConsoleStaff, round_id: str, *,
                   state: str | None = None, offset: int = 0, status: int = 200,
                   error: str | None = None, result: dict | None = None) -> HTMLResponse:
    try:
        with session_scope(write=False) as s:
            rnd = rounds.get_round(s, round_id)
            v = rounds.view(s, rnd)
            summary = payouts.summary(s, rnd.id)
            items = payouts.list_payouts(s, rnd.id, state=state or None, limit=PAYOUT_PAGE,
                                         offset=offset)
            mismatches = payouts.list_mismatches(s, rnd.id)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    running = summary["release_running"] or any(
        summary["by_state"][st]["count"] for st in ACTIVE_PAYOUTS)
    return render(request, "finance_round.html", staff, status=status, r=v, s=summary,
                  items=items, state=state or "", offset=offset, page_size=PAYOUT_PAGE,
                  states=[p.value for p in PayoutState], running=running,
                  mismatches=mismatches, can_act=staff.role == "finance", error=error,
                  result=result, refresh=running and status == 200 and result is None)


@router.get("/staff/finance/rounds/{round_id}", response_class=HTMLResponse)
def finance_round(round_id: str, request: Request, staff: FinancePage, state: str = "",
                  offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0) -> HTMLResponse:
    return _finance_round(request, staff, round_id, state=state, offset=offset)


@router.get("/staff/finance/rounds/{round_id}/release", response_class=HTMLResponse)
def release_confirm(round_id: str, request: Request, staff: FinanceAction) -> HTMLResponse:
    try:
        with session_scope(write=False) as s:
            v = rounds.get_round_view(s, round_id)
            summary = payouts.summary(s, round_id)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    return render(request, "release.html", staff, r=v, s=summary, key=uuid.uuid4().hex)


def _started(response: Response, background: BackgroundTasks, round_id: int) -> Response:
    """``response`` with the round's payouts set to run after it (as the API starts them)."""
    payouts_api.START_EXECUTION(background, round_id)
    response.background = background
    return response


@router.post("/staff/finance/rounds/{round_id}/release", response_class=HTMLResponse)
def release(round_id: str, request: Request, staff: FinanceAction, background: BackgroundTasks,
            idempotency_key: Annotated[str, Form(max_length=200)] = "",
            csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    try:
        rid = rounds.parse_round_id(round_id)
        key = idempotency_key.strip() or uuid.uuid4().hex
        idempotency.check_key(key)
        # As POST /api/v1/rounds/{id}/payouts does: idempotent by the form's key.
        payouts.release_once(rid, key, actor=staff.actor)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    return _started(done(f"/staff/finance/rounds/{rid}", "released"), background, rid)


@router.get("/staff/finance/rounds/{round_id}/instructions.csv")
def instructions(round_id: str, request: Request, staff: FinancePage) -> Response:
    finance = staff.role == "finance"
    try:
        with session_scope(write=finance) as s:
            rid = custodian.prepare_instructions(s, round_id, actor=staff.actor if finance
                                                 else None, export=finance)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    return StreamingResponse(custodian.stream_instructions(rid),
                             media_type="text/csv; charset=utf-8",
                             headers={**HEADERS, "Content-Disposition":
                                      f'attachment; filename="round-{rid}-instructions.csv"'})


@router.post("/staff/finance/rounds/{round_id}/confirmations", response_class=HTMLResponse)
def confirmations(round_id: str, request: Request, staff: FinanceAction,
                  file: Annotated[UploadFile | None, File()] = None,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    limit = payouts_api.MAX_CSV_BYTES
    data = file.file.read(limit + 1) if file is not None else b""
    if not data:
        return _finance_round(request, staff, round_id, status=422,
                              error="Choose the custodian's confirmations file (CSV).")
    if len(data) > limit:
        return _finance_round(request, staff, round_id, status=413,
                              error=f"The file is larger than {limit // 2**20} MiB.")
    try:
        custodian.parse_confirmations(data)
        with session_scope() as s:
            result = custodian.import_confirmations(s, round_id, data, actor=staff.actor)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status,
                              error=error_text(exc))
    return _finance_round(request, staff, round_id, result={"kind": "confirmations", **result})


def _payout_move(request: Request, staff: ConsoleStaff, payout_id: str, fn, notice: str,
                 background: BackgroundTasks | None = None, **kw: Any) -> Response:
    try:
        with session_scope() as s:
            p = fn(s, payout_id, actor=staff.actor, **kw)
            rid = p.round_id
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        try:
            with session_scope(write=False) as s:
                rid = payouts.get_payout(s, payout_id).round_id
        except DomainError:
            return not_found(request, staff, exc)
        return _finance_round(request, staff, str(rid), status=exc.status, error=str(exc))
    response = done(f"/staff/finance/rounds/{rid}", notice)
    if background is not None:
        return _started(response, background, rid)
    return response


@router.post("/staff/finance/payouts/{payout_id}/hold", response_class=HTMLResponse)
def payout_hold(payout_id: str, request: Request, staff: FinanceAction,
                reason: Annotated[str, Form(max_length=2000)] = "",
                csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.hold_payout, "held",
                        reason=reason.strip() or None)


@router.post("/staff/finance/payouts/{payout_id}/resume", response_class=HTMLResponse)
def payout_resume(payout_id: str, request: Request, staff: FinanceAction,
                  background: BackgroundTasks,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.resume_payout, "resumed", background)


@router.post("/staff/finance/payouts/{payout_id}/retry", response_class=HTMLResponse)
def payout_retry(payout_id: str, request: Request, staff: FinanceAction,
                 background: BackgroundTasks,
                 csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.retry_payout, "retried", background)


@router.post("/staff/finance/rounds/{round_id}/restart", response_class=HTMLResponse)
def round_restart(round_id: str, request: Request, staff: FinanceAction,
                  background: BackgroundTasks,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            rid = payouts.restart_round(s, round_id, actor=staff.actor).id
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    return _started(done(f"/staff/finance/rounds/{rid}", "restarted"), background, rid)


@router.post("/staff/finance/rounds/{round_id}/mismatches/{mismatch_id}/resolve",
             response_class=HTMLResponse)
def mismatch_resolve(round_id: str, mismatch_id: str, request: Request, staff: FinanceAction,
                     background: BackgroundTasks,
                     reason: Annotated[str, Form(max_length=2000)] = "",
                     csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            payouts.resolve_mismatch(s, round_id, mismatch_id, actor=staff.actor,
                                     reason=reason)
        rid = rounds.parse_round_id(round_id)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status,
                              error=error_text(exc))
    return _started(done(f"/staff/finance/rounds/{rid}", "resolved"), background, rid)


@router.post("/staff/finance/rounds/{round_id}/reconcile", response_class=HTMLResponse)
def round_reconcile(round_id: str, request: Request, staff: FinanceAction,
                    csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    try:
        result = payouts.reconcile_round(get_engine(), round_id, actor=staff.actor)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    return _finance_round(request, staff, round_id, result={"kind": "reconcile", **result})
