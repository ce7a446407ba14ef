"""The caseworker's review: the queue, a claim with its ledger evidence, decisions, settlements.

Rules (docs/lifecycle.md "Caseworker decisions" and "Disputes"; the HTTP side: docs/api.md
"Caseworker: review"):

- Decisions are taken on ``flagged`` claims only (anything else → ``IllegalTransition``, 409):
  ``approve`` → ``approved``, ``reject`` → ``rejected`` (the reason is told to the victim),
  ``request_info`` → ``needs_info`` (the reason becomes a request the victim sees and
  answers). Every decision needs a reason.
- Approving a claim that matched no ledger account needs ``recognized_loss``; the claim is
  then taken as ``invested = recognized_loss``, ``withdrawn = 0``. Approving a matched claim
  keeps the ledger's net loss unless ``recognized_loss`` is given, which overrides it; the
  override keeps the ledger's ``withdrawn`` and sets ``invested = withdrawn +
  recognized_loss``, so that both allocation methods see the same claim (pro-rata's base
  is the net loss, rising-tide's base is ``invested`` less what was withdrawn).
- Approving overrides the claim's open flags: the decision records their codes in
  ``overridden_flags`` and resolves them (``resolved_at``, ``decision_id``). A rejection or
  a request for information leaves the flags open.
- ``settle`` ends a dispute (``disputed`` → ``approved``) at an amount, recorded the same
  way (``invested = withdrawn + amount``), and then calls
  ``claims.rounds.on_dispute_settled(session, claim, amount, actor)`` when that module
  provides it (it moves the claim's reserve in its rounds to allocated / released).
- Every change goes through :mod:`claims.lifecycle`: one transaction with the audit event
  and the victim's notification. Nothing is written when a rule refuses.
- :func:`decide_many` takes up to 500 decisions at once (the caseworker's bulk action), all
  or none, with bulk statements; :func:`decide` is the same code for one claim.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from claims import lifecycle
from claims.audit import Actor
from claims.db import bind_value, bulk_insert, for_update, get_one, in_values, next_ids
from claims.errors import IllegalTransition, InvalidInput, NotFound
from claims.gc_pause import gc_paused
from claims.models import (
    FLAG_CODES,
    Case,
    Claim,
    ClaimMessage,
    ClaimStatus,
    Decision,
    Document,
    Flag,
    LedgerAccount,
    LedgerEntry,
    StaffUser,
    utcnow,
)
from claims.money import format_amount, net_loss

DECISIONS = ("approve", "reject", "request_info")
_REFERENCE_SHAPE = re.compile(r"[A-Za-z0-9-]{1,64}")
_CASE_SHAPE = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
MAX_OFFSET = 2**31 - 1
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_REASON = 5000
# Ledger movements shown beside a claim (oldest first); the count says when there are more.
MAX_ENTRIES = 2000


def _amount(value: int | None) -> str | None:
    return None if value is None else format_amount(value)


def _ts(value) -> str | None:
    return None if value is None else value.isoformat()


# ------------------------------------------------------------------ the queue


def review_queue(
    session: Session,
    *,
    case_id: str | None = None,
    status: str | None = None,
    flag: str | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> dict[str, Any]:
    """Claims for review, oldest first, filtered by case CODE, status and open flag code:
    ``{"items": [{"reference", "status", "flags": [{"code", "message"}], "claimed_amount",
    "recognized_loss", "ledger_account"}], "total"}``. Three queries whatever the page size."""
    errors = []
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        errors.append({"field": "limit", "message": f"must be 1 to {MAX_LIMIT}"})
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        errors.append({"field": "offset", "message": f"must be 0 to {MAX_OFFSET}"})
    if status is not None and status not in {s.value for s in ClaimStatus}:
        errors.append({"field": "status", "message": "must be one of "
                       + ", ".join(s.value for s in ClaimStatus)})
    if flag is not None and flag not in FLAG_CODES:
        errors.append({"field": "flag", "message": "must be one of " + ", ".join(FLAG_CODES)})
    case_pk = None
    if case_id is not None and not _CASE_SHAPE.fullmatch(case_id):
        errors.append({"field": "case_id", "message": "no such case"})
    elif case_id is not None:
        case_pk = session.execute(select(Case.id).where(Case.code == case_id)).scalar_one_or_none()
        if case_pk is None:
            errors.append({"field": "case_id", "message": "no such case"})
    if errors:
        raise InvalidInput(errors)

    conds = []
    if case_pk is not None:
        conds.append(Claim.case_id == case_pk)
    if status is not None:
        conds.append(Claim.status == status)
    if flag is not None:
        conds.append(exists().where(Flag.claim_id == Claim.id, Flag.code == flag,
                                    Flag.resolved_at.is_(None)))
    total = session.execute(select(func.count()).select_from(Claim).where(*conds)).scalar_one()
    rows = session.execute(
        select(Claim.id, Claim.reference, Claim.status, Claim.claimed_amount,
               Claim.recognized_loss, LedgerAccount.account_id)
        .outerjoin(LedgerAccount, LedgerAccount.id == Claim.ledger_account_pk)
        .where(*conds)
        .order_by(Claim.id)
        .limit(limit)
        .offset(offset)
    ).all()
    flags: dict[int, list[dict]] = defaultdict(list)
    if rows:
        for claim_id, code, message in session.execute(
            select(Flag.claim_id, Flag.code, Flag.message)
            .where(Flag.claim_id.in_([r[0] for r in rows]), Flag.resolved_at.is_(None))
            .order_by(Flag.claim_id, Flag.id)
        ):
            flags[claim_id].append({"code": code, "message": message})
    items = [
        {
            "reference": ref,
            "status": st,
            "flags": flags.get(cid, []),
            "claimed_amount": _amount(claimed),
            "recognized_loss": _amount(recognized),
            "ledger_account": account,
        }
        for cid, ref, st, claimed, recognized, account in rows
    ]
    return {"items": items, "total": total}


# ------------------------------------------------------------------ one claim


def _claim(session: Session, reference: str, *, lock: bool = False) -> Claim:
    if not isinstance(reference, str) or not _REFERENCE_SHAPE.fullmatch(reference):
        raise NotFound(f"no claim {reference!r}")
    return get_one(session, select(Claim).where(Claim.reference == reference), lock=lock,
                   missing=f"no claim {reference}")


def claim_for_staff(session: Session, reference: str) -> dict[str, Any]:
    """Everything a caseworker needs about one claim, with the matched ledger account's
    movements and totals beside it. The IIN only masked."""
    claim = _claim(session, reference)
    case_code = session.execute(select(Case.code).where(Case.id == claim.case_id)).scalar_one()
    ledger, ledger_net_loss = _ledger_evidence(session, claim.ledger_account_pk)
    compare_to = claim.recognized_loss if claim.recognized_loss is not None else ledger_net_loss
    return {
        "reference": claim.reference,
        "case_id": case_code,
        "status": claim.status,
        "version": claim.version,
        "full_name": claim.full_name,
        "iin_masked": claim.iin_masked,
        "birth_date": claim.birth_date.isoformat(),
        "date_of_birth": claim.date_of_birth.isoformat() if claim.date_of_birth else None,
        "email": claim.email,
        "phone": claim.phone,
        "language": claim.language,
        "scheme_account": claim.scheme_account,
        "evidence_tx_hashes": list(claim.evidence_tx_hashes or []),
        "payout_network": claim.payout_network,
        "payout_address": claim.payout_address,
        "source": claim.source,
        "match_rule": claim.match_rule,
        "claimed_amount": format_amount(claim.claimed_amount),
        "recognized_loss": _amount(claim.recognized_loss),
        "invested": _amount(claim.invested),
        "withdrawn": _amount(claim.withdrawn),
        "ledger_net_loss": _amount(ledger_net_loss),
        # claimed − recognized (or the ledger's net loss when nothing is recognized yet)
        "difference": (None if compare_to is None
                       else format_amount(claim.claimed_amount - compare_to)),
        "created_at": _ts(claim.created_at),
        "updated_at": _ts(claim.updated_at),
        "verified_at": _ts(claim.verified_at),
        "decided_at": _ts(claim.decided_at),
        **_history(session, claim.id),
        "ledger": ledger,
    }


def _history(session: Session, claim_id: int) -> dict[str, list[dict[str, Any]]]:
    """A claim's flags, decisions (with who took them), messages and documents, oldest first."""
    flags = session.execute(
        select(Flag).where(Flag.claim_id == claim_id).order_by(Flag.id)
    ).scalars().all()
    decisions = session.execute(
        select(Decision, StaffUser.username)
        .outerjoin(StaffUser, StaffUser.id == Decision.staff_id)
        .where(Decision.claim_id == claim_id)
        .order_by(Decision.id)
    ).all()
    messages = session.execute(
        select(ClaimMessage).where(ClaimMessage.claim_id == claim_id).order_by(ClaimMessage.id)
    ).scalars().all()
    documents = session.execute(
        select(Document).where(Document.claim_id == claim_id).order_by(Document.created_at,
                                                                         Document.id)
    ).scalars().all()
    return {
        "flags": [
            {"code": f.code, "message": f.message, "open": f.resolved_at is None,
             "created_at": _ts(f.created_at), "resolved_at": _ts(f.resolved_at)}
            for f in flags
        ],
        "decisions": [
            {"decision": d.decision, "reason": d.reason,
             "recognized_loss": _amount(d.recognized_loss),
             "overridden_flags": list(d.overridden_flags or []), "staff": username,
             "created_at": _ts(d.created_at)}
            for d, username in decisions
        ],
        "messages": [
            {"kind": m.kind, "body": m.body, "amount": _amount(m.amount),
             "created_at": _ts(m.created_at), "answered_at": _ts(m.answered_at)}
            for m in messages
        ],
        "documents": [
            {"id": d.id, "content_type": d.content_type, "size": d.size, "sha256": d.sha256,
             "created_at": _ts(d.created_at)}
            for d in documents
        ],
    }


