"""``restitution verify CODE`` without a Prefect server: --direct, nothing pending, errors.

The Prefect path itself runs once in tests/flows/test_verify_flow.py (under the shared test
server).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from claims.db import session_scope

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app():
    from cli import verify as cli_verify

    a = typer.Typer()
    a.callback()(lambda: None)
    cli_verify.register(a)
    return a


def seed(engine, code: str) -> None:
    """3 accounts; 3 claims matched by e-mail: two exact (approved), one claiming too much."""
    from claims.cases import create_case
    from claims.intake import file_claim, prepare
    from claims.ledger import import_ledger
    from claims.validators import make_iin, make_tron_address

    with session_scope(engine) as s:
        create_case(s, code, "CLI test")
    rows = ["account_id,entry_type,amount,occurred_at,email"]
    rows += [f"A-{i},deposit,{100 * i},2023-03-01T10:00:00Z,c{i}@example.org" for i in (1, 2, 3)]
    import_ledger(engine, code, io.StringIO("\n".join(rows) + "\n"))
    import datetime as dt

    with session_scope(engine) as s:
        for i in (1, 2, 3):
            file_claim(s, prepare({
                "case_id": code, "full_name": f"Claimant {i}",
                "iin": make_iin(dt.date(1960, 2, i), "male", i),
                "email": f"c{i}@example.org", "phone": f"+770200000{i:02d}", "language": "kk",
                "claimed_amount": "999" if i == 3 else str(100 * i),
                "payout_network": "tron",
                "payout_address": make_tron_address(hashlib.sha256(b"cli%d" % i).digest()[:20]),
                "consent": True,
            }))


def test_direct_json(engine, app):
    seed(engine, "cli-a")
    res = CliRunner().invoke(app, ["verify", "cli-a", "--direct", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["case"] == "cli-a" and out["pending"] == 0
    assert (out["verified"], out["approved"], out["flagged"]) == (3, 2, 1)
    assert out["flags"] == {"amount_differs": 1} and out["match_rules"] == {"email": 3}
    assert "ids" not in out


def test_human_output_and_nothing_pending_starts_nothing(engine, app):
    seed(engine, "cli-b")
    res = CliRunner().invoke(app, ["verify", "cli-b", "--direct"])
    assert res.exit_code == 0, res.output
    assert "3 verified, 2 approved by rule, 1 flagged for review" in res.stdout
    assert "flags: amount_differs 1" in res.stdout
    again = CliRunner().invoke(app, ["verify", "cli-b", "--json"])  # no --direct: no flow needed
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout.strip().splitlines()[-1])
    assert out["verified"] == 0 and out["batches"] == 0 and out["pending"] == 0


def test_unknown_case_exits_2(engine, app):
    res = CliRunner().invoke(app, ["verify", "no-such-case", "--json"])
    assert res.exit_code == 2
    assert "no-such-case" in res.stderr


def test_importing_the_command_does_not_import_prefect():
    code = "import sys, cli.verify; print('prefect' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
