"""Operator commands: `cases`, `ledger`, `blocked`, `audit verify` (docs/operations.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from claims.db import session_scope
from claims.models import AuditEvent, LedgerEntry

ROOT = Path(__file__).resolve().parents[2]
ETH = "0x52908400098527886E0F7030069857D2E4169EE7"
TRON = "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8"
LEDGER = (
    "account_id,entry_type,amount,occurred_at,tx_hash,insider\n"
    "A1,deposit,1000,2023-01-01T00:00:00Z,0x" + "ab" * 32 + ",false\n"
    "A1,withdrawal,300,2023-02-01T00:00:00Z,,\n"
    "A2,deposit,100,2023-01-01T00:00:00Z,,\n"
    "A2,bonus,150.25,2023-03-01T00:00:00Z,,\n"
)


@pytest.fixture
def run(db_url):
    from cli import audit_cmd, blocked, cases, ledger

    app = typer.Typer()
    app.callback()(lambda: None)
    for module in (cases, ledger, blocked, audit_cmd):
        module.register(app)
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(app, [str(a) for a in args])

    return _run


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def audit_actions(engine) -> list[tuple[str, str]]:
    with session_scope(engine, write=False) as s:
        return [(e.action, e.role) for e in
                s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()]


def test_cases_create_and_close(run, engine):
    r = run("cases", "create", "kz-1", "--name", "KZ Ponzi", "--deadline", "2999-01-31", "--json")
    assert r.exit_code == 0, r.output
    out = last_json(r)
    assert (out["code"], out["name"], out["status"], out["deadline"]) == (
        "kz-1", "KZ Ponzi", "open", "2999-01-31")
    r = run("cases", "create", "kz-1", "--name", "again")
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = run("cases", "create", "KZ 1", "--name", "x", "--deadline", "tomorrow")
    assert r.exit_code == 2
    assert "code:" in r.stderr and "deadline:" in r.stderr
    r = run("cases", "close", "kz-1")
    assert r.exit_code == 0 and "closed case kz-1" in r.stdout
    r = run("cases", "close", "kz-1", "--json")
    assert r.exit_code == 1 and "already closed" in r.stderr
    r = run("cases", "close", "nope")
    assert r.exit_code == 2
    assert audit_actions(engine) == [("case.create", "operator"), ("case.close", "operator")]


def test_ledger_import_summary_and_insider(run, engine, tmp_path):
    assert run("cases", "create", "kz", "--name", "KZ").exit_code == 0
    r = run("ledger", "summary", "kz", "--json")
    assert r.exit_code == 0 and last_json(r) == {
        "accounts": 0, "deposits": "0", "withdrawals": "0", "net_winners": 0,
        "total_net_loss": "0"}
    path = tmp_path / "ledger.csv"
    path.write_text(LEDGER)
    r = run("ledger", "import", "kz", path, "--json")
    assert r.exit_code == 0, r.output
    out = last_json(r)
    assert (out["rows_read"], out["rows_added"], out["rows_existing"], out["accounts_added"]) == (
        4, 4, 0, 2)
    r = run("ledger", "import", "kz", path)
    assert r.exit_code == 0 and "4 rows read, 0 added, 4 already present" in r.stdout
    r = run("ledger", "summary", "kz", "--json")
    assert last_json(r) == {"accounts": 2, "deposits": "1100", "withdrawals": "450.25",
                            "net_winners": 1, "total_net_loss": "700"}
    assert "total net loss  700 USDT" in run("ledger", "summary", "kz").stdout
    r = run("ledger", "mark-insider", "kz", "A1", "--reason", "promoter", "--json")
    assert r.exit_code == 0 and last_json(r) == {
        "case": "kz", "account_id": "A1", "insider": True, "reason": "promoter"}
    r = run("ledger", "mark-insider", "kz", "ZZ")
    assert r.exit_code == 2 and "no ledger account" in r.stderr
    r = run("ledger", "summary", "nope", "--json")
    assert r.exit_code == 2
    assert [a for a, _ in audit_actions(engine)] == [
        "case.create", "ledger.import", "ledger.import", "ledger.mark_insider"]


def test_ledger_import_bad_file_exit_2_every_line_nothing_stored(run, engine, tmp_path):
    assert run("cases", "create", "kz", "--name", "KZ").exit_code == 0
    path = tmp_path / "bad.csv"
    path.write_text(
        "account_id,entry_type,amount,occurred_at\n"
        "A1,deposit,10,2023-01-01\n"
        "A1,deposit,-10,2023-01-01\n"
        "A1,refund,10,2023-01-01\n"
        "A1,deposit,10,2023-01-01\n"
        "A1,deposit,10.1234567,someday\n"
    )
    r = run("ledger", "import", "kz", path, "--json")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "line 3: amount: must not be negative"
    assert lines[1] == "line 4: entry_type: must be deposit, withdrawal or bonus"
    assert lines[2].startswith("line 6: amount: has more than 6 decimals")
    assert "occurred_at:" in lines[2] and len(lines) == 3
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 0
    r = run("ledger", "import", "kz", tmp_path / "missing.csv")
    assert r.exit_code == 2 and "missing.csv" in r.stderr
    path.write_text("account_id,amount\n")
    r = run("ledger", "import", "kz", path)
    assert r.exit_code == 2
    assert r.stderr.strip() == "line 1: missing required columns: entry_type, occurred_at"
    path.write_text(LEDGER)
    r = run("ledger", "import", "no-such-case", path)
    assert r.exit_code == 2


def test_ledger_import_progress_bar_on_stderr(run, engine, tmp_path):
    assert run("cases", "create", "kz", "--name", "KZ").exit_code == 0
    path = tmp_path / "ledger.csv"
    path.write_text(LEDGER)
    r = run("ledger", "import", "kz", path, "--progress", "--json")
    assert r.exit_code == 0
    assert "storing" in r.stderr and last_json(r)["rows_added"] == 4


def test_blocked_add_remove_list(run, engine):
    r = run("blocked", "add", ETH.lower(), "--reason", "OFAC", "--json")
    assert r.exit_code == 0, r.output
    out = last_json(r)
    assert (out["address"], out["network"], out["reason"]) == (ETH, "ethereum", "OFAC")
    assert "warning: address:" in r.stderr  # all lower case: checksum not checkable
    assert run("blocked", "add", TRON, "--reason", "frozen").exit_code == 0
    r = run("blocked", "add", ETH, "--reason", "again")
    assert r.exit_code == 1 and "already blocked" in r.stderr
    r = run("blocked", "add", "0xnothing", "--reason", "x")
    assert r.exit_code == 2 and r.stderr.startswith("address:")
    r = run("blocked", "list", "--json")
    out = last_json(r)
    assert out["total"] == 2
    assert [(i["address"], i["network"]) for i in out["items"]] == [(ETH, "ethereum"), (TRON, "tron")]
    assert TRON in run("blocked", "list").stdout
    r = run("blocked", "remove", ETH.upper().replace("0X", "0x"), "--json")
    assert r.exit_code == 0 and last_json(r)["removed"] is True
    r = run("blocked", "remove", ETH)
    assert r.exit_code == 2 and "not on the blocked list" in r.stderr
    assert last_json(run("blocked", "list", "--json"))["total"] == 1
    assert [a for a, _ in audit_actions(engine)] == ["blocked.add", "blocked.add", "blocked.remove"]


def test_operator_commands_do_not_import_prefect_or_web3(db_url, tmp_path):
    """Run the commands in a fresh interpreter and list what got imported."""
    ledger_csv = tmp_path / "l.csv"
    ledger_csv.write_text(LEDGER)
    script = textwrap.dedent(f"""
        import sys, typer
        from cli import audit_cmd, blocked, cases, ledger
        app = typer.Typer()
        app.callback()(lambda: None)
        for m in (cases, ledger, blocked, audit_cmd):
            m.register(app)
        for args in (["cases", "create", "kz", "--name", "KZ"],
                     ["ledger", "import", "kz", {str(ledger_csv)!r}],
                     ["ledger", "summary", "kz", "--json"],
                     ["ledger", "mark-insider", "kz", "A1"],
                     ["blocked", "add", {TRON!r}, "--reason", "x"],
                     ["blocked", "list"],
                     ["audit", "verify"]):
            try:
                app(args)
            except SystemExit as e:
                assert not e.code, (args, e.code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("prefect", "web3", "eth_tester", "eth_account", "fastapi", "uvicorn"))
        print("HEAVY", heavy)
    """)
    env = {**os.environ, "RESTITUTION_DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
