"""The flows as deployments of one process (``restitution worker``) and how the API starts
them when ``PREFECT_API_URL`` points at a Prefect server.

Deployment names are ``<flow name>/restitution``: ``verify-claims/restitution``,
``prepare-round/restitution``, ``execute-payouts/restitution``,
``deliver-notifications/restitution``.
"""

from __future__ import annotations

import os

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


def use_deployments() -> bool:
    """Start flows through deployments (scale-out) rather than in this process?"""
    return bool(os.environ.get("PREFECT_API_URL")) and os.environ.get(
        "RESTITUTION_RUN_FLOWS_IN_PROCESS", "").lower() not in ("1", "true", "yes")


def start(flow_name: str, parameters: dict, idempotency_key: str | None = None, timeout: float = 0):
    """Start a deployment run without waiting (``timeout=0``); returns the flow run."""
    from prefect.deployments import run_deployment

    return run_deployment(
        f"{flow_name}/{DEPLOYMENT}", parameters=parameters, timeout=timeout,
        idempotency_key=idempotency_key,
    )
