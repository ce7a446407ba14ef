"""The one write path for claims (claims.lifecycle): a change of state, its audit event and
its notice in one transaction, guarded by the claim's current status, all or none."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import select

from claims import audit, lifecycle
from claims.audit import Actor
from claims.db import session_scope
from claims.errors import IllegalTransition
from claims.models import AuditEvent, Case, Claim, DistributionRound, Notification, utcnow

_n = itertools.count(1)
ACTOR = Actor("cw-test", "caseworker", None)


def _claims(engine, k: int, status: str = "verifying") -> list[int]:
    now = utcnow()
    ids = []
    with session_scope(engine) as s:
        case = s.execute(select(Case).where(Case.code == "life-case")).scalar_one_or_none()
        if case is None:
            case = Case(code="life-case", name="Lifecycle case")
            s.add(case)
            s.flush()
        for _ in range(k):
            n = next(_n)
            c = Claim(
                case_id=case.id, reference=f"KZR-L{n:03d}-{n:04d}", status=status,
                full_name=f"Person {n}", name_key=f"person {n}", iin_hash=f"h{n}",
                iin_encrypted=b"x", iin_masked="00******0000", birth_date=dt.date(1980, 1, 1),
                email=f"p{n}@example.org", email_key=f"p{n}@example.org", phone="+77010000000",
                language="ru", claimed_amount=5_000_000, payout_network="tron",
                payout_address=f"T{n:033d}", payout_address_key=f"t{n}", access_token_hash="t",
                created_at=now, updated_at=now, version=1)
            s.add(c)
            s.flush()
            ids.append(c.id)
    return ids


def _events(s, ids):
    return s.execute(select(AuditEvent).where(AuditEvent.claim_pk.in_(ids))
                     .order_by(AuditEvent.id)).scalars().all()


def test_batch_moves_claims_with_events_and_notices(engine):
    ids = _claims(engine, 3)
    with session_scope(engine) as s:
        rows = s.execute(select(Claim).where(Claim.id.in_(ids)).order_by(Claim.id)).scalars().all()
        n = lifecycle.transition_many(
            s, rows, "approved", actor=ACTOR, action="claim.test",
            notify="approved", per_claim_context={ids[0]: {"amount": "1"}},
            notify_context={"amount": "2"},
            per_claim_values={i: {"recognized_loss": 10 * i} for i in ids},
            per_claim_audit={ids[1]: {"rule": "r"}})
        assert n == 3
        assert [c.status for c in rows] == ["approved"] * 3  # objects show the change
        assert rows[0].version == 2
    with session_scope(engine, write=False) as s:
        events = _events(s, ids)
        assert [e.action for e in events] == ["claim.test"] * 3
        assert events[0].before == {"status": "verifying", "recognized_loss": None}
        assert events[1].after == {"status": "approved", "recognized_loss": 10 * ids[1], "rule": "r"}
        assert audit.verify_chain(s).ok
        notes = s.execute(select(Notification).where(Notification.claim_id.in_(ids))
                          .order_by(Notification.claim_id)).scalars().all()
        assert [x.context["amount"] for x in notes] == ["1", "2", "2"]
        assert all(x.kind == "approved" and x.to_email.startswith("p") for x in notes)
        assert [c.recognized_loss for c in s.execute(
            select(Claim).where(Claim.id.in_(ids)).order_by(Claim.id)).scalars()] == [
            10 * i for i in ids]


def test_batch_is_refused_whole_when_one_claim_changed_meanwhile(engine):
    ids = _claims(engine, 3)
    with session_scope(engine) as s:
        rows = s.execute(select(Claim).where(Claim.id.in_(ids))).scalars().all()
        stale = [type("Row", (), {"id": c.id, "reference": c.reference, "case_id": c.case_id,
                                  "status": c.status})() for c in rows]
        lifecycle.transition(s, rows[0], "flagged", actor=ACTOR, action="claim.other")
    with pytest.raises(IllegalTransition, match="1 claim"):
        with session_scope(engine) as s:
            lifecycle.transition_many(s, stale, "approved", actor=ACTOR, action="claim.test")
    with session_scope(engine, write=False) as s:
        assert sorted(c.status for c in s.execute(select(Claim).where(Claim.id.in_(ids)))
                      .scalars()) == ["flagged", "verifying", "verifying"]
        assert [e.action for e in _events(s, ids)] == ["claim.other"]


def test_illegal_transition_changes_nothing(engine):
    [cid] = _claims(engine, 1, status="rejected")
    with pytest.raises(IllegalTransition, match="from rejected to approved"):
        with session_scope(engine) as s:
            lifecycle.transition(s, s.get(Claim, cid), "approved", actor=ACTOR, action="x")
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, cid).status == "rejected" and not _events(s, [cid])


def test_touch_keeps_the_status_and_makes_prepared_rounds_stale(engine):
    [cid] = _claims(engine, 1, status="approved")
    with session_scope(engine) as s:
        case_id = s.get(Claim, cid).case_id
        s.add(DistributionRound(case_id=case_id, number=1, status="prepared", method="pro-rata",
                                pool=1, rate="0/1", min_payout=0, allocated=0, reserved=0,
                                released=0, undistributed=1, prepared_by=None))
    with session_scope(engine) as s:
        claim = s.get(Claim, cid)
        lifecycle.touch(s, claim, actor=ACTOR, action="claim.amount", values={"claimed_amount": 7},
                        audit_extra={"why": "typo"})
        assert claim.status == "approved" and claim.claimed_amount == 7
    with session_scope(engine, write=False) as s:
        [ev] = _events(s, [cid])
        assert (ev.before, ev.after) == ({"claimed_amount": 5_000_000},
                                         {"claimed_amount": 7, "why": "typo"})
        rnd = s.execute(select(DistributionRound).where(DistributionRound.case_id == case_id)
                        ).scalar_one()
        assert rnd.status == "stale"
