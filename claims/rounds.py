"""Distribution rounds over the database: prepare, approve, disputes settled, read models.

The plan itself is :mod:`claims.allocation`'s (DESIGN.md "Allocation"); this module feeds it
the case's claims, stores the result as a snapshot, and keeps every round's money balanced
(CONTRACT.md "Round money")::

    allocated + reserved + released + undistributed == pool

Rules:

- **Prepare** (:func:`prepare_round`, caseworker): the input set is the case's *payable*
  claims (``approved``; ``disputed`` ones are solved as if approved and their share is
  ``reserved``), in claim-id order, each identified by its reference (so ties in rounding go
  by reference, and ``plan.csv`` of the round is what ``restitution plan`` gives for the same
  rows). A claim's amounts: the recognized loss is authoritative — ``invested``/``withdrawn``
  are the claim's own when ``max(0, invested − withdrawn) == recognized_loss`` (the ledger's
  numbers, e.g. a net winner's 300/450), else ``withdrawn`` is kept and ``invested =
  withdrawn + recognized_loss`` (what :mod:`claims.review` writes on an override or a
  settlement). ``paid_before`` = what the case's earlier *counting* rounds (``approved``,
  ``released``, ``settled``, ``stopped``) allocated to the claim; ``prepared`` and ``stale``
  rounds count for nothing. Every payable claim gets an :class:`Allocation` row (net winners
  with ``excluded = "net_winner"``, claims removed by the de minimis rule with
  ``excluded = "de_minimis"``), stamped with the claim's ``version``; rows are written in
  bulk. A round of the case still ``prepared`` becomes ``stale`` (superseded). The round's
  ``number`` is 1 + the highest number among the case's counting rounds: a re-preparation
  keeps the number of the round it replaces (the stale attempt stays in the history under its
  own id), so victims see rounds 1, 2, … without gaps.
- **Snapshot** (DESIGN "a prepared round is a snapshot"): :mod:`claims.lifecycle` marks
  prepared rounds ``stale`` whenever a payable claim changes. Approval re-checks: an
  included claim whose version changed or that is no longer payable, or a payable claim of
  the case that is not included, makes the round ``stale`` and approval answers
  :class:`StaleRound` (409).
- **Approve** (:func:`approve_round`): a caseworker other than the preparer (the preparer →
  :class:`FourEyes`, another role → :class:`Forbidden`; both 403), a ``prepared`` round only
  (``stale`` → :class:`StaleRound`; any other status → :class:`Conflict`). Every claim with a
  positive allocation is told (``allocated``: amount, the round's rate in percent, round
  number) in bulk; reserves of open disputes are told only once settled.
- **Disputes** (:func:`on_dispute_settled`, called by :func:`claims.review.settle`): in every
  counting round of the case in round order where the claim holds a reserve, its share is
  recomputed on the settled amount at that round's exact rate and method
  (:func:`claims.allocation.settle_share`, with ``already`` = what the claim's earlier rounds
  allocated to it, including settlements computed a moment before), never above the reserve:
  that part moves ``reserved → allocated`` (paid by the next release of that round), the rest
  ``reserved → released`` (carried to a later round by whoever prepares it: a pool is a
  manual choice, the ``released`` figure shows it). A ``settled`` round (everything paid)
  that gets a new allocation goes back to ``released`` so that the payout release pays it.
  ``stopped`` rounds count too (their status is left to finance).

Every change writes its audit event in the caller's transaction; the money invariant is
checked before anything is written (:class:`RoundInvariantError`). Nothing here knows HTTP,
the terminal or Prefect.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice, repeat
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlmodel import Session

from claims import audit, outbox
from claims.allocation import (
    METHODS,
    PLAN_COLUMNS,
    PRO_RATA,
    allocate_columns,
    base_and_already,
    plan_summary,
    settle_share,
)
from claims.audit import Actor, driver_sql
from claims.cases import get_case_by_code
from claims.db import lock_clause
from claims.errors import (
    Conflict,
    DomainError,
    Forbidden,
    FourEyes,
    InvalidInput,
    NotFound,
    StaleRound,
)
from claims.gc_pause import gc_paused
from claims.lifecycle import PAYABLE
from claims.models import (
    Allocation,
    Case,
    Claim,
    ClaimStatus,
    DistributionRound,
    Role,
    RoundStatus,
    StaffUser,
    utcnow,
)
from claims.money import MAX_MICRO, format_amount, format_rate, net_loss

R = RoundStatus

#: Rounds whose allocations are commitments: they count as ``paid_before`` in later rounds
#: and take part in dispute settlements.
COUNTING = (R.approved.value, R.released.value, R.settled.value, R.stopped.value)

#: Columns of a stored round's CSV: the Plan CSV output columns first (CONTRACT), then extras.
ROUND_CSV_COLUMNS = (*PLAN_COLUMNS, "paid_before", "released")

#: Allocation rows per INSERT batch.
INSERT_BATCH = 10_000

_ROUND_ID = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ROUND_ID = 2**31 - 1  # distribution_round.id is an INTEGER


class RoundInvariantError(RuntimeError):
    """A round whose money does not balance: a bug, never written."""


# ------------------------------------------------------------------ helpers


def rate_of(rnd: DistributionRound) -> Fraction:
    """The round's exact rate (stored as ``"num/den"``)."""
    num, _, den = rnd.rate.partition("/")
    return Fraction(int(num), int(den or 1))


