"""The auditor's pages: the audit trail, newest first and paged (filter ``action``), and
the chain verified (:func:`claims.audit.verify_chain`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from api.deps import ReadSessionDep
from api.pages.staff.common import AuditorPage, page_links, render
from claims import audit
from claims.audit import verify_chain

router = APIRouter(include_in_schema=False)

AUDIT_PAGE = 50


@router.get("/staff/audit", response_class=HTMLResponse)
def audit_page(request: Request, staff: AuditorPage, session: ReadSessionDep,
               page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
               action: str = "") -> HTMLResponse:
    events, total = audit.page(session, action=action or None, limit=AUDIT_PAGE,
                                         offset=(page - 1) * AUDIT_PAGE)
    pages = max(1, -(-total // AUDIT_PAGE))
    prev_url, next_url = page_links("/staff/audit", {"action": action} if action else {},
                                    page, pages)
    return render(request, "audit.html", staff, events=events, total=total, page=page,
                  pages=pages, action=action, prev_url=prev_url, next_url=next_url)


@router.get("/staff/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, staff: AuditorPage, session: ReadSessionDep) -> HTMLResponse:
    return render(request, "verify.html", staff, result=verify_chain(session))
