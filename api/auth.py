"""Staff authentication and authorization for routes: deny by default.

How a staff route module uses this (rounds, payouts, cases, console…)::

    from api.auth import Caseworker, StaffReader, staff_router   # at module level (*)

    router = staff_router(tags=["rounds"])          # every route needs a valid bearer token

    @router.get("/api/v1/rounds/{id}", responses=problems(401, 403, 404))
    def get_round(id: int, staff: StaffReader, session: ReadSessionDep): ...

    @router.post("/api/v1/rounds/{id}/approve", responses=problems(401, 403, 409))
    def approve(id: int, staff: Caseworker, session: SessionDep):
        do_it(session, id, actor=staff.actor)      # staff.id, staff.username, staff.role

- The ready-made annotations: :data:`Caseworker`, :data:`Finance`, :data:`Admin`,
  :data:`Auditor`, :data:`CaseworkerOrAuditor` (a caseworker's reads), :data:`FinanceOrAuditor`
  (finance's reads), :data:`AdminOrAuditor`, :data:`StaffReader` (every staff role: the
  "all staff may read" GETs). Others: ``Annotated[Staff, Depends(require_roles("a", "b"))]``.
  The auditor reads every staff ``GET``: give every staff GET a role set that includes
  ``auditor``, and never give ``auditor`` to anything that changes state.
- A missing, malformed, expired or revoked token → 401 problem+json with
  ``WWW-Authenticate: Bearer``; a role not in the set → 403. Both are logged on the
  ``restitution.security`` logger (user name, role, method and path; never the token).
- Deny by default: a route on a :func:`staff_router` that declares no role set answers 403
  to everybody, so forgetting the role cannot open a route. (Routes on a plain ``APIRouter``
  are public; only the victims' routes and ``/api/v1/auth/token`` should be.)
- The dependency yields a :class:`Staff` (id, username, role, ``actor`` for the audit trail),
  not an ORM object, so it fits read and write handlers alike; use ``staff.id`` for columns
  such as ``prepared_by``.
- (*) FastAPI resolves postponed (``from __future__ import annotations``) annotations in the
  module's globals: import these names at module level, not inside a function.
- Pages (the ``/staff`` console) that keep the token elsewhere (a cookie) check it with
  ``claims.staff.staff_for_token(session, token)`` (raises ``AuthFailed``) and then the role.
- Four eyes rules that depend on data (the approver is not the preparer) stay in ``claims/``
  and raise ``FourEyes`` (403) there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordBearer

from api.deps import ReadSessionDep
from claims.audit import Actor
from claims.errors import AuthFailed, Forbidden

log = logging.getLogger("restitution.security")

TOKEN_URL = "/api/v1/auth/token"

# OpenAPI: the password flow (so /docs can sign in); we do the 401 ourselves (problem+json).
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    scheme_name="StaffPassword",
    description="Staff sign-in: OAuth2 password flow (username, password; `totp` when enrolled).",
)


@dataclass(frozen=True)
class Staff:
    """The signed-in staff member of a request."""

    id: int
    username: str
    role: str

    @property
    def actor(self) -> Actor:
        return Actor(self.username, self.role, self.id)


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def get_current_staff(
    request: Request,
    session: ReadSessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)] = None,
) -> Staff:
    """The bearer token's staff member, checked against the account now (401 otherwise)."""
    from claims.staff import staff_for_token

    if not token:
        log.warning("access refused: no bearer token on %s", _where(request))
        raise AuthFailed("sign in first: this needs a staff bearer token")
    try:
        user = staff_for_token(session, token)
    except AuthFailed:
        log.warning("access refused: bad bearer token on %s", _where(request))
        raise
    staff = Staff(user.id, user.username, user.role)
    request.state.staff = staff
    return staff


CurrentStaff = Annotated[Staff, Depends(get_current_staff)]


def require_roles(*roles: str):
    """A dependency that lets only ``roles`` through (403 for the others, 401 without a token)."""
    allowed = frozenset(roles)
    if not allowed:
        raise ValueError("require_roles needs at least one role")

    def dependency(request: Request, staff: CurrentStaff) -> Staff:
        if staff.role not in allowed:
            log.warning("access refused: user=%s role=%s on %s (needs %s)", staff.username,
                        staff.role, _where(request), "/".join(sorted(allowed)))
            raise Forbidden(f"this needs the role {' or '.join(sorted(allowed))}; "
                            f"you are {staff.role}")
        return staff

    dependency.roles = allowed  # type: ignore[attr-defined]  # read by the deny-by-default check
    dependency.__name__ = "require_" + "_or_".join(sorted(allowed))
    return dependency


def _declares_roles(dependant) -> bool:
    for dep in dependant.dependencies:
        if getattr(dep.call, "roles", None) or _declares_roles(dep):
            return True
    return False


def _deny_without_roles(request: Request, staff: CurrentStaff) -> None:
    """Router-level guard of :func:`staff_router`: a route that declares no role set is
    closed to everybody."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    ok = getattr(route, "_restitution_roles_declared", None)
    if ok is None:
        ok = dependant is not None and _declares_roles(dependant)
        if route is not None:
            route._restitution_roles_declared = ok
    if not ok:
        log.warning("access refused: user=%s on %s declares no roles (deny by default)",
                    staff.username, _where(request))
        raise Forbidden("this endpoint is closed: it declares no staff roles")


def staff_router(**kwargs) -> APIRouter:
    """An ``APIRouter`` whose every route needs a valid token and a declared role set."""
    deps = list(kwargs.pop("dependencies", []))
    return APIRouter(dependencies=[Depends(_deny_without_roles), *deps], **kwargs)


Caseworker = Annotated[Staff, Depends(require_roles("caseworker"))]
Finance = Annotated[Staff, Depends(require_roles("finance"))]
Admin = Annotated[Staff, Depends(require_roles("admin"))]
Auditor = Annotated[Staff, Depends(require_roles("auditor"))]
CaseworkerOrAuditor = Annotated[Staff, Depends(require_roles("caseworker", "auditor"))]
CaseworkerOrAuditorRead = CaseworkerOrAuditor
FinanceOrAuditor = Annotated[Staff, Depends(require_roles("finance", "auditor"))]
AdminOrAuditor = Annotated[Staff, Depends(require_roles("admin", "auditor"))]
StaffReader = Annotated[
    Staff, Depends(require_roles("caseworker", "finance", "admin", "auditor"))
]
