"""The ``prepare-round`` flow under Prefect (the session-wide test server, ``prefect_harness``):
the round stored, its artifacts published, domain refusals passed through unchanged, and the
API and the CLI preparing through the flow. The rules themselves are tested without Prefect in
tests/claims/test_rounds.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from sqlalchemy import select

from claims.audit import Actor
from claims.db import session_scope
from claims.models import Allocation, Case, Claim, DistributionRound, utcnow
from claims.money import parse_amount

PW = "twelve chars or more"


def seed(engine, code):
    """A 1000, B 600 approved; C 400 disputed (docs/allocation.md's catch-up example, round 1)."""
    now = utcnow()
    refs = []
    with session_scope(engine) as s:
        case = Case(code=code, name=f"Case {code}")
        s.add(case)
        s.flush()
        for i, (loss, status) in enumerate((("1000", "approved"), ("600", "approved"),
                                            ("400", "disputed"))):
            ref = f"KZR-F{i:03d}-{code[-4:].upper()}"
            s.add(Claim(case_id=case.id, reference=ref, status=status, full_name="x",
                        name_key="x", iin_hash=f"{code}{i}", iin_encrypted=b"x", iin_masked="x",
                        birth_date=dt.date(1980, 1, 1), email="f@example.org",
                        email_key="f@example.org", phone="+77010000000", language="ru",
                        claimed_amount=parse_amount(loss), payout_network="tron",
                        payout_address="T", payout_address_key="t", access_token_hash="t",
                        invested=parse_amount(loss), withdrawn=0,
                        recognized_loss=parse_amount(loss), created_at=now, updated_at=now))
            refs.append(ref)
    return refs


@pytest.fixture
def staff_members(engine, monkeypatch):
    from argon2 import PasswordHasher

    from claims import crypto, staff

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    monkeypatch.delenv("RESTITUTION_PASSWORD", raising=False)
    out = {}
    with session_scope(engine) as s:
        for name, role in (("cw1", "caseworker"), ("cw2", "caseworker"), ("fin", "finance")):
            user = staff.create_user(s, name, role, PW, actor=Actor.operator()).user
            out[name] = Actor(name, role, user.id)
    return out


def _allocations(engine, rid):
    with session_scope(engine, write=False) as s:
        return dict(s.execute(
            select(Claim.reference, Allocation.amount + Allocation.reserved)
            .join(Claim, Claim.id == Allocation.claim_id).where(Allocation.round_id == rid)).all())


def test_prepare_round_flow_stores_the_round_and_publishes_artifacts(
        engine, prefect_harness, staff_members):
    from prefect.client.orchestration import get_client

    from claims.errors import Forbidden, NotFound
    from flows.rounds import prepare_round_flow

    a, b, c = seed(engine, "flow-round")
    cw = staff_members["cw1"]
    rid = prepare_round_flow("flow-round", "600", actor_name=cw.name, actor_role=cw.role,
                             actor_staff_id=cw.staff_id)
    with session_scope(engine, write=False) as s:
        rnd = s.get(DistributionRound, rid)
        assert (rnd.status, rnd.rate, rnd.allocated, rnd.reserved, rnd.prepared_by) == (
            "prepared", "3/10", parse_amount("480"), parse_amount("120"), cw.staff_id)
    assert _allocations(engine, rid) == {a: parse_amount("300"), b: parse_amount("180"),
                                         c: parse_amount("120")}

    async def artifacts():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    latest = {x.key: x for x in asyncio.run(artifacts())}
    table = latest["round-flow-round-1"]
    assert table.type == "table"
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [(r["claim_id"], r["allocation"], r["reserved"]) for r in rows] == [
        (a, "300", "0"), (b, "180", "0"), (c, "0", "120")]
    summary = latest["round-flow-round-1-summary"]
    assert summary.type == "markdown"
    assert "0.3 (30 %)" in summary.data and "| 30–40% | 2 |" in summary.data
    assert "| 0–10% | 1 |" in summary.data

    # domain refusals come back as themselves, and nothing is stored
    fin = staff_members["fin"]
    with pytest.raises(Forbidden):
        prepare_round_flow("flow-round", "600", actor_name=fin.name, actor_role=fin.role,
                           actor_staff_id=fin.staff_id)
    with pytest.raises(NotFound):
        prepare_round_flow("flow-nothing", "600", actor_name=cw.name, actor_role=cw.role,
                           actor_staff_id=cw.staff_id)
    with session_scope(engine, write=False) as s:
        assert s.execute(select(DistributionRound.id)).scalars().all() == [rid]


def test_api_and_cli_prepare_through_the_flow(engine, prefect_harness, staff_members):
    import typer
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from api.app import create_app
    from api.routes import rounds as routes
    from claims.staff import authenticate, issue_token
    from cli import rounds as cli_rounds

    assert routes.PREPARE is routes.prepare_through_flow  # the real thing, not a test double
    a, b, c = seed(engine, "flow-api")
    with session_scope(engine) as s:
        token, _ = issue_token(authenticate(s, "cw1", PW))
    with TestClient(create_app()) as client:
        r = client.post("/api/v1/cases/flow-api/rounds", json={"pool": "600"},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["rate"], r.json()["claims"]) == ("prepared", "0.3", 3)

    app = typer.Typer()
    app.callback()(lambda: None)
    cli_rounds.register(app)
    res = CliRunner().invoke(app, ["rounds", "prepare", "flow-api", "--pool", "430",
                                   "--method", "rising-tide", "--as", "cw2", "--json"],
                             env={"RESTITUTION_PASSWORD": PW})
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == "prepared" and out["method"] == "rising-tide"
    assert out["prepared_by"] == "cw2" and out["number"] == 1
    with session_scope(engine, write=False) as s:
        statuses = s.execute(select(DistributionRound.status).order_by(DistributionRound.id)
                             ).scalars().all()
    assert statuses == ["stale", "prepared"]  # the CLI's preparation superseded the API's
