"""Prefect flow ``deliver_notifications``: the outbox delivered in batches (one task a batch)."""

from __future__ import annotations

from flows import configure_prefect

configure_prefect()

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from claims.db import get_engine  # noqa: E402
from notifications.delivery import DeliveryReport, deliver_batch  # noqa: E402


@task(name="deliver-notification-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def deliver_notification_batch(batch_size: int) -> dict:
    rep = deliver_batch(get_engine(), batch_size)
    return {**rep.as_dict(), "errors": rep.errors[:5]}


@flow(name="deliver-notifications", log_prints=False)
def deliver_notifications(batch_size: int = 2000, max_batches: int | None = None) -> dict:
    """Deliver every due notification once; returns counts (sent, retry, failed, batches)."""
    total = DeliveryReport()
    while max_batches is None or total.batches < max_batches:
        rep = deliver_notification_batch(batch_size)
        if rep["batches"] == 0:
            break
        total.sent += rep["sent"]
        total.retry += rep["retry"]
        total.failed += rep["failed"]
        total.batches += rep["batches"]
    return total.as_dict()
