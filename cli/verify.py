"""``restitution verify CODE`` — verify a case's pending claims against its ledger.

Runs the Prefect flow ``verify-claims`` (flows/verify.py) and returns when none of the case's
claims is ``submitted`` or ``verifying`` (docs/operations.md). Without ``PREFECT_API_URL``
Prefect starts a temporary local server for the run (once per command); ``--direct`` runs the
same batches without Prefect. When nothing is pending, no flow is started. The run sends no
heartbeats (:func:`flows.common.no_heartbeat`: this command is watching it).
"""

from __future__ import annotations

import typer

from cli.common import domain_errors, print_json

_LABELS = {
    "verified": "verified",
    "approved": "approved by rule",
    "flagged": "flagged for review",
    "reflagged": "earlier approved claims back in review (new duplicate)",
    "flags_added": "flags added to claims already in review",
}


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        code: str = typer.Argument(..., help="The case CODE."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", min=1, max=50_000, show_default=False,
            help="Claims per batch (one Prefect task run each); default 10,000.",
        ),
        direct: bool = typer.Option(False, "--direct", help="Run the batches without Prefect."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Verify the case's pending claims (flow verify-claims); wait until none is pending."""
        from claims.cases import get_case_by_code
        from claims.db import session_scope
        from claims.verification import BATCH_SIZE, empty_run_counts, pending_claim_ids

        batch_size = batch_size or BATCH_SIZE
        with domain_errors():
            with session_scope(write=False) as s:
                case_id = get_case_by_code(s, code).id
                pending = bool(pending_claim_ids(s, case_id))
            if not pending:
                counts = empty_run_counts()
            elif direct:
                from claims.verification import run_verification

                counts = run_verification(code, batch_size=batch_size)
            else:
                from flows import configure_prefect

                configure_prefect()
                from flows.common import no_heartbeat
                from flows.verify import verify_claims

                with no_heartbeat():
                    counts = verify_claims(code, batch_size=batch_size)
        with session_scope(write=False) as s:
            left = len(pending_claim_ids(s, case_id))
        out = {"case": code, **counts, "pending": left}
        if json_out:
            print_json(out)
            return
        typer.echo(f"case {code}: " + ", ".join(
            f"{counts[k]} {label}" for k, label in _LABELS.items() if k == "verified" or counts[k]
        ))
        for title, key in (("match rules", "match_rules"), ("flags", "flags")):
            if counts[key]:
                typer.echo(f"{title}: " + ", ".join(
                    f"{name} {n}" for name, n in sorted(counts[key].items())))
        if left:
            typer.echo(f"{left} claims still pending (filed during the run?)")
