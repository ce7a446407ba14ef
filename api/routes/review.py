"""The caseworker's review API (docs/api.md "Caseworker: review"): queue, claim, decision,
settlement.

Caseworkers read and decide; the auditor reads; finance and admin → 403; no token → 401.
The rules live in :mod:`claims.review`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Caseworker, CaseworkerOrAuditor, staff_router
from api.deps import ReadSessionDep, SessionDep
from api.problems import problems
from claims import review
from claims.models import FLAG_CODES, ClaimStatus
from claims.money import AMOUNT_PATTERN, AmountError, parse_amount

router = staff_router(tags=["review"])


def _amount_or_none(value: object) -> object:
    """An amount field's value checked as :func:`claims.money.parse_amount` reads it (its
    message when it cannot), still as text."""
    if value is None:
        return None
    try:
        parse_amount(value)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    return value


def _micro(value: str | None) -> int | None:
    return None if value is None else parse_amount(value)


def _reason_given(value: str) -> str:
    if not value.strip():
        raise ValueError(review.REASON_REQUIRED)
    return value


# ------------------------------------------------------------------ models


class FlagOut(BaseModel):
    code: str
    message: str


class QueueItem(BaseModel):
    reference: str
    status: str
    flags: list[FlagOut]
    claimed_amount: str | None
    recognized_loss: str | None
    ledger_account: str | None


class QueueOut(BaseModel):
    items: list[QueueItem]
    total: int


class FlagDetail(FlagOut):
    open: bool
    created_at: str | None
    resolved_at: str | None


class DecisionOut(BaseModel):
    decision: str
    reason: str
    recognized_loss: str | None
    overridden_flags: list[str]
    staff: str | None = None
    created_at: str | None


class MessageOut(BaseModel):
    kind: str = Field(description="request (staff → victim), reply, dispute, settlement")
    body: str
    amount: str | None
    created_at: str | None
    answered_at: str | None


class DocumentOut(BaseModel):
    id: str
    content_type: str
    size: int
    sha256: str
    created_at: str | None


class LedgerEntryOut(BaseModel):
    entry_type: str
    amount: str
    occurred_at: str | None
    tx_hash: str | None
    wallet: str | None
    email: str | None
    phone: str | None


class LedgerOut(BaseModel):
    account_id: str
    insider: bool
    insider_reason: str | None
    deposits: str
    withdrawals: str = Field(description="withdrawals including bonuses")
    bonuses: str
    net_loss: str
    net_winner: bool
    entries_count: int
    entries: list[LedgerEntryOut] = Field(description=f"oldest first, at most {review.MAX_ENTRIES}")


class ClaimReview(BaseModel):
    reference: str
    case_id: str
    status: str
    version: int
    full_name: str
    iin_masked: str = Field(description="the IIN, masked; never shown in plain")
    birth_date: str
    date_of_birth: str | None
    email: str
    phone: str
    language: str
    scheme_account: str | None
    evidence_tx_hashes: list[str]
    payout_network: str
    payout_address: str
    source: str
    match_rule: str | None
    claimed_amount: str
    recognized_loss: str | None
    invested: str | None
    withdrawn: str | None
    ledger_net_loss: str | None
    difference: str | None = Field(description="claimed − recognized (or − the ledger's net loss)")
    created_at: str | None
    updated_at: str | None
    verified_at: str | None
    decided_at: str | None
    flags: list[FlagDetail]
    decisions: list[DecisionOut]
    messages: list[MessageOut]
    documents: list[DocumentOut]
    ledger: LedgerOut | None


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject", "request_info"]
    reason: str = Field(min_length=1, max_length=review.MAX_REASON,
                        description="why; told to the victim on reject and request_info")
    recognized_loss: str | None = Field(
        default=None, pattern=AMOUNT_PATTERN,
        description="approve only: required without a ledger match; overrides the ledger's "
        "net loss otherwise",
    )

    @field_validator("recognized_loss", mode="before")
    @classmethod
    def _amount(cls, v: object) -> object:
        return _amount_or_none(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _reason_given(v)


class SettleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: str = Field(pattern=AMOUNT_PATTERN, description="the recognized loss agreed")
    reason: str = Field(min_length=1, max_length=review.MAX_REASON)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, v: object) -> object:
        if v is None:
            raise ValueError("is required")
        return _amount_or_none(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _reason_given(v)


class DecisionResult(BaseModel):
    id: str
    decision: str
    reason: str
    recognized_loss: str | None
    overridden_flags: list[str]
    created_at: str | None


class DecisionResponse(BaseModel):
    reference: str
    status: str
    decision: DecisionResult


class BatchDecisionIn(DecisionIn):
    reference: str = Field(min_length=1, max_length=64)

    def as_item(self) -> dict:
        """The item :func:`claims.review.decide_many` takes (amounts in micro-USDT)."""
        return {"reference": self.reference, "decision": self.decision, "reason": self.reason,
                "recognized_loss": _micro(self.recognized_loss)}


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[BatchDecisionIn] = Field(min_length=1, max_length=review.MAX_BATCH)


class BatchOut(BaseModel):
    results: list[DecisionResponse]


# ------------------------------------------------------------------ routes


@router.get(
    "/api/v1/review/claims",
    response_model=QueueOut,
    responses=problems(401, 403, 422),
    summary="The review queue (caseworker; auditor reads)",
)
def queue(
    staff: CaseworkerOrAuditor,
    session: ReadSessionDep,
    case_id: Annotated[str | None, Query(description="the case CODE")] = None,
    status: Annotated[ClaimStatus | None, Query()] = None,
    flag: Annotated[Literal[FLAG_CODES] | None, Query(description="an open flag's code")] = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=review.MAX_LIMIT)] = review.DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=review.MAX_OFFSET)] = 0,
) -> dict:
    return review.review_queue(
        session, case_id=case_id, status=status.value if status else None, flag=flag,
        limit=limit, offset=offset,
    )


@router.get(
    "/api/v1/review/claims/{reference}",
    response_model=ClaimReview,
    responses=problems(401, 403, 404),
    summary="One claim with its flags, history and the matched ledger account's movements",
)
def claim(reference: str, staff: CaseworkerOrAuditor, session: ReadSessionDep) -> dict:
    return review.claim_for_staff(session, reference)


@router.post(
    "/api/v1/review/claims/{reference}/decision",
    response_model=DecisionResponse,
    responses=problems(401, 403, 404, 409, 422),
    summary="Approve, reject or request information (caseworker)",
)
def decision(reference: str, body: DecisionIn, staff: Caseworker, session: SessionDep) -> dict:
    return review.decide(session, reference, decision=body.decision, reason=body.reason,
                         recognized_loss=_micro(body.recognized_loss), actor=staff.actor)


@router.post(
    "/api/v1/review/decisions",
    response_model=BatchOut,
    responses=problems(401, 403, 404, 409, 422),
    summary="Several decisions at once, all or none (caseworker's bulk action)",
)
def decisions(body: BatchIn, staff: Caseworker, session: SessionDep) -> dict:
    return {"results": review.decide_many(session, [d.as_item() for d in body.decisions],
                                          actor=staff.actor)}


@router.post(
    "/api/v1/review/claims/{reference}/settle",
    response_model=DecisionResponse,
    responses=problems(401, 403, 404, 409, 422),
    summary="Settle a dispute at an amount (caseworker)",
)
def settle(reference: str, body: SettleIn, staff: Caseworker, session: SessionDep) -> dict:
    return review.settle(session, reference, amount=parse_amount(body.amount),
                         reason=body.reason, actor=staff.actor)
