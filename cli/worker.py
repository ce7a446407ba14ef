"""``restitution worker`` — serve the flows as deployments (scale-out on a Prefect server).

With ``PREFECT_API_URL`` pointing at a Prefect server (``prefect server start``), each worker
process registers the deployments ``verify-claims/restitution``, ``execute-payouts/restitution``,
``prepare-round/restitution`` and ``deliver-notifications/restitution`` and executes their
runs; start as many workers on as many hosts as you like (same RESTITUTION_DATABASE_URL,
RESTITUTION_SECRET_KEY and RESTITUTION_PII_KEY everywhere). Work is divided through our
database (batches are claimed atomically), so two workers never process one claim or payout
twice. ``--background`` also runs the periodic pass of ``serve`` (verify new claims, execute
released payouts, deliver notifications) in this process.
"""

from __future__ import annotations

import threading

import typer


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        background: bool = typer.Option(False, "--background/--no-background",
                                        help="Also run serve's periodic background pass here."),
        limit: int = typer.Option(4, "--limit", min=1, help="Flow runs this worker executes at once."),
    ) -> None:
        """Serve the flows as deployments to a Prefect server (scale-out)."""
        import os

        from claims.db import get_engine
        from flows import configure_prefect

        configure_prefect()
        if not os.environ.get("PREFECT_API_URL"):
            typer.echo("note: PREFECT_API_URL is not set; serving against Prefect's ephemeral "
                       "server of this process (set it to scale out across hosts)", err=True)
        get_engine()  # schema current before any run
        from flows.deployments import serve_deployments

        stop = threading.Event()
        thread = None
        if background:
            from flows.background import run

            thread = threading.Thread(target=run, args=(stop,), daemon=True, name="background")
            thread.start()
        try:
            serve_deployments(limit=limit)
        finally:
            stop.set()
            if thread:
                thread.join(30)
