"""The administrator's pages (the auditor reads them): staff accounts (add, disable,
enable: :mod:`claims.staff`), the blocked payout addresses (:mod:`claims.blocked`) and the
insider accounts of the ledger (:func:`claims.ledger.mark_insider`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from api.deps import ReadSessionDep
from api.pages.staff.common import (
    AdminAction,
    AdminPage,
    done,
    error_text,
    field_errors,
    not_found,
    render,
)
from api.pages.staff_auth import ConsoleForbidden, ConsoleStaff, check_csrf
from claims import cases, ledger
from claims.blocked import add_blocked, blocked_view, list_blocked, remove_blocked
from claims.db import session_scope
from claims.errors import DomainError, NotFound
from claims.ledger import mark_insider
from claims.staff import ROLES, create_user, disable_user, enable_user, list_users

router = APIRouter(include_in_schema=False)


# ------------------------------------------------------------------ staff accounts


def _users_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                **extra: Any) -> HTMLResponse:
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
    check_csrf(staff, csrf_token)
    if username == staff.username:
        raise ConsoleForbidden("You cannot disable your own account.", staff)
    return _user_toggle(request, staff, username, disable_user, "user_disabled")


@router.post("/staff/admin/users/{username}/enable")
def user_enable(username: str, request: Request, staff: AdminAction,
                csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(staff, csrf_token)
    return _user_toggle(request, staff, username, enable_user, "user_enabled")


# ------------------------------------------------------------------ blocked addresses


def _blocked_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                  **extra: Any) -> HTMLResponse:
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
    check_csrf(staff, csrf_token)
    try:
        with session_scope() as s:
            remove_blocked(s, address, actor=staff.actor)
    except DomainError as exc:
        session.rollback()
        return _blocked_page(request, staff, session, status=exc.status, error=error_text(exc))
    return done("/staff/admin/blocked", "unblocked")


# ------------------------------------------------------------------ insider accounts


def _insiders_page(request: Request, staff: ConsoleStaff, session, *, status: int = 200,
                   **extra: Any) -> HTMLResponse:
    extra.setdefault("form", {})
    return render(request, "insiders.html", staff, status=status,
                  insiders=ledger.insider_accounts(session),
                  cases=cases.case_choices(session), can_act=staff.role == "admin", **extra)


@router.get("/staff/admin/insiders", response_class=HTMLResponse)
def insiders_page(request: Request, staff: AdminPage, session: ReadSessionDep) -> HTMLResponse:
    return _insiders_page(request, staff, session)


@router.post("/staff/admin/insiders", response_class=HTMLResponse)
def insider_mark(request: Request, staff: AdminAction, session: ReadSessionDep,
                 case_id: Annotated[str, Form(max_length=64)] = "",
                 account_id: Annotated[str, Form(max_length=200)] = "",
                 reason: Annotated[str, Form(max_length=2000)] = "",
                 csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
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
