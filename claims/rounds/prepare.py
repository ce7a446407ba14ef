"""Preparing a round (docs/allocation.md, "Which claims and amounts enter a round" and
"Interim rounds and catch-up"; docs/lifecycle.md, "Rounds").

The input set is the case's *payable* claims (``approved``; ``disputed`` ones are solved as if
approved and their share is ``reserved``), in claim-id order, each identified by its reference
(so ties in rounding go by reference, and ``plan.csv`` of the round is what ``restitution plan``
gives for the same rows). A claim's amounts: the recognized loss is authoritative
(:func:`claim_amounts`). ``paid_before`` = what the case's earlier *counting* rounds
(``approved``, ``released``, ``settled``, ``stopped``) allocated to the claim; ``prepared`` and
``stale`` rounds count for nothing. Every payable claim gets an :class:`Allocation` row (net
winners with ``excluded = "net_winner"``, claims removed by the de minimis rule with
``excluded = "de_minimis"``), stamped with the claim's ``version``; rows are written in bulk. A
round of the case still ``prepared`` becomes ``stale`` (superseded). The round's ``number`` is
1 + the highest number among the case's counting rounds: a re-preparation keeps the number of
the round it replaces (the stale attempt stays in the history under its own id), so victims see
rounds 1, 2, … without gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice, repeat

from sqlalchemy import func, select, update
from sqlmodel import Session

from claims import audit
from claims.allocation import (
    METHODS,
    PRO_RATA,
    AllocationResult,
    allocate_columns,
    plan_summary,
)
from claims.audit import Actor
from claims.cases import get_case_by_code
from claims.db import bulk_insert, for_update, markers, read_columns
from claims.errors import Conflict, InvalidInput
from claims.gc_pause import gc_paused
from claims.lifecycle import PAYABLE
from claims.models import Allocation, Case, ClaimStatus, DistributionRound, utcnow
from claims.money import MAX_MICRO, net_loss, rate_percent
from claims.rounds.store import COUNTING, INSERT_BATCH, R, check_invariant, require_caseworker

#: Columns of the allocation rows a preparation writes, in the order it writes them.
ALLOCATION_COLUMNS = ("round_id", "claim_id", "claim_version", "invested", "withdrawn",
                      "net_loss", "paid_before", "amount", "reserved", "released", "excluded")


def validate_request(pool: object, method: object, min_payout: object) -> None:
    """The parameters of a preparation, every bad one named (``InvalidInput``)."""
    errors = []
    if isinstance(pool, bool) or not isinstance(pool, int):
        errors.append({"field": "pool", "message": "must be an amount of micro-USDT"})
    elif pool <= 0:
        errors.append({"field": "pool", "message": "must be greater than 0"})
    elif pool > MAX_MICRO:
        errors.append({"field": "pool", "message": "is too large"})
    if method not in METHODS:
        errors.append({"field": "method", "message": "must be " + " or ".join(METHODS)})
    if isinstance(min_payout, bool) or not isinstance(min_payout, int):
        errors.append({"field": "min_payout", "message": "must be an amount of micro-USDT"})
    elif min_payout < 0:
        errors.append({"field": "min_payout", "message": "must not be negative"})
    elif min_payout > MAX_MICRO:
        errors.append({"field": "min_payout", "message": "is too large"})
    if errors:
        raise InvalidInput(errors)


# ------------------------------------------------------------------ the input set


def claim_amounts(invested: int | None, withdrawn: int | None,
                  recognized_loss: int | None) -> tuple[int, int]:
    """``(invested, withdrawn)`` of a claim as the plan sees it: the recognized loss is the
    net loss. ``invested``/``withdrawn`` are the claim's own when their net loss is the
    recognized loss (the ledger's numbers, e.g. a net winner's 300/450), else ``withdrawn`` is
    kept and ``invested = withdrawn + recognized_loss`` (what :mod:`claims.review` writes on an
    override or a settlement)."""
    wd = withdrawn or 0
    return _plan_invested(invested, wd, recognized_loss), wd


def _plan_invested(invested: int | None, withdrawn: int, recognized_loss: int | None) -> int:
    """The ``invested`` of :func:`claim_amounts` (``withdrawn`` an int already)."""
    if recognized_loss is None:
        return invested or 0
    if invested is not None and net_loss(invested, withdrawn) == recognized_loss:
        return invested
    return withdrawn + recognized_loss


def paid_before(session: Session, case_id: int) -> dict[int, int]:
    """Claim id → what the case's counting rounds allocated to it (one grouped query)."""
    rows = session.execute(
        select(Allocation.claim_id, func.sum(Allocation.amount))
        .join(DistributionRound, DistributionRound.id == Allocation.round_id)
        .where(DistributionRound.case_id == case_id, DistributionRound.status.in_(COUNTING),
               Allocation.amount > 0)
        .group_by(Allocation.claim_id)
    ).all()
    return {cid: int(total) for cid, total in rows}


