"""The claim state machine (DESIGN.md, Claim lifecycle).

    submitted → verifying ─┬→ approved ─────────────┬→ (its allocations and payouts)
                           │                         ├→ disputed ─(settled)→ approved
                           │                         └→ flagged (address changed, new facts)
                           └→ flagged ─(caseworker)─┬→ approved
                                                    ├→ rejected
                                                    └→ needs_info ─(victim replies)→ verifying

Every change of state goes through :func:`transition` (or :func:`transition_many` for
batches): in the caller's one transaction it changes the state (guarded by the expected
current state, so a concurrent change cannot be overwritten), appends the audit event,
enqueues the claimant's notification, and marks the case's prepared rounds stale when the
set of payable claims may have changed. An illegal transition raises
:class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from claims import audit, outbox
from claims.audit import Actor
from claims.errors import IllegalTransition
from claims.models import Claim, ClaimStatus, DistributionRound, RoundStatus, utcnow

S = ClaimStatus

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (S.submitted.value, S.verifying.value),
        (S.verifying.value, S.approved.value),
        (S.verifying.value, S.flagged.value),
        (S.flagged.value, S.approved.value),
        (S.flagged.value, S.rejected.value),
        (S.flagged.value, S.needs_info.value),
        (S.needs_info.value, S.verifying.value),
        (S.approved.value, S.disputed.value),
        (S.approved.value, S.flagged.value),
        (S.disputed.value, S.approved.value),
    }
)

# Statuses whose claims take part in a distribution round.
PAYABLE = frozenset({S.approved.value, S.disputed.value})


def can_transition(src: str, dst: str) -> bool:
    return (src, dst) in ALLOWED


def check(src: str, dst: str) -> None:
    if not can_transition(src, dst):
        raise IllegalTransition(f"a claim cannot go from {src} to {dst}")


@dataclass
class Change:
    """What a transition sets besides the status (column → value), audited as ``after``."""

    values: dict = field(default_factory=dict)
    audit_extra: dict = field(default_factory=dict)


def transition(
    session: Session,
    claim: Claim,
    to: str | ClaimStatus,
    *,
    actor: Actor,
    action: str,
    notify: str | None = None,
    notify_context: dict | None = None,
    values: dict | None = None,
    audit_extra: dict | None = None,
) -> Claim:
    """Move one claim to ``to``. See the module docstring."""
    to = ClaimStatus(to).value
    src = claim.status
    check(src, to)
    values = dict(values or {})
    now = utcnow()
    res = session.execute(
        update(Claim)
        .where(Claim.id == claim.id, Claim.status == src)
        .values(status=to, version=Claim.version + 1, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise IllegalTransition(f"claim {claim.reference} changed meanwhile; it is no longer {src}")
    before = {"status": src, **{k: getattr(claim, k) for k in values}}
    _set(claim, status=to, version=claim.version + 1, updated_at=now, **values)
    after = {"status": to, **values, **(audit_extra or {})}
    audit.record(session, actor, action, "claim", claim.reference, before=before, after=after)
    if notify:
        outbox.enqueue(session, claim, notify, notify_context)
    if src in PAYABLE or to in PAYABLE:
        mark_rounds_stale(session, claim.case_id, actor=actor, because=claim.reference)
    return claim


def transition_many(
    session: Session,
    claims: Sequence[Claim],
    to: str | ClaimStatus,
    *,
    actor: Actor,
    action: str,
    notify: str | None = None,
    notify_context: dict | None = None,
    per_claim_values: dict[int, dict] | None = None,
    per_claim_audit: dict[int, dict] | None = None,
) -> int:
    """Move a batch of claims (all in one current status) to ``to`` with bulk statements.

    ``per_claim_values`` maps claim id → extra column values for that claim.
    """
    if not claims:
        return 0
    to = ClaimStatus(to).value
    srcs = {c.status for c in claims}
    for src in srcs:
        check(src, to)
    now = utcnow()
    per_claim_values = per_claim_values or {}
    per_claim_audit = per_claim_audit or {}
    keys = sorted({k for c in claims for k in per_claim_values.get(c.id, {})})
    table = Claim.__table__
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.status == bindparam("b_src"))
        .values(
            status=to,
            version=table.c.version + 1,
            updated_at=now,
            **{k: bindparam(f"v_{k}") for k in keys},
        )
    )
    params = []
    for c in claims:
        vals = per_claim_values.get(c.id, {})
        row = {"b_id": c.id, "b_src": c.status}
        row.update({f"v_{k}": vals.get(k, getattr(c, k)) for k in keys})
        params.append(row)
    res = session.connection().execute(stmt, params)
    changed = res.rowcount
    if changed != len(claims):
        raise IllegalTransition(
            f"{len(claims) - changed} claim(s) changed meanwhile; batch refused"
        )
    events = []
    for c in claims:
        vals = per_claim_values.get(c.id, {})
        before = {"status": c.status, **{k: getattr(c, k) for k in vals}}
        after = {"status": to, **vals, **per_claim_audit.get(c.id, {})}
        events.append((action, "claim", c.reference, before, after))
    audit.record_many(session, actor, events)
    for c in claims:
        _set(c, status=to, version=c.version + 1, updated_at=now, **per_claim_values.get(c.id, {}))
    if notify:
        outbox.enqueue_many(session, [(c, notify, notify_context or {}, None) for c in claims])
    if to in PAYABLE or srcs & PAYABLE:
        for case_id in {c.case_id for c in claims}:
            mark_rounds_stale(session, case_id, actor=actor, because=f"{len(claims)} claims")
    return changed


def touch(session: Session, claim: Claim, *, actor: Actor, action: str, values: dict,
          audit_extra: dict | None = None, notify: str | None = None,
          notify_context: dict | None = None) -> Claim:
    """A change to a claim that keeps its status (amount, address…): audited, versioned,
    and it makes prepared rounds stale when the claim is payable."""
    now = utcnow()
    before = {k: getattr(claim, k) for k in values}
    session.execute(
        update(Claim)
        .where(Claim.id == claim.id)
        .values(version=Claim.version + 1, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    _set(claim, version=claim.version + 1, updated_at=now, **values)
    audit.record(session, actor, action, "claim", claim.reference, before=before,
                 after={**values, **(audit_extra or {})})
    if notify:
        outbox.enqueue(session, claim, notify, notify_context)
    if claim.status in PAYABLE:
        mark_rounds_stale(session, claim.case_id, actor=actor, because=claim.reference)
    return claim


def _set(obj: Claim, **values) -> None:
    """Reflect a bulk UPDATE already sent to the database on a loaded object, without
    making the ORM write it a second time."""
    for k, v in values.items():
        set_committed_value(obj, k, v)


def mark_rounds_stale(session: Session, case_id: int, *, actor: Actor, because: str) -> int:
    """A prepared round is a snapshot: when a claim that is or becomes payable changes, the
    case's prepared rounds become ``stale`` and must be prepared again."""
    ids = session.execute(
        select(DistributionRound.id).where(
            DistributionRound.case_id == case_id,
            DistributionRound.status == RoundStatus.prepared.value,
        )
    ).scalars().all()
    if not ids:
        return 0
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id.in_(ids), DistributionRound.status == RoundStatus.prepared.value)
        .values(status=RoundStatus.stale.value)
        .execution_options(synchronize_session=False)
    )
    audit.record_many(
        session,
        actor,
        [("round.stale", "round", rid, {"status": "prepared"}, {"status": "stale", "because": because})
         for rid in ids],
    )
    return len(ids)
