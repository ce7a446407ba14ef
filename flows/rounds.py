"""Prefect flow ``prepare-round``: a distribution round prepared, stored and summarized.

The rules are :func:`claims.rounds.prepare_round`'s; this module only orchestrates them:

1. task ``prepare-round-solve`` — one transaction: the case's payable claims loaded in one
   query, solved exactly, the round and its allocation rows written in bulk batches (a round
   is all or nothing, so it is one task, not one per batch: a task run per claim batch would
   only split a transaction that must stay whole);
2. task ``prepare-round-report`` — the round report (:func:`claims.reports.round_report`:
   totals, counts, recovery histogram, the largest allocations);
3. two artifacts for whoever watches the Prefect UI: a table (``round-CODE-N``: the largest
   allocations by claim reference, with net loss, paid before, reserve and recovery) and a
   markdown summary (``round-CODE-N-summary``: rate, totals, counts, the recovery histogram
   in 10 % buckets). Artifacts are a convenience: if Prefect refuses one, the round stays.

Amounts travel as decimal strings (``"545000"``) or ints of micro-USDT; the acting staff
member as name, role and id (the audit trail's actor). Domain refusals (role, input, case)
propagate unchanged to the caller. :func:`prepare_round_waited` runs the flow for a caller
in this process that waits for it (the API, the CLI); :func:`prepare_round_direct` is the same
work without Prefect (tests, ``restitution rounds prepare --direct``).
"""

from __future__ import annotations

from flows import configure_prefect

configure_prefect()

import logging  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from claims import reports, rounds  # noqa: E402
from claims.allocation import PRO_RATA  # noqa: E402
from claims.db import get_engine, session_scope  # noqa: E402
from claims.errors import InvalidInput  # noqa: E402
from claims.money import AmountError, parse_amount  # noqa: E402

__all__ = ["prepare_round_direct", "prepare_round_flow", "prepare_round_waited",
           "publish_round_artifacts"]

log = logging.getLogger("restitution.flows.rounds")

TOP = 20


def _micro(value: int | str, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise InvalidInput([{"field": field, "message": str(exc)}]) from None


def prepare_round_direct(
    case_code: str,
    pool: int | str,
    method: str = PRO_RATA,
    min_payout: int | str = 0,
    *,
    actor_name: str,
    actor_role: str,
    actor_staff_id: int | None,
) -> int:
    """Prepare the round in one transaction, without Prefect; returns its id."""
    return rounds.prepare_round_committed(
        case_code, _micro(pool, "pool"), method, _micro(min_payout, "min_payout"),
        actor_name=actor_name, actor_role=actor_role, actor_staff_id=actor_staff_id)


@task(name="prepare-round-solve", cache_policy=NO_CACHE, retries=0)
def prepare_round_task(case_code: str, pool: int, method: str, min_payout: int,
                       actor_name: str, actor_role: str, actor_staff_id: int | None) -> int:
    return prepare_round_direct(case_code, pool, method, min_payout, actor_name=actor_name,
                                actor_role=actor_role, actor_staff_id=actor_staff_id)


@task(name="prepare-round-report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def round_report_task(round_id: int) -> dict:
    with session_scope(get_engine(), write=False) as session:
        return reports.round_report(session, round_id, limit=0, top=TOP)


def publish_round_artifacts(report: dict) -> None:
    """The table and markdown artifacts of a round report (inside a flow run)."""
    v = report["round"]
    key = f"round-{v['case_id']}-{v['number']}"
    try:
        create_table_artifact(
            table=[
                {k: line[k] for k in ("claim_id", "net_loss", "paid_before", "allocation",
                                      "reserved", "recovery_percent")}
                for line in report["top"]
            ],
            key=key,
            description=(
                f"Round {v['number']} of {v['case_id']} (id {v['id']}, {v['status']}): the "
                f"{len(report['top'])} largest of {report['counts']['claims']} claims' shares; "
                f"{report['counts']['paid']} paid, {report['counts']['reserved']} reserved, "
                f"{report['counts']['net_winner']} net winners, "
                f"{report['counts']['de_minimis']} below the minimum"
            ),
        )
        create_markdown_artifact(markdown=reports.summary_markdown(report), key=f"{key}-summary",
                                 description=f"Round {v['number']} of {v['case_id']}: summary")
    except Exception:  # pragma: no cover - a UI nicety must not undo a stored round
        log.warning("could not publish the artifacts of round %s", v["id"], exc_info=True)


@flow(name="prepare-round", log_prints=False)
def prepare_round_flow(
    case_code: str,
    pool: int | str,
    method: str = PRO_RATA,
    min_payout: int | str = 0,
    actor_name: str = "",
    actor_role: str = "",
    actor_staff_id: int | None = None,
) -> int:
    """Prepare a round of ``case_code`` (see the module docstring); returns the round id."""
    round_id = prepare_round_task(case_code, _micro(pool, "pool"), method,
                                  _micro(min_payout, "min_payout"), actor_name, actor_role,
                                  actor_staff_id)
    publish_round_artifacts(round_report_task(round_id))
    return round_id


def prepare_round_waited(*args, **kwargs) -> int:
    """:func:`prepare_round_flow` run in this process for a caller that waits for it (an API
    request, a CLI command): without heartbeats (:func:`flows.common.no_heartbeat`). Returns
    the round id."""
    from flows.common import no_heartbeat

    with no_heartbeat():
        return prepare_round_flow(*args, **kwargs)
