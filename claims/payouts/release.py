"""Releasing a round, and finance's moves of one payout: hold, resume, retry
(docs/payouts.md).

Release (:func:`release_round`, finance only)
---------------------------------------------
In one transaction: the round (``approved``, or ``released``/``settled`` with allocations
that have no payout yet — disputes settled later) takes the release token with a conditional
``UPDATE … WHERE release_token IS NULL`` (so of concurrent releases exactly one is accepted,
enforced by the database), one ``pending`` payout is inserted per allocation with an amount
> 0 and no payout, the round becomes ``released`` and the audit event is written. A release
while one runs (the token is set: its payouts are not all done) or with nothing left to pay
→ :class:`~claims.errors.PayoutAlreadyTriggered` (409). The token is given back
(:func:`finish_release`) when no payout of the round is ``pending``, ``signed`` or
``broadcast``.

The steps are separate so that a second key can come between them: :func:`release_refusal`
says whether an actor may release the round as it stands (what the console asks before it
offers the button), :func:`plan_release` what a release would create, and
:func:`release_round` takes the token and creates it. :func:`release_once` is the release
behind an ``Idempotency-Key`` (the API and the console).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, exists, func, select, update
from sqlmodel import Session

from claims import audit, idempotency, rounds
from claims.audit import Actor
from claims.db import bind_value, get_engine
from claims.errors import (
    Conflict,
    DomainError,
    Forbidden,
    IllegalTransition,
    PayoutAlreadyTriggered,
    PayoutError,
)
from claims.gc_pause import gc_paused
from claims.models import (
    Allocation,
    ChainTx,
    Claim,
    DistributionRound,
    Payout,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import format_amount
from claims import db
from claims.payouts.common import (
    ACTIVE,
    chunked,
    check_move,
    payout_key,
    rail_for,
    require_finance,
)
from claims.payouts.records import classify, close_attempts, open_attempts
from claims.payouts.views import get_payout

P = PayoutState
R = RoundStatus

#: The idempotency scope of a release behind an ``Idempotency-Key``.
RELEASE_SCOPE = "payouts.release"
RELEASABLE = (R.approved.value, R.released.value, R.settled.value)


# ------------------------------------------------------------------ release


def release_refusal(rnd: DistributionRound, actor: Actor) -> DomainError | None:
    """Why ``actor`` may not release ``rnd`` as it stands (the error :func:`release_round`
    raises), or ``None`` when they may: only finance, and only a round that is approved (or
    released or settled, for allocations added later) and not stopped. Whether anything is
    left to pay, and whether another release runs, only the release itself can tell."""
    try:
        require_finance(actor, "release payouts")
    except Forbidden as exc:
        return exc
    if rnd.status == R.stopped.value:
        return PayoutError(
            f"round {rnd.id} is stopped ({rnd.stopped_reason or 'no reason recorded'}); "
            "resolve its mismatches or restart it first"
        )
    if rnd.status not in RELEASABLE:
        return Conflict(f"round {rnd.id} is {rnd.status}; only an approved round can be released")
    return None


@dataclass
class ReleasePlan:
    """What a release of the round creates: one pending payout per unpaid allocation
    ``(allocation id, claim id, amount, network)``, by claim, and the totals by rail."""

    round_id: int
    allocations: list[tuple[int, int, int, str]]
    rails: dict[str, dict[str, int]] = field(default_factory=dict)
    total: int = 0


def plan_release(session: Session, round_id: int) -> ReleasePlan:
    """The round's allocations with an amount > 0 and no payout yet (see
    :class:`ReleasePlan`); reads only."""
    rows = session.connection().execute(
        select(Allocation.id, Allocation.claim_id, Allocation.amount, Claim.payout_network)
        .join(Claim, Claim.id == Allocation.claim_id)
        .where(
            Allocation.round_id == round_id,
            Allocation.amount > 0,
            ~exists().where(Payout.round_id == round_id, Payout.claim_id == Allocation.claim_id),
        )
        .order_by(Allocation.claim_id)
    ).all()
    plan = ReleasePlan(round_id, rows)
    for _, _, amount, network in rows:
        agg = plan.rails.get(rail_for(network))
        if agg is None:
            agg = plan.rails[rail_for(network)] = {"count": 0, "amount": 0}
        agg["count"] += 1
        agg["amount"] += amount
        plan.total += amount
    return plan


_PAYOUT_COLUMNS = ("round_id", "claim_id", "allocation_id", "idempotency_key", "amount", "rail",
                   "network", "state", "attempt", "release_id", "created_at", "updated_at")


@gc_paused()
def release_round(
    session: Session, round_id: object, *, actor: Actor, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Release the round's unpaid allocations (see the module docstring). Returns the answer
    (``round_id, release_id, status, payouts, amount, rails``). Raises ``Forbidden`` (not
    finance), ``NotFound``, ``Conflict`` (round not approved / stopped),
    ``PayoutAlreadyTriggered`` (a release runs, or nothing left to pay)."""
    require_finance(actor, "release payouts")
    rnd = rounds.get_round(session, round_id, lock=True)
    refusal = release_refusal(rnd, actor)
    if refusal is not None:
        raise refusal
    release_id = uuid.uuid4().hex
    _take_release_token(session, rnd.id, release_id)
    plan = plan_release(session, rnd.id)
    if not plan.allocations:
        raise PayoutAlreadyTriggered(f"round {rnd.id} has nothing left to pay")
    now = utcnow()
    _insert_payouts(session, plan, release_id, now)
    before = {"status": rnd.status}
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id)
        .values(status=R.released.value, released_at=rnd.released_at or now)
        .execution_options(synchronize_session=False)
    )
    count = len(plan.allocations)
    audit.record(session, actor, "round.released", "round", rnd.id, before=before, after={
        "status": R.released.value, "release_id": release_id, "payouts": count,
        "amount": plan.total, "rails": plan.rails, "idempotency_key": idempotency_key,
    })
    session.expire(rnd)
    return {
        "round_id": str(rnd.id),
        "release_id": release_id,
        "status": R.released.value,
        "payouts": count,
        "amount": format_amount(plan.total),
        "rails": {k: {"count": v["count"], "amount": format_amount(v["amount"])}
                  for k, v in sorted(plan.rails.items())},
    }


