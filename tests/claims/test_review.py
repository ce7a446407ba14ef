"""Caseworker decisions in bulk (claims/review.py, decide_many): each claim ends exactly as
lifecycle.transition_many on the loaded claim would leave it — the audit event's before/after
(byte for byte: the chain verifies), the decision row, the flags resolved, the notice — and a
Claim object already loaded in the caller's session shows the change. SQLite always;
PostgreSQL when configured. (The HTTP side is tests/api/test_review_api.py.)
"""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from sqlalchemy import select

from claims import audit, review
from claims.audit import Actor
from claims.db import session_scope
from claims.errors import IllegalTransition, InvalidInput
from claims.models import (
    AuditEvent,
    Case,
    Claim,
    ClaimMessage,
    Decision,
    Flag,
    LedgerAccount,
    Notification,
    StaffUser,
    utcnow,
)
from claims.money import format_amount

_n = itertools.count(1)
EARLIER = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def _staff(engine) -> Actor:
    name = f"cw{next(_n)}"
    now = utcnow()
    with session_scope(engine) as s:
        user = StaffUser(username=name, role="caseworker", password_hash="x", created_at=now,
                         password_changed_at=now)
        s.add(user)
        s.flush()
        return Actor(name, "caseworker", user.id)


def _claim(engine, *, matched: bool, flags=("amount_differs",), invested=1000_000_000,
           withdrawn=400_000_000, decided_at=None, language="kk") -> str:
    n = next(_n)
    ref = f"KZR-R{n:03d}-{n:04d}"
    now = utcnow()
    with session_scope(engine) as s:
        case = s.execute(select(Case).where(Case.code == "review-case")).scalar_one_or_none()
        if case is None:
            case = Case(code="review-case", name="Review case")
            s.add(case)
            s.flush()
        account = None
        if matched:
            account = LedgerAccount(case_id=case.id, account_id=f"ACC-{n}", deposits=invested,
                                    withdrawals=withdrawn)
            s.add(account)
            s.flush()
        claim = Claim(
            case_id=case.id, reference=ref, status="flagged", full_name=f"Person {n}",
            name_key=f"person {n}", iin_hash=f"h{n}", iin_encrypted=b"x",
            iin_masked="00******0000", birth_date=dt.date(1980, 1, 1),
            email=f"p{n}@example.org", email_key=f"p{n}@example.org", phone="+77010000000",
            language=language, claimed_amount=invested - withdrawn + 5_000_000,
            payout_network="tron", payout_address=f"T{n:033d}", payout_address_key=f"t{n}",
            access_token_hash="t", ledger_account_pk=account.id if account else None,
            invested=invested if matched else None, withdrawn=withdrawn if matched else None,
            recognized_loss=invested - withdrawn if matched else None,
            created_at=now, updated_at=now, decided_at=decided_at, version=3,
        )
        s.add(claim)
        s.flush()
        for code in flags:
            s.add(Flag(claim_id=claim.id, code=code, message=f"{code} on {ref}", created_at=now))
    return ref


def _stored(value):
    """``value`` as the audit trail stores it (its canonical JSON text, read back)."""
    return json.loads(audit.canonical_text(value))


def _snapshot(engine, refs):
    with session_scope(engine, write=False) as s:
        return {c.reference: c for c in s.execute(select(Claim).where(Claim.reference.in_(refs)))
                .scalars()}


REASON = 'ledger "agrees" — тексеру\\ok\nline two 😀'