def rate_percent(rate: Fraction) -> str:
    """The rate as a percentage string ("30", "52.6316"), as the ``allocated`` e-mail and
    the victims' status page show it (4 decimals, half up)."""
    return format_rate(rate * 100, 4)


def check_invariant(rnd: DistributionRound) -> None:
    """``allocated + reserved + released + undistributed == pool``, nothing negative."""
    parts = (rnd.allocated, rnd.reserved, rnd.released, rnd.undistributed)
    if any(p < 0 for p in parts) or sum(parts) != rnd.pool:
        raise RoundInvariantError(
            f"round {rnd.id} does not balance: allocated {rnd.allocated} + reserved "
            f"{rnd.reserved} + released {rnd.released} + undistributed {rnd.undistributed} "
            f"!= pool {rnd.pool}"
        )


def _require_caseworker(actor: Actor, doing: str) -> None:
    if actor.role != Role.caseworker.value:
        raise Forbidden(f"only a caseworker may {doing}; you are {actor.role}")
    if actor.staff_id is None:
        raise Forbidden(f"only a signed-in caseworker may {doing}")


def parse_round_id(round_id: object) -> int:
    """A round id from the edge (a string or int) → int; anything else is ``NotFound``."""
    if isinstance(round_id, bool):
        raise NotFound("no such round")
    if isinstance(round_id, str) and _ROUND_ID.fullmatch(round_id):
        round_id = int(round_id)
    if isinstance(round_id, int) and 0 < round_id <= _MAX_ROUND_ID:
        return round_id
    raise NotFound("no such round")


def get_round(session: Session, round_id: object, *, lock: bool = False) -> DistributionRound:
    rid = parse_round_id(round_id)
    stmt = select(DistributionRound).where(DistributionRound.id == rid)
    if lock and lock_clause(session):
        stmt = stmt.with_for_update()
    rnd = session.execute(stmt).scalar_one_or_none()
    if rnd is None:
        raise NotFound(f"no round {rid}")
    return rnd


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


def claim_amounts(invested: int | None, withdrawn: int | None,
                  recognized_loss: int | None) -> tuple[int, int]:
    """``(invested, withdrawn)`` of a claim as the plan sees it (see the module docstring):
    the recognized loss is the net loss."""
    wd = withdrawn or 0
    if recognized_loss is None:
        return invested or 0, wd
    if invested is not None and net_loss(invested, wd) == recognized_loss:
        return invested, wd
    return wd + recognized_loss, wd


