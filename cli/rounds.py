"""``restitution rounds …`` — distribution rounds (rules: :mod:`claims.rounds`).

    rounds prepare CODE --pool AMOUNT [--method pro-rata|rising-tide] [--min-payout AMOUNT]
                   --as NAME [--json] [--direct]
    rounds approve ROUND --as NAME [--json]
    rounds show ROUND [--json]
    rounds list CODE [--json]
    rounds csv ROUND [--out FILE]

``prepare`` runs the Prefect flow ``prepare-round`` (flows/rounds.py: bulk writes, a table and
a markdown artifact); without ``PREFECT_API_URL`` Prefect starts a temporary local server for
the run (once per command); ``--direct`` does the same work without Prefect.
``prepare`` and ``approve`` act ``--as`` a caseworker (password from ``RESTITUTION_PASSWORD``
or standard input); ``approve`` needs another caseworker than the preparer. Reading commands
(``show``, ``list``, ``csv``) run with the operator's database access.

Exit codes: 0 done; 1 the round is stale or not in a state to approve, the case has nothing to
distribute; 2 bad input (amount, method, unknown case or round); 3 sign-in refused, not a
caseworker, or the four-eyes rule.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from cli.common import EXIT_USAGE, JSON_OPTION, domain_errors, fail, in_session, print_json

rounds_app = typer.Typer(help="Distribution rounds: prepare, approve, read.", no_args_is_help=True)


def _amount(value: str, option: str) -> int:
    from claims.money import AmountError, parse_amount

    try:
        return parse_amount(value)
    except AmountError as exc:
        fail(f"{option} {exc}", EXIT_USAGE)


def _print_round(v: dict, as_json: bool) -> None:
    if as_json:
        print_json(v)
        return
    typer.echo(f"round {v['id']} (case {v['case_id']}, number {v['number']}): {v['status']}")
    typer.echo(f"  method {v['method']}, rate {v['rate']} ({v['rate_percent']} %), "
               f"{v['claims']} claims")
    typer.echo(f"  pool {v['pool']} = allocated {v['allocated']} + reserved {v['reserved']} "
               f"+ released {v['released']} + undistributed {v['undistributed']} USDT")
    who = f"  prepared by {v['prepared_by'] or '—'}"
    if v["approved_by"]:
        who += f", approved by {v['approved_by']}"
    typer.echo(who)


@rounds_app.command("prepare")
def prepare(
    code: str = typer.Argument(..., help="the case CODE"),
    pool: str = typer.Option(..., "--pool", metavar="AMOUNT", help="USDT to distribute"),
    method: str = typer.Option("pro-rata", "--method", metavar="pro-rata|rising-tide",
                               help="allocation method (docs/allocation.md)"),
    min_payout: str = typer.Option("0", "--min-payout", metavar="AMOUNT",
                                   help="de minimis: no payout below this"),
    as_name: str = typer.Option(..., "--as", metavar="NAME", help="the caseworker preparing it"),
    as_json: bool = typer.Option(False, "--json", help="print the round as one JSON object"),
    direct: bool = typer.Option(False, "--direct", help="run without Prefect"),
) -> None:
    """Prepare a round over the case's approved claims (disputed ones reserved)."""
    from claims.allocation import METHODS

    pool_micro = _amount(pool, "--pool")
    min_micro = _amount(min_payout, "--min-payout")
    if pool_micro == 0:
        fail("--pool must be greater than 0", EXIT_USAGE)
    if method not in METHODS:
        fail(f"--method must be {' or '.join(METHODS)}, not {method!r}", EXIT_USAGE)
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "caseworker")
    from claims import rounds
    from claims.cases import get_case_by_code
    from claims.db import session_scope

    with domain_errors():
        with session_scope(write=False) as s:
            get_case_by_code(s, code)
        if direct:
            run = rounds.prepare_round_committed
        else:
            from flows.rounds import prepare_round_waited as run
        round_id = run(code, pool_micro, method, min_micro, actor_name=actor.name,
                       actor_role=actor.role, actor_staff_id=actor.staff_id)
        with session_scope(write=False) as s:
            v = rounds.get_round_view(s, round_id)
    _print_round(v, as_json)


@rounds_app.command("approve")
def approve(
    round_id: str = typer.Argument(..., metavar="ROUND", help="the round id"),
    as_name: str = typer.Option(..., "--as", metavar="NAME",
                                help="a caseworker other than the preparer"),
    as_json: bool = typer.Option(False, "--json", help="print the round as one JSON object"),
) -> None:
    """Approve a prepared round (four eyes: not its preparer)."""
    from cli.common import sign_in_as

    actor = sign_in_as(as_name, "caseworker")
    from claims import rounds
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            rnd = rounds.approve_round(s, round_id, actor=actor, persist_stale=True)
            v = rounds.view(s, rnd)
    _print_round(v, as_json)


@rounds_app.command("show")
def show(
    round_id: str = typer.Argument(..., metavar="ROUND", help="the round id"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one round."""
    from claims import rounds

    v = in_session(lambda s: rounds.get_round_view(s, round_id), write=False)
    _print_round(v, as_json)


@rounds_app.command("list")
def list_(
    code: str = typer.Argument(..., help="the case CODE"),
    as_json: bool = JSON_OPTION,
) -> None:
    """The case's rounds (stale attempts included)."""
    from claims import rounds

    items = in_session(lambda s: rounds.list_rounds(s, code), write=False)
    if as_json:
        print_json({"case": code, "items": items, "total": len(items)})
        return
    if not items:
        typer.echo(f"case {code} has no rounds")
    for v in items:
        typer.echo(f"{v['id']:>6}  #{v['number']:<3} {v['status']:<9} {v['method']:<11} "
                   f"rate {v['rate']:<11} pool {v['pool']:>14}  allocated {v['allocated']:>14}"
                   f"  reserved {v['reserved']}  released {v['released']}"
                   f"  undistributed {v['undistributed']}  claims {v['claims']}")


@rounds_app.command("csv")
def csv_(
    round_id: str = typer.Argument(..., metavar="ROUND", help="the round id"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="write here instead of standard output"),
) -> None:
    """The round's plan CSV (as GET /api/v1/rounds/{id}/plan.csv)."""
    from claims import rounds

    text = in_session(lambda s: rounds.plan_csv_text(s, round_id), write=False)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc}", EXIT_USAGE)


def register(app: typer.Typer) -> None:
    app.add_typer(rounds_app, name="rounds")