@dataclass
class _CaseClaims:
    """A case's payable claims in id order, as columns (one list per column, no row object
    per claim), with the amounts the plan sees (:func:`claim_amounts`) and what earlier rounds
    paid."""

    ids: list[int]
    references: list[str]
    statuses: list[str]
    versions: list[int]
    invested: list[int]
    withdrawn: list[int]
    paid_before: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def _case_claims(session: Session, case_id: int) -> _CaseClaims:
    """The case's payable claims (``approved`` and ``disputed``) in id order, as columns (read
    in chunks in the session's transaction), with :func:`paid_before`."""
    cols = read_columns(
        session, "SELECT id, reference, status, version, invested, withdrawn, recognized_loss "
        f"FROM claim WHERE case_id = ? AND status IN ({markers(len(PAYABLE))}) ORDER BY id",
        (case_id, *sorted(PAYABLE)), chunk=INSERT_BATCH)
    ids, refs, sts, versions, inv_raw, wd_raw, recognized = cols
    wd = [w or 0 for w in wd_raw]
    inv = list(map(_plan_invested, inv_raw, wd, recognized))
    paid = paid_before(session, case_id)
    pb = [paid.get(c, 0) for c in ids] if paid else [0] * len(ids)
    return _CaseClaims(ids, refs, sts, versions, inv, wd, pb)


def _solve_case(session: Session, case: Case, pool: int, method: str,
                min_payout: int) -> tuple[_CaseClaims, AllocationResult]:
    """The plan over the case's payable claims now: (the claims, the plan). Nothing is
    written."""
    claims = _case_claims(session, case.id)
    if not claims:
        raise Conflict(f"case {case.code} has no approved or disputed claim to distribute to")
    disputed = ClaimStatus.disputed.value
    dis = [st == disputed for st in claims.statuses]
    # claim ids are unique in the database: no duplicate-id check needed; the solver gets
    # copies of the amount columns (its result keeps the lists it is given)
    return claims, allocate_columns(list(claims.references), list(claims.invested),
                                    list(claims.withdrawn), list(claims.paid_before), dis,
                                    pool, method, min_payout, unique_ids=True)


# ------------------------------------------------------------------ preview and prepare


def preview_round(session: Session, case_code: str, pool: int, method: str = PRO_RATA,
                  min_payout: int = 0) -> dict:
    """What :func:`prepare_round` would store now, for a caseworker to see before preparing;
    nothing is written."""
    validate_request(pool, method, min_payout)
    case = get_case_by_code(session, case_code)
    claims, result = _solve_case(session, case, pool, method, min_payout)
    return {**plan_summary(result), "rate_percent": rate_percent(result.rate),
            "claims": len(claims), "net_winners": result.net_winner_count,
            "de_minimis": result.excluded_count,
            "disputed": claims.statuses.count(ClaimStatus.disputed.value),
            "case_id": case.code, "method": method}


