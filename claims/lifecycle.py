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

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from claims import audit, outbox
from claims.audit import (
    Actor,
    bind_processor,
    bind_repeats,
    bind_value,
    canonical_text,
    driver_sql,
    jsonable,
)
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

    ``per_claim_values`` maps claim id → extra column values for that claim. ``claims`` are
    model objects (updated in place, as :func:`transition` does) or plain rows with the
    attributes read here (``id``, ``reference``, ``status``, ``case_id``, the columns of
    ``per_claim_values``; ``language`` and ``email`` when notifying).
    """
    if not claims:
        return 0
    to = ClaimStatus(to).value
    per_claim_values = per_claim_values or {}
    per_claim_audit = per_claim_audit or {}
    keys = sorted({k for c in claims for k in per_claim_values.get(c.id, {})})
    no_values: dict = {}
    items = []
    for c in claims:
        vals = per_claim_values.get(c.id, no_values)
        before = {"status": c.status, **{k: getattr(c, k) for k in vals}}
        after = {"status": to, **vals, **per_claim_audit.get(c.id, no_values)}
        items.append((c, [vals.get(k, getattr(c, k)) for k in keys],
                      canonical_text(jsonable(before)), canonical_text(jsonable(after))))
    now = utcnow()
    changed = apply_transition(session, to, actor=actor, action=action, columns=keys,
                               items=items, now=now)
    for c in claims:
        if hasattr(c, "_sa_instance_state"):  # a model object: reflect the change on it
            _set(c, status=to, version=c.version + 1, updated_at=now,
                 **per_claim_values.get(c.id, {}))
    if notify:
        outbox.enqueue_many(session, [(c, notify, notify_context or {}, None) for c in claims])
    return changed


def apply_transition(
    session: Session,
    to: str,
    *,
    actor: Actor,
    action: str,
    columns: Sequence[str],
    items: Sequence[tuple],
    now: dt.datetime | None = None,
) -> int:
    """The bulk core of :func:`transition_many`, for hot paths that prepare the audit text
    themselves: ``items`` are ``(claim, values, before_text, after_text)`` — ``claim`` a row or
    object with ``id``, ``reference``, ``status`` and ``case_id``; ``values`` the new values of
    ``columns`` (Python values, as for the model); the texts the audit event's ``before`` and
    ``after`` as :func:`claims.audit.canonical_text` (``status`` and the changed columns
    before, ``status``, the new values and any extra after). One guarded ``UPDATE`` per claim
    in one ``executemany``, the audit events in one insert, prepared rounds made stale when a
    claim becomes or stops being payable. No notification (the caller enqueues it). Refuses
    the whole batch (:class:`IllegalTransition`) when any claim is no longer in its status."""
    if not items:
        return 0
    to = ClaimStatus(to).value
    srcs = {c.status for c, *_ in items}
    for src in srcs:
        check(src, to)
    now = now or utcnow()
    table = Claim.__table__
    procs = [bind_repeats(p) if p is not None else None
             for p in (bind_processor(session, table.c[k]) for k in columns)]
    sets = "".join(f", {k} = ?" for k in columns)
    sql = (f"UPDATE {table.name} SET status = ?, version = version + 1, updated_at = ?{sets} "
           "WHERE id = ? AND status = ?")
    now_db = bind_value(session, table.c.updated_at, now)
    if any(procs):
        params = [
            (to, now_db, *[p(v) if p else v for p, v in zip(procs, vals)], c.id, c.status)
            for c, vals, _b, _a in items
        ]
    else:
        params = [(to, now_db, *vals, c.id, c.status) for c, vals, _b, _a in items]
    res = session.connection().exec_driver_sql(driver_sql(session, sql), params)
    changed = res.rowcount
    if changed != len(items):
        raise IllegalTransition(
            f"{len(items) - changed} claim(s) changed meanwhile; batch refused"
        )
    audit.record_texts(session, actor, action, "claim",
                       [(c.reference, b, a) for c, _v, b, a in items],
                       [c.id for c, *_ in items])
    if to in PAYABLE or srcs & PAYABLE:
        for case_id in sorted({c.case_id for c, *_ in items}):
            mark_rounds_stale(session, case_id, actor=actor, because=f"{len(items)} claims")
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
