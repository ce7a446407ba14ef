"""The staff console's session: a cookie instead of the API's bearer header, the same rules.

- The session cookie (:data:`COOKIE`) holds the signed JWT of :func:`claims.staff.issue_token`
  — the same token the API accepts — ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, ``Secure``
  when the request came over https, ``Max-Age`` = the token's lifetime. It is checked on every
  request by :func:`claims.staff.staff_for_token` (signature, expiry, disabled account,
  password changed since), so a session expires with its token and ends at once when the
  account is disabled.
- Roles: :func:`console_roles` takes one of :mod:`api.auth`'s ready-made annotations
  (``Caseworker``, ``FinanceOrAuditor``…) and uses *its* role set, so the console and the API
  cannot drift apart. Not signed in (or expired) → :class:`SignInRequired` (a 303 to the
  sign-in page, which returns to the page asked for); another role → :class:`ConsoleForbidden`
  (a 403 page). Both are logged on ``restitution.security`` like the API's refusals.
- CSRF: every POST form carries ``csrf_token``. Signed in, the token is an HMAC of the
  session's ``jti`` (bound to that session: a token of another session or none is refused with
  a 403 page and nothing changes). The sign-in form itself uses a signed double-submit cookie
  (:data:`LOGIN_CSRF_COOKIE`), against login CSRF.
- Sign-out deletes the cookie and revokes the token in the database
  (:func:`claims.staff.revoke_token`): a copied cookie stops working in every server process.
- The round report page (``/staff/rounds/{id}/report``, :mod:`api.pages.reports`) and the plan
  CSV authenticate with the bearer header; :class:`CookieBearer` (an ASGI middleware) lends the
  session's token as ``Authorization: Bearer`` to those two GET paths only, so the console can
  link to them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from api.auth import Staff
from api.deps import ReadSessionDep
from claims.errors import AuthFailed

log = logging.getLogger("restitution.security")

COOKIE = "restitution_staff"
LOGIN_CSRF_COOKIE = "restitution_staff_login"
CSRF_FIELD = "csrf_token"

# GET paths that take the console's session as a bearer token (read-only pages of others).
BEARER_PATHS = (
    re.compile(r"^/staff/rounds/[0-9]{1,18}/report$"),
    re.compile(r"^/api/v1/rounds/[0-9]{1,18}/plan\.csv$"),
)


class SignInRequired(Exception):
    """No valid session: the console answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str, reason: str | None = None) -> None:
        super().__init__(reason or "sign in first")
        self.next_path = next_path
        self.reason = reason


