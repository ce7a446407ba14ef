"""`restitution plan`: docs/formats.md "Plan CSV" and the `plan` command row."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

FOUR = "claim_id,invested,withdrawn\nA,1000,0\nB,1000,400\nC,500,100\nD,300,450\n"


def write(tmp_path: Path, text: str, name: str = "claims.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def invoke(*args: str):
    return runner.invoke(app, ["plan", *args])


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_to_stdout_summary_to_stderr(tmp_path):
    res = invoke(str(write(tmp_path, FOUR)), "--pool", "500", "--method", "pro-rata")
    assert res.exit_code == 0, res.stderr
    out = rows(res.stdout)
    assert list(out[0])[:4] == ["claim_id", "net_loss", "allocation", "reserved"]
    assert [(r["claim_id"], r["net_loss"], r["allocation"], r["reserved"]) for r in out] == [
        ("A", "1000", "250", "0"),
        ("B", "600", "150", "0"),
        ("C", "400", "100", "0"),
        ("D", "0", "0", "0"),
    ]
    assert out[3]["excluded"] == "net_winner"
    summary = json.loads(res.stderr.strip().splitlines()[-1])
    assert summary == {"pool": "500", "rate": "0.25", "allocated": "500", "reserved": "0", "undistributed": "0"}


def test_out_file_and_summary_on_stdout(tmp_path):
    src = write(
        tmp_path,
        "claim_id,invested,withdrawn,paid_before,status\n"
        "A,1000,0,,approved\nB,600,0,0,\nC,400,0,0,disputed\n",
    )
    out = tmp_path / "plan.csv"
    res = invoke(str(src), "--pool", "600", "--method", "pro-rata", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {
        "pool": "600",
        "rate": "0.3",
        "allocated": "480",
        "reserved": "120",
        "undistributed": "0",
    }
    assert res.stderr == ""
    plan = rows(out.read_text(encoding="utf-8"))
    assert [(r["claim_id"], r["allocation"], r["reserved"]) for r in plan] == [
        ("A", "300", "0"),
        ("B", "180", "0"),
        ("C", "0", "120"),
    ]


def test_rising_tide_min_payout_and_micro_amounts(tmp_path):
    src = write(tmp_path, "claim_id,invested,withdrawn\nA,10,0\nB,9.5,0\nC,9.9,0\n")
    res = invoke(str(src), "--pool", "10", "--method", "pro-rata", "--min-payout", "3.5")
    assert res.exit_code == 0, res.stderr
    out = {r["claim_id"]: r for r in rows(res.stdout)}
    assert (out["A"]["allocation"], out["B"]["allocation"], out["C"]["allocation"]) == ("5.025126", "0", "4.974874")
    assert out["B"]["excluded"] == "de_minimis"
    res = invoke(str(write(tmp_path, FOUR)), "--pool", "500", "--method", "rising-tide")
    assert res.exit_code == 0
    assert [r["allocation"] for r in rows(res.stdout)] == ["400", "0", "100", "0"]
    assert json.loads(res.stderr.strip())["rate"] == "0.4"


def test_catch_up_round_from_paid_before(tmp_path):
    src = write(tmp_path, "claim_id,paid_before,invested,withdrawn\nA,300,1000,0\nB,180,600,0\nC,90,300,0\n")
    res = invoke(str(src), "--pool", "430", "--method", "pro-rata")
    assert res.exit_code == 0, res.stderr
    assert [r["allocation"] for r in rows(res.stdout)] == ["226.315789", "135.789474", "67.894737"]


def test_pool_above_losses_leaves_undistributed(tmp_path):
    res = invoke(str(write(tmp_path, FOUR)), "--pool", "2500.5", "--method", "pro-rata")
    assert res.exit_code == 0
    summary = json.loads(res.stderr.strip())
    assert summary["rate"] == "1" and summary["undistributed"] == "500.5" and summary["allocated"] == "2000"


def test_every_bad_line_named_exit_2(tmp_path):
    src = write(
        tmp_path,
        "claim_id,invested,withdrawn,paid_before,status\n"
        "A,100,0,0,approved\n"  # 2 ok
        "B,-5,0,0,approved\n"  # 3 negative
        "C,1.1234567,0,0,approved\n"  # 4 over-precise
        "A,10,0,0,approved\n"  # 5 duplicate of line 2
        "D,ten,0,0,approved\n"  # 6 malformed
        "E,10,0,0,rejected\n"  # 7 bad status
        "F,10,0\n"  # 8 short row
        "\n"  # 9 blank: skipped
        "G,1e3,0,0,\n"  # 10 exponent
        ",10,0,0,\n"  # 11 empty id
        "H,10,0,-1,\n",  # 12 negative paid_before
    )
    res = invoke(str(src), "--pool", "100", "--method", "pro-rata")
    assert res.exit_code == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [f"line {n}" for n in (3, 4, 5, 6, 7, 8, 10, 11, 12)]
    text = res.stderr
    assert "line 3: invested must not be negative" in text
    assert "line 4: invested has more than 6 decimals" in text
    assert "line 5: duplicate claim_id A (first on line 2)" in text
    assert "line 6: invested is not an amount" in text
    assert "line 7: status must be approved or disputed" in text
    assert "line 8: expected 5 fields, found 3" in text
    assert "line 10: invested must not use an exponent" in text
    assert "line 11: claim_id is empty" in text
    assert "line 12: paid_before must not be negative" in text


def test_several_reasons_on_one_line(tmp_path):
    src = write(tmp_path, "claim_id,invested,withdrawn\nA,-1,0.0000001\n")
    res = invoke(str(src), "--pool", "1", "--method", "pro-rata")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        "line 2: invested must not be negative; withdrawn has more than 6 decimals (USDT has 6)"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("claim_id,invested\nA,1\n", "line 1: missing column withdrawn"),
        ("id,amount\n", "line 1: missing columns claim_id, invested, withdrawn"),
        ("claim_id,invested,withdrawn,invested\n", "line 1: duplicate column invested"),
        ("", "line 1: empty file"),
    ],
)
def test_bad_header_exit_2(tmp_path, text, message):
    res = invoke(str(write(tmp_path, text)), "--pool", "1", "--method", "pro-rata")
    assert res.exit_code == 2
    assert message in res.stderr


def test_extra_columns_ignored_and_bom_accepted(tmp_path):
    src = write(tmp_path, "\ufeffname,claim_id,invested,withdrawn,note\nAnna,A,10,0,x\nBo,B,30,0,y\n")
    res = invoke(str(src), "--pool", "8", "--method", "pro-rata")
    assert res.exit_code == 0, res.stderr
    assert [(r["claim_id"], r["allocation"]) for r in rows(res.stdout)] == [("A", "2"), ("B", "6")]


@pytest.mark.parametrize(
    "args, option",
    [
        (["--pool", "-1", "--method", "pro-rata"], "--pool"),
        (["--pool", "1.0000001", "--method", "pro-rata"], "--pool"),
        (["--pool", "abc", "--method", "pro-rata"], "--pool"),
        (["--pool", "1", "--method", "pro-rata", "--min-payout", "1,5"], "--min-payout"),
        (["--pool", "1", "--method", "pro-rata", "--min-payout", "-2"], "--min-payout"),
        (["--pool", "1", "--method", "equal-shares"], "--method"),
        (["--method", "pro-rata"], "--pool"),
    ],
)
def test_bad_options_exit_2_naming_the_option(tmp_path, args, option):
    res = invoke(str(write(tmp_path, FOUR)), *args)
    assert res.exit_code == 2
    assert option in res.output


def test_missing_file_exit_2(tmp_path):
    res = invoke(str(tmp_path / "nope.csv"), "--pool", "1", "--method", "pro-rata")
    assert res.exit_code == 2
    assert "nope.csv" in res.output


def test_end_to_end_console_script(tmp_path):
    exe = ROOT / ".venv" / "bin" / "restitution"
    if not exe.exists():  # pragma: no cover - venv without the console script
        exe = Path(sys.executable).parent / "restitution"
    src = write(tmp_path, "claim_id,invested,withdrawn\na,1,0\nb,1,0\nc,1,0\n")
    out = tmp_path / "plan.csv"
    proc = subprocess.run(
        [str(exe), "plan", str(src), "--pool", "1", "--method", "pro-rata", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["allocated"] == "1"
    assert [r["allocation"] for r in rows(out.read_text())] == ["0.333334", "0.333333", "0.333333"]
    proc = subprocess.run(
        [str(exe), "plan", str(src), "--pool", "1", "--method", "nope"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--method" in proc.stderr
