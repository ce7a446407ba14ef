"""The caseworker's round pages (the auditor reads them): the list with the prepare form,
the preview (the solver on the case's payable claims, nothing stored), one round with its
approval or why not (:mod:`claims.rounds`; the report page with the chart is
:mod:`api.pages.reports`)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from api.deps import ReadSessionDep
from api.pages.staff.common import (
    CaseworkerAction,
    CaseworkerPage,
    amount_or_error,
    done,
    error_text,
    field_errors,
    not_found,
    render,
)
from api.pages.staff_auth import ConsoleStaff, check_csrf
from api.routes import rounds as rounds_api
from claims import cases, rounds
from claims.cases import get_case_by_code
from claims.db import session_scope
from claims.errors import DomainError, InvalidInput, NotFound

router = APIRouter(include_in_schema=False)


def _rounds_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                 **extra: Any) -> HTMLResponse:
    extra.setdefault("form", {"method": "pro-rata", "min_payout": "0"})
    extra.setdefault("preview", None)
    return render(request, "rounds.html", staff, status=status,
                  rounds=rounds.recent_rounds(session), cases=cases.case_choices(session),
                  can_prepare=staff.role == "caseworker", **extra)


@router.get("/staff/rounds", response_class=HTMLResponse)
def rounds_page(request: Request, staff: CaseworkerPage, session: ReadSessionDep) -> HTMLResponse:
    return _rounds_page(request, staff, session)


def _round_form(case_id: str, pool: str, method: str, min_payout: str
                ) -> tuple[dict[str, str], dict[str, str], int | None, int | None]:
    """The prepare form read: its values as typed, the errors by field (a value that is no
    amount first, then :func:`claims.rounds.validate_request`'s), the pool and minimum."""
    form = {"case_id": case_id, "pool": pool, "method": method or "pro-rata",
            "min_payout": min_payout or "0"}
    errors: dict[str, str] = {}
    if not case_id:
        errors["case_id"] = "is required"
    pool_v = amount_or_error(pool, "pool", errors)
    min_v = amount_or_error(form["min_payout"], "min_payout", errors)
    try:
        rounds.validate_request(pool_v, form["method"], min_v)
    except InvalidInput as exc:
        for field, message in field_errors(exc).items():
            errors.setdefault(field, message)
    return form, errors, pool_v, min_v


@router.get("/staff/rounds/new", response_class=HTMLResponse)
def round_preview(request: Request, staff: CaseworkerPage, session: ReadSessionDep,
                  case_id: str = "", pool: str = "", method: str = "pro-rata",
                  min_payout: str = "0") -> HTMLResponse:
    form, errors, pool_v, min_v = _round_form(case_id, pool, method, min_payout)
    if errors:
        return _rounds_page(request, staff, session, status=422, form=form, errors=errors)
    try:
        preview = rounds.preview_round(session, form["case_id"], pool_v, form["method"], min_v)
    except DomainError as exc:
        return _rounds_page(request, staff, session, status=exc.status, form=form,
                            errors=field_errors(exc), error=error_text(exc))
    return _rounds_page(request, staff, session, form=form, preview=preview)


@router.post("/staff/rounds", response_class=HTMLResponse)
def round_prepare(
    request: Request, staff: CaseworkerAction, session: ReadSessionDep,
    case_id: Annotated[str, Form(max_length=64)] = "",
    pool: Annotated[str, Form(max_length=64)] = "",
    method: Annotated[str, Form(max_length=32)] = "pro-rata",
    min_payout: Annotated[str, Form(max_length=64)] = "0",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    check_csrf(staff, csrf_token)
    form, errors, pool_v, min_v = _round_form(case_id, pool, method, min_payout)
    if errors:
        return _rounds_page(request, staff, session, status=422, form=form, errors=errors)
    try:
        with session_scope(write=False) as s:
            get_case_by_code(s, form["case_id"])
        # The same path as POST /api/v1/cases/{code}/rounds (the Prefect flow by default).
        round_id = rounds_api.PREPARE(form["case_id"], pool_v, form["method"], min_v,
                                      actor_name=staff.username, actor_role=staff.role,
                                      actor_staff_id=staff.id)
    except DomainError as exc:
        session.rollback()
        return _rounds_page(request, staff, session, status=exc.status, form=form,
                            errors=field_errors(exc), error=error_text(exc))
    return done(f"/staff/rounds/{round_id}", "prepared")


def _round_page(request: Request, staff: ConsoleStaff, session, round_id: str, *,
                status: int = 200, error: str | None = None) -> HTMLResponse:
    """One round; the approve button when :func:`claims.rounds.approval_refusal` lets this
    member approve it, else why not. The snapshot's problems are listed either way (an
    approval then finds the round stale)."""
    try:
        rnd = rounds.get_round(session, round_id)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    problems = rounds.snapshot_problems(session, rnd) if rnd.status == "prepared" else []
    refusal = rounds.approval_refusal(rnd, staff.actor)
    if refusal is not None:
        why_not = str(refusal)
    elif problems:
        why_not = ("The claims changed since the round was prepared; approving marks it "
                   "stale. Prepare it again.")
    else:
        why_not = None
    return render(request, "round.html", staff, status=status, r=rounds.view(session, rnd),
                  why_not=why_not, problems=problems, can_approve=refusal is None,
                  error=error)


@router.get("/staff/rounds/{round_id}", response_class=HTMLResponse)
def round_page(round_id: str, request: Request, staff: CaseworkerPage,
               session: ReadSessionDep) -> HTMLResponse:
    return _round_page(request, staff, session, round_id)


@router.post("/staff/rounds/{round_id}/approve", response_class=HTMLResponse)
def round_approve(round_id: str, request: Request, staff: CaseworkerAction,
                  session: ReadSessionDep,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            rounds.approve_round(s, round_id, actor=staff.actor, persist_stale=True)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        session.rollback()
        return _round_page(request, staff, session, round_id, status=exc.status,
                           error=str(exc))
    return done(f"/staff/rounds/{quote(round_id)}", "approved")