def _ledger_evidence(session: Session, account_pk: int | None
                     ) -> tuple[dict[str, Any] | None, int | None]:
    """The matched ledger account (its totals and up to :data:`MAX_ENTRIES` movements, oldest
    first) and its net loss; ``(None, None)`` for a claim without a match."""
    if account_pk is None:
        return None, None
    account = session.get(LedgerAccount, account_pk)
    count = session.execute(
        select(func.count()).select_from(LedgerEntry)
        .where(LedgerEntry.account_pk == account.id)
    ).scalar_one()
    entries = session.execute(
        select(LedgerEntry).where(LedgerEntry.account_pk == account.id)
        .order_by(LedgerEntry.occurred_at, LedgerEntry.id).limit(MAX_ENTRIES)
    ).scalars().all()
    loss = net_loss(account.deposits, account.withdrawals)
    return {
        "account_id": account.account_id,
        "insider": bool(account.insider),
        "insider_reason": account.insider_reason,
        "deposits": format_amount(account.deposits),
        "withdrawals": format_amount(account.withdrawals),
        "bonuses": format_amount(account.bonuses),
        "net_loss": format_amount(loss),
        "net_winner": account.withdrawals >= account.deposits,
        "entries_count": count,
        "entries": [
            {
                "entry_type": e.entry_type,
                "amount": format_amount(e.amount),
                "occurred_at": _ts(e.occurred_at),
                "tx_hash": e.tx_hash,
                "wallet": e.wallet,
                "email": e.email,
                "phone": e.phone,
            }
            for e in entries
        ],
    }, loss


