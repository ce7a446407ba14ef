"""The claim state machine (docs/lifecycle.md).

    submitted → verifying ─┬→ approved ─────────────┬→ (its allocations and payouts)
                           │                         ├→ disputed ─(settled)→ approved
                           │                         └→ flagged (address changed, new facts)
                           └→ flagged ─(caseworker)─┬→ approved
                                                    ├→ rejected
                                                    └→ needs_info ─(victim replies)→ verifying

Every change of a claim goes through :func:`transition_many` (:func:`transition` is its
one-claim form, :func:`touch` a change that keeps the status): in the caller's one
transaction it changes the state (guarded by the expected current state, so a concurrent
change cannot be overwritten), appends the audit event, enqueues the claimant's
notification, and marks the case's prepared rounds stale when the set of payable claims may
have changed. An illegal transition raises
:class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from claims import audit, outbox
from claims.audit import Actor
from claims.db.bulk import bind_value, update_rows
from claims.errors import IllegalTransition
from claims.models import Claim, ClaimMessage, ClaimStatus, DistributionRound, RoundStatus, utcnow

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
# Statuses of claims that verification has yet to decide.
PENDING = (S.submitted.value, S.verifying.value)


def can_transition(src: str, dst: str) -> bool:
    return (src, dst) in ALLOWED


def check(src: str, dst: str) -> None:
    if not can_transition(src, dst):
        raise IllegalTransition(f"a claim cannot go from {src} to {dst}")


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
    """Move one claim to ``to``: :func:`transition_many` for one claim."""
    transition_many(session, [claim], to, actor=actor, action=action, notify=notify,
                    notify_context=notify_context,
                    per_claim_values={claim.id: values} if values else None,
                    per_claim_audit={claim.id: audit_extra} if audit_extra else None)
    return claim


def touch(session: Session, claim: Claim, *, actor: Actor, action: str, values: dict,
          audit_extra: dict | None = None, notify: str | None = None,
          notify_context: dict | None = None) -> Claim:
    """A change to a claim that keeps its status (amount, address…): audited, versioned,
    and it makes prepared rounds stale when the claim is payable."""
    transition_many(session, [claim], None, actor=actor, action=action, notify=notify,
                    notify_context=notify_context, per_claim_values={claim.id: values},
                    per_claim_audit={claim.id: audit_extra} if audit_extra else None)
    return claim


def transition_many(
    session: Session,
    claims: Sequence[Claim],
    to: str | ClaimStatus | None,
    *,
    actor: Actor,
    action: str,
    notify: str | None = None,
    notify_context: dict | None = None,
    per_claim_context: Mapping[int, dict] | None = None,
    per_claim_values: Mapping[int, dict] | None = None,
    per_claim_audit: Mapping[int, dict] | None = None,
) -> int:
    """Move a batch of claims to ``to`` (``None``: keep each claim's status) with bulk
    statements; returns how many changed. See the module docstring.

    ``claims`` are model objects (updated in place) or plain rows with the attributes read
    here: ``id``, ``reference``, ``status``, ``case_id``, the columns of
    ``per_claim_values``, and ``language`` and ``email`` when notifying. Each claim is guarded
    by its own current status: when any claim is no longer in it the whole batch is refused
    (:class:`IllegalTransition`). ``per_claim_values``: claim id → the columns it sets
    besides the status; ``per_claim_audit``: claim id → more for the audit event's
    ``after``; ``notify``: the notice each claim's claimant gets, with ``notify_context`` or
    ``per_claim_context[claim id]``."""
    if not claims:
        return 0
    to = None if to is None else ClaimStatus(to).value
    values_of = per_claim_values or {}
    audit_of = per_claim_audit or {}
    srcs = {c.status for c in claims}
    if to is not None:
        for src in srcs:
            check(src, to)
    keys = sorted({k for c in claims for k in values_of.get(c.id, ())})
    none: dict = {}
    rows, events = [], []
    for c in claims:
        vals = values_of.get(c.id, none)
        old = {k: getattr(c, k) for k in vals}
        if to is None:
            before, after = old, {**vals, **audit_of.get(c.id, none)}
        else:
            before = {"status": c.status, **old}
            after = {"status": to, **vals, **audit_of.get(c.id, none)}
        rows.append((c.id, c.status, *[vals[k] if k in vals else getattr(c, k) for k in keys]))
        events.append((actor, action, "claim", c.reference, before, after, c.id))
    now = utcnow()
    if to is None:
        sets, extra = "version = version + 1, updated_at = ?", (now,)
    else:
        sets, extra = "status = ?, version = version + 1, updated_at = ?", (to, now)
    table = Claim.__table__
    session.flush()  # pending ORM changes first, as a statement through the session would
    extra = tuple(bind_value(session, table.c[k], v)
                  for k, v in zip(("status", "updated_at")[-len(extra):], extra))
    changed = update_rows(session, table, keys=("id", "status"), columns=keys, rows=rows,
                          extra_sql=sets, extra=extra)
    if changed != len(rows):
        if len(rows) == 1:
            c = claims[0]
            raise IllegalTransition(
                f"claim {c.reference} changed meanwhile; it is no longer {c.status}")
        raise IllegalTransition(f"{len(rows) - changed} claim(s) changed meanwhile; batch refused")
    for c in claims:
        if isinstance(c, Claim):  # a model object: reflect the change on it
            status = {} if to is None else {"status": to}
            _set(c, **status, version=c.version + 1, updated_at=now, **values_of.get(c.id, none))
    audit.record_batch(session, events)
    if notify:
        ctx = per_claim_context or {}
        outbox.enqueue_batch(session, [(c, notify, ctx.get(c.id, notify_context), None)
                                       for c in claims])
    if (to in PAYABLE or srcs & PAYABLE) if to is not None else srcs & PAYABLE:
        because = claims[0].reference if len(claims) == 1 else f"{len(claims)} claims"
        for case_id in sorted({c.case_id for c in claims}):
            mark_rounds_stale(session, case_id, actor=actor, because=because)
    return changed


def answer_messages(session: Session, claim_id: int, kind: str, at) -> None:
    """Mark the claim's open messages of ``kind`` (``request``, ``dispute``) answered at
    ``at``: the victim's reply answers the requests for information, a settlement the
    dispute."""
    session.execute(
        update(ClaimMessage)
        .where(ClaimMessage.claim_id == claim_id, ClaimMessage.kind == kind,
               ClaimMessage.answered_at.is_(None))
        .values(answered_at=at)
        .execution_options(synchronize_session=False)
    )


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
    audit.record_batch(session, [
        (actor, "round.stale", "round", rid, {"status": "prepared"},
         {"status": "stale", "because": because}) for rid in ids])
    return len(ids)
