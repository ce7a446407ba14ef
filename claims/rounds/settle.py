"""A dispute settled: the claim's reserves in its rounds become allocated or released
(docs/allocation.md, "Disputed claims: reserved, then settled").

In every counting round of the case in round order where the claim holds a reserve, its share
is recomputed on the settled amount at that round's exact rate and method
(:func:`claims.allocation.settle_share`, with ``already`` = what the claim's earlier rounds
allocated to it, including settlements computed a moment before), never above the reserve:
that part moves ``reserved → allocated`` (paid by the next release of that round), the rest
``reserved → released`` (carried to a later round by whoever prepares it: a pool is a manual
choice, the ``released`` figure shows it). A ``settled`` round (everything paid) that gets a
new allocation goes back to ``released`` so that the payout release pays it. ``stopped``
rounds count too (their status is left to finance).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from claims import audit
from claims.allocation import base_and_already, settle_share
from claims.audit import Actor
from claims.db import for_update
from claims.errors import InvalidInput
from claims.models import Allocation, Claim, DistributionRound
from claims.money import parse_rate
from claims.rounds.store import COUNTING, R, check_invariant
from claims.rounds.views import notify_allocated


def on_dispute_settled(session: Session, claim: Claim, amount: int, actor: Actor) -> list[dict]:
    """Move the claim's reserves in its case's counting rounds to allocated / released (see
    the module docstring). Returns one ``{"round", "number", "allocated", "released"}`` per
    round touched. Called by :func:`claims.review.settle` in its transaction."""
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
    withdrawn = claim.withdrawn or 0
    already = 0  # what the claim's earlier counting rounds allocated to it
    touched = []
    events = []
    notify_rounds = []
    for rnd, alloc in session.execute(for_update(stmt, session)).all():
        if alloc.reserved > 0:
            base, already_term = base_and_already(rnd.method, withdrawn + amount, withdrawn,
                                                  already)
            part = min(settle_share(parse_rate(rnd.rate), base, already_term), alloc.reserved)
            before, after = _settle_reserve(rnd, alloc, part)
            session.add_all([rnd, alloc])
            touched.append({"round": rnd.id, "number": rnd.number, "allocated": part,
                            "released": after["claim_released"]})
            events.append(audit.Event(actor, "round.dispute_settled", "round", rnd.id, before, {
                **after, "claim": claim.reference, "settled_amount": amount}))
            if part > 0:
                notify_rounds.append(rnd)
        already += alloc.amount
    if events:
        session.flush()
        audit.record_batch(session, events)
        for rnd in notify_rounds:
            notify_allocated(session, rnd, [claim.id])
    return touched


def _settle_reserve(rnd: DistributionRound, alloc: Allocation, part: int) -> tuple[dict, dict]:
    """Move ``part`` of the allocation's reserve to allocated and the rest to released, in the
    allocation and its round (checked to balance); returns the round's figures before and
    after, the latter with ``claim_allocated`` / ``claim_released``."""
    before = {"status": rnd.status, "allocated": rnd.allocated, "reserved": rnd.reserved,
              "released": rnd.released}
    reserve = alloc.reserved
    rest = reserve - part
    alloc.amount += part
    alloc.released += rest
    alloc.reserved = 0
    rnd.allocated += part
    rnd.reserved -= reserve
    rnd.released += rest
    if part > 0 and rnd.status == R.settled.value:
        rnd.status = R.released.value  # a new allocation to pay: not settled any more
    check_invariant(rnd)
    after = {"status": rnd.status, "allocated": rnd.allocated, "reserved": rnd.reserved,
             "released": rnd.released, "claim_allocated": part, "claim_released": rest}
    return before, after