# ------------------------------------------------------------------ prepare


def _supersede_prepared(session: Session, case_id: int) -> list[int]:
    """Mark the case's prepared rounds stale (the new preparation supersedes them)."""
    stmt = select(DistributionRound.id).where(
        DistributionRound.case_id == case_id,
        DistributionRound.status == R.prepared.value,
    )
    if lock_clause(session):
        stmt = stmt.with_for_update()
    ids = list(session.execute(stmt).scalars())
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


def payable_claims(session: Session, case_id: int) -> list[Any]:
    """The case's approved and disputed claims, in id order, as light rows."""
    return list(session.execute(
        select(Claim.id, Claim.reference, Claim.status, Claim.version, Claim.invested,
               Claim.withdrawn, Claim.recognized_loss)
        .where(Claim.case_id == case_id, Claim.status.in_(PAYABLE))
        .order_by(Claim.id)
    ).all())


ALLOCATION_COLUMNS = ("round_id", "claim_id", "claim_version", "invested", "withdrawn",
                      "net_loss", "paid_before", "amount", "reserved", "released", "excluded")


def bulk_insert(session: Session, table, columns: Sequence[str], rows,
                batch_size: int = INSERT_BATCH) -> None:
    """Write ``rows`` (tuples in ``columns`` order, plain ints, strings and None; a list or
    any iterable, consumed as it goes) into ``table`` in the session's transaction,
    ``batch_size`` at a time, through :func:`claims.audit.bulk_insert` (COPY on PostgreSQL,
    ``executemany`` elsewhere)."""
    rows = iter(rows)
    while True:
        batch = list(islice(rows, batch_size))
        if not batch:
            return
        audit.bulk_insert(session, table, columns, batch)


@dataclass
class _CaseClaims:
    """A case's payable claims in id order, as columns (what :func:`payable_claims` gives,
    one list per column, without a row object per claim), with the amounts the plan sees
    (:func:`claim_amounts`) and what earlier rounds paid."""

    ids: list[int]
    references: list[str]
    statuses: list[str]
    versions: list[int]
    invested: list[int]
    withdrawn: list[int]
    paid_before: list[int]

    def __len__(self) -> int:
        return len(self.ids)


_PAYABLE_SQL = ("SELECT id, reference, status, version, invested, withdrawn, recognized_loss "
                "FROM claim WHERE case_id = ? AND status IN ({}) ORDER BY id")
_FETCH = 10_000


def _case_claims(session: Session, case_id: int) -> _CaseClaims:
    """:func:`payable_claims` and :func:`paid_before` as columns: the claims read by the
    driver's cursor in the session's transaction (plain tuples, fetched in chunks and
    turned into columns), the same rows and order as :func:`payable_claims`."""
    if session.autoflush:
        session.flush()  # as session.execute would (nothing is pending in prepare_round)
    statuses = sorted(PAYABLE)
    sql = driver_sql(session, _PAYABLE_SQL.format(", ".join("?" * len(statuses))))
    cols: list[list] = [[] for _ in range(7)]
    cur = session.connection().connection.driver_connection.cursor()
    try:
        cur.execute(sql, (case_id, *statuses))
        while True:
            chunk = cur.fetchmany(_FETCH)
            if not chunk:
                break
            for col, values in zip(cols, zip(*chunk)):
                col.extend(values)
    finally:
        cur.close()
    ids, refs, sts, versions, inv_raw, wd_raw, recognized = cols
    # claim_amounts, column-wise: the recognized loss is the net loss
    wd = [w or 0 for w in wd_raw]
    inv = [(i or 0) if r is None
           else i if i is not None and (i - w if i > w else 0) == r
           else w + r
           for i, w, r in zip(inv_raw, wd, recognized)]
    paid = paid_before(session, case_id)
    pb = [paid.get(c, 0) for c in ids] if paid else [0] * len(ids)
    return _CaseClaims(ids, refs, sts, versions, inv, wd, pb)


