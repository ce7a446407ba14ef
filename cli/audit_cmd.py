"""`restitution audit verify [--json]`: walk the audit chain.

Exit 0 when intact; 1 naming the first broken event (edited, deleted, inserted or reordered
rows) and why. ``--json``: ``{"ok", "checked", "broken_event", "reason"}``.
"""

from __future__ import annotations

import typer

from cli.common import EXIT_FAILED, JSON_OPTION, err, print_json

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


@audit_app.command("verify")
def verify(as_json: bool = JSON_OPTION) -> None:
    """Check every event's chained HMAC; name the first broken event."""
    from claims.audit import verify_chain
    from claims.db import session_scope

    with session_scope(write=False) as s:
        res = verify_chain(s)
    if as_json:
        broken = str(res.broken_id) if res.broken_id is not None else None
        print_json({"ok": res.ok, "checked": res.checked, "broken_event": broken,
                    "reason": res.reason})
    if res.ok:
        if not as_json:
            typer.echo(f"audit chain intact: {res.checked} events")
        return
    err(f"audit chain broken at event {res.broken_id}: {res.reason} "
        f"({res.checked} events before it are intact)")
    raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
