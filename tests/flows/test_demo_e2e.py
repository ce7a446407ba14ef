"""The whole mission end to end, as `restitution demo` runs it (small N), and serve's
background pass. Every claim is paid at most once, every sum balances, every notification
renders and is delivered, and the audit chain holds."""

from __future__ import annotations

import io

from sqlalchemy import func, select

from claims.money import parse_amount


def test_demo_runs_a_case_end_to_end(db_url, tmp_path, monkeypatch, prefect_harness):
    from cli.demo import SUMMARY_KEYS, run_demo
    from claims import audit
    from claims.db import get_engine, session_scope
    from claims.models import Allocation, Claim, Notification, Payout

    monkeypatch.setenv("RESTITUTION_VAR_DIR", str(tmp_path / "var"))
    summary = run_demo(40, seed=7)

    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["case"].startswith("demo-")
    assert summary["claims_filed"] == 40
    assert summary["pool"] == "545000"
    pool = parse_amount(summary["pool"])
    parts = [parse_amount(summary[k]) for k in ("allocated", "reserved", "released", "undistributed")]
    assert sum(parts) == pool
    assert parse_amount(summary["paid"]) == parse_amount(summary["allocated"])
    assert summary["claims_approved"] + summary["claims_rejected"] <= 40
    engine = get_engine()
    with session_scope(engine, write=False) as s:
        # each claim paid at most once; confirmed payouts are exactly the positive allocations
        per_claim = s.execute(select(Payout.claim_id, func.count()).group_by(Payout.claim_id)).all()
        assert all(n == 1 for _, n in per_claim)
        confirmed = s.execute(select(func.count(), func.coalesce(func.sum(Payout.amount), 0))
                              .where(Payout.state == "confirmed")).one()
        assert confirmed[0] == summary["payouts"]
        assert confirmed[1] == s.execute(select(func.sum(Allocation.amount))).scalar_one()
        states = dict(s.execute(select(Notification.state, func.count()).group_by(Notification.state)).all())
        assert states.get("failed", 0) == 0 and states.get("pending", 0) == 0
        assert states["sent"] == summary["emails"] > 0
        assert s.execute(select(func.count()).select_from(Claim)
                         .where(Claim.status.in_(("submitted", "verifying")))).scalar_one() == 0
        assert audit.verify_chain(s).ok


def test_background_pass_verifies_new_claims_and_delivers_notices(db_url, prefect_harness):
    from cli.demo_data import generate
    from claims import cases, intake, ledger
    from claims.audit import Actor
    from claims.db import get_engine, session_scope
    from claims.models import Claim, Notification
    from flows.background import cases_with_pending_claims, one_pass

    data = generate(12, seed=3)
    engine = get_engine()
    with session_scope(engine) as s:
        cases.create_case(s, "bg-case", "Background", actor=Actor.operator())
    ledger.import_ledger(engine, "bg-case", io.StringIO(data.ledger_csv), actor=Actor.operator())
    for v in data.victims:
        with session_scope(engine) as s:
            intake.file_claim(s, intake.prepare(v.filing("bg-case")))
    assert cases_with_pending_claims(engine) == ["bg-case"]

    done = one_pass(engine)

    assert done["verified"]["bg-case"]
    assert cases_with_pending_claims(engine) == []
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(Claim)
                         .where(Claim.status.in_(("approved", "flagged")))).scalar_one() == 12
        assert s.execute(select(func.count()).select_from(Notification)
                         .where(Notification.state == "sent")).scalar_one() >= 12
