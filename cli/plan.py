"""`restitution plan`: a what-if distribution plan from a spreadsheet. Touches no database.

The file is a Plan CSV (docs/formats.md, "Plan CSV"; read and written by
:mod:`claims.allocation.plan_csv`). With ``--out`` the summary JSON goes to stdout; without it
the CSV goes to stdout and the summary to stderr. Bad input exits 2 naming every bad line
(``line N: reason``, the header is line 1) or the bad option.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.common import EXIT_USAGE, err, print_json


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
    method: str = typer.Option(..., "--method", metavar="pro-rata|rising-tide", help="allocation method (docs/allocation.md)"),
    min_payout: Optional[str] = typer.Option(None, "--min-payout", metavar="AMOUNT", help="de minimis: no payout below this"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="PLAN.csv", help="write the plan here; the summary goes to stdout"),
) -> None:
    """What-if distribution plan from a spreadsheet; touches no database."""
    from claims.allocation import (
        METHODS,
        PlanInputError,
        allocate,
        plan_summary,
        read_plan_csv,
        write_plan_csv,
    )

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
