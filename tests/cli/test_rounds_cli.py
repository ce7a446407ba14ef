"""``restitution rounds …`` (cli/rounds.py) without a Prefect server (``--direct``): JSON
output, four eyes and roles (exit 3), bad input (exit 2), stale and conflicts (exit 1).

The Prefect path of ``rounds prepare`` runs in tests/flows/test_rounds_flow.py.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from claims import staff
from claims.audit import Actor
from claims.db import session_scope
from claims.models import Case, Claim, DistributionRound, utcnow
from claims.money import parse_amount

PW = "twelve chars or more"
_n = itertools.count(1)


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    from argon2 import PasswordHasher

    from claims import crypto

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    monkeypatch.delenv("RESTITUTION_PASSWORD", raising=False)
    monkeypatch.delenv("RESTITUTION_TOTP", raising=False)
    staff._unknown.clear()


@pytest.fixture
def run(db_url):
    from cli import rounds as cli_rounds

    app = typer.Typer()
    app.callback()(lambda: None)
    cli_rounds.register(app)
    runner = CliRunner()

    def _run(*args, password=PW):
        env = {"RESTITUTION_PASSWORD": password} if password else {}
        return runner.invoke(app, ["rounds", *args], env=env)

    return _run


@pytest.fixture
def people(engine):
    names = {}
    with session_scope(engine) as s:
        for name, role in (("cw1", "caseworker"), ("cw2", "caseworker"), ("fin", "finance"),
                           ("aud", "auditor")):
            staff.create_user(s, name, role, PW, actor=Actor.operator())
            names[name] = role
    return names


def seed(engine, code, claims):
    """``claims``: (loss, status) pairs."""
    now = utcnow()
    refs = []
    with session_scope(engine) as s:
        case = Case(code=code, name=f"Case {code}")
        s.add(case)
        s.flush()
        for loss, status in claims:
            n = next(_n)
            ref = f"KZR-C{n:03d}-0000"
            s.add(Claim(case_id=case.id, reference=ref, status=status, full_name="x",
                        name_key="x", iin_hash=f"c{n}", iin_encrypted=b"x", iin_masked="x",
                        birth_date=dt.date(1980, 1, 1), email="c@example.org",
                        email_key="c@example.org", phone="+77010000000", language="en",
                        claimed_amount=parse_amount(loss), payout_network="tron",
                        payout_address="T", payout_address_key="t", access_token_hash="t",
                        invested=parse_amount(loss), withdrawn=0,
                        recognized_loss=parse_amount(loss), created_at=now, updated_at=now))
            refs.append(ref)
    return refs


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_prepare_approve_show_list_csv(run, people, engine):
    a, b, c = seed(engine, "cli-r", [("1000", "approved"), ("600", "approved"),
                                     ("400", "disputed")])
    r = run("prepare", "cli-r", "--pool", "600", "--as", "cw1", "--json", "--direct")
    assert r.exit_code == 0, r.output
    v = last_json(r)
    assert {k: v[k] for k in ("status", "pool", "rate", "allocated", "reserved", "released",
                              "undistributed", "claims")} == {
        "status": "prepared", "pool": "600", "rate": "0.3", "allocated": "480",
        "reserved": "120", "released": "0", "undistributed": "0", "claims": 3}
    rid = v["id"]

    r = run("approve", rid, "--as", "cw1")
    assert r.exit_code == 3 and "another caseworker" in r.output
    r = run("approve", rid, "--as", "cw2", "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["status"] == "approved" and last_json(r)["approved_by"] == "cw2"

    r = run("show", rid, password=None)
    assert r.exit_code == 0 and "approved" in r.stdout and "allocated 480" in r.stdout
    assert last_json(run("show", rid, "--json", password=None))["id"] == rid
    listed = last_json(run("list", "cli-r", "--json", password=None))
    assert listed["total"] == 1 and listed["items"][0]["id"] == rid
    out = run("csv", rid, password=None)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {x["claim_id"]: (x["allocation"], x["reserved"]) for x in rows} == {
        a: ("300", "0"), b: ("180", "0"), c: ("0", "120")}


def test_refusals_and_their_exit_codes(run, people, engine):
    seed(engine, "cli-x", [("100", "approved")])
    seed(engine, "cli-empty", [("100", "flagged")])
    for args, code, needle in [
        (("prepare", "cli-x", "--pool", "10", "--as", "fin", "--direct"), 3, "caseworker"),
        (("prepare", "cli-x", "--pool", "10", "--as", "aud", "--direct"), 3, "caseworker"),
        (("prepare", "cli-x", "--pool", "-5", "--as", "cw1", "--direct"), 2, "--pool"),
        (("prepare", "cli-x", "--pool", "1.0000001", "--as", "cw1", "--direct"), 2, "--pool"),
        (("prepare", "cli-x", "--pool", "0", "--as", "cw1", "--direct"), 2, "--pool"),
        (("prepare", "cli-x", "--pool", "10", "--min-payout", "x", "--as", "cw1", "--direct"), 2,
         "--min-payout"),
        (("prepare", "cli-x", "--pool", "10", "--method", "equal", "--as", "cw1", "--direct"), 2,
         "--method"),
        (("prepare", "no-such-case", "--pool", "10", "--as", "cw1", "--direct"), 2, "no case"),
        (("prepare", "cli-empty", "--pool", "10", "--as", "cw1", "--direct"), 1,
         "no approved or disputed claim"),
        (("approve", "999", "--as", "cw1"), 2, "no round"),
        (("show", "abc"), 2, "no such round"),
        (("list", "no-such-case"), 2, "no case"),
    ]:
        r = run(*args)
        assert r.exit_code == code, (args, r.output)
        assert needle in r.output, (args, r.output)
    r = run("prepare", "cli-x", "--pool", "10", "--as", "cw1", "--direct", password="wrong password!!")
    assert r.exit_code == 3
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(DistributionRound)).scalar_one() == 0


def test_stale_and_already_approved_exit_1(run, people, engine):
    seed(engine, "cli-s", [("100", "approved")])
    first = last_json(run("prepare", "cli-s", "--pool", "10", "--as", "cw1", "--json", "--direct"))
    second = last_json(run("prepare", "cli-s", "--pool", "20", "--as", "cw1", "--json",
                           "--direct"))
    assert second["number"] == first["number"] == 1
    r = run("approve", first["id"], "--as", "cw2")
    assert r.exit_code == 1 and "stale" in r.output
    assert run("approve", second["id"], "--as", "cw2").exit_code == 0
    r = run("approve", second["id"], "--as", "cw2")
    assert r.exit_code == 1 and "approved" in r.output
    r = run("list", "cli-s", password=None)
    assert r.exit_code == 0 and r.stdout.count("stale") == 1


def test_rounds_group_is_registered_in_the_cli():
    from cli.main import COMMANDS

    assert "cli.rounds" in COMMANDS.values()
