"""``restitution notify`` — deliver pending notifications once."""

from __future__ import annotations

import typer

from cli.common import print_json


def register(app: typer.Typer) -> None:
    @app.command("notify")
    def notify(
        batch_size: int = typer.Option(2000, "--batch-size", min=1, max=10000),
        use_flow: bool = typer.Option(False, "--flow", help="Run as the Prefect flow deliver-notifications."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Deliver pending notifications once (SMTP from RESTITUTION_SMTP_URL, else the Maildir)."""
        if use_flow:
            from flows.common import no_heartbeat
            from flows.notify import deliver_notifications

            with no_heartbeat():
                counts = deliver_notifications(batch_size=batch_size)
        else:
            from notifications.delivery import deliver_pending

            counts = deliver_pending(batch_size=batch_size).as_dict()
        if json_out:
            print_json(counts)
        else:
            typer.echo(
                f"sent {counts['sent']}, to retry {counts['retry']}, failed {counts['failed']}"
            )
