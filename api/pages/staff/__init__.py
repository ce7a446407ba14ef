"""The staff console ``/staff``: server-rendered pages (Jinja2), usable without JavaScript
(docs/api.md "Pages").

Sessions, CSRF and roles: :mod:`api.pages.staff_auth` (a cookie holding the API's own JWT;
the role sets are those of :mod:`api.auth`'s annotations). Every page reuses the domain
functions of ``claims/`` — nothing here decides anything or queries the database itself.
The pages, by work:

- :mod:`.session` — sign-in / sign-out: ``GET|POST /staff/sign-in`` (``username``,
  ``password``, ``totp``), ``POST /staff/sign-out``; ``GET /staff`` sends each role to its
  home page.
- :mod:`.queue` — caseworker (the auditor reads): ``/staff/queue`` (filters ``case_id``,
  ``status``, ``flag``; pages), ``/staff/claims/{ref}`` (masked IIN, ledger movements, flags
  explained; decision and settlement forms).
- :mod:`.rounds` — caseworker (the auditor reads): ``/staff/rounds`` (list + prepare form),
  ``/staff/rounds/new`` (the preview: :func:`claims.allocation.allocate` on the case's
  payable claims, nothing stored), ``/staff/rounds/{id}`` (inspect, approve or why not; the
  report page with the chart is :mod:`api.pages.reports`).
- :mod:`.finance` — finance (the auditor reads): ``/staff/finance`` (rounds to pay),
  ``/staff/finance/rounds/{id}`` (progress by payout state, refreshing itself while payouts
  run; payouts with hold / resume / retry; mismatches; custodian files; reconcile),
  ``…/release`` (the confirmation step: count and sum, then the release with an
  idempotency key of the form).
- :mod:`.admin` — admin (the auditor reads): ``/staff/admin/users``,
  ``/staff/admin/blocked``, ``/staff/admin/insiders``.
- :mod:`.audit` — auditor: ``/staff/audit`` (the trail, paged), ``/staff/audit/verify``
  (the chain checked).
- :mod:`.common` — rendering, the role sets, errors shown on pages.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.pages.staff import admin, audit, finance, queue, rounds, session
from api.pages.staff.common import (
    HEADERS,
    HOME,
    NAV,
    NOTICES,
    AdminAction,
    AdminPage,
    AuditorPage,
    CaseworkerAction,
    CaseworkerPage,
    FinanceAction,
    FinancePage,
    install,
    render,
)

#: Every page of the console, in this order (one flat list of routes, as the app and the
#: tests that walk the console's forms see them).
router = APIRouter(include_in_schema=False)
for _pages in (session, queue, rounds, finance, admin, audit):
    router.routes.extend(_pages.router.routes)

__all__ = [
    "HEADERS", "HOME", "NAV", "NOTICES", "AdminAction", "AdminPage", "AuditorPage",
    "CaseworkerAction", "CaseworkerPage", "FinanceAction", "FinancePage", "install", "render",
    "router",
]
