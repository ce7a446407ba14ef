"""``restitution claims import CODE FILE.csv [--out] [--json]`` and ``restitution serve``."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from claims.validators import make_eth_address, make_iin, make_tron_address

CASE = "paper-case"
HEADER = ["case_id", "full_name", "iin", "date_of_birth", "email", "phone", "language",
          "scheme_account", "claimed_amount", "evidence_tx_hashes", "payout_network",
          "payout_address", "consent"]


def row(n: int, **over) -> dict:
    birth = dt.date(1970, 1, 1) + dt.timedelta(days=(n * 37) % 15000)
    r = {
        "case_id": CASE,
        "full_name": f"Ерлан Серікұлы {n}",
        "iin": make_iin(birth, "male", n % 9000),
        "date_of_birth": birth.isoformat(),
        "email": f"paper{n}@example.kz",
        "phone": "+7 (701) 555-00-00",
        "language": ("kk", "ru", "en")[n % 3],
        "scheme_account": "",
        "claimed_amount": "250.5",
        "evidence_tx_hashes": ";".join(["aa" * 32, "bb" * 32]),
        "payout_network": "tron",
        "payout_address": make_tron_address(n.to_bytes(20, "big")),
        "consent": "true",
    }
    r.update(over)
    return r


def write_csv(path: Path, rows: list[dict], header=HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def case(engine):
    from claims.cases import create_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        create_case(s, CASE, "Paper claims")
    return CASE


@pytest.fixture
def run(db_url):
    from cli import claims_cmd

    app = typer.Typer()
    app.callback()(lambda: None)
    claims_cmd.register(app)
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(app, ["claims", "import", *map(str, args)])

    return _run


def table_counts(engine) -> dict[str, int]:
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim, Notification

    with session_scope(engine, write=False) as s:
        return {m.__tablename__: s.execute(select(func.count()).select_from(m)).scalar_one()
                for m in (Claim, Notification, AuditEvent)}


def test_import_files_good_rows_and_writes_receipts(run, case, engine, tmp_path):
    from claims import crypto
    from claims.audit import verify_chain
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim, Notification

    rows = [row(i) for i in range(1, 6)]
    rows[1]["payout_network"] = "ethereum"
    rows[1]["payout_address"] = make_eth_address(b"\x02" * 20)
    rows[1]["evidence_tx_hashes"] = "0x" + "cc" * 32
    rows[2]["case_id"] = ""  # the CODE argument applies
    f = write_csv(tmp_path / "claims.csv", rows)
    out = tmp_path / "receipts.csv"
    r = run(CASE, f, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"filed": 5, "rejected": 0}
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    receipts = list(csv.DictReader(out.open()))
    assert [x["line"] for x in receipts] == ["2", "3", "4", "5", "6"]
    with session_scope(engine, write=False) as s:
        claims = {c.reference: c for c in s.execute(select(Claim)).scalars()}
        assert len(claims) == 5
        for rec, src in zip(receipts, rows):
            c = claims[rec["reference"]]
            assert c.access_token_hash == crypto.token_hash(rec["access_token"])
            assert c.iin_hash == crypto.iin_hash(src["iin"]) and c.source == "import"
            assert c.status == "submitted" and c.claimed_amount == 250_500_000
        assert claims[receipts[0]["reference"]].evidence_tx_hashes == ["aa" * 32, "bb" * 32]
        notes = s.execute(select(Notification.kind, Notification.claim_id)).all()
        assert sorted(notes) == sorted(("received", c.id) for c in claims.values())
        events = s.execute(select(AuditEvent).where(AuditEvent.action == "claim.filed")).scalars().all()
        assert {e.subject_id for e in events} == set(claims)
        assert all(e.role == "operator" for e in events)
        assert verify_chain(s).ok


def test_bad_rows_are_reported_by_line_and_skipped(run, case, engine, tmp_path):
    rows = [
        row(1),
        row(2, iin=row(2)["iin"][:-1] + str((int(row(2)["iin"][-1]) + 1) % 10)),  # checksum
        row(3, claimed_amount="1.1234567", phone="12"),  # two bad fields on one line
        row(4, iin=row(1)["iin"], date_of_birth=row(1)["date_of_birth"]),  # the same IIN as line 2
        row(5, consent="false"),
        row(6, case_id="other-case"),
        row(7),
    ]
    f = write_csv(tmp_path / "claims.csv", rows)
    r = run(CASE, f, "--json")
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"filed": 2, "rejected": 5}
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("line 3: iin: ")
    assert any(x.startswith("line 4: claimed_amount: ") for x in lines)
    assert any(x.startswith("line 4: phone: ") for x in lines)
    assert "line 5: iin: the same IIN is on line 2" in lines
    assert any(x.startswith("line 6: consent: ") for x in lines)
    assert any(x.startswith("line 7: case_id: ") for x in lines)
    assert table_counts(engine)["claim"] == 2
    # Importing the same file again: every IIN is already filed in the case.
    r = run(CASE, f, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"filed": 0, "rejected": 7}
    assert "line 2: iin: a claim for this IIN has already been filed in this case" in r.stderr
    assert table_counts(engine)["claim"] == 2


def test_duplicates_against_the_api_filings(run, case, engine, tmp_path):
    from claims import intake

    filed = intake.file_claim_tx(intake.prepare({**row(1), "consent": True}))
    assert filed.reference
    f = write_csv(tmp_path / "claims.csv", [row(1), row(2)])
    r = run(CASE, f)
    assert r.exit_code == 1
    assert "line 2: iin:" in r.stderr
    assert table_counts(engine)["claim"] == 2


@pytest.mark.parametrize("content, needle", [
    (b"", "empty file"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (",".join(HEADER + ["favourite_colour"]).encode() + b"\n", "unknown column(s): favourite_colour"),
    (b"full_name,iin\n", "missing column(s): email"),
    (",".join(HEADER + ["iin"]).encode() + b"\n", "duplicate column(s): iin"),
])
def test_a_bad_file_exits_2(run, case, tmp_path, content, needle):
    f = tmp_path / "bad.csv"
    f.write_bytes(content)
    r = run(CASE, f)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr


def test_unknown_or_closed_case_exits_2_naming_case_id(run, case, engine, tmp_path):
    from claims.cases import close_case
    from claims.db import session_scope

    f = write_csv(tmp_path / "c.csv", [row(1)])
    r = run("no-such-case", f)
    assert r.exit_code == 2 and "case_id:" in r.stderr
    with session_scope(engine) as s:
        close_case(s, CASE)
    r = run(CASE, f)
    assert r.exit_code == 2 and "case_id:" in r.stderr
    assert table_counts(engine)["claim"] == 0
    assert run(CASE, tmp_path / "missing.csv").exit_code == 2


def test_a_row_with_the_wrong_number_of_cells_is_refused_by_line(run, case, engine, tmp_path):
    f = write_csv(tmp_path / "c.csv", [row(1), row(2)])
    with f.open("a") as fh:
        fh.write("only,three,cells\n\n")
    r = run(CASE, f, "--json")
    assert r.exit_code == 1
    assert "line 4: row: has 3 cells; the header has 13" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"filed": 2, "rejected": 1}


def test_bulk_import_in_chunks(case, engine):
    from claims import intake

    chunks = []
    rows = [(i + 2, row(i + 1)) for i in range(1100)]
    outcome = intake.import_rows(CASE, rows, chunk_size=500, on_chunk=lambda d: chunks.append(len(d)))
    assert chunks == [500, 500, 100]
    assert len(outcome.filed) == 1100 and outcome.rejected == []
    assert len({ref for _, ref, _ in outcome.filed}) == 1100 and outcome.filed_count == 1100
    # A caller that takes the receipts chunk by chunk need not keep them all.
    taken = []
    more = [(i + 2, row(i + 1101)) for i in range(600)]
    outcome = intake.import_rows(CASE, more, chunk_size=500, on_chunk=taken.extend,
                                 keep_filed=False)
    assert outcome.filed == [] and outcome.filed_count == len(taken) == 600
    counts = table_counts(engine)
    assert counts["claim"] == 1700 and counts["notification"] == 1700


# ----------------------------------------------------------------------------- serve


def test_serve_starts_and_stops_the_background_hook(monkeypatch):
    from cli import serve as serve_mod

    seen = {}

    def fake_run(target, **kw):
        seen["target"], seen["kw"] = target, kw
        time.sleep(0.05)

    started = threading.Event()
    stopped = threading.Event()

    def worker(stop):
        started.set()
        stop.wait(10)
        stopped.set()

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(serve_mod, "BACKGROUND", ["tests_bg_hook:worker"])
    mod = type(sys)("tests_bg_hook")
    mod.worker = worker
    monkeypatch.setitem(sys.modules, "tests_bg_hook", mod)
    serve_mod.serve(host="127.0.0.1", port=1, workers=2, background=True, log_level="warning",
                    proxy_headers=False, forwarded_allow_ips="127.0.0.1", timeout_keep_alive=5)
    assert seen["target"] == "api.app:create_app"
    assert seen["kw"]["factory"] is True and seen["kw"]["workers"] == 2
    assert started.is_set() and stopped.is_set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restitution_serve_answers_http(db_url, tmp_path):
    import httpx

    port = _free_port()
    exe = Path(sys.executable).parent / "restitution"
    env = {**os.environ, "RESTITUTION_DATABASE_URL": db_url}
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--no-background",
                             "--log-level", "warning"], env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert r.status_code == 200
        assert "/api/v1/claims" in r.json()["paths"]
        page = httpx.get(f"http://127.0.0.1:{port}/?lang=ru", timeout=5)
        assert page.status_code == 200 and '<html lang="ru">' in page.text
    finally:
        proc.terminate()
        proc.wait(20)