def _solve_case(session: Session, case, pool: int, method: str, min_payout: int):
    """The plan over the case's payable claims now: (claims as :class:`_CaseClaims`,
    AllocationResult). Nothing is written."""
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
    _require_caseworker(actor, "prepare a round")
    validate_request(pool, method, min_payout)
    case = get_case_by_code(session, case_code, for_update=True)
    superseded = _supersede_prepared(session, case.id)
    number = _next_number(session, case.id)
    claims, result = _solve_case(session, case, pool, method, min_payout)

    now = utcnow()
    rate = result.rate
    rnd = DistributionRound(
        case_id=case.id,
        number=number,
        status=R.prepared.value,
        method=method,
        pool=pool,
        min_payout=min_payout,
        rate=f"{rate.numerator}/{rate.denominator}",
        allocated=result.allocated,
        reserved=result.reserved,
        released=0,
        undistributed=result.undistributed,
        claims_count=len(claims),
        prepared_by=actor.staff_id,
        prepared_at=now,
    )
    check_invariant(rnd)
    session.add(rnd)
    session.flush()

    # one row per payable claim: net winners (net loss 0) and de minimis removals marked
    loss = result.net_losses
    excluded: list[str | None] = [None if l_ else "net_winner" for l_ in loss]
    for i in result.excluded_indices:  # removed claims were given nothing (loss > 0)
        if loss[i]:
            excluded[i] = "de_minimis"
    n = len(claims)
    rows = zip(repeat(rnd.id, n), claims.ids, claims.versions, claims.invested,
               claims.withdrawn, loss, claims.paid_before, result.allocations, result.reserves,
               repeat(0, n), excluded)
    bulk_insert(session, Allocation.__table__, ALLOCATION_COLUMNS, rows, batch_size)

    events = [
        ("round.stale", "round", old, {"status": R.prepared.value},
         {"status": R.stale.value, "because": f"superseded by round {rnd.id}"})
        for old in superseded
    ]
    events.append(("round.prepared", "round", rnd.id, None, {
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
    }))
    audit.record_many(session, actor, events)
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


# ------------------------------------------------------------------ approve


def snapshot_problems(session: Session, rnd: DistributionRound, limit: int = 5) -> list[str]:
    """What makes a prepared round no longer the case's truth (empty when it still is):
    included claims that changed or stopped being payable, payable claims left out."""
    changed = session.execute(
        select(Claim.reference)
        .join(Allocation, Allocation.claim_id == Claim.id)
        .where(Allocation.round_id == rnd.id,
               (Claim.version != Allocation.claim_version) | Claim.status.not_in(PAYABLE))
        .order_by(Claim.id)
        .limit(limit)
    ).scalars().all()
    missing = session.execute(
        select(Claim.reference)
        .where(Claim.case_id == rnd.case_id, Claim.status.in_(PAYABLE),
               ~exists().where(and_(Allocation.round_id == rnd.id,
                                    Allocation.claim_id == Claim.id)))
        .order_by(Claim.id)
        .limit(limit)
    ).scalars().all()
    out = [f"{ref} changed after preparation" for ref in changed]
    out += [f"{ref} is payable but not in the round" for ref in missing]
    return out


def _mark_stale(session: Session, rnd: DistributionRound, actor: Actor, because: str) -> None:
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id, DistributionRound.status == R.prepared.value)
        .values(status=R.stale.value)
        .execution_options(synchronize_session=False)
    )
    rnd.status = R.stale.value
    session.flush()
    audit.record(session, actor, "round.stale", "round", rnd.id,
                 before={"status": R.prepared.value},
                 after={"status": R.stale.value, "because": because})


