"""``restitution payouts …`` — finance's payouts (rules: :mod:`claims.payouts`).

    payouts release ROUND --as NAME [--json] [--batch-size N]
    payouts execute ROUND --as NAME [--json]           (resume a run: after a crash, a restart)
    payouts status ROUND [--json]
    payouts list ROUND [--state S] [--json]
    payouts instructions ROUND --out FILE --as NAME [--json]
    payouts confirm ROUND FILE.csv --as NAME [--json]
    payouts hold|resume|retry PAYOUT --as NAME [--json]
    payouts reconcile ROUND --as NAME [--json]
    payouts mismatches ROUND [--json]
    payouts resolve ROUND MISMATCH --reason R --as NAME
    payouts restart ROUND --as NAME                      (a stopped round, e.g. after a top-up)

``release`` releases the round and runs its payouts to the end in this process with a
progress bar on standard error, then prints the summary: EVM payouts are paid from the
payout wallet (on the embedded default, the in-process chain, funded with the round's pool),
custodian payouts are exported for ``payouts instructions``. Commands that act run ``--as`` a
finance officer (password from ``RESTITUTION_PASSWORD`` or standard input); reading commands
run with the operator's database access.

Exit codes: 0 done; 1 refused by a rule (nothing left to pay, a release running, a stopped
round, an illegal move) or, for ``release``/``execute``, the round stopped, and for
``confirm``/``reconcile``, mismatches found; 2 bad input (unknown round, malformed file);
3 sign-in refused or not finance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.common import EXIT_FAILED, EXIT_USAGE, domain_errors, err, fail, print_json

payouts_app = typer.Typer(help="Payouts: release, watch, hold/retry, custodian files, "
                               "reconciliation.", no_args_is_help=True)


def _summary(round_id: str) -> dict[str, Any]:
    from claims import payouts
    from claims.db import session_scope

    with session_scope(write=False) as s:
        return payouts.summary(s, round_id)


def _print_summary(v: dict[str, Any], run: dict | None = None) -> None:
    typer.echo(f"round {v['round_id']}: {v['round_status']}"
               + (f" — stopped: {v['stopped_reason']}" if v["stopped_reason"] else ""))
    typer.echo(f"  payouts {v['total']['count']} = {v['total']['amount']} USDT; "
               f"confirmed {v['confirmed']} of allocated {v['allocated']} USDT")
    for state, m in v["by_state"].items():
        if m["count"]:
            typer.echo(f"  {state:<10} {m['count']:>8}  {m['amount']:>18} USDT")
    if v["open_mismatches"]:
        typer.echo(f"  open mismatches: {v['open_mismatches']} (payouts mismatches "
                   f"{v['round_id']})")
    if run and run.get("transactions"):
        typer.echo(f"  this run: {run['transactions']} transaction(s), {run['confirmed']} "
                   f"confirmed, {run['failed']} failed, {run['held']} held, "
                   f"{run['exported']} exported")


def _run_with_progress(round_id: int, batch_size: int, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn
    from rich.console import Console

    from claims import payouts
    from claims.db import get_engine

    console = Console(stderr=True)
    with Progress(TextColumn(f"round {round_id} payouts"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet,
                  transient=False) as bar:
        task = bar.add_task("payouts", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1))

        return payouts.execute_round(get_engine(), round_id, progress, batch_size=batch_size)


@payouts_app.command("release")
def release(
    round_id: str = typer.Argument(..., metavar="ROUND", help="the round id"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    batch_size: int = typer.Option(200, "--batch-size", min=1, max=1000,
                                   help="payouts per EVM transaction"),
) -> None:
    """Release the round's payouts and run them to the end (progress on stderr)."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    import uuid

    from claims import payouts
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            rel = payouts.release_round(s, round_id, actor=actor,
                                        idempotency_key=f"cli:{uuid.uuid4().hex}")
        run = _run_with_progress(int(rel["round_id"]), batch_size, as_json)
        v = _summary(round_id)
    if as_json:
        print_json({**v, "release": rel, "run": run})
    else:
        typer.echo(f"released {rel['payouts']} payouts ({rel['amount']} USDT)")
        _print_summary(v, run)
    if run.get("stopped"):
        err(f"round stopped: {run['stopped']}")
        raise typer.Exit(EXIT_FAILED)


