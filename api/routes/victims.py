"""The victims' API (docs/api.md): file a claim, follow it, act on it.

No login: each claim has an access token (``X-Claim-Token``), given once when it is filed.
The rules live in :mod:`claims.intake` and :mod:`claims.documents`; this module parses,
calls them in one transaction per request, and presents.

Choices worth knowing:

* ``POST /api/v1/claims`` reads its JSON body itself and has it validated by the domain
  (:func:`claims.intake.check_filing`), so that *every* bad field — wrong types included (a
  JSON number for ``claimed_amount``) and the case's own state (unknown, closed), which needs
  the database — is reported at once with the field's name and the same message as the claim
  form and the CSV import give. The documented schema (:class:`ClaimIn`) is exact, but
  unknown extra fields are ignored (forward compatibility; a typo in an optional field's name
  cannot pass silently because every required field is named when missing). The other
  request bodies are Pydantic models FastAPI validates.
* ``Idempotency-Key``: a repeat with the same body answers 201 with the same reference and a
  *fresh* access token; the token given before stops working (a claim has one valid token
  at a time — the repeat usually means the first answer was lost).
* Unknown reference, missing token, wrong token: the same 404.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Header, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import limits
from api.pages.i18n import localize_status
from api.problems import problems
from claims import documents, idempotency, intake
from claims.db import get_engine, session_scope
from claims.errors import InvalidInput
from claims.money import AMOUNT_PATTERN

router = APIRouter(prefix="/api/v1/claims", tags=["victims"])

REFERENCE_PATTERN = r"^KZR-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$"

ClaimToken = Annotated[
    str | None,
    Header(alias="X-Claim-Token", description="The claim's access token (given when filed)."),
]


# ----------------------------------------------------------------------------- models


class ClaimIn(BaseModel):
    """A claim filing. Unknown extra fields are ignored."""

    model_config = ConfigDict(
        extra="allow",
        title="ClaimIn",
        json_schema_extra={"examples": [{
            "case_id": "example-case",
            "full_name": "Асель Нұрланқызы Сейітова",
            "iin": "791028302728",
            "date_of_birth": "1979-10-28",
            "email": "asel@example.kz",
            "phone": "+7 701 234 5678",
            "language": "kk",
            "scheme_account": "asel79",
            "claimed_amount": "1500.25",
            "evidence_tx_hashes": ["5f" * 32],
            "payout_network": "tron",
            "payout_address": "TBXSw8fM4jpQkGc6zZjsVABFpVN7UvXPdV",
            "consent": True,
        }]},
    )

    case_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$",
                         description="The case CODE; the case must be open.")
    full_name: str = Field(min_length=1, max_length=200)
    iin: str = Field(pattern=r"^[0-9]{12}$",
                     description="Kazakhstan IIN, 12 digits with a valid check digit.")
    date_of_birth: dt.date | None = Field(
        default=None, description="Optional; must agree with the birth date in the IIN.")
    email: str = Field(json_schema_extra={"format": "email"}, max_length=320)
    phone: str = Field(description="Kazakhstan phone: +7 and 10 digits (spaces, hyphens, "
                                   "parentheses allowed).", max_length=32)
    language: Literal["kk", "ru", "en"]
    scheme_account: str | None = Field(default=None, max_length=100)
    claimed_amount: str = Field(pattern=AMOUNT_PATTERN,
                                description="USDT as a decimal string, > 0, at most 6 decimals; "
                                            "a JSON number is refused.")
    evidence_tx_hashes: list[str] | None = Field(
        default=None, max_length=100,
        description="Transaction hashes of deposits (Ethereum 0x + 64 hex; TRON 64 hex).")
    payout_network: Literal["tron", "ethereum"]
    payout_address: str = Field(description="A TRON (T…, base58check) or Ethereum (0x…, "
                                            "EIP-55) address of payout_network.")
    consent: Literal[True] = Field(description="Consent to the processing of personal data; "
                                               "must be true.")


class FieldWarning(BaseModel):
    field: str
    message: str


class ClaimFiled(BaseModel):
    reference: str = Field(pattern=REFERENCE_PATTERN)
    status: Literal["submitted"]
    access_token: str = Field(description="Shown once; keep it: it opens the claim's status.")
    warnings: list[FieldWarning]


class InfoRequest(BaseModel):
    id: str
    asked_at: str
    text: str


class AllocationOut(BaseModel):
    round: int
    amount: str
    reserved: str
    rate_percent: str


class PayoutOut(BaseModel):
    round: int
    state: str
    state_text: str
    amount: str
    network: str
    tx_id: str | None
    explorer_url: str | None
    updated_at: str


class TimelineEntry(BaseModel):
    at: str
    event: str
    text: str


class ClaimStatusOut(BaseModel):
    reference: str
    status: Literal["submitted", "verifying", "flagged", "needs_info", "approved", "disputed",
                    "rejected"]
    status_text: str = Field(description="The status in plain words, in the claimant's language.")
    language: str
    recognized_loss: str | None
    claimed_amount: str
    payout_network: str
    payout_network_text: str
    payout_address: str
    rejection_reason: str | None
    requests: list[InfoRequest]
    allocations: list[AllocationOut]
    payouts: list[PayoutOut]
    timeline: list[TimelineEntry]


class DocumentOut(BaseModel):
    id: str
    sha256: str


class ReplyIn(BaseModel):
    message: str = Field(min_length=1, max_length=intake.MAX_MESSAGE_LEN)


class DisputeIn(BaseModel):
    reason: str = Field(min_length=1, max_length=intake.MAX_MESSAGE_LEN)
    amount: str | None = Field(default=None, json_schema_extra={"pattern": AMOUNT_PATTERN},
                               description="What the claimant says the loss is (USDT string).")


class StatusOut(BaseModel):
    reference: str
    status: str


class AddressChangeIn(BaseModel):
    payout_network: Literal["tron", "ethereum"]
    payout_address: str = Field(min_length=1, max_length=128)


class AddressChangeAccepted(BaseModel):
    status: Literal["code_sent"]
    detail: str
    warnings: list[FieldWarning]


class AddressConfirmIn(BaseModel):
    code: str = Field(min_length=1, max_length=16)


class AddressChanged(BaseModel):
    reference: str
    status: str
    payout_network: str
    payout_address: str


class TokenResetIn(BaseModel):
    reference: str = Field(max_length=64)
    email: str = Field(max_length=320)


class Accepted(BaseModel):
    detail: str


# ----------------------------------------------------------------------------- helpers


def _claim_in_schema() -> dict[str, Any]:
    schema = ClaimIn.model_json_schema()
    schema.pop("title", None)
    return schema


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, else 422 naming ``body``."""
    try:
        data = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidInput([{"field": "body", "message": "must be a JSON object"}]) from None
    if not isinstance(data, dict):
        raise InvalidInput([{"field": "body", "message": "must be a JSON object"}])
    return data


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def status_for(reference: str, token: str | None) -> dict[str, Any]:
    with session_scope(write=False) as s:
        claim = intake.find_claim(s, reference, token)
        view = intake.status_view(s, claim)
    return localize_status(view, view["language"])


