"""The flows as deployments of one process (``restitution worker``), for a Prefect server.

Deployment names are ``<flow name>/restitution``: ``verify-claims/restitution``,
``prepare-round/restitution``, ``execute-payouts/restitution``,
``deliver-notifications/restitution``; a run is started with Prefect's own
``run_deployment`` (docs/operations.md).
"""

from __future__ import annotations

from flows import configure_prefect

DEPLOYMENT = "restitution"


def deployments():
    configure_prefect()
    from flows.notify import deliver_notifications
    from flows.payouts import execute_payouts
    from flows.rounds import prepare_round_flow
    from flows.verify import verify_claims

    return [
        f.to_deployment(name=DEPLOYMENT, tags=["restitution"])
        for f in (verify_claims, prepare_round_flow, execute_payouts, deliver_notifications)
    ]


def serve_deployments(limit: int = 4) -> None:
    """Register the deployments and execute their runs until interrupted."""
    from prefect import serve

    serve(*deployments(), limit=limit)
