"""Finance's payout API (docs/api.md, finance; docs/payouts.md). Rules: :mod:`claims.payouts`,
:mod:`claims.payouts.rails.custodian`.

- ``POST /api/v1/rounds/{id}/payouts`` (finance; ``Idempotency-Key`` required, else 400) →
  202 when every payout of the release exists (``pending``), answered after the commit; the
  same key again → 202 with the same answer; a release while one runs or with nothing left →
  409. The payouts then run in the background: :data:`START_EXECUTION` (default: FastAPI
  ``BackgroundTasks`` calling :func:`claims.payouts.execute_in_background` in this process —
  the embedded default; one run per round and process; ``serve``'s background pass
  (:mod:`flows.background`) resumes any run a restart interrupted). A deployment of the
  Prefect flow ``execute-payouts`` can take its place when ``PREFECT_API_URL`` is set.
- ``GET /api/v1/rounds/{id}/payouts`` → ``{"total", "by_state" (every state), "wallet"}`` plus
  the round's status, stop reason and open mismatches (finance, auditor).
- ``GET /api/v1/rounds/{id}/payouts/items?state=&limit=&offset=`` — the payouts themselves
  (ids to hold or retry; the reason a payout is held or failed).
- ``GET /api/v1/rounds/{id}/payouts/instructions.csv`` — the custodian rail's instructions;
  a finance read first exports the round's pending custodian payouts (the auditor reads what
  was exported, changing nothing).
- ``POST /api/v1/rounds/{id}/payouts/confirmations`` — CSV body (``text/csv``) → 200
  ``{"confirmed", "failed", "already", "mismatches": [{"line", "payout_id", "reason"}]}``;
  malformed → 422 naming every bad line.
- ``POST /api/v1/payouts/{id}/hold`` · ``/resume`` · ``/retry`` (finance) → 200 the payout;
  an illegal move → 409.
- ``GET /api/v1/rounds/{id}/mismatches``; ``POST /api/v1/rounds/{id}/mismatches/{mid}/resolve``
  ``{"reason"}`` (the last open one resumes the round); ``POST /api/v1/rounds/{id}/payouts/restart``
  (a stopped round without open mismatches, e.g. after topping the wallet up) → 202;
  ``POST /api/v1/rounds/{id}/reconcile`` → the reconciliation report.

Caseworker and admin → 403 on all of these; no token → 401; the auditor reads the GETs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import BackgroundTasks, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from api.auth import Finance, FinanceOrAuditor, staff_router
from api.problems import problems
from claims import idempotency, payouts, rounds
from claims.db import get_engine, session_scope
from claims.errors import DomainError, PayloadTooLarge, UnsupportedMediaType
from claims.models import PayoutState
from claims.payouts.rails import custodian

router = staff_router(tags=["payouts"])

MAX_CSV_BYTES = 20 * 1024 * 1024


def _start_in_background(background: BackgroundTasks, round_id: int) -> None:
    background.add_task(payouts.execute_in_background, round_id)


#: How an accepted release (or a resumed payout) starts the execution. Replace it to run a
#: Prefect deployment instead (``run_deployment(..., timeout=0)``).
START_EXECUTION: Callable[[BackgroundTasks, int], None] = _start_in_background


class MissingIdempotencyKey(DomainError):
    status = 400
    title = "Idempotency-Key required"


# ------------------------------------------------------------------ models


class Money(BaseModel):
    count: int
    amount: str = Field(description="USDT, decimal string")


class ReleaseOut(BaseModel):
    round_id: str
    release_id: str
    status: str
    payouts: int = Field(description="payouts created by this release (all pending)")
    amount: str
    rails: dict[str, Money] = Field(description="evm / custodian")


class SummaryOut(BaseModel):
    round_id: str
    round_status: str
    stopped_reason: str | None
    release_running: bool
    allocated: str
    confirmed: str
    unreleased: Money = Field(description="allocations without a payout yet")
    open_mismatches: int
    total: Money
    by_state: dict[str, Money] = Field(description="every payout state: " +
                                       ", ".join(s.value for s in PayoutState))
    wallet: dict[str, Any] = Field(description="the EVM payout wallet: address, token "
                                   "balance, gas balance (wei), chain id, genesis hash; "
                                   "evm_to_pay: pending and held EVM payouts")


class PayoutOut(BaseModel):
    id: str
    round_id: str
    claim: str | None
    state: str
    rail: str
    network: str
    address: str | None
    amount: str
    attempt: int
    tx_id: str | None
    chain_id: int | None
    gas_used: int | None
    fee_wei: str | None
    reason: str | None = Field(description="why it is held or failed")
    idempotency_key: str
    updated_at: str
    confirmed_at: str | None


class PayoutList(BaseModel):
    items: list[PayoutOut]
    total: int


class MismatchLine(BaseModel):
    line: int
    payout_id: str
    reason: str


class ConfirmationsOut(BaseModel):
    confirmed: int
    failed: int
    already: int
    mismatches: list[MismatchLine]


class MismatchOut(BaseModel):
    id: str
    round_id: str
    payout_id: str | None
    source: str
    reason: str
    detail: dict[str, Any]
    created_at: str
    resolved_at: str | None


class MismatchList(BaseModel):
    items: list[MismatchOut]


class ReasonIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class HoldIn(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


class ReconcileOut(BaseModel):
    round_id: str
    checked: int
    ok: int
    mismatches: list[dict[str, str]]
    other_chain: int = Field(description="EVM payouts recorded on another chain: not checked")
    settled: bool
    status: str


class RestartOut(BaseModel):
    round_id: str
    status: str


# ------------------------------------------------------------------ release


@router.post(
    "/api/v1/rounds/{id}/payouts",
    status_code=202,
    response_model=ReleaseOut,
    responses=problems(400, 401, 403, 404, 409, 422),
    summary="Release the round's payouts (finance)",
    description="Creates one pending payout per allocation of the round that has none yet "
                "and answers 202 once they are committed; the payouts then run in the "
                "background. The same Idempotency-Key again answers the same 202. A release "
                "while one runs, or with nothing left to pay → 409.",
)
async def release(
    id: str, staff: Finance, background: BackgroundTasks,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key",
        description="Required: repeat the release safely (same key → same answer).")] = None,
) -> JSONResponse:
    if idempotency_key is None or not idempotency_key.strip():
        raise MissingIdempotencyKey("the Idempotency-Key header is required")
    idempotency.check_key(idempotency_key)
    rid = rounds.parse_round_id(id)
    body = await run_in_threadpool(payouts.release_once, rid, idempotency_key,
                                   actor=staff.actor)
    START_EXECUTION(background, rid)
    return JSONResponse(body, status_code=202, background=background)


# ------------------------------------------------------------------ reads


@router.get(
    "/api/v1/rounds/{id}/payouts",
    response_model=SummaryOut,
    responses=problems(401, 403, 404),
    summary="Payout totals by state and the payout wallet (finance, auditor)",
)
def get_summary(id: str, staff: FinanceOrAuditor) -> dict[str, Any]:
    return payouts.summary_with_wallet(id)


@router.get(
    "/api/v1/rounds/{id}/payouts/items",
    response_model=PayoutList,
    responses=problems(401, 403, 404, 422),
    summary="The round's payouts, by id (finance, auditor)",
)
def list_items(
    id: str, staff: FinanceOrAuditor,
    state: Annotated[str | None, Query(description="one payout state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    with session_scope(write=False) as s:
        return payouts.list_payouts(s, id, state=state, limit=limit, offset=offset)


@router.get(
    "/api/v1/rounds/{id}/payouts/instructions.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}},
                     "description": "payout_id,network,address,amount,idempotency_key — "
                                    "each payout handed to the custodian once, the same on "
                                    "every read"},
               **problems(401, 403, 404)},
    summary="The custodian rail's instructions (finance exports; auditor reads)",
)
def instructions_csv(id: str, staff: FinanceOrAuditor) -> Response:
    rid, chunks = custodian.open_instructions(id, actor=staff.actor)
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="round-{rid}-instructions.csv"',
                 "Cache-Control": "no-store"},
    )


@router.post(
    "/api/v1/rounds/{id}/payouts/confirmations",
    response_model=ConfirmationsOut,
    responses=problems(401, 403, 404, 413, 415, 422),
    summary="Import a custodian's confirmations (finance)",
    description="CSV body `payout_id,tx_id,amount[,status]` (status confirmed by default, or "
                "failed). Rows whose payout or amount differ confirm nothing, are listed and "
                "stop the round's transfers until resolved; the others are recorded. The "
                "same file twice records nothing twice.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "text/csv": {"schema": {"type": "string"}}}}},
)
async def confirmations(id: str, staff: Finance, request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "text/csv").split(";")[0].strip().lower()
    if ctype not in ("text/csv", "text/plain", "application/csv", "application/octet-stream"):
        raise UnsupportedMediaType("send the confirmations as text/csv")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CSV_BYTES:
            raise PayloadTooLarge(f"at most {MAX_CSV_BYTES // (1024 * 1024)} MiB")
    return await run_in_threadpool(custodian.import_confirmations_file, id, body,
                                   actor=staff.actor)


# ------------------------------------------------------------------ one payout


def _payout_action(fn, payout_id: str, staff, **kw) -> dict[str, Any]:
    with session_scope() as s:
        p = fn(s, payout_id, actor=staff.actor, **kw)
        return payouts.get_payout_view(s, p.id)


@router.post("/api/v1/payouts/{id}/hold", response_model=PayoutOut,
             responses=problems(401, 403, 404, 409, 422),
             summary="Hold a pending payout (finance)")
def hold(id: str, staff: Finance, body: HoldIn | None = None) -> dict[str, Any]:
    return _payout_action(payouts.hold_payout, id, staff, reason=body.reason if body else None)


@router.post("/api/v1/payouts/{id}/resume", response_model=PayoutOut,
             responses=problems(401, 403, 404, 409),
             summary="Resume a held payout (finance); it is paid in the background")
def resume(id: str, staff: Finance, background: BackgroundTasks) -> dict[str, Any]:
    out = _payout_action(payouts.resume_payout, id, staff)
    START_EXECUTION(background, int(out["round_id"]))
    return out


@router.post("/api/v1/payouts/{id}/retry", response_model=PayoutOut,
             responses=problems(401, 403, 404, 409),
             summary="Retry a failed payout proven final, as a new attempt (finance)")
def retry(id: str, staff: Finance, background: BackgroundTasks) -> dict[str, Any]:
    out = _payout_action(payouts.retry_payout, id, staff)
    START_EXECUTION(background, int(out["round_id"]))
    return out


# ------------------------------------------------------------------ mismatches, restart, reconcile


@router.get("/api/v1/rounds/{id}/mismatches", response_model=MismatchList,
            responses=problems(401, 403, 404),
            summary="The round's reconciliation mismatches (finance, auditor)")
def mismatches(id: str, staff: FinanceOrAuditor) -> dict[str, Any]:
    with session_scope(write=False) as s:
        return {"items": payouts.list_mismatches(s, id)}


@router.post("/api/v1/rounds/{id}/mismatches/{mid}/resolve", response_model=MismatchOut,
             responses=problems(401, 403, 404, 409, 422),
             summary="Resolve a mismatch (finance); the last one resumes the round")
def resolve(id: str, mid: str, body: ReasonIn, staff: Finance,
            background: BackgroundTasks) -> dict[str, Any]:
    with session_scope() as s:
        out = payouts.resolve_mismatch(s, id, mid, actor=staff.actor, reason=body.reason)
    START_EXECUTION(background, rounds.parse_round_id(id))
    return out


@router.post("/api/v1/rounds/{id}/payouts/restart", status_code=202, response_model=RestartOut,
             responses=problems(401, 403, 404, 409),
             summary="Restart a stopped round's transfers (finance; no open mismatch)")
def restart(id: str, staff: Finance, background: BackgroundTasks) -> dict[str, Any]:
    with session_scope() as s:
        rnd = payouts.restart_round(s, id, actor=staff.actor)
        out = {"round_id": str(rnd.id), "status": rnd.status}
    START_EXECUTION(background, int(out["round_id"]))
    return out


@router.post("/api/v1/rounds/{id}/reconcile", response_model=ReconcileOut,
             responses=problems(401, 403, 404, 409),
             summary="Check every confirmed payout against the chain or the custodian "
                     "(finance)")
def reconcile(id: str, staff: Finance) -> dict[str, Any]:
    return payouts.reconcile_round(get_engine(), id, actor=staff.actor)