# ----------------------------------------------------------------------------- routes

_contact_limit = Depends(limits.rate_limited("contact"))


#: The ``Idempotency-Key`` header as documented (read by :func:`post_claim` itself).
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"}, {"type": "null"}],
        "title": "Idempotency-Key",
        "description": "Repeat a filing safely: the same key with the same body answers the "
                       "same reference (and a fresh access token).",
    },
    "description": "Repeat a filing safely: the same key with the same body answers the same "
                   "reference (and a fresh access token).",
}


@router.post(
    "",
    status_code=201,
    response_model=ClaimFiled,
    summary="File a claim",
    responses=problems(409, 413, 422, 429),
    openapi_extra={
        "parameters": [IDEMPOTENCY_HEADER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _claim_in_schema()}},
        },
    },
)
async def post_claim(request: Request) -> JSONResponse:
    # The hot path of the API: the rate limit and the Idempotency-Key header are read here
    # rather than through FastAPI's dependency injection, which costs more than they do.
    limits.check_rate(request, "filing")
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None:
        idempotency.check_key(idempotency_key)
    data = parse_json_object(await request.body())
    # Validation is pure CPU work: it runs on the event loop (a worker thread would only add
    # a hand-off under the GIL). The claim is written by the process's group-commit writer.
    prepared, errors = intake.check_filing(data)
    if errors:
        raise await run_in_threadpool(intake.refusal, data, errors)
    if idempotency_key is None:
        filed = await intake.group_commit(get_engine()).file_async(prepared)
        return _json(filed.response(), 201)
    body = await run_in_threadpool(intake.file_request, data, idempotency_key,
                                   prepared=prepared)
    return _json(body, 201)


@router.post(
    "/token-reset",
    status_code=202,
    response_model=Accepted,
    summary="Mail a new access token",
    description="Always 202. When the reference and the e-mail match a claim, a new access "
                "token is mailed to the e-mail on file and the old one stops working.",
    responses=problems(400, 413, 422, 429),
    dependencies=[_contact_limit],
)
def post_token_reset(body: TokenResetIn) -> JSONResponse:
    with session_scope() as s:
        intake.reset_token(s, body.reference, body.email)
    return _json({"detail": "if the reference and e-mail match a claim, a new access token "
                            "has been sent to that e-mail"}, 202)


@router.get(
    "/{reference}",
    response_model=ClaimStatusOut,
    summary="The claim's status",
    description="In the claimant's language. An unknown reference, a missing or a wrong token "
                "all answer the same 404.",
    responses=problems(404, 422),
)
def get_claim(reference: str, x_claim_token: ClaimToken = None) -> JSONResponse:
    return _json(status_for(reference, x_claim_token))


