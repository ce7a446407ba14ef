"""The public web pages: ``/`` (the claim form) and ``/status`` — usable without JavaScript.

* Language: ``?lang=kk|ru|en``; without it the best of ``Accept-Language``; Kazakh (Cyrillic)
  by default. ``<html lang="…">`` follows it; the words come from the ``pages`` gettext domain.
* ``/``: the form's inputs are named exactly as the API's fields; a POST files the claim
  through the same code as ``POST /api/v1/claims`` (:func:`claims.intake.file_request`)
  under the same rate limit. A refused form comes back with what was typed and each error
  beside its field in the page's language; a filed claim shows its reference and access
  token once, with a link to ``/status``.
* ``/status``: reference + access token in a POST form (the token never travels in a URL);
  shows status, timeline, open requests, allocations and payouts; a lost token can be
  re-sent to the e-mail on file (``/status/token-reset``, the same answer whether or not the
  reference and e-mail match).

Every page carries the anti-phishing notice, is sent ``no-store`` and may not be framed.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from api import limits
from api.pages import i18n
from claims import documents, intake
from claims.db import session_scope
from claims.errors import (
    DomainError,
    DuplicateClaim,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TooManyAttempts,
    UnsupportedMediaType,
)

router = APIRouter(include_in_schema=False)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
LANGUAGE_NAMES = (("kk", "Қазақша"), ("ru", "Русский"), ("en", "English"))


def page_language(request: Request) -> str:
    return i18n.pick_language(request.query_params.get("lang"),
                              request.headers.get("accept-language"))


def render(request: Request, lang: str, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    env = i18n.env(lang)
    html = env.get_template(template).render(
        lang=lang,
        languages=LANGUAGE_NAMES,
        path=request.url.path,
        **context,
    )
    headers = dict(SECURITY_HEADERS)
    headers["Content-Language"] = lang
    return HTMLResponse(html, status_code=status, headers=headers)


def open_cases() -> list[dict[str, str]]:
    with session_scope(write=False) as s:
        return intake.open_cases(s)


# ----------------------------------------------------------------------------- the claim form

_HASH_SPLIT = re.compile(r"[\s,;]+")


def form_to_claim(form: dict[str, str]) -> dict[str, Any]:
    """The form's strings → the API's claim body (blank optional fields are absent)."""
    data: dict[str, Any] = {}
    for name in intake.CLAIM_FIELDS:
        value = form.get(name)
        if name == "consent":
            data[name] = value in ("true", "on", "1", "yes")
        elif name == "evidence_tx_hashes":
            items = [h for h in _HASH_SPLIT.split(value or "") if h]
            if items:
                data[name] = items
        elif value is None or (name in ("date_of_birth", "scheme_account") and not value.strip()):
            continue
        else:
            data[name] = value
    return data


def _error_map(errors: list[dict[str, str]], lang: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in errors:
        field = e["field"] if e["field"] in intake.CLAIM_FIELDS else "body"
        text = i18n.localize_error(field, e["message"], lang)
        if text not in out.setdefault(field, []):
            out[field].append(text)
    return out


def _form_page(request: Request, lang: str, *, values: dict[str, str] | None = None,
               errors: dict[str, list[str]] | None = None, message: str | None = None,
               status: int = 200) -> HTMLResponse:
    values = dict(values or {})
    values.setdefault("language", lang)
    values.setdefault("case_id", request.query_params.get("case", ""))
    cases = open_cases()
    if not values["case_id"] and len(cases) == 1:
        values["case_id"] = cases[0]["code"]
    return render(request, lang, "form.html", status=status, values=values, errors=errors or {},
                  message=message, cases=cases, fields=intake.CLAIM_FIELDS)


@router.get("/", response_class=HTMLResponse)
def claim_form(request: Request) -> HTMLResponse:
    return _form_page(request, page_language(request))


@router.post("/", response_class=HTMLResponse)
async def claim_form_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    tr = i18n.get_translations(i18n.DOMAIN, lang).gettext
    try:
        limits.check_rate(request, "filing")
        body = await run_in_threadpool(intake.file_request, form_to_claim(values))
    except TooManyAttempts as exc:
        response = _form_page(request, lang, values=values, status=429,
                              message=tr(i18n.MESSAGES["rate_limited"]))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except InvalidInput as exc:
        return _form_page(request, lang, values=values, errors=_error_map(exc.errors, lang),
                          message=tr(i18n.MESSAGES["fix_errors"]), status=422)
    except DuplicateClaim:
        return _form_page(request, lang, values=values, status=409,
                          message=tr(i18n.MESSAGES["duplicate"]))
    warnings = [i18n.localize_warning(w["field"], w["message"], lang) for w in body["warnings"]]
    return render(request, lang, "filed.html", status=201, reference=body["reference"],
                  access_token=body["access_token"], warnings=warnings)


# ----------------------------------------------------------------------------- status


@router.get("/status", response_class=HTMLResponse)
def status_page(request: Request) -> HTMLResponse:
    lang = page_language(request)
    ref = request.query_params.get("reference", "")
    return render(request, lang, "status.html", values={"reference": ref}, view=None)


@router.post("/status", response_class=HTMLResponse)
async def status_page_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    form = await request.form()
    ref = form.get("reference") if isinstance(form.get("reference"), str) else ""
    token = form.get("access_token") if isinstance(form.get("access_token"), str) else ""
    tr = i18n.get_translations(i18n.DOMAIN, lang).gettext

    def lookup() -> dict[str, Any]:
        with session_scope(write=False) as s:
            claim = intake.find_claim(s, ref, token)
            return intake.status_view(s, claim)

    try:
        view = await run_in_threadpool(lookup)
    except NotFound:
        return render(request, lang, "status.html", status=404, values={"reference": ref},
                      view=None, message=tr(i18n.MESSAGES["not_found"]))
    return _status_view_page(request, lang, view, token)


def _status_view_page(request: Request, lang: str, view: dict[str, Any], token: str, *,
                      status: int = 200, done: str | None = None,
                      message: str | None = None) -> HTMLResponse:
    return render(request, lang, "status.html", status=status,
                  values={"reference": view["reference"]}, view=i18n.localize_status(view, lang),
                  access_token=token, done=done, message=message)


def _form_str(form, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _status_action(request: Request, lang: str, ref: str, token: str, action) -> HTMLResponse:
    """Run ``action(session, claim)`` for the claim (token checked), then show its status
    with what happened; the same 404 page as /status for a wrong reference or token."""
    tr = i18n.get_translations(i18n.DOMAIN, lang).gettext
    message = done = None
    status = 200
    try:
        with session_scope() as s:
            claim = intake.find_claim(s, ref, token, lock=True)
            done = tr(action(s, claim))
    except NotFound:
        return render(request, lang, "status.html", status=404, values={"reference": ref},
                      view=None, message=tr(i18n.MESSAGES["not_found"]))
    except InvalidInput:
        message, status = tr(i18n.MESSAGES["empty_reply"]), 422
    except UnsupportedMediaType:
        message, status = tr(i18n.MESSAGES["unsupported_type"]), 415
    except PayloadTooLarge:
        message, status = tr(i18n.MESSAGES["too_large"]), 413
    except DomainError:
        message, status = tr(i18n.MESSAGES["not_now"]), 409
    with session_scope(write=False) as s:
        view = intake.status_view(s, intake.find_claim(s, ref, token))
    return _status_view_page(request, lang, view, token, status=status, done=done, message=message)


@router.post("/status/reply", response_class=HTMLResponse)
async def reply_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    form = await request.form()
    ref, token, text = (_form_str(form, n) for n in ("reference", "access_token", "message"))

    def action(s, claim) -> str:
        intake.reply(s, claim, text)
        return i18n.MESSAGES["reply_sent"]

    return await run_in_threadpool(_status_action, request, lang, ref, token, action)


@router.post("/status/documents", response_class=HTMLResponse)
async def document_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    form = await request.form()
    ref, token = _form_str(form, "reference"), _form_str(form, "access_token")
    upload = form.get("file")

    def action(s, claim) -> str:
        if upload is None or isinstance(upload, str):
            raise UnsupportedMediaType("no file")
        documents.check_can_upload(s, claim)
        saved = documents.save_upload(upload.file)
        try:
            documents.record(s, claim, saved)
            s.flush()
        except BaseException:
            documents.discard(saved)
            raise
        return i18n.MESSAGES["document_added"]

    return await run_in_threadpool(_status_action, request, lang, ref, token, action)


@router.post("/status/token-reset", response_class=HTMLResponse)
async def token_reset_post(request: Request) -> HTMLResponse:
    lang = page_language(request)
    form = await request.form()
    ref = form.get("reference") if isinstance(form.get("reference"), str) else ""
    email = form.get("email") if isinstance(form.get("email"), str) else ""
    tr = i18n.get_translations(i18n.DOMAIN, lang).gettext
    try:
        limits.check_rate(request, "contact")
    except TooManyAttempts as exc:
        response = render(request, lang, "status.html", status=429, values={"reference": ref},
                          view=None, message=tr(i18n.MESSAGES["rate_limited"]))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    def reset() -> None:
        with session_scope() as s:
            intake.reset_token(s, ref, email)

    try:
        await run_in_threadpool(reset)
    except DomainError:  # pragma: no cover - reset_token refuses nothing; same answer anyway
        pass
    return render(request, lang, "status.html", status=202, values={"reference": ref}, view=None,
                  reset_sent=True)