def approval_refusal(rnd: DistributionRound, actor: Actor) -> DomainError | None:
    """Why ``actor`` may not approve ``rnd`` as it stands (the error :func:`approve_round`
    raises), or ``None`` when they may: only a caseworker, never the one who prepared it
    (four eyes), and only a prepared round. The snapshot check (:func:`snapshot_problems`)
    comes on top when approving."""
    try:
        _require_caseworker(actor, "approve a round")
    except Forbidden as exc:
        return exc
    if rnd.prepared_by == actor.staff_id:
        return FourEyes(f"round {rnd.id} was prepared by you; another caseworker must approve it")
    if rnd.status == R.stale.value:
        return StaleRound(f"round {rnd.id} is stale: a claim changed after it was prepared; "
                          "prepare it again")
    if rnd.status != R.prepared.value:
        return Conflict(f"round {rnd.id} is {rnd.status}; only a prepared round can be approved")
    return None


def approve_round(
    session: Session, round_id: object, *, actor: Actor, persist_stale: bool = False
) -> DistributionRound:
    """Approve a prepared round (four eyes; see the module docstring).

    A round found stale by the snapshot check is marked ``stale`` before ``StaleRound`` is
    raised; with ``persist_stale`` the caller's session is committed first so that the mark
    survives the error (the API and the CLI ask for it). Raises ``Forbidden``, ``FourEyes``,
    ``NotFound``, ``StaleRound``, ``Conflict``.
    """
    _require_caseworker(actor, "approve a round")
    rnd = get_round(session, round_id, lock=True)
    refusal = approval_refusal(rnd, actor)
    if refusal is not None:
        raise refusal
    problems = snapshot_problems(session, rnd)
    if problems:
        _mark_stale(session, rnd, actor, "; ".join(problems))
        if persist_stale:
            session.commit()
        raise StaleRound(f"round {rnd.id} is stale: " + "; ".join(problems)
                         + "; prepare it again")
    check_invariant(rnd)
    now = utcnow()
    res = session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id, DistributionRound.status == R.prepared.value)
        .values(status=R.approved.value, approved_by=actor.staff_id, approved_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # pragma: no cover - the row is locked (PostgreSQL) or the db is (SQLite)
        raise Conflict(f"round {rnd.id} changed meanwhile")
    rnd.status, rnd.approved_by, rnd.approved_at = R.approved.value, actor.staff_id, now
    session.flush()
    audit.record(session, actor, "round.approved", "round", rnd.id,
                 before={"status": R.prepared.value},
                 after={"status": R.approved.value, "number": rnd.number, "rate": rnd.rate,
                        "allocated": rnd.allocated, "reserved": rnd.reserved})
    _notify_allocated(session, rnd)
    return rnd


def _notify_allocated(session: Session, rnd: DistributionRound,
                      claim_ids: Sequence[int] | None = None) -> int:
    """``allocated`` notifications to the round's claims with a positive allocation (or to
    ``claim_ids`` only), in bulk."""
    percent = rate_percent(rate_of(rnd))
    stmt = (
        select(Claim.id, Claim.reference, Claim.language, Claim.email, Allocation.amount)
        .join(Allocation, Allocation.claim_id == Claim.id)
        .where(Allocation.round_id == rnd.id, Allocation.amount > 0)
        .order_by(Claim.id)
    )
    if claim_ids is not None:
        stmt = stmt.where(Claim.id.in_(list(claim_ids)))
    sent = 0
    result = session.execute(stmt)
    while batch := result.fetchmany(INSERT_BATCH):
        sent += outbox.enqueue_rows(session, [
            (cid, "allocated", language, email, outbox.context_text(
                reference, {"amount": format_amount(amount), "rate_percent": percent,
                            "round": rnd.number}))
            for cid, reference, language, email, amount in batch
        ])
    return sent


# ------------------------------------------------------------------ disputes


def on_dispute_settled(session: Session, claim: Claim, amount: int, actor: Actor) -> list[dict]:
    """Move the claim's reserves in its case's counting rounds to allocated / released (see
    the module docstring). Returns one ``{"round", "allocated", "released"}`` per round
    touched. Called by :func:`claims.review.settle` in its transaction."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidInput([{"field": "amount", "message": "must be an amount ≥ 0"}])
    stmt = (
        select(DistributionRound, Allocation)
        .join(Allocation, Allocation.round_id == DistributionRound.id)
        .where(DistributionRound.case_id == claim.case_id,
               DistributionRound.status.in_(COUNTING),
               Allocation.claim_id == claim.id)
        .order_by(DistributionRound.number, DistributionRound.id)
    )
    if lock_clause(session):
        stmt = stmt.with_for_update()
    withdrawn = claim.withdrawn or 0
    already = 0  # what the claim's earlier counting rounds allocated to it
    touched = []
    events = []
    notify_rounds = []
    for rnd, alloc in session.execute(stmt).all():
        if alloc.reserved > 0:
            base, already_term = base_and_already(rnd.method, withdrawn + amount, withdrawn,
                                                  already)
            part = min(settle_share(rate_of(rnd), base, already_term), alloc.reserved)
            rest = alloc.reserved - part
            before = {"status": rnd.status, "allocated": rnd.allocated,
                      "reserved": rnd.reserved, "released": rnd.released}
            reserve = alloc.reserved
            alloc.amount += part
            alloc.released += rest
            alloc.reserved = 0
            rnd.allocated += part
            rnd.reserved -= reserve
            rnd.released += rest
            if part > 0 and rnd.status == R.settled.value:
                rnd.status = R.released.value  # a new allocation to pay: not settled any more
            check_invariant(rnd)
            session.add_all([rnd, alloc])
            touched.append({"round": rnd.id, "number": rnd.number, "allocated": part,
                            "released": rest})
            events.append(("round.dispute_settled", "round", rnd.id, before, {
                "status": rnd.status, "allocated": rnd.allocated, "reserved": rnd.reserved,
                "released": rnd.released, "claim": claim.reference, "settled_amount": amount,
                "claim_allocated": part, "claim_released": rest,
            }))
            if part > 0:
                notify_rounds.append(rnd)
        already += alloc.amount
    if events:
        session.flush()
        audit.record_many(session, actor, events)
        for rnd in notify_rounds:
            _notify_allocated(session, rnd, [claim.id])
    return touched


# ------------------------------------------------------------------ read models


def round_view(rnd: DistributionRound, *, case_code: str | None = None,
               prepared_by: str | None = None, approved_by: str | None = None) -> dict[str, Any]:
    """CONTRACT's round JSON (``id, status, pool, rate, allocated, reserved, released,
    undistributed, claims``) plus extras. ``claims`` counts the round's allocation rows: the
    payable claims it was prepared over (net winners and de minimis removals included)."""
    rate = rate_of(rnd)
    return {
        "id": str(rnd.id),
        "status": rnd.status,
        "pool": format_amount(rnd.pool),
        "rate": format_rate(rate),
        "allocated": format_amount(rnd.allocated),
        "reserved": format_amount(rnd.reserved),
        "released": format_amount(rnd.released),
        "undistributed": format_amount(rnd.undistributed),
        "claims": rnd.claims_count,
        "case_id": case_code,
        "number": rnd.number,
        "method": rnd.method,
        "min_payout": format_amount(rnd.min_payout),
        "rate_exact": rnd.rate,
        "rate_percent": rate_percent(rate),
        "prepared_by": prepared_by,
        "approved_by": approved_by,
        "prepared_at": rnd.prepared_at.isoformat() if rnd.prepared_at else None,
        "approved_at": rnd.approved_at.isoformat() if rnd.approved_at else None,
        "released_at": rnd.released_at.isoformat() if rnd.released_at else None,
        "stopped_reason": rnd.stopped_reason,
    }


def _views(session: Session, rounds: Sequence[DistributionRound]) -> list[dict[str, Any]]:
    staff_ids = {i for r in rounds for i in (r.prepared_by, r.approved_by) if i is not None}
    names = dict(session.execute(
        select(StaffUser.id, StaffUser.username).where(StaffUser.id.in_(staff_ids))
    ).all()) if staff_ids else {}
    case_ids = {r.case_id for r in rounds}
    codes = dict(session.execute(
        select(Case.id, Case.code).where(Case.id.in_(case_ids))
    ).all()) if case_ids else {}
    return [
        round_view(r, case_code=codes.get(r.case_id), prepared_by=names.get(r.prepared_by),
                   approved_by=names.get(r.approved_by))
        for r in rounds
    ]


def view(session: Session, rnd: DistributionRound) -> dict[str, Any]:
    return _views(session, [rnd])[0]


def get_round_view(session: Session, round_id: object) -> dict[str, Any]:
    return view(session, get_round(session, round_id))


def list_rounds(session: Session, case_code: str) -> list[dict[str, Any]]:
    """Every round of the case (stale attempts included), by number then id."""
    case = get_case_by_code(session, case_code)
    rounds = session.execute(
        select(DistributionRound).where(DistributionRound.case_id == case.id)
        .order_by(DistributionRound.number, DistributionRound.id)
    ).scalars().all()
    return _views(session, rounds)


def allocation_sums(session: Session, round_id: int) -> dict[str, int]:
    """Σ of the round's allocation rows (what the round's totals must equal)."""
    allocated, reserved, released, count = session.execute(
        select(func.coalesce(func.sum(Allocation.amount), 0),
               func.coalesce(func.sum(Allocation.reserved), 0),
               func.coalesce(func.sum(Allocation.released), 0),
               func.count())
        .where(Allocation.round_id == round_id)
    ).one()
    return {"allocated": int(allocated), "reserved": int(reserved),
            "released": int(released), "claims": int(count)}


def verify_round(session: Session, round_id: object) -> None:
    """The stored round balances and its allocation rows add up to its totals (or
    ``RoundInvariantError``)."""
    rnd = get_round(session, round_id)
    check_invariant(rnd)
    sums = allocation_sums(session, rnd.id)
    expected = {"allocated": rnd.allocated, "reserved": rnd.reserved,
                "released": rnd.released, "claims": rnd.claims_count}
    if sums != expected:
        raise RoundInvariantError(f"round {rnd.id}: allocation rows {sums} != round {expected}")


def plan_csv_rows(session: Session, round_id: object,
                  chunk: int = INSERT_BATCH) -> Iterator[dict[str, str]]:
    """The round's plan lines (``ROUND_CSV_COLUMNS``: the Plan CSV output columns of
    :data:`claims.allocation.PLAN_COLUMNS`, then ``paid_before`` and ``released``) in claim
    order, ``claim_id`` = the claim's reference, amounts as decimal strings. For a freshly
    prepared round the Plan columns equal :func:`claims.allocation.plan_rows` of the same
    solve."""
    rnd = get_round(session, round_id)
    fmt = format_amount
    last = 0
    while True:
        rows = session.execute(
            select(Allocation.claim_id, Claim.reference, Allocation.net_loss, Allocation.amount,
                   Allocation.reserved, Allocation.excluded, Allocation.paid_before,
                   Allocation.released)
            .join(Claim, Claim.id == Allocation.claim_id)
            .where(Allocation.round_id == rnd.id, Allocation.claim_id > last)
            .order_by(Allocation.claim_id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        for cid, ref, loss, amount, reserved, excluded, pb, released in rows:
            yield {
                "claim_id": ref,
                "net_loss": fmt(loss),
                "allocation": fmt(amount),
                "reserved": fmt(reserved),
                "excluded": excluded or "",
                "paid_before": fmt(pb),
                "released": fmt(released),
            }
        last = rows[-1][0]


def plan_csv_text(session: Session, round_id: object) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROUND_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(plan_csv_rows(session, round_id))
    return buf.getvalue()