@router.post(
    "/{reference}/documents",
    status_code=201,
    response_model=DocumentOut,
    summary="Upload a document (PDF, JPEG or PNG, at most 10 MiB)",
    responses=problems(400, 404, 409, 413, 415, 422),
)
def post_document(
    reference: str,
    file: Annotated[UploadFile, File(description="PDF, JPEG or PNG, at most 10 MiB")],
    x_claim_token: ClaimToken = None,
) -> JSONResponse:
    with session_scope(write=False) as s:
        claim = intake.find_claim(s, reference, x_claim_token)
        documents.check_can_upload(s, claim)
    saved = documents.save_upload(file.file)
    try:
        with session_scope() as s:
            claim = intake.find_claim(s, reference, x_claim_token)
            doc = documents.record(s, claim, saved)
    except BaseException:
        documents.discard(saved)
        raise
    return _json({"id": doc.id, "sha256": doc.sha256}, 201)


@router.post(
    "/{reference}/reply",
    response_model=StatusOut,
    summary="Answer a request for information",
    description="Only while the claim is needs_info; the claim goes back to verification.",
    responses=problems(400, 404, 409, 413, 422),
)
def post_reply(reference: str, body: ReplyIn, x_claim_token: ClaimToken = None) -> JSONResponse:
    with session_scope() as s:
        claim = intake.find_claim(s, reference, x_claim_token, lock=True)
        intake.reply(s, claim, body.message)
        out = {"reference": claim.reference, "status": claim.status}
    return _json(out)


@router.post(
    "/{reference}/dispute",
    response_model=StatusOut,
    summary="Contest the recognized loss",
    description="Only when the claim is approved; it becomes disputed until a caseworker "
                "settles it.",
    responses=problems(400, 404, 409, 413, 422),
)
def post_dispute(reference: str, body: DisputeIn, x_claim_token: ClaimToken = None) -> JSONResponse:
    with session_scope() as s:
        claim = intake.find_claim(s, reference, x_claim_token, lock=True)
        intake.dispute(s, claim, body.reason, body.amount)
        out = {"reference": claim.reference, "status": claim.status}
    return _json(out)


@router.post(
    "/{reference}/payout-address",
    status_code=202,
    response_model=AddressChangeAccepted,
    summary="Request a payout address change",
    description="A code is mailed to the e-mail on file (never answered here); "
                "…/payout-address/confirm applies the change with it.",
    responses=problems(400, 404, 409, 413, 422, 429),
    dependencies=[_contact_limit],
)
def post_payout_address(
    reference: str, body: AddressChangeIn, x_claim_token: ClaimToken = None
) -> JSONResponse:
    with session_scope() as s:
        claim = intake.find_claim(s, reference, x_claim_token, lock=True)
        _change, warnings = intake.request_address_change(
            s, claim, body.payout_network, body.payout_address)
    return _json({"status": "code_sent",
                  "detail": "a confirmation code has been sent to the e-mail on file",
                  "warnings": warnings}, 202)


@router.post(
    "/{reference}/payout-address/confirm",
    response_model=AddressChanged,
    summary="Confirm a payout address change with the mailed code",
    description="After approval the claim is flagged address_changed and its pending "
                "payouts are held until a caseworker reviews it.",
    responses=problems(400, 404, 409, 413, 422, 429),
)
def post_payout_address_confirm(
    reference: str, body: AddressConfirmIn, x_claim_token: ClaimToken = None
) -> JSONResponse:
    with session_scope() as s:
        claim = intake.find_claim(s, reference, x_claim_token, lock=True)
        result = intake.confirm_address_change(s, claim, body.code)
        out = {"reference": claim.reference, "status": claim.status,
               "payout_network": claim.payout_network, "payout_address": claim.payout_address}
    if not result.applied:  # the attempt is counted (committed above); the request fails
        raise InvalidInput([{"field": "code", "message": result.reason or "is wrong"}])
    return _json(out)


def install(app) -> None:
    limits.install(app)
    _serve_filing_directly(app)


def _serve_filing_directly(app) -> None:
    """``POST /api/v1/claims`` — the one operation under load — answered by a plain Starlette
    route placed ahead of the FastAPI route: :func:`post_claim` takes the request alone (it
    reads its body, headers and limits itself), so FastAPI's per-request dependency solving
    and wrapping would only cost time. The FastAPI route stays for the OpenAPI schema; errors
    go through the same exception handlers, other methods get the same 405."""
    from starlette.routing import Route

    if getattr(app.state, "filing_route_installed", False):
        return
    app.state.filing_route_installed = True
    app.router.routes.insert(0, Route(router.prefix, post_claim, methods=["POST"],
                                      name="post_claim", include_in_schema=False))
