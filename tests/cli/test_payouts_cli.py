"""``restitution payouts …``: release runs to the end (in-process chain, custodian export),
instructions and confirmations files, exit codes."""

from __future__ import annotations

import csv
import io
import json

import pytest
import typer
from payouts_seed import USDT, seed_round
from typer.testing import CliRunner

from claims.audit import Actor
from claims.db import session_scope

PW = "twelve chars or more"


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    from argon2 import PasswordHasher

    from claims import crypto, staff

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    monkeypatch.delenv("RESTITUTION_PASSWORD", raising=False)
    staff._unknown.clear()


@pytest.fixture
def run(engine):
    from claims.staff import create_user
    from cli import payouts as cli_payouts

    with session_scope(engine) as s:
        create_user(s, "fin", "finance", PW, actor=Actor.operator())
        create_user(s, "cw", "caseworker", PW, actor=Actor.operator())
    app = typer.Typer()
    app.callback()(lambda: None)
    cli_payouts.register(app)
    runner = CliRunner()

    def _run(*args, password=PW):
        return runner.invoke(app, ["payouts", *args], env={"RESTITUTION_PASSWORD": password})

    return _run


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_release_runs_to_the_end_and_the_custodian_files_round_trip(run, engine, tmp_path):
    seeded = seed_round(engine, [("ethereum", 4 * USDT), ("ethereum", 5 * USDT),
                                 ("tron", 6 * USDT)])
    rid = str(seeded.round_id)
    r = run("release", rid, "--as", "cw")
    assert r.exit_code == 3 and "finance" in r.output
    r = run("release", rid, "--as", "fin", "--json")
    assert r.exit_code == 0, r.output
    out = last_json(r)
    assert out["by_state"]["confirmed"] == {"count": 2, "amount": "9"}
    assert out["by_state"]["exported"] == {"count": 1, "amount": "6"}
    assert out["release"]["payouts"] == 3 and out["run"]["confirmed"] == 2
    from claims.payouts import default_rail

    rail = default_rail()
    for c in seeded.evm:
        assert rail.token_balance(c.address) == c.amount
    r = run("release", rid, "--as", "fin")
    assert r.exit_code == 1 and "nothing left to pay" in r.output

    instr = tmp_path / "instructions.csv"
    r = run("instructions", rid, "--out", str(instr), "--as", "fin")
    assert r.exit_code == 0 and "1 instruction line(s)" in r.stdout
    (line,) = list(csv.DictReader(io.StringIO(instr.read_text())))
    assert (line["address"], line["amount"]) == (seeded.tron[0].address, "6")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("instr")) == [
        "instructions.csv"]  # streamed through instructions.csv.part, renamed when whole
    r = run("instructions", rid, "--out", str(tmp_path / "no-such-dir" / "i.csv"), "--as", "fin")
    assert r.exit_code == 2 and "cannot write" in r.output
    assert not (tmp_path / "no-such-dir").exists()

    wrong = tmp_path / "wrong.csv"
    wrong.write_text(f"payout_id,tx_id,amount\n{line['payout_id']},TX9,7\n")
    r = run("confirm", rid, str(wrong), "--as", "fin", "--json")
    assert r.exit_code == 1
    res = last_json(r)
    assert res["confirmed"] == 0 and res["mismatches"][0]["line"] == 2
    r = run("status", rid, "--json")
    assert last_json(r)["round_status"] == "stopped"
    r = run("mismatches", rid, "--json")
    (m,) = last_json(r)["items"]
    r = run("resolve", rid, m["id"], "--reason", "custodian typo", "--as", "fin")
    assert r.exit_code == 0 and "released" in r.stdout

    good = tmp_path / "good.csv"
    good.write_text(f"payout_id,tx_id,amount,status\n{line['payout_id']},TX9,6,confirmed\n")
    r = run("confirm", rid, str(good), "--as", "fin")
    assert r.exit_code == 0 and "confirmed 1" in r.stdout
    r = run("confirm", rid, str(good), "--as", "fin", "--json")
    assert r.exit_code == 0 and last_json(r)["already"] == 1
    r = run("status", rid, "--json")
    assert last_json(r)["round_status"] == "settled"

    bad = tmp_path / "bad.csv"
    bad.write_text("payout_id,tx_id,amount\nx,,1.1234567\n")
    r = run("confirm", rid, str(bad), "--as", "fin")
    assert r.exit_code == 2 and "line 2" in r.output


def test_hold_and_list(run, engine):
    seeded = seed_round(engine, [("tron", USDT)])
    from claims import payouts

    with session_scope(engine) as s:
        payouts.release_round(s, seeded.round_id, actor=Actor("f", "finance"))
    r = run("list", str(seeded.round_id), "--json")
    (item,) = last_json(r)["items"]
    assert item["state"] == "pending"
    r = run("hold", item["id"], "--as", "fin", "--reason", "phone check", "--json")
    assert r.exit_code == 0 and last_json(r)["state"] == "held"
    r = run("hold", item["id"], "--as", "fin")
    assert r.exit_code == 1  # already held: an illegal move
    r = run("resume", item["id"], "--as", "fin", "--json")
    assert r.exit_code == 0 and last_json(r)["state"] == "exported"  # resumed and run
    r = run("status", "999999")
    assert r.exit_code == 2
