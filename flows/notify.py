"""Prefect flow ``deliver_notifications``: the outbox delivered in batches.

One task run delivers up to :data:`BATCHES_PER_TASK` batches through
:func:`notifications.delivery.deliver_pending`, which shares a large backlog among processes
(every core); the flow runs tasks until one finds nothing due. A task carries many batches,
so the task count stays small beside the work and Prefect's share of the time with it.
"""

from __future__ import annotations

from flows import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from claims.db import get_engine  # noqa: E402
from notifications.delivery import DeliveryReport, deliver_pending  # noqa: E402

BATCHES_PER_TASK = 10


@task(name="deliver-notification-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def deliver_notification_batch(batch_size: int, max_batches: int = 1) -> dict:
    """Deliver up to ``max_batches`` batches (several processes for a large backlog)."""
    rep = deliver_pending(get_engine(), batch_size=batch_size, max_batches=max_batches)
    return {**rep.as_dict(), "errors": rep.errors[:5]}


@flow(name="deliver-notifications", log_prints=False)
def deliver_notifications(batch_size: int = 2000, max_batches: int | None = None) -> dict:
    """Deliver every due notification once; returns counts (sent, retry, failed, batches)."""
    total = DeliveryReport()
    while max_batches is None or total.batches < max_batches:
        step = BATCHES_PER_TASK if max_batches is None else min(BATCHES_PER_TASK, max_batches - total.batches)
        rep = deliver_notification_batch(batch_size, step)
        if rep["batches"] == 0:
            break
        total.sent += rep["sent"]
        total.retry += rep["retry"]
        total.failed += rep["failed"]
        total.batches += rep["batches"]
    return total.as_dict()