@payouts_app.command("execute")
def execute(
    round_id: str = typer.Argument(..., metavar="ROUND", help="the round id"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    batch_size: int = typer.Option(200, "--batch-size", min=1, max=1000),
) -> None:
    """Run a released round's payouts to the end again (resumes an interrupted run)."""
    from cli.common import sign_in_as

    sign_in_as(as_name, "finance")
    from claims import payouts
    from claims.db import get_engine

    with domain_errors():
        rid = payouts.round_pk(get_engine(), round_id)
        run = _run_with_progress(rid, batch_size, as_json)
        v = _summary(round_id)
    if as_json:
        print_json({**v, "run": run})
    else:
        _print_summary(v, run)
    if run.get("stopped"):
        err(f"round stopped: {run['stopped']}")
        raise typer.Exit(EXIT_FAILED)


@payouts_app.command("status")
def status(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    as_json: bool = typer.Option(False, "--json"),
    wallet: bool = typer.Option(False, "--wallet", help="also read the payout wallet"),
) -> None:
    """Payouts of the round by state (and the wallet with --wallet)."""
    from claims import payouts
    from claims.db import session_scope

    with domain_errors():
        if wallet:
            v = payouts.summary_with_wallet(round_id)
        else:
            with session_scope(write=False) as s:
                v = payouts.summary(s, round_id)
    if as_json:
        print_json(v)
    else:
        _print_summary(v)
        if wallet:
            w = v["wallet"]
            typer.echo(f"  wallet {w.get('address')}: {w.get('token_balance')} USDT, "
                       f"{w.get('gas_balance_wei')} wei")


@payouts_app.command("list")
def list_(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    state: str | None = typer.Option(None, "--state"),
    limit: int = typer.Option(100, "--limit", min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The round's payouts (id, claim, state, amount, reason)."""
    from claims import payouts
    from claims.db import session_scope

    with domain_errors():
        with session_scope(write=False) as s:
            out = payouts.list_payouts(s, round_id, state=state, limit=limit)
    if as_json:
        print_json(out)
        return
    for p in out["items"]:
        typer.echo(f"{p['id']:>8}  {p['claim']}  {p['state']:<9} {p['rail']:<9} "
                   f"{p['amount']:>14}  {p['tx_id'] or ''}  {p['reason'] or ''}")
    typer.echo(f"{len(out['items'])} of {out['total']}")


@payouts_app.command("instructions")
def instructions(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="where to write the CSV"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the custodian rail's instructions (exports pending custodian payouts first)."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    from claims.db import session_scope
    from claims.payouts.rails import custodian

    with domain_errors():
        with session_scope() as s:  # the export, committed before the file is handed over
            rid = custodian.prepare_instructions(s, round_id, actor=actor, export=True)
    # Streamed into a temporary file beside FILE (a round's lines are never all in memory),
    # which then takes FILE's name: FILE is whole or untouched.
    part = out.with_name(out.name + ".part")
    try:
        with session_scope(write=False) as s, part.open("w", encoding="utf-8", newline="") as f:
            lines = custodian.write_instructions(s, rid, f)
        part.replace(out)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}", EXIT_USAGE)
    finally:
        part.unlink(missing_ok=True)  # any failure: no partial file left (gone once renamed)
    if as_json:
        print_json({"round_id": str(round_id), "lines": lines, "out": str(out)})
    else:
        typer.echo(f"{lines} instruction line(s) written to {out}")


@payouts_app.command("confirm")
def confirm(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    file: Path = typer.Argument(..., metavar="FILE.csv", help="payout_id,tx_id,amount[,status]"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import a custodian's confirmations; exit 1 when rows mismatch."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc}", EXIT_USAGE)
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    from claims.payouts.rails import custodian

    with domain_errors():
        res = custodian.import_confirmations_file(round_id, data, actor=actor)
    if as_json:
        print_json(res)
    else:
        typer.echo(f"confirmed {res['confirmed']}, failed {res['failed']}, already "
                   f"{res['already']}, mismatches {len(res['mismatches'])}")
        for m in res["mismatches"]:
            typer.echo(f"line {m['line']}: payout {m['payout_id']}: {m['reason']}")
    if res["mismatches"]:
        raise typer.Exit(EXIT_FAILED)


def _payout_command(name: str, fn_name: str, doc: str) -> None:
    @payouts_app.command(name, help=doc)
    def _cmd(
        payout_id: str = typer.Argument(..., metavar="PAYOUT", help="the payout id"),
        as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
        reason: str | None = typer.Option(None, "--reason", help="(hold) why"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        from cli.common import sign_in_as

        actor = sign_in_as(as_name, "finance")
        from claims import payouts
        from claims.db import session_scope

        fn = getattr(payouts, fn_name)
        kw = {"reason": reason} if fn_name == "hold_payout" else {}
        with domain_errors():
            with session_scope() as s:
                p = fn(s, payout_id, actor=actor, **kw)
                v = payouts.get_payout_view(s, p.id)
            if fn_name != "hold_payout":
                from claims.db import get_engine

                payouts.execute_round(get_engine(), int(v["round_id"]))
                with session_scope(write=False) as s:
                    v = payouts.get_payout_view(s, p.id)
        if as_json:
            print_json(v)
        else:
            typer.echo(f"payout {v['id']}: {v['state']} (attempt {v['attempt']})"
                       + (f" — {v['reason']}" if v["reason"] else ""))


_payout_command("hold", "hold_payout", "Hold a pending payout.")
_payout_command("resume", "resume_payout", "Resume a held payout (and run the round).")
_payout_command("retry", "retry_payout",
                "Retry a failed payout as a new attempt (and run the round).")


@payouts_app.command("reconcile")
def reconcile(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check every confirmed payout against the chain or the custodian; exit 1 on mismatch."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    from claims import payouts
    from claims.db import get_engine

    with domain_errors():
        res = payouts.reconcile_round(get_engine(), round_id, actor=actor)
    if as_json:
        print_json(res)
    else:
        typer.echo(f"round {res['round_id']}: {res['checked']} checked, {res['ok']} ok, "
                   f"{len(res['mismatches'])} mismatch(es), {res['other_chain']} on another "
                   f"chain; round {res['status']}")
        for m in res["mismatches"]:
            typer.echo(f"  payout {m['payout_id']}: {m['reason']}")
    if res["mismatches"] or res["other_chain"]:
        raise typer.Exit(EXIT_FAILED)


@payouts_app.command("mismatches")
def mismatches(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The round's reconciliation mismatches."""
    from claims import payouts
    from claims.db import session_scope

    with domain_errors():
        with session_scope(write=False) as s:
            items = payouts.list_mismatches(s, round_id)
    if as_json:
        print_json({"items": items})
        return
    for m in items:
        typer.echo(f"{m['id']:>6}  {'resolved' if m['resolved_at'] else 'OPEN    '}  "
                   f"payout {m['payout_id'] or '-'}: {m['reason']}")
    if not items:
        typer.echo("no mismatches")


@payouts_app.command("resolve")
def resolve(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    mismatch_id: str = typer.Argument(..., metavar="MISMATCH"),
    reason: str = typer.Option(..., "--reason", help="how it was resolved"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
) -> None:
    """Resolve a mismatch; the round's last one resumes its transfers."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    from claims import payouts, rounds
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            payouts.resolve_mismatch(s, round_id, mismatch_id, actor=actor, reason=reason)
            st = rounds.get_round(s, round_id).status
    typer.echo(f"mismatch {mismatch_id} resolved; round {round_id} is {st}")


@payouts_app.command("restart")
def restart(
    round_id: str = typer.Argument(..., metavar="ROUND"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the finance officer"),
) -> None:
    """Restart a stopped round (no open mismatch), e.g. after topping the wallet up."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "finance")
    from claims import payouts
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            rnd = payouts.restart_round(s, round_id, actor=actor)
    typer.echo(f"round {rnd.id} is {rnd.status}; run `payouts execute {rnd.id}`")


def register(app: typer.Typer) -> None:
    app.add_typer(payouts_app, name="payouts")

