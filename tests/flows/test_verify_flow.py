"""The verification flow under Prefect (one session-wide test server: ``prefect_harness``).

Claims are filed through intake and the ledger imported from CSV, as in production; the flow
runs with a batch size that splits them over several task runs. Kept to a few tests: the rules
themselves are tested without Prefect in tests/claims/test_verification.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json

from sqlalchemy import func, select

from claims.db import session_scope
from claims.models import AuditEvent, Claim


def _iin(n: int) -> str:
    from claims.validators import make_iin

    return make_iin(dt.date(1970, 1, 1) + dt.timedelta(days=n), "female", n)


def seed(engine, code: str) -> list[str]:
    """Case ``code``: 5 accounts; 6 claims — 1, 4, 5 clean (matched by e-mail, amount exact),
    2 and 3 sharing a payout address, 6 matching nothing."""
    from claims.cases import create_case
    from claims.intake import file_claim, prepare
    from claims.ledger import import_ledger

    with session_scope(engine) as s:
        create_case(s, code, "Flow test")
    rows = ["account_id,entry_type,amount,occurred_at,email"]
    for i in range(1, 6):
        rows.append(f"A-{i},deposit,{100 * i},2023-03-01T10:00:00Z,v{i}@example.org")
        rows.append(f"A-{i},withdrawal,{10 * i},2023-04-01T10:00:00Z,")
    import_ledger(engine, code, io.StringIO("\n".join(rows) + "\n"))
    shared = "TLa2f6VPqDgRE67v1736s7bJ8Ray5wYjU7"
    refs = []
    with session_scope(engine) as s:
        for n in range(1, 7):
            data = {
                "case_id": code, "full_name": f"Victim {n}", "iin": _iin(n),
                "email": f"v{n}@example.org", "phone": f"+7701000000{n}", "language": "ru",
                "claimed_amount": str(90 * n) if n <= 5 else "50",
                "payout_network": "tron",
                "payout_address": shared if n in (2, 3) else _tron(n), "consent": True,
            }
            refs.append(file_claim(s, prepare(data)).reference)
    return refs


def _tron(n: int) -> str:
    import hashlib

    from claims.validators import make_tron_address

    return make_tron_address(hashlib.sha256(f"flow-{n}".encode()).digest()[:20])


def _statuses(engine, refs):
    with session_scope(engine, write=False) as s:
        rows = dict(s.execute(select(Claim.reference, Claim.status).where(Claim.reference.in_(refs))).all())
    return [rows[r] for r in refs]


def test_verify_flow_batches_artifacts_and_rerun(engine, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.verify import verify_claims

    refs = seed(engine, "flow-a")
    counts = verify_claims("flow-a", batch_size=3)
    assert counts["verified"] == 6 and counts["batches"] == 2 and counts["rounds"] == 1
    assert counts["approved"] == 3 and counts["flagged"] == 3
    assert counts["match_rules"] == {"email": 5}
    assert counts["flags"] == {"duplicate_wallet": 2, "no_ledger_match": 1, "missing_evidence": 1}
    assert _statuses(engine, refs) == ["approved", "flagged", "flagged", "approved", "approved",
                                       "flagged"]

    async def artifacts():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    latest = {a.key: a for a in asyncio.run(artifacts())}
    assert latest["verify-flow-a"].type == "progress" and float(latest["verify-flow-a"].data) == 100.0
    table = latest["verify-flow-a-counts"]
    assert table.type == "table"
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    by = {(r["kind"], r["name"]): r["claims"] for r in rows}
    assert by[("outcome", "approved")] == 3 and by[("flag", "duplicate_wallet")] == 2
    assert by[("match rule", "email")] == 5

    with session_scope(engine, write=False) as s:
        audit_before = s.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    again = verify_claims("flow-a", batch_size=3)
    assert again["verified"] == 0 and again["batches"] == 0
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == audit_before


def test_cli_verify_runs_the_flow(engine, prefect_harness):
    import typer
    from typer.testing import CliRunner

    from cli import verify as cli_verify

    app = typer.Typer()
    app.callback()(lambda: None)
    cli_verify.register(app)
    refs = seed(engine, "flow-cli")
    res = CliRunner().invoke(app, ["verify", "flow-cli", "--batch-size", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["case"] == "flow-cli" and out["pending"] == 0
    assert out["verified"] == 6 and out["approved"] == 3 and out["flagged"] == 3
    assert out["flags"]["duplicate_wallet"] == 2
    assert _statuses(engine, refs) == ["approved", "flagged", "flagged", "approved", "approved",
                                       "flagged"]


def test_progress_updates_are_throttled_but_the_last_step_always_shows(monkeypatch):
    import flows.verify as fv

    clock = [100.0]
    monkeypatch.setattr(fv.time, "monotonic", lambda: clock[0])
    seen = []
    on_progress = fv.throttled(lambda done, total, *rest: seen.append((done, total)), every=2.0)
    on_progress(1, 10, {})  # first: shown
    clock[0] += 1.0
    on_progress(2, 10, {})  # 1 s later: skipped
    clock[0] += 1.5
    on_progress(3, 10, {})  # 2.5 s after the last shown: shown
    on_progress(10, 10, {})  # the last step: always shown
    assert seen == [(1, 10), (3, 10), (10, 10)]


def test_no_heartbeat_turns_heartbeats_off_only_inside_the_block():
    from prefect.settings import get_current_settings

    from flows.common import no_heartbeat

    before = get_current_settings().flows.heartbeat_frequency
    assert before is not None  # Prefect's default: on
    with no_heartbeat():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before
