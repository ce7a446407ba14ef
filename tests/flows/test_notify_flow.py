"""The Prefect flow ``deliver-notifications``: tasks of several batches until nothing is due."""

from __future__ import annotations

import email
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import Session

from claims import outbox
from claims.models import Notification


def test_the_flow_delivers_in_tasks_of_several_batches_and_stops(engine, db_url, prefect_harness, monkeypatch,
                                                                  tmp_path):
    import flows.notify as notify

    with Session(engine) as s:
        outbox.enqueue_batch(s, [
            (outbox.Recipient(None, f"KZR-FLOW-{i:04d}", "ru", f"v{i}@example.kz"),
             "token_reset" if i % 5 == 0 else "received", {"access_token": f"tok-{i}"} if i % 5 == 0 else {}, None)
            for i in range(23)
        ])
        s.commit()
    monkeypatch.setattr(notify, "BATCHES_PER_TASK", 2)

    first = notify.deliver_notifications(batch_size=5, max_batches=3)
    assert first == {"sent": 15, "retry": 0, "failed": 0, "batches": 3}
    rest = notify.deliver_notifications(batch_size=5)
    assert rest == {"sent": 8, "retry": 0, "failed": 0, "batches": 2}
    assert notify.deliver_notifications(batch_size=5)["batches"] == 0

    files = list((Path(tmp_path) / "mail" / "new").iterdir())
    ids = {email.message_from_bytes(f.read_bytes())["Message-ID"] for f in files}
    assert len(files) == len(ids) == 23
    with Session(engine) as s:
        assert s.execute(select(func.count()).where(Notification.state == "sent")).scalar_one() == 23
        tokens = [c.get("access_token") for c in s.execute(select(Notification.context)).scalars()]
    assert set(tokens) == {None, ""}  # delivered, so blanked