def _take_release_token(session: Session, round_id: int, release_id: str) -> None:
    """The conditional ``UPDATE`` that admits one release at a time (the database decides)."""
    took = session.execute(
        update(DistributionRound)
        .where(
            DistributionRound.id == round_id,
            DistributionRound.release_token.is_(None),
            DistributionRound.status.in_(RELEASABLE),
        )
        .values(release_token=release_id)
        .execution_options(synchronize_session=False)
    )
    if took.rowcount != 1:
        raise PayoutAlreadyTriggered(
            f"a release of round {round_id} is still running; wait until its payouts are done"
        )


def _insert_payouts(session: Session, plan: ReleasePlan, release_id: str, now) -> None:
    """One ``pending`` payout per planned allocation, in bulk."""
    now_db = bind_value(session, Payout.__table__.c.created_at, now)
    rid, pending = plan.round_id, P.pending.value
    for part in chunked(plan.allocations):
        db.bulk_insert(session, Payout.__table__, _PAYOUT_COLUMNS, [
            (rid, claim_id, alloc_id, payout_key(rid, claim_id), amount, rail_for(network),
             network, pending, 1, release_id, now_db, now_db)
            for alloc_id, claim_id, amount, network in part
        ])


def release_once(round_id: int, idempotency_key: str, *, actor: Actor,
                 engine: Engine | None = None) -> dict[str, Any]:
    """:func:`release_round` behind an ``Idempotency-Key`` (``POST
    /api/v1/rounds/{id}/payouts`` and the console): the same key again answers the stored
    answer; the release and the stored answer commit together (:mod:`claims.idempotency`)."""
    engine = engine or get_engine()
    return idempotency.run_once(
        engine, RELEASE_SCOPE, idempotency_key, {"round": round_id},
        lambda s: release_round(s, round_id, actor=actor, idempotency_key=idempotency_key),
        status_code=202,
    )


