"""Approving a prepared round (docs/lifecycle.md, "Rounds" and "Who may do what (four eyes)").

A caseworker other than the preparer (the preparer → :class:`FourEyes`, another role →
:class:`Forbidden`; both 403) approves a ``prepared`` round only (``stale`` →
:class:`StaleRound`; any other status → :class:`Conflict`): :func:`approval_refusal` says which.
A prepared round is a snapshot: :mod:`claims.lifecycle` marks prepared rounds ``stale`` whenever
a payable claim changes, and approval re-checks (:func:`snapshot_problems`): an included claim
whose version changed or that is no longer payable, or a payable claim of the case that is not
included, makes the round ``stale`` and approval answers :class:`StaleRound` (409). Every claim
with a positive allocation is then told (``allocated``) in bulk; reserves of open disputes are
told only once settled.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, select, update
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.errors import Conflict, DomainError, Forbidden, FourEyes, StaleRound
from claims.lifecycle import PAYABLE
from claims.models import Allocation, Claim, DistributionRound, utcnow
from claims.rounds.store import R, check_invariant, get_round, require_caseworker
from claims.rounds.views import notify_allocated


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


def approval_refusal(rnd: DistributionRound, actor: Actor) -> DomainError | None:
    """Why ``actor`` may not approve ``rnd`` as it stands (the error :func:`approve_round`
    raises), or ``None`` when they may: only a caseworker, never the one who prepared it
    (four eyes), and only a prepared round. The snapshot check (:func:`snapshot_problems`)
    comes on top when approving."""
    try:
        require_caseworker(actor, "approve a round")
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
    require_caseworker(actor, "approve a round")
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
    notify_allocated(session, rnd)
    return rnd


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