class ConsoleForbidden(Exception):
    """A signed-in member asked for another role's page, or a form came without its CSRF
    token: a 403 page."""

    def __init__(self, message: str, staff: Staff | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.staff = staff


@dataclass(frozen=True)
class ConsoleStaff(Staff):
    """The signed-in member of a console request, with the session's CSRF token."""

    csrf: str = ""
    expires_at: int = 0


# ------------------------------------------------------------------ keys, CSRF


def _key(purpose: bytes) -> bytes:
    from claims.settings import get_settings

    return hmac.new(get_settings().secret_key.encode(), b"restitution/console/" + purpose,
                    hashlib.sha256).digest()


def csrf_for(jti: str) -> str:
    """The CSRF token bound to a session (its JWT ``jti``)."""
    return hmac.new(_key(b"csrf"), jti.encode(), hashlib.sha256).hexdigest()


def login_csrf_pair() -> tuple[str, str]:
    """``(cookie value, form value)`` for the sign-in form's double submit."""
    nonce = secrets.token_urlsafe(24)
    return nonce, hmac.new(_key(b"login"), nonce.encode(), hashlib.sha256).hexdigest()


def login_csrf_ok(cookie: str | None, form_value: str | None) -> bool:
    if not cookie or not form_value:
        return False
    expected = hmac.new(_key(b"login"), cookie.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, form_value)


def check_csrf(staff: ConsoleStaff, form_value: object) -> None:
    if not isinstance(form_value, str) or not hmac.compare_digest(staff.csrf, form_value):
        log.warning("console refused: user=%s reason=csrf", staff.username)
        raise ConsoleForbidden("This form has expired or did not come from this console "
                               "(missing or wrong CSRF token). Open the page again and retry.",
                               staff)


# ------------------------------------------------------------------ cookies


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(COOKIE, token, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=is_https(request))


def clear_session_cookie(response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=is_https(request))


def sign_out(request: Request) -> None:
    """Revoke the request's session token for every server process (the caller clears the
    cookie): :func:`claims.staff.revoke_token`."""
    from claims.db import session_scope
    from claims.staff import revoke_token

    token = request.cookies.get(COOKIE)
    if token:
        with session_scope() as s:
            revoke_token(s, token)


# ------------------------------------------------------------------ the dependency


def _next_path(request: Request) -> str:
    path = request.url.path
    if request.method == "GET" and request.url.query:
        path += "?" + request.url.query
    return path


def session_staff(request: Request, session) -> ConsoleStaff:
    """The session's staff member (any role); :class:`SignInRequired` otherwise."""
    from claims.staff import decode_token, staff_for_token

    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired(_next_path(request))
    try:
        claims = decode_token(token)
        user = staff_for_token(session, token)
    except AuthFailed as exc:
        raise SignInRequired(_next_path(request), str(exc)) from None
    staff = ConsoleStaff(user.id, user.username, user.role, csrf=csrf_for(str(claims["jti"])),
                         expires_at=int(claims["exp"]))
    request.state.staff = staff
    return staff


def roles_of(annotation: Any) -> frozenset[str]:
    """The role set of one of :mod:`api.auth`'s annotations (``Annotated[Staff,
    Depends(require_roles(...))]``)."""
    for meta in getattr(annotation, "__metadata__", ()):
        roles = getattr(getattr(meta, "dependency", None), "roles", None)
        if roles:
            return frozenset(roles)
    raise ValueError(f"{annotation!r} declares no role set")


def console_roles(annotation: Any):
    """A dependency: the session's member when their role is in ``annotation``'s role set."""
    allowed = roles_of(annotation)

    def dependency(request: Request, session: ReadSessionDep) -> ConsoleStaff:
        staff = session_staff(request, session)
        if staff.role not in allowed:
            log.warning("console refused: user=%s role=%s on %s %s (needs %s)", staff.username,
                        staff.role, request.method, request.url.path, "/".join(sorted(allowed)))
            raise ConsoleForbidden(
                f"This page belongs to the {' or '.join(sorted(allowed))} role; "
                f"you are signed in as {staff.role}.", staff)
        return staff

    dependency.roles = allowed  # type: ignore[attr-defined]
    return dependency


def _any_staff(request: Request, session: ReadSessionDep) -> ConsoleStaff:
    return session_staff(request, session)


CurrentConsoleStaff = Annotated[ConsoleStaff, Depends(_any_staff)]


# ------------------------------------------------------------------ the report pages' bearer


class CookieBearer:
    """ASGI middleware: for the GET paths in :data:`BEARER_PATHS` without an Authorization
    header, the console's session cookie is presented as the bearer token (the route then
    checks it exactly as for the API)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope.get("method") in ("GET", "HEAD")
                and any(p.match(scope.get("path", "")) for p in BEARER_PATHS)):
            headers = list(scope.get("headers") or [])
            if not any(k == b"authorization" for k, _ in headers):
                token = _cookie(headers, COOKIE)
                if token:
                    scope = dict(scope)
                    scope["headers"] = headers + [(b"authorization",
                                                   b"Bearer " + token.encode("latin-1"))]
        await self.app(scope, receive, send)


def _cookie(headers, name: str) -> str | None:
    from http.cookies import SimpleCookie

    for k, v in headers:
        if k == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(v.decode("latin-1"))
            except Exception:  # noqa: BLE001 - a malformed cookie header: no token
                continue
            if name in jar:
                value = jar[name].value
                if re.fullmatch(r"[A-Za-z0-9_.-]{10,4096}", value):
                    return value
    return None
