"""The staff console ``/staff``: server-rendered pages (Jinja2), usable without JavaScript.

Sessions, CSRF and roles: :mod:`api.pages.staff_auth` (a cookie holding the API's own JWT;
the role sets are those of :mod:`api.auth`'s annotations). Every page reuses the domain
functions of ``claims/`` — nothing here decides anything:

- sign-in / sign-out: ``GET|POST /staff/sign-in`` (``username``, ``password``, ``totp``),
  ``POST /staff/sign-out``; ``GET /staff`` sends each role to its home page.
- caseworker (the auditor reads): ``/staff/queue`` (filters ``case_id``, ``status``, ``flag``;
  pages), ``/staff/claims/{ref}`` (masked IIN, ledger movements, flags explained; decision and
  settlement forms), ``/staff/rounds`` (list + prepare form), ``/staff/rounds/new`` (the
  preview: :func:`claims.allocation.allocate` on the case's payable claims, nothing stored),
  ``/staff/rounds/{id}`` (inspect, approve or why not; the report page with the chart is
  :mod:`api.pages.reports`).
- finance (the auditor reads): ``/staff/finance`` (rounds to pay), ``/staff/finance/rounds/{id}``
  (progress by payout state, refreshing itself while payouts run; payouts with hold / resume /
  retry; mismatches; custodian files; reconcile), ``…/release`` (the confirmation step: count
  and sum, then the release with an idempotency key of the form).
- admin (the auditor reads): ``/staff/admin/users``, ``/staff/admin/blocked``,
  ``/staff/admin/insiders``.
- auditor: ``/staff/audit`` (the trail, paged), ``/staff/audit/verify`` (the chain checked).
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import func, select

from api import auth as api_auth
from api.deps import ReadSessionDep
from api.pages import staff_auth
from api.pages.staff_auth import (
    ConsoleForbidden,
    ConsoleStaff,
    SignInRequired,
    check_csrf,
    console_roles,
)
from claims.db import session_scope
from claims.errors import DomainError, InvalidInput, NotFound, TooManyAttempts
from claims.models import FLAG_CODES, ClaimStatus, PayoutState
from claims.money import AmountError, parse_amount
from notifications.i18n import TEMPLATES_DIR

router = APIRouter(include_in_schema=False)

# The API's role sets, read from api.auth's annotations (one truth).
CaseworkerPage = Annotated[ConsoleStaff, Depends(console_roles(api_auth.CaseworkerOrAuditor))]
CaseworkerAction = Annotated[ConsoleStaff, Depends(console_roles(api_auth.Caseworker))]
FinancePage = Annotated[ConsoleStaff, Depends(console_roles(api_auth.FinanceOrAuditor))]
FinanceAction = Annotated[ConsoleStaff, Depends(console_roles(api_auth.Finance))]
AdminPage = Annotated[ConsoleStaff, Depends(console_roles(api_auth.AdminOrAuditor))]
AdminAction = Annotated[ConsoleStaff, Depends(console_roles(api_auth.Admin))]
AuditorPage = Annotated[ConsoleStaff, Depends(console_roles(api_auth.Auditor))]

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' "
                               "data:; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

HOME = {"caseworker": "/staff/queue", "finance": "/staff/finance",
        "admin": "/staff/admin/users", "auditor": "/staff/audit"}

NAV = {
    "caseworker": [("/staff/queue", "Review queue"), ("/staff/rounds", "Rounds")],
    "finance": [("/staff/finance", "Rounds to pay")],
    "admin": [("/staff/admin/users", "Staff"), ("/staff/admin/blocked", "Blocked addresses"),
              ("/staff/admin/insiders", "Insider accounts")],
    "auditor": [("/staff/audit", "Audit trail"), ("/staff/queue", "Claims"),
                ("/staff/rounds", "Rounds"), ("/staff/finance", "Payouts"),
                ("/staff/admin/users", "Staff"), ("/staff/admin/blocked", "Blocked"),
                ("/staff/admin/insiders", "Insiders")],
}

#: DESIGN.md "Claim lifecycle": what each flag means, for the caseworker.
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

NOTICES = {
    "decided": "Decision recorded.",
    "settled": "Dispute settled.",
    "prepared": "Round prepared. Another caseworker must approve it.",
    "approved": "Round approved.",
    "released": "Payouts released: they are being paid now.",
    "held": "Payout held.",
    "resumed": "Payout resumed.",
    "retried": "Payout queued again as a new attempt.",
    "restarted": "Round restarted.",
    "resolved": "Mismatch resolved.",
    "user_disabled": "Account disabled.",
    "user_enabled": "Account enabled.",
    "blocked": "Address blocked.",
    "unblocked": "Address removed from the blocked list.",
    "insider": "Account marked as insider.",
    "signed_out": "You are signed out.",
}

QUEUE_PAGE = 50
AUDIT_PAGE = 50
PAYOUT_PAGE = 100
ACTIVE_PAYOUTS = ("pending", "signed", "broadcast")


# ------------------------------------------------------------------ rendering


@lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR / "staff")),
        autoescape=select_autoescape(("html",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ")
    env.filters["pretty"] = lambda v: "" if v is None else json.dumps(v, ensure_ascii=False,
                                                                      sort_keys=True)
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


def render(request: Request, template: str, staff: ConsoleStaff | None = None, *,
           status: int = 200, **context: Any) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    context.setdefault("error", None)
    context.setdefault("errors", {})
    html = _env().get_template(template).render(
        staff=staff, nav=NAV.get(staff.role, []) if staff else [], path=request.url.path,
        csrf=staff.csrf if staff else "", notice=notice, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def done(url: str, notice: str) -> RedirectResponse:
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{sep}notice={notice}", status_code=303)


def field_errors(exc: DomainError) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in getattr(exc, "errors", None) or []:
        out.setdefault(str(e.get("field")), str(e.get("message")))
    return out


def error_text(exc: DomainError) -> str:
    errs = field_errors(exc)
    if errs:
        return "Please correct: " + "; ".join(f"{k} {v}" for k, v in errs.items())
    return str(exc) or exc.__class__.__name__


def amount_or_error(value: str, field: str, errors: dict[str, str], *,
                    required: bool = True) -> int | None:
    value = (value or "").strip()
    if not value:
        if required:
            errors[field] = "is required"
        return None
    try:
        return parse_amount(value)
    except AmountError as exc:
        errors[field] = str(exc)
        return None


# ------------------------------------------------------------------ errors → pages


def install(app) -> None:
    app.add_middleware(staff_auth.CookieBearer)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired):
        params = {"next": exc.next_path}
        if exc.reason and "expired" in exc.reason:
            params["expired"] = "1"
        response = RedirectResponse("/staff/sign-in?" + urlencode(params), status_code=303)
        if exc.reason:  # a cookie that no longer works is dropped
            staff_auth.clear_session_cookie(response, request)
        return response

    @app.exception_handler(ConsoleForbidden)
    async def _forbidden(request: Request, exc: ConsoleForbidden):
        return render(request, "error.html", exc.staff, status=403, title="Not allowed",
                      message=exc.message)


def not_found(request: Request, staff: ConsoleStaff, exc: DomainError) -> HTMLResponse:
    return render(request, "error.html", staff, status=404, title="Not found", message=str(exc))


# ------------------------------------------------------------------ sign-in, sign-out, home


def _safe_next(value: str | None) -> str | None:
    if value and value.startswith("/staff") and not value.startswith("//") \
            and "\\" not in value and "\n" not in value and "\r" not in value:
        return value
    return None


def _sign_in_page(request: Request, *, status: int = 200, error: str | None = None,
                  username: str = "", next_path: str | None = None,
                  headers: dict | None = None) -> HTMLResponse:
    cookie, form_value = staff_auth.login_csrf_pair()
    response = render(request, "sign_in.html", None, status=status, error=error,
                      username=username, next_path=next_path or "", login_csrf=form_value,
                      expired=request.query_params.get("expired") == "1")
    response.set_cookie(staff_auth.LOGIN_CSRF_COOKIE, cookie, max_age=3600, path="/staff",
                        httponly=True, samesite="strict", secure=staff_auth.is_https(request))
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


@router.get("/staff", response_class=HTMLResponse)
def home(request: Request, session: ReadSessionDep) -> Response:
    try:
        staff = staff_auth.session_staff(request, session)
    except SignInRequired:
        return RedirectResponse("/staff/sign-in", status_code=303)
    return RedirectResponse(HOME.get(staff.role, "/staff/sign-in"), status_code=303)


@router.get("/staff/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _sign_in_page(request, next_path=_safe_next(next))


@router.post("/staff/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request,
    username: Annotated[str, Form(max_length=256)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    from sqlmodel import Session

    from claims.db import get_engine
    from claims.errors import AuthFailed
    from claims.staff import authenticate, issue_token

    next_path = _safe_next(next)
    if not staff_auth.login_csrf_ok(request.cookies.get(staff_auth.LOGIN_CSRF_COOKIE),
                                    csrf_token):
        return _sign_in_page(request, status=403, username=username, next_path=next_path,
                             error="The sign-in form expired or did not come from this "
                                   "console. Please try again.")
    try:
        with Session(get_engine(), expire_on_commit=False) as s:
            user = authenticate(s, username, password, totp=totp.strip() or None)
            token, ttl = issue_token(user)
            role = user.role
    except TooManyAttempts as exc:
        return _sign_in_page(request, status=429, username=username, next_path=next_path,
                             error=str(exc), headers={"Retry-After": str(exc.retry_after)})
    except AuthFailed as exc:
        return _sign_in_page(request, status=401, username=username, next_path=next_path,
                             error=str(exc))
    response = RedirectResponse(next_path or HOME.get(role, "/staff"), status_code=303)
    staff_auth.set_session_cookie(response, request, token, ttl)
    response.delete_cookie(staff_auth.LOGIN_CSRF_COOKIE, path="/staff")
    return response


@router.post("/staff/sign-out")
def sign_out(request: Request, staff: staff_auth.CurrentConsoleStaff,
             csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    staff_auth.sign_out(request)
    response = RedirectResponse("/staff/sign-in?notice=signed_out", status_code=303)
    staff_auth.clear_session_cookie(response, request)
    return response


# ------------------------------------------------------------------ caseworker: queue, claim


def _cases(session) -> list[dict[str, Any]]:
    from claims.models import Case

    return [{"code": c, "name": n} for c, n in
            session.execute(select(Case.code, Case.name).order_by(Case.code)).all()]


@router.get("/staff/queue", response_class=HTMLResponse)
def queue(
    request: Request, staff: CaseworkerPage, session: ReadSessionDep,
    case_id: str = "", status: str = "", flag: str = "",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    from claims import review

    filters = {"case_id": case_id.strip() or None, "status": status or None,
               "flag": flag or None}
    errors: dict[str, str] = {}
    data = {"items": [], "total": 0}
    try:
        data = review.review_queue(session, **filters, limit=QUEUE_PAGE,
                                   offset=(page - 1) * QUEUE_PAGE)
    except InvalidInput as exc:
        errors = field_errors(exc)
    keep = {k: v for k, v in filters.items() if v}
    pages = max(1, -(-data["total"] // QUEUE_PAGE))
    link = lambda p: "/staff/queue?" + urlencode({**keep, "page": p})  # noqa: E731
    return render(request, "queue.html", staff, status=422 if errors else 200,
                  items=data["items"], total=data["total"], page=page, pages=pages,
                  prev_url=link(page - 1) if page > 1 else None,
                  next_url=link(page + 1) if page < pages else None,
                  filters=filters, errors=errors, cases=_cases(session),
                  statuses=[s.value for s in ClaimStatus], flag_codes=FLAG_CODES)


def _claim_page(request: Request, staff: ConsoleStaff, session, reference: str, *,
                status: int = 200, **extra: Any) -> HTMLResponse:
    from claims import review

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
    from claims import review

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
    from claims import review

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


# ------------------------------------------------------------------ caseworker: rounds


def _all_rounds(session, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    from claims import rounds
    from claims.models import DistributionRound

    stmt = select(DistributionRound).order_by(DistributionRound.id.desc()).limit(500)
    if statuses:
        stmt = stmt.where(DistributionRound.status.in_(statuses))
    return [rounds.view(session, r) for r in session.execute(stmt).scalars().all()]


def _rounds_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                 **extra: Any) -> HTMLResponse:
    extra.setdefault("form", {"method": "pro-rata", "min_payout": "0"})
    extra.setdefault("preview", None)
    return render(request, "rounds.html", staff, status=status, rounds=_all_rounds(session),
                  cases=_cases(session), can_prepare=staff.role == "caseworker", **extra)


@router.get("/staff/rounds", response_class=HTMLResponse)
def rounds_page(request: Request, staff: CaseworkerPage, session: ReadSessionDep) -> HTMLResponse:
    return _rounds_page(request, staff, session)


def _round_form(case_id: str, pool: str, method: str, min_payout: str
                ) -> tuple[dict[str, str], dict[str, str], int | None, int | None]:
    form = {"case_id": case_id, "pool": pool, "method": method or "pro-rata",
            "min_payout": min_payout or "0"}
    errors: dict[str, str] = {}
    if not case_id:
        errors["case_id"] = "is required"
    pool_v = amount_or_error(pool, "pool", errors)
    if pool_v == 0:
        errors["pool"] = "must be greater than 0"
    min_v = amount_or_error(form["min_payout"], "min_payout", errors)
    if form["method"] not in ("pro-rata", "rising-tide"):
        errors["method"] = "must be pro-rata or rising-tide"
    return form, errors, pool_v, min_v


@router.get("/staff/rounds/new", response_class=HTMLResponse)
def round_preview(request: Request, staff: CaseworkerPage, session: ReadSessionDep,
                  case_id: str = "", pool: str = "", method: str = "pro-rata",
                  min_payout: str = "0") -> HTMLResponse:
    form, errors, pool_v, min_v = _round_form(case_id, pool, method, min_payout)
    if errors:
        return _rounds_page(request, staff, session, status=422, form=form, errors=errors)
    try:
        from claims.rounds import preview_round

        preview = preview_round(session, form["case_id"], pool_v, form["method"], min_v)
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
    from api.routes import rounds as rounds_api
    from claims.cases import get_case_by_code

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
    from claims import rounds

    try:
        rnd = rounds.get_round(session, round_id)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    v = rounds.view(session, rnd)
    why_not = None
    problems: list[str] = []
    if rnd.status == "prepared":
        problems = rounds.snapshot_problems(session, rnd)
        if staff.role != "caseworker":
            why_not = "Only a caseworker approves rounds."
        elif rnd.prepared_by == staff.id:
            why_not = ("You prepared this round: another caseworker must approve it "
                       "(four eyes).")
        elif problems:
            why_not = ("The claims changed since the round was prepared; approving marks it "
                       "stale. Prepare it again.")
    elif rnd.status == "stale":
        why_not = "This round is stale: a claim changed after it was prepared. Prepare it again."
    else:
        why_not = f"This round is {rnd.status}; only a prepared round can be approved."
    can_approve = rnd.status == "prepared" and staff.role == "caseworker" \
        and rnd.prepared_by != staff.id
    return render(request, "round.html", staff, status=status, r=v, why_not=why_not,
                  problems=problems, can_approve=can_approve, error=error)


@router.get("/staff/rounds/{round_id}", response_class=HTMLResponse)
def round_page(round_id: str, request: Request, staff: CaseworkerPage,
               session: ReadSessionDep) -> HTMLResponse:
    return _round_page(request, staff, session, round_id)


@router.post("/staff/rounds/{round_id}/approve", response_class=HTMLResponse)
def round_approve(round_id: str, request: Request, staff: CaseworkerAction,
                  session: ReadSessionDep,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims import rounds

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


# ------------------------------------------------------------------ finance

PAYABLE_ROUNDS = ("approved", "released", "settled", "stopped")


@router.get("/staff/finance", response_class=HTMLResponse)
def finance_page(request: Request, staff: FinancePage, session: ReadSessionDep) -> HTMLResponse:
    return render(request, "finance.html", staff, rounds=_all_rounds(session, PAYABLE_ROUNDS))


def _finance_round(request: Request, staff: ConsoleStaff, round_id: str, *,
                   state: str | None = None, offset: int = 0, status: int = 200,
                   error: str | None = None, result: dict | None = None) -> HTMLResponse:
    from claims import payouts, rounds

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
    from claims import payouts, rounds

    try:
        with session_scope(write=False) as s:
            v = rounds.get_round_view(s, round_id)
            summary = payouts.summary(s, round_id)
    except (NotFound, InvalidInput) as exc:
        return not_found(request, staff, NotFound(str(exc)))
    return render(request, "release.html", staff, r=v, s=summary, key=uuid.uuid4().hex)


@router.post("/staff/finance/rounds/{round_id}/release", response_class=HTMLResponse)
def release(round_id: str, request: Request, staff: FinanceAction, background: BackgroundTasks,
            idempotency_key: Annotated[str, Form(max_length=200)] = "",
            csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from api.routes import payouts as payouts_api
    from claims import idempotency, rounds

    check_csrf(staff, csrf_token)
    try:
        rid = rounds.parse_round_id(round_id)
        key = idempotency_key.strip() or uuid.uuid4().hex
        idempotency.check_key(key)
        # The same path as POST /api/v1/rounds/{id}/payouts (idempotent by the form's key).
        payouts_api._release(rid, key, staff)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    payouts_api.START_EXECUTION(background, rid)
    response = done(f"/staff/finance/rounds/{rid}", "released")
    response.background = background
    return response


@router.get("/staff/finance/rounds/{round_id}/instructions.csv")
def instructions(round_id: str, request: Request, staff: FinancePage) -> Response:
    from claims.rails import custodian

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
    from api.routes.payouts import MAX_CSV_BYTES
    from claims.rails import custodian

    check_csrf(staff, csrf_token)
    data = file.file.read(MAX_CSV_BYTES + 1) if file is not None else b""
    if not data:
        return _finance_round(request, staff, round_id, status=422,
                              error="Choose the custodian's confirmations file (CSV).")
    if len(data) > MAX_CSV_BYTES:
        return _finance_round(request, staff, round_id, status=413,
                              error=f"The file is larger than {MAX_CSV_BYTES // 2**20} MiB.")
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
    from api.routes import payouts as payouts_api
    from claims import payouts

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
        payouts_api.START_EXECUTION(background, rid)
        response.background = background
    return response


@router.post("/staff/finance/payouts/{payout_id}/hold", response_class=HTMLResponse)
def payout_hold(payout_id: str, request: Request, staff: FinanceAction,
                reason: Annotated[str, Form(max_length=2000)] = "",
                csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims import payouts

    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.hold_payout, "held",
                        reason=reason.strip() or None)


@router.post("/staff/finance/payouts/{payout_id}/resume", response_class=HTMLResponse)
def payout_resume(payout_id: str, request: Request, staff: FinanceAction,
                  background: BackgroundTasks,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims import payouts

    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.resume_payout, "resumed", background)


@router.post("/staff/finance/payouts/{payout_id}/retry", response_class=HTMLResponse)
def payout_retry(payout_id: str, request: Request, staff: FinanceAction,
                 background: BackgroundTasks,
                 csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims import payouts

    check_csrf(staff, csrf_token)
    return _payout_move(request, staff, payout_id, payouts.retry_payout, "retried", background)


@router.post("/staff/finance/rounds/{round_id}/restart", response_class=HTMLResponse)
def round_restart(round_id: str, request: Request, staff: FinanceAction,
                  background: BackgroundTasks,
                  csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from api.routes import payouts as payouts_api
    from claims import payouts

    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            rid = payouts.restart_round(s, round_id, actor=staff.actor).id
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    payouts_api.START_EXECUTION(background, rid)
    response = done(f"/staff/finance/rounds/{rid}", "restarted")
    response.background = background
    return response


@router.post("/staff/finance/rounds/{round_id}/mismatches/{mismatch_id}/resolve",
             response_class=HTMLResponse)
def mismatch_resolve(round_id: str, mismatch_id: str, request: Request, staff: FinanceAction,
                     background: BackgroundTasks,
                     reason: Annotated[str, Form(max_length=2000)] = "",
                     csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from api.routes import payouts as payouts_api
    from claims import payouts, rounds

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
    payouts_api.START_EXECUTION(background, rid)
    response = done(f"/staff/finance/rounds/{rid}", "resolved")
    response.background = background
    return response


@router.post("/staff/finance/rounds/{round_id}/reconcile", response_class=HTMLResponse)
def round_reconcile(round_id: str, request: Request, staff: FinanceAction,
                    csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims import payouts
    from claims.db import get_engine

    check_csrf(staff, csrf_token)
    try:
        result = payouts.reconcile_round(get_engine(), round_id, actor=staff.actor)
    except NotFound as exc:
        return not_found(request, staff, exc)
    except DomainError as exc:
        return _finance_round(request, staff, round_id, status=exc.status, error=str(exc))
    return _finance_round(request, staff, round_id, result={"kind": "reconcile", **result})


# ------------------------------------------------------------------ admin


def _users_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                **extra: Any) -> HTMLResponse:
    from claims.staff import ROLES, list_users

    extra.setdefault("form", {})
    extra.setdefault("created", None)
    return render(request, "users.html", staff, status=status, users=list_users(session),
                  roles=ROLES, can_act=staff.role == "admin", **extra)


@router.get("/staff/admin/users", response_class=HTMLResponse)
def users_page(request: Request, staff: AdminPage, session: ReadSessionDep) -> HTMLResponse:
    return _users_page(request, staff, session)


@router.post("/staff/admin/users", response_class=HTMLResponse)
def user_add(request: Request, staff: AdminAction, session: ReadSessionDep,
             username: Annotated[str, Form(max_length=256)] = "",
             role: Annotated[str, Form(max_length=32)] = "",
             password: Annotated[str, Form(max_length=1024)] = "",
             totp: Annotated[str, Form(max_length=8)] = "",
             csrf_token: Annotated[str, Form(max_length=256)] = "") -> HTMLResponse:
    from claims.staff import create_user

    check_csrf(staff, csrf_token)
    form = {"username": username, "role": role, "totp": bool(totp)}
    try:
        with session_scope() as s:
            new = create_user(s, username.strip(), role, password, totp=bool(totp),
                              actor=staff.actor)
            created = {"username": new.user.username, "role": new.user.role,
                       "totp_secret": new.totp_secret, "totp_uri": new.totp_uri}
    except DomainError as exc:
        session.rollback()
        return _users_page(request, staff, session, status=exc.status, form=form,
                           errors=field_errors(exc), error=error_text(exc))
    session.rollback()
    return _users_page(request, staff, session, created=created)


def _user_toggle(request: Request, staff: ConsoleStaff, username: str, fn, notice: str):
    try:
        with session_scope() as s:
            fn(s, username, actor=staff.actor)
    except NotFound as exc:
        return not_found(request, staff, exc)
    return done("/staff/admin/users", notice)


@router.post("/staff/admin/users/{username}/disable")
def user_disable(username: str, request: Request, staff: AdminAction,
                 csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims.staff import disable_user

    check_csrf(staff, csrf_token)
    if username == staff.username:
        raise ConsoleForbidden("You cannot disable your own account.", staff)
    return _user_toggle(request, staff, username, disable_user, "user_disabled")


@router.post("/staff/admin/users/{username}/enable")
def user_enable(username: str, request: Request, staff: AdminAction,
                csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims.staff import enable_user

    check_csrf(staff, csrf_token)
    return _user_toggle(request, staff, username, enable_user, "user_enabled")


def _blocked_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                  **extra: Any) -> HTMLResponse:
    from claims.blocked import blocked_view, list_blocked

    extra.setdefault("form", {})
    return render(request, "blocked.html", staff, status=status,
                  entries=[blocked_view(e) for e in list_blocked(session)],
                  can_act=staff.role == "admin", **extra)


@router.get("/staff/admin/blocked", response_class=HTMLResponse)
def blocked_page(request: Request, staff: AdminPage, session: ReadSessionDep) -> HTMLResponse:
    return _blocked_page(request, staff, session)


@router.post("/staff/admin/blocked", response_class=HTMLResponse)
def blocked_add(request: Request, staff: AdminAction, session: ReadSessionDep,
                address: Annotated[str, Form(max_length=200)] = "",
                reason: Annotated[str, Form(max_length=4000)] = "",
                csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims.blocked import add_blocked

    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            add_blocked(s, address.strip(), reason, actor=staff.actor)
    except DomainError as exc:
        session.rollback()
        return _blocked_page(request, staff, session, status=exc.status,
                             form={"address": address, "reason": reason},
                             errors=field_errors(exc), error=error_text(exc))
    return done("/staff/admin/blocked", "blocked")


@router.post("/staff/admin/blocked/remove", response_class=HTMLResponse)
def blocked_remove(request: Request, staff: AdminAction, session: ReadSessionDep,
                   address: Annotated[str, Form(max_length=200)] = "",
                   csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims.blocked import remove_blocked

    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            remove_blocked(s, address, actor=staff.actor)
    except DomainError as exc:
        session.rollback()
        return _blocked_page(request, staff, session, status=exc.status, error=error_text(exc))
    return done("/staff/admin/blocked", "unblocked")


def _insiders_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                   **extra: Any) -> HTMLResponse:
    from claims.models import Case, LedgerAccount

    rows = session.execute(
        select(Case.code, LedgerAccount.account_id, LedgerAccount.insider_reason)
        .join(Case, Case.id == LedgerAccount.case_id)
        .where(LedgerAccount.insider.is_(True))
        .order_by(Case.code, LedgerAccount.account_id).limit(1000)
    ).all()
    extra.setdefault("form", {})
    return render(request, "insiders.html", staff, status=status,
                  insiders=[{"case_id": c, "account_id": a, "reason": r} for c, a, r in rows],
                  cases=_cases(session), can_act=staff.role == "admin", **extra)


@router.get("/staff/admin/insiders", response_class=HTMLResponse)
def insiders_page(request: Request, staff: AdminPage, session: ReadSessionDep) -> HTMLResponse:
    return _insiders_page(request, staff, session)


@router.post("/staff/admin/insiders", response_class=HTMLResponse)
def insider_mark(request: Request, staff: AdminAction, session: ReadSessionDep,
                 case_id: Annotated[str, Form(max_length=64)] = "",
                 account_id: Annotated[str, Form(max_length=200)] = "",
                 reason: Annotated[str, Form(max_length=2000)] = "",
                 csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    from claims.ledger import mark_insider

    check_csrf(staff, csrf_token)
    form = {"case_id": case_id, "account_id": account_id, "reason": reason}
    errors = {k: "is required" for k in ("case_id", "account_id") if not form[k].strip()}
    if errors:
        return _insiders_page(request, staff, session, status=422, form=form, errors=errors)
    try:
        with session_scope() as s:
            mark_insider(s, case_id.strip(), account_id.strip(), reason, actor=staff.actor)
    except DomainError as exc:
        session.rollback()
        return _insiders_page(request, staff, session, status=exc.status, form=form,
                              error=error_text(exc))
    return done("/staff/admin/insiders", "insider")


# ------------------------------------------------------------------ auditor


@router.get("/staff/audit", response_class=HTMLResponse)
def audit_page(request: Request, staff: AuditorPage, session: ReadSessionDep,
               page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
               action: str = "") -> HTMLResponse:
    from claims.models import AuditEvent

    cond = [AuditEvent.action == action] if action else []
    total = session.execute(select(func.count()).select_from(AuditEvent).where(*cond)
                            ).scalar_one()
    events = session.execute(
        select(AuditEvent).where(*cond).order_by(AuditEvent.id.desc())
        .limit(AUDIT_PAGE).offset((page - 1) * AUDIT_PAGE)
    ).scalars().all()
    pages = max(1, -(-total // AUDIT_PAGE))
    keep = {"action": action} if action else {}
    link = lambda p: "/staff/audit?" + urlencode({**keep, "page": p})  # noqa: E731
    return render(request, "audit.html", staff, events=events, total=total, page=page,
                  pages=pages, action=action,
                  prev_url=link(page - 1) if page > 1 else None,
                  next_url=link(page + 1) if page < pages else None)


@router.get("/staff/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, staff: AuditorPage, session: ReadSessionDep) -> HTMLResponse:
    from claims.audit import verify_chain

    result = verify_chain(session)
    return render(request, "verify.html", staff, result=result)