def test_bulk_decisions_write_what_transition_many_writes(engine):
    actor = _staff(engine)
    plain = _claim(engine, matched=True, flags=("amount_differs", "duplicate_email"))
    override = _claim(engine, matched=True, decided_at=EARLIER)
    paper = _claim(engine, matched=False, flags=("no_ledger_match",))
    reject = _claim(engine, matched=True, flags=("insider",), decided_at=EARLIER)
    ask = _claim(engine, matched=True, flags=("missing_evidence",))
    refs = [reject, plain, override, ask, paper]
    before = _snapshot(engine, refs)
    batch = [
        {"reference": reject, "decision": "reject", "reason": REASON},
        {"reference": plain, "decision": "approve", "reason": "checked"},
        {"reference": override, "decision": "approve", "reason": "receipts",
         "recognized_loss": 650_250_000},
        {"reference": ask, "decision": "request_info", "reason": "send a \"receipt\""},
        {"reference": paper, "decision": "approve", "reason": "paper", "recognized_loss": 700_000_001},
    ]
    with session_scope(engine) as s:
        loaded = s.execute(select(Claim).where(Claim.reference == override)).scalar_one()
        out = review.decide_many(s, batch, actor=actor)
        # a Claim object the session had loaded shows the change, as transition_many does
        assert (loaded.status, loaded.version, loaded.recognized_loss, loaded.invested,
                loaded.withdrawn) == ("approved", 4, 650_250_000, 1050_250_000, 400_000_000)
        assert loaded.decided_at is not None and loaded.decided_at != EARLIER
    assert [(r["reference"], r["status"]) for r in out] == [
        (reject, "rejected"), (plain, "approved"), (override, "approved"), (ask, "needs_info"),
        (paper, "approved")]
    after = _snapshot(engine, refs)
    with session_scope(engine, write=False) as s:
        assert audit.verify_chain(s).ok  # every text is the canonical text of its values
        decisions = {d.claim_id: d for d in s.execute(select(Decision)).scalars()}
        events = {e.subject_id: e for e in s.execute(
            select(AuditEvent).where(AuditEvent.subject_type == "claim")).scalars()}
        notes = {n.claim_id: n for n in s.execute(select(Notification)).scalars()}
        flags = s.execute(select(Flag.claim_id, Flag.code, Flag.resolved_at,
                                 Flag.decision_id)).all()
        messages = s.execute(select(ClaimMessage)).scalars().all()
        # decision events in the batch's group order: rejects, approvals, requests
        order = [e.subject_id for e in s.execute(
            select(AuditEvent).where(AuditEvent.subject_type == "claim")
            .order_by(AuditEvent.id)).scalars()]
    assert order == [reject, plain, override, paper, ask]

    for item, result in zip(batch, out):
        ref = item["reference"]
        old, new = before[ref], after[ref]
        d = decisions[old.id]
        assert result["decision"]["id"] == str(d.id)
        assert (d.decision, d.reason, d.staff_id) == (item["decision"], item["reason"],
                                                     actor.staff_id)
        assert new.version == old.version + 1 and new.decided_at == d.created_at
        vals = {"decided_at": new.decided_at}
        if "recognized_loss" in item:
            vals.update(recognized_loss=new.recognized_loss, withdrawn=new.withdrawn,
                        invested=new.invested)
        extra = {"decision": item["decision"], "decision_id": d.id, "reason": item["reason"]}
        if item["decision"] == "approve":
            extra["overridden_flags"] = sorted(
                code for cid, code, _, _ in flags if cid == old.id)
            assert d.overridden_flags == extra["overridden_flags"]
        ev = events[ref]
        assert ev.actor == actor.name
        assert ev.before == _stored({"status": "flagged",
                                     **{k: getattr(old, k) for k in vals}})
        assert ev.after == _stored({"status": new.status, **vals, **extra})
        note = notes[old.id]
        assert (note.kind, note.language, note.to_email) == (
            {"approve": "approved", "reject": "rejected",
             "request_info": "needs_info"}[item["decision"]], "kk", old.email)
        if item["decision"] == "approve":
            assert note.context == {"reference": ref,
                                    "recognized_loss": format_amount(new.recognized_loss)}
    assert after[override].withdrawn == 400_000_000  # the ledger's withdrawn is kept
    assert (after[paper].invested, after[paper].withdrawn) == (700_000_001, 0)
    assert (after[plain].recognized_loss, after[plain].invested) == (600_000_000, 1000_000_000)
    approved_ids = {before[r].id for r in (plain, override, paper)}
    for cid, _code, resolved_at, decision_id in flags:
        if cid in approved_ids:
            assert resolved_at is not None and decision_id == decisions[cid].id
        else:
            assert resolved_at is None and decision_id is None
    assert [(m.claim_id, m.kind, m.body) for m in messages] == [
        (before[ask].id, "request", 'send a "receipt"')]


def test_a_refused_batch_writes_nothing(engine):
    actor = _staff(engine)
    good = _claim(engine, matched=True)
    paper = _claim(engine, matched=False, flags=("no_ledger_match",))
    with session_scope(engine, write=False) as s:
        counts = [len(s.execute(select(t)).all()) for t in (Decision, AuditEvent, Notification)]
    with pytest.raises(InvalidInput) as exc, session_scope(engine) as s:
        review.decide_many(s, [{"reference": good, "decision": "approve", "reason": "ok"},
                               {"reference": paper, "decision": "approve", "reason": "ok"}],
                           actor=actor)
    assert [e["field"] for e in exc.value.errors] == ["decisions[1].recognized_loss"]
    with session_scope(engine) as s:
        review.decide(s, good, decision="reject", reason="no", actor=actor)
    with pytest.raises(IllegalTransition, match=good), session_scope(engine) as s:
        review.decide(s, good, decision="approve", reason="again", actor=actor)
    with session_scope(engine, write=False) as s:
        assert [len(s.execute(select(t)).all()) for t in (Decision, AuditEvent, Notification)] \
            == [c + 1 for c in counts]
        assert audit.verify_chain(s).ok