def finish_release(session: Session, round_id: int, *, actor: Actor) -> bool:
    """Give the release token back when nothing of the round is pending or in flight (held,
    exported, failed and confirmed payouts do not keep a release running). A stopped round
    keeps it: its release resumes when the round is restarted."""
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.release_token is None or rnd.status == R.stopped.value:
        return False
    active = session.execute(
        select(func.count()).select_from(Payout)
        .where(Payout.round_id == rnd.id, Payout.state.in_(ACTIVE))
    ).scalar_one()
    if active:
        return False
    session.execute(
        update(DistributionRound).where(DistributionRound.id == rnd.id)
        .values(release_token=None).execution_options(synchronize_session=False)
    )
    audit.record(session, actor, "round.release_done", "round", rnd.id,
                 after={"release_id": rnd.release_token})
    session.expire(rnd)
    return True


# ------------------------------------------------------------------ finance: one payout


def _move_one(session: Session, payout: Payout, to: str, *, actor: Actor, action: str,
              values: dict) -> Payout:
    src = payout.state
    check_move(src, to)
    now = utcnow()
    res = session.execute(
        update(Payout)
        .where(Payout.id == payout.id, Payout.state == src, Payout.attempt == payout.attempt)
        .values(state=to, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise IllegalTransition(f"payout {payout.id} changed meanwhile; it is no longer {src}")
    audit.record(session, actor, action, "payout", payout.id,
                 before={"state": src, "attempt": payout.attempt},
                 after={"state": to, **values})
    session.expire(payout)
    session.refresh(payout)
    return payout


def hold_payout(session: Session, payout_id: object, *, actor: Actor,
                reason: str | None = None) -> Payout:
    """``pending → held`` (finance): the executor leaves it alone until resumed."""
    require_finance(actor, "hold a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.pending.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a pending payout "
                                "can be held")
    why = f"held by {actor.name}" + (f": {reason.strip()}" if reason and reason.strip() else "")
    return _move_one(session, payout, P.held.value, actor=actor, action="payout.held",
                     values={"failure_reason": why})


def resume_payout(session: Session, payout_id: object, *, actor: Actor) -> Payout:
    """``held → pending`` (finance). Refused while its claim is not payable (the executor
    would hold it again): a caseworker decides the claim first."""
    require_finance(actor, "resume a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.held.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a held payout "
                                "can be resumed")
    _, hold = classify(session, [(payout.id, payout.claim_id, payout.amount, payout.attempt,
                                  payout.network)])
    if hold:
        raise Conflict(f"payout {payout.id} cannot be resumed: {hold[0][2]}")
    return _move_one(session, payout, P.pending.value, actor=actor, action="payout.resumed",
                     values={"failure_reason": None})


def retry_payout(session: Session, payout_id: object, *, actor: Actor) -> Payout:
    """``failed → pending`` as a new attempt of the same payout (finance). Only a failure
    proven final: its transaction reverted (mined), expired, was never sent, or the custodian
    reported it failed."""
    require_finance(actor, "retry a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.failed.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a failed payout "
                                "can be retried")
    if payout.chain_tx_id is not None:
        tx_state = session.execute(
            select(ChainTx.state).where(ChainTx.id == payout.chain_tx_id)).scalar_one()
        if tx_state not in ("reverted", "expired"):
            raise Conflict(f"payout {payout.id}: its transaction is {tx_state}, not proven final")
    rnd = rounds.get_round(session, payout.round_id)
    if rnd.status == R.settled.value:  # pragma: no cover - a settled round has no failure
        raise Conflict(f"round {rnd.id} is settled")
    attempt = payout.attempt + 1
    moved = _move_one(
        session, payout, P.pending.value, actor=actor, action="payout.retried",
        values={"attempt": attempt, "failure_reason": None, "chain_tx_id": None, "tx_id": None,
                "gas_used": None, "fee_wei": None},
    )
    open_attempts(session, [(moved.id, attempt, None, None)])
    close_attempts(session, [(moved.id, attempt, None, f"retry requested by {actor.name}")])
    return moved
