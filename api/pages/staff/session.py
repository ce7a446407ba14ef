"""Signing in and out of the console, and ``/staff`` sending each role to its home page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from api.deps import ReadSessionDep
from api.pages import staff_auth
from api.pages.staff.common import HOME, render
from api.pages.staff_auth import SignInRequired, check_csrf
from claims.db import get_engine
from claims.errors import AuthFailed, TooManyAttempts
from claims.staff import authenticate, issue_token

router = APIRouter(include_in_schema=False)


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
    next_path = _safe_next(next)
    if not staff_auth.login_csrf_ok(request.cookies.get(staff_auth.LOGIN_CSRF_COOKIE),
                                    csrf_token):
        return _sign_in_page(request, status=403, username=username, next_path=next_path,
                             error="The sign-in form expired or did not come from this "
                                   "console. Please try again.")
    try:
        # a fresh session: authenticate does its bookkeeping in transactions of its own
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
