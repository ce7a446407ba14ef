"""`restitution blocked …`: the blocked payout-address list (audited as the operator).

    blocked add ADDRESS --reason R [--json]
    blocked remove ADDRESS [--json]
    blocked list [--json]

A TRON (T…) or Ethereum (0x…) address; Ethereum letter case does not matter for matching.
Exit codes: 0 done; 2 bad input (not an address, no reason, not on the list); 1 already listed.
"""

from __future__ import annotations

import typer

from cli.common import JSON_OPTION, domain_errors, err, in_session, print_json

blocked = typer.Typer(help="Frozen or sanctioned payout addresses.", no_args_is_help=True)


@blocked.command("add")
def add(
    address: str = typer.Argument(..., help="a TRON (T…) or Ethereum (0x…) address"),
    reason: str = typer.Option(..., "--reason", help="why it is blocked (kept in the audit trail)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Block a payout address."""
    from claims.audit import Actor
    from claims.blocked import add_blocked, blocked_view
    from claims.db import session_scope

    with domain_errors():
        with session_scope() as s:
            res = add_blocked(s, address, reason, Actor.operator())
            view = blocked_view(res.entry)
    for w in res.warnings:
        err(f"warning: address: {w}")
    if as_json:
        print_json({**view, "warnings": res.warnings})
    else:
        typer.echo(f"blocked {view['address']} ({view['network']})")


@blocked.command("remove")
def remove(
    address: str = typer.Argument(..., help="the blocked address"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Take an address off the list."""
    from claims.audit import Actor
    from claims.blocked import blocked_view, remove_blocked

    view = in_session(lambda s: blocked_view(remove_blocked(s, address, Actor.operator())))
    if as_json:
        print_json({**view, "removed": True})
    else:
        typer.echo(f"unblocked {view['address']}")


@blocked.command("list")
def list_(as_json: bool = JSON_OPTION) -> None:
    """Every blocked address, oldest first."""
    from claims.blocked import blocked_view, list_blocked
    from claims.db import session_scope

    with session_scope(write=False) as s:
        items = [blocked_view(b) for b in list_blocked(s)]
    if as_json:
        print_json({"items": items, "total": len(items)})
        return
    if not items:
        typer.echo("no blocked addresses")
        return
    for it in items:
        typer.echo(f"{it['address']}\t{it['network']}\t{it['created_at'][:10]}\t{it['reason']}")


def register(app: typer.Typer) -> None:
    app.add_typer(blocked, name="blocked")
