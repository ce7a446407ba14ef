"""`restitution plan`: a what-if distribution plan from a spreadsheet. Touches no database.

CONTRACT.md "Plan CSV": input header ``claim_id,invested,withdrawn`` with optional
``paid_before`` (default 0) and ``status`` (``approved`` default, or ``disputed``); other columns
are ignored. An empty ``paid_before`` or ``status`` cell takes the default. Output rows in input
order, columns ``claims.allocation.PLAN_COLUMNS``. With ``--out`` the summary JSON goes to
stdout; without it the CSV goes to stdout and the summary to stderr. Bad input exits 2 naming
every bad line (``line N: reason``, the header is line 1) or the bad option.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.common import EXIT_USAGE, err, print_json

REQUIRED = ("claim_id", "invested", "withdrawn")
OPTIONAL = ("paid_before", "status")
STATUSES = ("approved", "disputed")


class PlanInputError(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def read_plan_csv(text: str):
    """Parse the input spreadsheet into ``ClaimInput`` records or raise ``PlanInputError``
    listing every bad line."""
    from claims.allocation import ClaimInput
    from claims.money import AmountError, parse_amount

    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise PlanInputError(["line 1: empty file (expected a header claim_id,invested,withdrawn)"])
    except csv.Error as exc:
        raise PlanInputError([f"line 1: {exc}"])
    names = [h.strip() for h in header]
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        problems.append(f"line 1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    dups = sorted({h for h in names if h and names.count(h) > 1})
    if dups:
        problems.append(f"line 1: duplicate column{'s' if len(dups) > 1 else ''} {', '.join(dups)}")
    if problems:
        raise PlanInputError(problems)
    col = {h: names.index(h) for h in (*REQUIRED, *OPTIONAL) if h in names}
    width = len(names)

    claims: list[ClaimInput] = []
    first_line: dict[str, int] = {}
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {line + 1}: malformed CSV ({exc})")
            break
        line += 1
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != width:
            problems.append(f"line {line}: expected {width} fields, found {len(row)}")
            continue
        reasons: list[str] = []
        cid = row[col["claim_id"]]
        if not cid.strip():
            reasons.append("claim_id is empty")
        elif cid != cid.strip():
            reasons.append("claim_id must not have leading or trailing spaces")
        elif cid in first_line:
            reasons.append(f"duplicate claim_id {cid} (first on line {first_line[cid]})")
        else:
            first_line[cid] = line
        amounts: dict[str, int] = {}
        for name in ("invested", "withdrawn", "paid_before"):
            if name not in col:
                amounts[name] = 0
                continue
            cell = row[col[name]]
            if name == "paid_before" and cell == "":
                amounts[name] = 0
                continue
            try:
                amounts[name] = parse_amount(cell)
            except AmountError as exc:
                reasons.append(f"{name} {exc}")
        status = row[col["status"]].strip() if "status" in col else ""
        status = status or "approved"
        if status not in STATUSES:
            reasons.append(f"status must be approved or disputed, not {row[col['status']]!r}")
        if reasons:
            problems.append(f"line {line}: " + "; ".join(reasons))
            continue
        claims.append(
            ClaimInput(cid, amounts["invested"], amounts["withdrawn"], amounts["paid_before"], status == "disputed")
        )
    if problems:
        raise PlanInputError(problems)
    return claims


def write_plan_csv(result, stream) -> None:
    from claims.allocation import PLAN_COLUMNS, plan_rows

    w = csv.DictWriter(stream, fieldnames=PLAN_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(plan_rows(result))


def _amount_option(value: Optional[str], option: str, default: int | None = None) -> int:
    from claims.money import AmountError, parse_amount

    if value is None:
        if default is None:
            raise typer.BadParameter("is required", param_hint=option)
        return default
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def plan(
    file: Path = typer.Argument(..., metavar="FILE.csv", help="claim_id,invested,withdrawn[,paid_before][,status]; - for stdin"),
    pool: str = typer.Option(..., "--pool", metavar="AMOUNT", help="USDT to distribute, e.g. 545000"),
    method: str = typer.Option(..., "--method", metavar="pro-rata|rising-tide", help="allocation method (DESIGN.md)"),
    min_payout: Optional[str] = typer.Option(None, "--min-payout", metavar="AMOUNT", help="de minimis: no payout below this"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="PLAN.csv", help="write the plan here; the summary goes to stdout"),
) -> None:
    """What-if distribution plan from a spreadsheet; touches no database."""
    from claims.allocation import METHODS, allocate, plan_summary

    pool_micro = _amount_option(pool, "--pool")
    min_micro = _amount_option(min_payout, "--min-payout", default=0)
    if method not in METHODS:
        raise typer.BadParameter(
            f"unknown method {method!r} (expected {' or '.join(METHODS)})", param_hint="--method"
        )
    try:
        if str(file) == "-":
            text = sys.stdin.read()
        else:
            text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise typer.BadParameter(f"no such file: {file}", param_hint="FILE.csv") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}", param_hint="FILE.csv") from None

    try:
        claims = read_plan_csv(text)
    except PlanInputError as exc:
        for line in exc.lines:
            err(line)
        raise typer.Exit(EXIT_USAGE)

    # read_plan_csv refused every duplicate claim_id already (naming its lines).
    result = allocate(claims, pool_micro, method, min_micro, unique_ids=True)
    summary = plan_summary(result)
    if out is not None:
        try:
            with open(out, "w", encoding="utf-8", newline="") as fh:
                write_plan_csv(result, fh)
        except OSError as exc:
            raise typer.BadParameter(f"cannot write {out}: {exc}", param_hint="--out") from None
        print_json(summary)
    else:
        write_plan_csv(result, sys.stdout)
        sys.stdout.flush()
        err(json.dumps(summary, separators=(",", ":")))


def register(app: typer.Typer) -> None:
    app.command("plan", help="What-if distribution plan from a spreadsheet (no database).")(plan)