@gc_paused()
def prepare_round(
    session: Session,
    case_code: str,
    pool: int,
    method: str = PRO_RATA,
    min_payout: int = 0,
    *,
    actor: Actor,
    batch_size: int = INSERT_BATCH,
) -> DistributionRound:
    """Prepare a round of case ``case_code`` distributing ``pool`` micro-USDT (see the module
    docstring). Returns the stored round (status ``prepared``).

    Raises ``Forbidden`` (not a caseworker), ``InvalidInput`` (pool, method, min_payout),
    ``NotFound`` (case), ``Conflict`` (the case has no payable claim).
    """
    require_caseworker(actor, "prepare a round")
    validate_request(pool, method, min_payout)
    case = get_case_by_code(session, case_code, for_update=True)
    superseded = _supersede_prepared(session, case.id)
    number = _next_number(session, case.id)
    claims, result = _solve_case(session, case, pool, method, min_payout)
    rnd = _store_round(session, case, number, result, len(claims), actor)
    _store_allocations(session, rnd, claims, result, batch_size)
    audit.record_batch(session, [
        *(audit.Event(actor, "round.stale", "round", old, {"status": R.prepared.value},
                      {"status": R.stale.value, "because": f"superseded by round {rnd.id}"})
          for old in superseded),
        audit.Event(actor, "round.prepared", "round", rnd.id, None, {
            "case_id": case.code,
            "number": number,
            "method": method,
            "pool": pool,
            "min_payout": min_payout,
            "rate": rnd.rate,
            "allocated": rnd.allocated,
            "reserved": rnd.reserved,
            "undistributed": rnd.undistributed,
            "claims": rnd.claims_count,
            "excluded": {"net_winner": result.net_winner_count,
                         "de_minimis": result.excluded_count},
            "superseded": superseded,
        }),
    ])
    return rnd


def prepare_round_committed(
    case_code: str,
    pool: int,
    method: str = PRO_RATA,
    min_payout: int = 0,
    *,
    actor_name: str,
    actor_role: str,
    actor_staff_id: int | None,
) -> int:
    """:func:`prepare_round` in a transaction of its own (committed); returns the round id.
    The acting staff member travels as plain values (a Prefect flow's parameters)."""
    from claims.db import get_engine, session_scope

    actor = Actor(actor_name, actor_role, actor_staff_id)
    with session_scope(get_engine()) as session:
        return prepare_round(session, case_code, pool, method, min_payout, actor=actor).id


# ------------------------------------------------------------------ the steps of prepare


def _supersede_prepared(session: Session, case_id: int) -> list[int]:
    """Mark the case's prepared rounds stale (the new preparation supersedes them)."""
    stmt = select(DistributionRound.id).where(
        DistributionRound.case_id == case_id,
        DistributionRound.status == R.prepared.value,
    )
    ids = list(session.execute(for_update(stmt, session)).scalars())
    if ids:
        session.execute(
            update(DistributionRound)
            .where(DistributionRound.id.in_(ids), DistributionRound.status == R.prepared.value)
            .values(status=R.stale.value)
            .execution_options(synchronize_session=False)
        )
    return ids


def _next_number(session: Session, case_id: int) -> int:
    top = session.execute(
        select(func.max(DistributionRound.number)).where(
            DistributionRound.case_id == case_id, DistributionRound.status.in_(COUNTING)
        )
    ).scalar_one()
    return (top or 0) + 1


def _store_round(session: Session, case: Case, number: int, result: AllocationResult,
                 claims_count: int, actor: Actor) -> DistributionRound:
    """The new round's row (status ``prepared``, the plan's totals), checked to balance."""
    rate = result.rate
    rnd = DistributionRound(
        case_id=case.id,
        number=number,
        status=R.prepared.value,
        method=result.method,
        pool=result.pool,
        min_payout=result.min_payout,
        rate=f"{rate.numerator}/{rate.denominator}",
        allocated=result.allocated,
        reserved=result.reserved,
        released=0,
        undistributed=result.undistributed,
        claims_count=claims_count,
        prepared_by=actor.staff_id,
        prepared_at=utcnow(),
    )
    check_invariant(rnd)
    session.add(rnd)
    session.flush()
    return rnd


def _store_allocations(session: Session, rnd: DistributionRound, claims: _CaseClaims,
                       result: AllocationResult, batch_size: int) -> None:
    """One allocation row per payable claim (net winners and de minimis removals marked),
    ``batch_size`` rows per bulk insert."""
    n = len(claims)
    rows = zip(repeat(rnd.id, n), claims.ids, claims.versions, claims.invested,
               claims.withdrawn, result.net_losses, claims.paid_before, result.allocations,
               result.reserves, repeat(0, n), result.exclusions())
    while batch := list(islice(rows, batch_size)):
        bulk_insert(session, Allocation.__table__, ALLOCATION_COLUMNS, batch)
