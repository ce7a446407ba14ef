"""Prefect flow ``execute-payouts``: a released round's payouts run to the end, in batches.

The work is :class:`claims.payouts.RoundRun`'s (the same steps :func:`claims.payouts.
execute_round` takes without Prefect); each step is a task run on a *batch* (never one task
per payout):

1. ``payouts-prepare`` — resume EVM transactions left in flight by an earlier run (same raw
   transaction, or proven expired), then check the wallet's token and gas against the pending
   EVM total (an underfunded wallet stops the round before any transfer);
2. ``payouts-evm-batch`` — one Disperse transaction of up to ``batch_size`` payouts (signed
   and committed before it is broadcast, receipt checked, a reverted batch bisected), again
   until none is pending;
3. ``payouts-custodian-batch`` — pending custodian (TRON) payouts exported, one export step
   a task;
4. ``payouts-finish`` — the release token given back when nothing is in flight; the round
   settles when every payout is confirmed and the total equals ``allocated``.

The flow may be rerun at any point (a crash, a retry of a task, a second worker): every step
re-reads the database, which is the source of truth. Tasks use ``NO_CACHE`` and no retries of
their own (a rerun of the flow resumes). While it runs, the progress artifact
``payouts-round-N`` shows the share of payouts done; at the end the table artifact
``payouts-round-N-states`` gives count and amount by state.
"""

from __future__ import annotations

from flows import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from claims import payouts  # noqa: E402
from claims.db import get_engine, session_scope  # noqa: E402
from claims.money import format_amount  # noqa: E402
from flows.common import Progress  # noqa: E402

__all__ = ["execute_payouts", "execute_round"]

execute_round = payouts.execute_round  # the same run without Prefect


def _run(round_id: int, batch_size: int) -> payouts.RoundRun:
    return payouts.RoundRun(get_engine(), round_id, batch_size=batch_size)


@task(name="payouts-prepare", cache_policy=NO_CACHE)
def prepare_payouts(round_id: int, batch_size: int) -> dict:
    """Resume what is in flight and check the wallet; says whether EVM batches may go."""
    run = _run(round_id, batch_size)
    if not run.start():
        return {"go": False, "evm": False, **run.result.as_dict()}
    evm = run.evm_prepare()
    return {"go": run.result.stopped is None, "evm": evm, **run.result.as_dict()}


@task(name="payouts-evm-batch", cache_policy=NO_CACHE)
def pay_evm_batch(round_id: int, batch_size: int) -> dict | None:
    """One EVM batch (one transaction, bisected if it reverts); None when none is left."""
    return _run(round_id, batch_size).evm_batch()


@task(name="payouts-custodian-batch", cache_policy=NO_CACHE)
def export_custodian_batch(round_id: int, batch_size: int) -> dict | None:
    return _run(round_id, batch_size).custodian_batch()


@task(name="payouts-finish", cache_policy=NO_CACHE)
def finish_payouts(round_id: int) -> dict:
    return _run(round_id, 1).finish().as_dict()


@flow(name="execute-payouts", log_prints=False)
def execute_payouts(round_id: int, batch_size: int = payouts.BATCH_SIZE) -> dict:
    """Run round ``round_id``'s payouts to the end; returns the counts of this run (see
    :class:`claims.payouts.RunResult`) and ``by_state`` of the whole round."""
    engine = get_engine()
    rid = payouts.round_pk(engine, round_id)
    total = payouts.work_left(engine, rid)
    progress = Progress(key=f"payouts-round-{rid}",
                        description=f"Payouts of round {rid}: share of payouts done")
    totals = {"confirmed": 0, "failed": 0, "held": 0, "exported": 0, "expired": 0,
              "transactions": 0, "batches": 0}

    def add(out: dict | None) -> None:
        for k in totals:
            v = (out or {}).get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                totals[k] += v

    prep = prepare_payouts(rid, batch_size)
    add(prep)
    done = prep.get("confirmed", 0) + prep.get("failed", 0)
    stopped = prep.get("stopped")
    if prep["go"]:
        if prep["evm"]:
            while (out := pay_evm_batch(rid, batch_size)) is not None:
                add(out)
                done += out.get("done", 0)
                progress.update(done, total)
        while (out := export_custodian_batch(rid, batch_size)) is not None:
            add(out)
            done += out["selected"]
            progress.update(done, total)
    result = finish_payouts(rid)
    stopped = result.get("stopped") or stopped
    progress.update(total if not stopped else done, total)
    with session_scope(engine, write=False) as s:
        by_state = payouts.state_totals(s, rid)
    create_table_artifact(
        table=[{"state": k, "payouts": v["count"], "amount": format_amount(v["amount"])}
               for k, v in by_state.items()],
        key=f"payouts-round-{rid}-states",
        description=(f"Payouts of round {rid}: {by_state['confirmed']['count']} confirmed, "
                     f"round {result['status']}" + (f" — stopped: {stopped}" if stopped else "")),
    )
    return {**result, **totals, "stopped": stopped,
            "by_state": {k: {"count": v["count"], "amount": format_amount(v["amount"])}
                         for k, v in by_state.items()}}
