"""Distribution rounds (docs/api.md, "Rounds"): prepare, approve, read, plan.csv.

- ``POST /api/v1/cases/{code}/rounds`` (caseworker) prepares a round through the Prefect flow
  ``prepare-round`` (:mod:`flows.rounds`: stored in bulk, a table and a markdown artifact)
  and answers 201 with the round. The handler holds no write transaction while the flow runs
  (the flow writes in its own). :data:`PREPARE` is the function called; tests swap in
  :func:`claims.rounds.prepare_round_committed` to skip the Prefect server.
- ``POST /api/v1/rounds/{id}/approve`` — a caseworker other than the preparer (the preparer
  or another role → 403; a stale round → 409, and a round found stale by the snapshot check
  stays marked stale).
- ``GET /api/v1/cases/{code}/rounds``, ``GET /api/v1/rounds/{id}``,
  ``GET /api/v1/rounds/{id}/plan.csv`` — every staff role reads.

The rules live in :mod:`claims.rounds`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Caseworker, StaffReader, staff_router
from api.deps import ReadSessionDep, SessionDep
from api.problems import problems
from claims import rounds
from claims.allocation import METHODS, PRO_RATA
from claims.cases import get_case_by_code
from claims.db import session_scope
from claims.money import AMOUNT_PATTERN, AmountError, parse_amount

router = staff_router(tags=["rounds"])


def prepare_through_flow(case_code: str, pool: int, method: str, min_payout: int, *,
                         actor_name: str, actor_role: str, actor_staff_id: int | None) -> int:
    """The round prepared by the ``prepare-round`` flow, run here (the request waits)."""
    from flows.rounds import prepare_round_waited

    return prepare_round_waited(case_code, pool, method, min_payout, actor_name=actor_name,
                                actor_role=actor_role, actor_staff_id=actor_staff_id)


#: What prepares a round: the Prefect flow (tests may use
#: claims.rounds.prepare_round_committed).
PREPARE = prepare_through_flow


# ------------------------------------------------------------------ models


def _amount(value: object, *, allow_zero: bool = True) -> object:
    if value is None:
        raise ValueError("is required")
    try:
        parse_amount(value, allow_zero=allow_zero)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    return value


class RoundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: str = Field(pattern=AMOUNT_PATTERN, description="USDT to distribute, e.g. \"545000\"",
                      examples=["545000"])
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        default=PRO_RATA, description="docs/allocation.md")
    min_payout: str = Field(default="0", pattern=AMOUNT_PATTERN,
                            description="de minimis: no payout below this (USDT)")

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, v: object) -> object:
        return _amount(v, allow_zero=False)

    @field_validator("min_payout", mode="before")
    @classmethod
    def _min_payout(cls, v: object) -> object:
        return _amount(v)


class RoundOut(BaseModel):
    id: str
    status: str = Field(description="prepared, stale, approved, released, settled, stopped")
    pool: str
    rate: str = Field(description="the common rate r in [0, 1], 9 decimals")
    allocated: str
    reserved: str = Field(description="held for open disputes")
    released: str = Field(description="given back by settled disputes; a later round may carry it")
    undistributed: str
    claims: int = Field(description="the payable claims the round was prepared over")
    case_id: str | None = None
    number: int
    method: str
    min_payout: str
    rate_exact: str = Field(description="the exact rate as a fraction num/den")
    rate_percent: str
    prepared_by: str | None = None
    approved_by: str | None = None
    prepared_at: str | None = None
    approved_at: str | None = None
    released_at: str | None = None
    stopped_reason: str | None = None


class RoundList(BaseModel):
    items: list[RoundOut]
    total: int


# ------------------------------------------------------------------ routes


@router.post(
    "/api/v1/cases/{code}/rounds",
    response_model=RoundOut,
    status_code=201,
    responses=problems(401, 403, 404, 409, 422),
    summary="Prepare a distribution round (caseworker)",
)
async def prepare(code: str, body: RoundIn, staff: Caseworker) -> dict[str, Any]:
    """The round over the case's approved claims (disputed ones reserved), ``paid_before``
    from the case's earlier rounds. 409 when the case has no approved or disputed claim."""
    pool, min_payout = parse_amount(body.pool), parse_amount(body.min_payout)

    def run() -> dict[str, Any]:
        with session_scope(write=False) as s:  # 404 before any flow starts
            get_case_by_code(s, code)
        round_id = PREPARE(code, pool, body.method, min_payout, actor_name=staff.username,
                           actor_role=staff.role, actor_staff_id=staff.id)
        with session_scope(write=False) as s:
            return rounds.get_round_view(s, round_id)

    return await run_in_threadpool(run)


@router.post(
    "/api/v1/rounds/{id}/approve",
    response_model=RoundOut,
    responses=problems(401, 403, 404, 409),
    summary="Approve a prepared round (a caseworker other than the preparer)",
)
def approve(id: str, staff: Caseworker, session: SessionDep) -> dict[str, Any]:
    # persist_stale: a round the snapshot check finds stale stays marked stale after the 409
    rnd = rounds.approve_round(session, id, actor=staff.actor, persist_stale=True)
    return rounds.view(session, rnd)


@router.get(
    "/api/v1/cases/{code}/rounds",
    response_model=RoundList,
    responses=problems(401, 403, 404),
    summary="The case's rounds, stale attempts included (every staff role)",
)
def list_case_rounds(code: str, staff: StaffReader, session: ReadSessionDep) -> dict[str, Any]:
    items = rounds.list_rounds(session, code)
    return {"items": items, "total": len(items)}


@router.get(
    "/api/v1/rounds/{id}",
    response_model=RoundOut,
    responses=problems(401, 403, 404),
    summary="One round (every staff role)",
)
def get_round(id: str, staff: StaffReader, session: ReadSessionDep) -> dict[str, Any]:
    return rounds.get_round_view(session, id)


@router.get(
    "/api/v1/rounds/{id}/plan.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}},
                     "description": "claim_id,net_loss,allocation,reserved,excluded,"
                                    "paid_before,released — one line per claim"},
               **problems(401, 403, 404)},
    summary="The round's plan as CSV (every staff role)",
)
def plan_csv(id: str, staff: StaffReader, session: ReadSessionDep) -> Response:
    rid = rounds.parse_round_id(id)
    text = rounds.plan_csv_text(session, rid)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="round-{rid}-plan.csv"',
                 "Cache-Control": "no-store"},
    )