# ------------------------------------------------------------------ decisions

#: What each decision does: the status it moves the claim to, the audit action, the notice.
MOVES = {
    "approve": (ClaimStatus.approved.value, "claim.approved", "approved"),
    "reject": (ClaimStatus.rejected.value, "claim.rejected", "rejected"),
    "request_info": (ClaimStatus.needs_info.value, "claim.info_requested", "needs_info"),
}
#: The message a missing or blank reason gets (here and in the API's request models).
REASON_REQUIRED = "is required: say why"


def check_reason(reason: object) -> str:
    """A decision's or settlement's reason, stripped; ``InvalidInput`` (field ``reason``)
    when it is missing, blank, holds a NUL character or is too long."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput([{"field": "reason", "message": REASON_REQUIRED}])
    reason = reason.strip()
    if "\x00" in reason:
        raise InvalidInput([{"field": "reason", "message": "must not contain NUL characters"}])
    if len(reason) > MAX_REASON:
        raise InvalidInput([{"field": "reason",
                             "message": f"must be at most {MAX_REASON} characters"}])
    return reason


def _decision_out(d: Decision) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "decision": d.decision,
        "reason": d.reason,
        "recognized_loss": _amount(d.recognized_loss),
        "overridden_flags": list(d.overridden_flags or []),
        "created_at": _ts(d.created_at),
    }


def _check_decision(decision: object, reason: object, recognized_loss: object,
                    field: str = "") -> tuple[str, str, int | None]:
    """The input rules of one decision, before anything is read (``field`` prefixes the
    names of the fields an error names, e.g. ``decisions[3].``)."""
    try:
        if decision not in DECISIONS:
            raise InvalidInput([{"field": "decision",
                                 "message": "must be approve, reject or request_info"}])
        reason = check_reason(reason)
        if recognized_loss is not None:
            if isinstance(recognized_loss, bool) or not isinstance(recognized_loss, int) \
                    or recognized_loss < 0:
                raise InvalidInput([{"field": "recognized_loss",
                                     "message": "must be an amount ≥ 0"}])
            if decision != "approve":
                raise InvalidInput([{"field": "recognized_loss",
                                     "message": "only an approval takes an amount"}])
    except InvalidInput as exc:
        if field:
            for e in exc.errors:
                e["field"] = field + e["field"]
        raise
    return decision, reason, recognized_loss  # type: ignore[return-value]


def decide(
    session: Session,
    reference: str,
    *,
    decision: str,
    reason: str,
    recognized_loss: int | None = None,
    actor: Actor,
) -> dict[str, Any]:
    """A caseworker's decision on a flagged claim (see the module docstring).

    Returns ``{"reference", "status", "decision": {...}}``. Raises ``NotFound``,
    ``InvalidInput`` (reason, decision, recognized_loss) or ``IllegalTransition``.
    """
    checked = _check_decision(decision, reason, recognized_loss)
    return _decide(session, [(reference, *checked)], actor=actor, field="")[0]


MAX_BATCH = 500


def check_batch(decisions: object) -> list[tuple[str, str, str, int | None]]:
    """The input rules of a batch of decisions (see :func:`decide_many`), every bad item
    named (``decisions[3].reason``): ``(reference, decision, reason, recognized_loss)``
    each, in order."""
    if not isinstance(decisions, (list, tuple)) or not decisions:
        raise InvalidInput([{"field": "decisions", "message": "must list at least one decision"}])
    if len(decisions) > MAX_BATCH:
        raise InvalidInput([{"field": "decisions",
                             "message": f"at most {MAX_BATCH} decisions at once"}])
    items: list[tuple[str, str, str, int | None]] = []
    errors: list[dict] = []
    seen: set[str] = set()
    for i, d in enumerate(decisions):
        field = f"decisions[{i}]."
        if not isinstance(d, dict):
            errors.append({"field": f"decisions[{i}]", "message": "must be an object"})
            continue
        reference = d.get("reference")
        if not isinstance(reference, str) or not reference:
            errors.append({"field": field + "reference", "message": "is required"})
            continue
        if reference in seen:
            errors.append({"field": field + "reference",
                           "message": f"{reference} is decided twice in this batch"})
            continue
        seen.add(reference)
        try:
            items.append((reference, *_check_decision(
                d.get("decision"), d.get("reason"), d.get("recognized_loss"), field)))
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidInput(errors)
    return items


@gc_paused()
def decide_many(session: Session, decisions: Sequence[dict], *, actor: Actor) -> list[dict]:
    """Several decisions at once (a caseworker's bulk action on the queue), all or none:
    each item is ``{"reference", "decision", "reason", "recognized_loss"?}`` under the same
    rules as :func:`decide`, and the result is :func:`decide`'s answer for each, in order.
    An error names the item (``decisions[3].reason``); nothing is written then."""
    return _decide(session, check_batch(decisions), actor=actor, field="decisions")


def _decide(session: Session, items: Sequence[tuple[str, str, str, int | None]], *,
            actor: Actor, field: str) -> list[dict]:
    """Apply checked decisions ``(reference, decision, reason, recognized_loss)`` in bulk:
    the claims read and checked, one Decision row each, the claims moved by kind through
    :func:`claims.lifecycle.transition_many` (audit events and notices with them), the
    requests for information stored, approved claims' open flags resolved."""
    claims = _flagged_claims(session, [ref for ref, *_ in items])
    open_codes = _open_flag_codes(
        session, [c.id for c, item in zip(claims, items) if item[1] == "approve"])
    now = utcnow()
    values, rows = _plan(claims, items, open_codes, actor=actor, now=now, field=field)
    decision_ids = _insert_decisions(session, rows, now)
    _move_claims(session, claims, values, rows, decision_ids, actor=actor)
    _store_requests(session, claims, rows, now)
    _resolve_flags(session, [(claims[i].id, decision_ids[i]) for i, row in enumerate(rows)
                             if row["decision"] == "approve" and open_codes.get(claims[i].id)],
                   now)
    now_ts = _ts(now)
    return [
        {"reference": claim.reference, "status": MOVES[row["decision"]][0],
         "decision": {"id": str(did), "decision": row["decision"], "reason": row["reason"],
                      "recognized_loss": _amount(row["recognized_loss"]),
                      "overridden_flags": list(row["overridden_flags"]),
                      "created_at": now_ts}}
        for claim, row, did in zip(claims, rows, decision_ids)
    ]


# What a decision reads of a claim: the light row transition_many and the outbox take.
_CLAIM_COLUMNS = (Claim.id, Claim.reference, Claim.status, Claim.case_id, Claim.version,
                  Claim.ledger_account_pk, Claim.invested, Claim.withdrawn,
                  Claim.recognized_loss, Claim.decided_at, Claim.language, Claim.email)


def _flagged_claims(session: Session, refs: Sequence[str]) -> list[Any]:
    """The claims of ``refs`` as light rows (not model objects), in order and locked for
    update; ``NotFound`` for an unknown one, ``IllegalTransition`` for one not flagged."""
    for ref in refs:
        if not _REFERENCE_SHAPE.fullmatch(ref):
            raise NotFound(f"no claim {ref!r}")
    stmt = select(*_CLAIM_COLUMNS).where(in_values(session, Claim.reference, refs))
    by_ref = {c.reference: c for c in session.execute(for_update(stmt, session))}
    flagged = ClaimStatus.flagged.value
    claims = []
    for ref in refs:
        claim = by_ref.get(ref)
        if claim is None:
            raise NotFound(f"no claim {ref}")
        if claim.status != flagged:
            raise IllegalTransition(
                f"decisions are taken on flagged claims; {claim.reference} is {claim.status}")
        claims.append(claim)
    return claims


def _open_flag_codes(session: Session, claim_ids: Sequence[int]) -> dict[int, set[str]]:
    """The codes of the open flags of ``claim_ids`` (those an approval overrides)."""
    open_codes: dict[int, set[str]] = defaultdict(set)
    if claim_ids:
        for claim_id, code in session.execute(
            select(Flag.claim_id, Flag.code)
            .where(in_values(session, Flag.claim_id, claim_ids), Flag.resolved_at.is_(None))
        ):
            open_codes[claim_id].add(code)
    return open_codes


def approved_amounts(claim: Any, recognized_loss: int | None, *,
                     field: str = "recognized_loss") -> dict[str, int]:
    """The amounts an approval sets on ``claim`` (see the module docstring): none when the
    ledger's net loss stands, else ``recognized_loss``, ``withdrawn`` and ``invested =
    withdrawn + recognized_loss``. ``InvalidInput`` (named ``field``) when an unmatched claim
    has no amount or 0."""
    matched = claim.ledger_account_pk is not None and claim.recognized_loss is not None
    if recognized_loss is None and not matched:
        raise InvalidInput([{"field": field, "message":
                             "is required to approve a claim without a ledger match"}])
    if not matched and recognized_loss == 0:
        raise InvalidInput([{"field": field, "message": "must be greater than 0"}])
    if recognized_loss is None:
        return {}
    withdrawn = claim.withdrawn if matched and claim.withdrawn is not None else 0
    return {"recognized_loss": recognized_loss, "withdrawn": withdrawn,
            "invested": withdrawn + recognized_loss}


def _plan(claims: Sequence[Any], items: Sequence[tuple[str, str, str, int | None]],
          open_codes: dict[int, set[str]], *, actor: Actor, now, field: str
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each claim's new column values and its Decision row (an approval overrides the
    claim's open flags)."""
    values: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i, (claim, (_, decision, reason, recognized_loss)) in enumerate(zip(claims, items)):
        vals: dict[str, Any] = {"decided_at": now}
        overridden: list[str] = []
        if decision == "approve":
            vals.update(approved_amounts(
                claim, recognized_loss,
                field=(f"{field}[{i}]." if field else "") + "recognized_loss"))
            overridden = sorted(open_codes.get(claim.id, ()))
        values.append(vals)
        rows.append({
            "claim_id": claim.id, "staff_id": actor.staff_id, "decision": decision,
            "reason": reason,
            "recognized_loss": recognized_loss if decision == "approve" else None,
            "overridden_flags": overridden, "created_at": now,
        })
    return values, rows


def _notice_context(decision: str, claim: Any, vals: dict[str, Any], reason: str) -> dict:
    """What the victim's notice of ``decision`` says besides the reference."""
    if decision == "approve":
        return {"recognized_loss": format_amount(vals.get("recognized_loss",
                                                          claim.recognized_loss))}
    if decision == "reject":
        return {"reason": reason}
    return {"request": reason}


def _move_claims(session: Session, claims: Sequence[Any], values: Sequence[dict],
                 rows: Sequence[dict], decision_ids: Sequence[int], *, actor: Actor) -> None:
    """Move the claims by kind of decision, each with its own values, audit detail (the
    decision, its id, the reason, the flags an approval overrode) and notice."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["decision"]].append(i)
    for decision, idx in groups.items():
        to, action, notify = MOVES[decision]
        group = [claims[i] for i in idx]
        detail = {}
        for i in idx:
            detail[claims[i].id] = {"decision": decision, "decision_id": decision_ids[i],
                                    "reason": rows[i]["reason"]}
            if decision == "approve":
                detail[claims[i].id]["overridden_flags"] = rows[i]["overridden_flags"]
        lifecycle.transition_many(
            session, group, to, actor=actor, action=action, notify=notify,
            per_claim_values={claims[i].id: values[i] for i in idx},
            per_claim_audit=detail,
            per_claim_context={claims[i].id: _notice_context(decision, claims[i], values[i],
                                                             rows[i]["reason"]) for i in idx},
        )
        _reflect(session, group, [values[i] for i in idx], to)


def _reflect(session: Session, claims: Sequence[Any], values: Sequence[dict], to: str) -> None:
    """Reflect a group's move on the Claim objects this session has already loaded (as
    :func:`claims.lifecycle.transition_many` does on the objects it is given), without
    making the ORM write them again."""
    if not session.identity_map:
        return
    now = utcnow()
    for claim, vals in zip(claims, values):
        obj = session.identity_map.get(session.identity_key(Claim, claim.id))
        if obj is not None:
            for k, v in {"status": to, "version": claim.version + 1, "updated_at": now,
                         **vals}.items():
                set_committed_value(obj, k, v)


_DECISION_COLUMNS = ("id", "claim_id", "staff_id", "decision", "reason", "recognized_loss",
                     "overridden_flags", "created_at")


def _insert_decisions(session: Session, rows: list[dict[str, Any]], now) -> list[int]:
    """Insert the Decision rows in bulk; their ids, in order (taken first, so that the audit
    events can name them)."""
    ids = next_ids(session.connection(), "decision", len(rows))
    if ids is None:  # pragma: no cover - the project runs on SQLite and PostgreSQL
        return list(session.execute(
            insert(Decision).returning(Decision.id, sort_by_parameter_order=True), rows
        ).scalars())
    created = bind_value(session, Decision.__table__.c.created_at, now)
    dumps = json.dumps  # the JSON column's own encoding of the overridden codes
    bulk_insert(session, Decision.__table__, _DECISION_COLUMNS, [
        (did, r["claim_id"], r["staff_id"], r["decision"], r["reason"], r["recognized_loss"],
         dumps(r["overridden_flags"]) if r["overridden_flags"] else "[]", created)
        for did, r in zip(ids, rows)
    ])
    return ids


def _store_requests(session: Session, claims: Sequence[Any], rows: Sequence[dict],
                    now) -> None:
    """A request for information becomes a ``request`` message the victim sees and answers."""
    created = bind_value(session, ClaimMessage.__table__.c.created_at, now)
    bulk_insert(session, ClaimMessage.__table__, ("claim_id", "kind", "body", "created_at"),
                [(claim.id, "request", row["reason"], created)
                 for claim, row in zip(claims, rows) if row["decision"] == "request_info"])


def _resolve_flags(session: Session, pairs: Sequence[tuple[int, int]], now) -> None:
    """Resolve the open flags of approved claims ``(claim id, decision id)``: the decision
    that overrode them."""
    if not pairs:
        return
    table = Flag.__table__
    session.connection().execute(
        update(table)
        .where(table.c.claim_id == bindparam("b_claim"), table.c.resolved_at.is_(None))
        .values(resolved_at=now, decision_id=bindparam("b_decision")),
        [{"b_claim": claim_id, "b_decision": did} for claim_id, did in pairs],
    )


# ------------------------------------------------------------------ settlements


def _rounds_hook():
    """``claims.rounds.on_dispute_settled`` when that module exists (it is optional here)."""
    try:
        module = importlib.import_module("claims.rounds")
    except ModuleNotFoundError as exc:
        if exc.name == "claims.rounds":
            return None
        raise
    return getattr(module, "on_dispute_settled", None)


def settle(
    session: Session, reference: str, *, amount: int, reason: str, actor: Actor
) -> dict[str, Any]:
    """Settle a disputed claim at ``amount`` (micro-USDT): ``disputed`` → ``approved`` with
    ``recognized_loss = amount`` (``invested = withdrawn + amount``), a ``settle`` decision,
    a ``settlement`` message, the victim told (``dispute_settled``), and the rounds hook."""
    reason = check_reason(reason)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidInput([{"field": "amount", "message": "must be an amount ≥ 0"}])
    claim = _claim(session, reference, lock=True)
    if claim.status != ClaimStatus.disputed.value:
        raise IllegalTransition(
            f"only a disputed claim can be settled; {claim.reference} is {claim.status}")
    now = utcnow()
    withdrawn = claim.withdrawn or 0
    row = Decision(claim_id=claim.id, staff_id=actor.staff_id, decision="settle", reason=reason,
                   recognized_loss=amount, overridden_flags=[], created_at=now)
    session.add(row)
    session.add(ClaimMessage(claim_id=claim.id, kind="settlement", body=reason, amount=amount,
                             created_at=now))
    session.flush()
    lifecycle.answer_messages(session, claim.id, "dispute", now)
    lifecycle.transition(
        session, claim, ClaimStatus.approved, actor=actor, action="claim.dispute_settled",
        notify="dispute_settled",
        notify_context={"amount": format_amount(amount), "reason": reason},
        values={"recognized_loss": amount, "invested": withdrawn + amount,
                "withdrawn": withdrawn, "decided_at": now},
        audit_extra={"decision": "settle", "decision_id": row.id, "reason": reason},
    )
    hook = _rounds_hook()
    if hook is not None:
        hook(session, claim, amount, actor)
    _review_changed_address(session, claim, actor)
    session.flush()
    return {"reference": claim.reference, "status": claim.status, "decision": _decision_out(row)}


def _review_changed_address(session: Session, claim: Claim, actor: Actor) -> None:
    """A payout address changed while the claim was disputed leaves an open
    ``address_changed`` flag (its payouts held): once settled, the claim goes to ``flagged``
    so that a caseworker decides on the new address, as after a change to an approved claim
    (otherwise nothing could ever clear the flag)."""
    open_flag = session.execute(
        select(Flag.id).where(Flag.claim_id == claim.id, Flag.code == "address_changed",
                              Flag.resolved_at.is_(None)).limit(1)).first()
    if open_flag is not None:
        lifecycle.transition(session, claim, ClaimStatus.flagged, actor=actor,
                             action="claim.flagged", audit_extra={"flags": ["address_changed"]})
