"""`restitution ledger …`: the seized ledger (operator commands, audited as the operator).

    ledger import CODE FILE.csv [--json]
    ledger summary CODE [--json]
    ledger mark-insider CODE ACCOUNT [--reason R] [--json]

``import`` streams the file (format: docs/formats.md "Ledger CSV"; rules: claims/ledger/) and
stores it in one transaction: any bad row rejects the whole file, every bad line is printed on
stderr as ``line N: reason`` and the exit code is 2; the same rows again change nothing. Big
files show a progress bar on stderr. Exit codes: 0 done; 2 bad file, unknown case or account.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cli.common import JSON_OPTION, domain_errors, fail, in_session, print_json

ledger = typer.Typer(help="The seized ledger: import, summary, insiders.", no_args_is_help=True)

PROGRESS_MIN_BYTES = 4 * 2**20  # a bar for big files (the default of --progress)


class _Bar:
    """A rich progress bar on stderr, imported only for big files."""

    def __init__(self, total_bytes: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[rows]:>12,} rows"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task("reading", total=total_bytes, rows=0)
        self.progress.start()

    def __call__(self, phase: str, rows: int, bytes_read: int) -> None:
        if phase == "storing":
            self.progress.update(self.task, description="storing", completed=bytes_read, rows=rows)
        else:
            self.progress.update(self.task, completed=bytes_read, rows=rows)

    def stop(self) -> None:
        self.progress.stop()


@ledger.command("import")
def import_(
    code: str = typer.Argument(..., help="the case CODE"),
    file: Path = typer.Argument(..., help="the ledger CSV", exists=False),
    as_json: bool = JSON_OPTION,
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="progress bar on stderr (default: files ≥ 4 MiB)"
    ),
) -> None:
    """Import the seized ledger of a case (all or nothing; re-imports add only new rows)."""
    from claims.audit import Actor
    from claims.ledger import import_ledger

    try:
        size = os.stat(file).st_size
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}")
    if file.is_dir():
        fail(f"{file}: is a directory")
    bar = None
    if progress or (progress is None and size >= PROGRESS_MIN_BYTES):
        bar = _Bar(size)
    try:
        with domain_errors():
            result = import_ledger(None, code, file, Actor.operator(), progress=bar)
    finally:
        if bar is not None:
            bar.stop()
    out = result.as_dict()
    if as_json:
        print_json(out)
        return
    typer.echo(
        f"case {result.case}: {result.rows_read:,} rows read, {result.rows_added:,} added, "
        f"{result.rows_existing:,} already present; {result.accounts_added:,} new accounts"
        + (f", {result.insiders_marked:,} marked insider" if result.insiders_marked else "")
    )


@ledger.command("summary")
def summary(
    code: str = typer.Argument(..., help="the case CODE"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Totals of the case's ledger (net winners, total net loss)."""
    from claims.ledger import ledger_summary

    out = in_session(lambda s: ledger_summary(s, code), write=False)
    if as_json:
        print_json(out)
        return
    typer.echo(f"accounts        {out['accounts']:,}")
    typer.echo(f"deposits        {out['deposits']} USDT")
    typer.echo(f"withdrawals     {out['withdrawals']} USDT (bonuses included)")
    typer.echo(f"net winners     {out['net_winners']:,}")
    typer.echo(f"total net loss  {out['total_net_loss']} USDT")


@ledger.command("mark-insider")
def mark_insider(
    code: str = typer.Argument(..., help="the case CODE"),
    account: str = typer.Argument(..., help="the ledger's account_id"),
    reason: str = typer.Option(None, "--reason", help="why (kept on the account and audited)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Mark a promoter/insider account (its claims are flagged `insider`)."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.ledger import mark_insider as _mark

    with domain_errors():
        with session_scope() as s:
            acct = _mark(s, code, account, reason, Actor.operator())
            out = {"case": code, "account_id": acct.account_id, "insider": True,
                   "reason": acct.insider_reason}
    if as_json:
        print_json(out)
    else:
        typer.echo(f"account {out['account_id']} of case {code} marked insider: {out['reason']}")


def register(app: typer.Typer) -> None:
    app.add_typer(ledger, name="ledger")
