"""What every page of the staff console shares: the role sets (those of :mod:`api.auth`'s
annotations), rendering with the console's headers and navigation, the redirect after a
form, domain errors shown on a page, amounts read from a form, and the error pages."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from api import auth as api_auth
from api.pages import staff_auth
from api.pages.staff_auth import ConsoleForbidden, ConsoleStaff, SignInRequired, console_roles
from claims.errors import DomainError
from claims.money import AmountError, parse_amount
from notifications.i18n import TEMPLATES_DIR

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


def page_links(base: str, keep: dict[str, str], page: int, pages: int
               ) -> tuple[str | None, str | None]:
    """The previous and next page's URLs of a paged list (``None`` at either end)."""
    link = lambda p: base + "?" + urlencode({**keep, "page": p})  # noqa: E731
    return (link(page - 1) if page > 1 else None, link(page + 1) if page < pages else None)


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
