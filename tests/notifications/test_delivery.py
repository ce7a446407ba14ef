"""The outbox delivered through a real SMTP server on loopback (aiosmtpd) and the Maildir:
claimed before sending, marked after, so a rerun never sends twice, a crash between causes
at most one resend with the same Message-ID, a server that is down is retried later, and a
refused recipient is a permanent failure with its reason."""

from __future__ import annotations

import datetime as dt
import email

from sqlalchemy import select, update
from sqlmodel import Session

from claims import outbox
from claims.models import Notification, utcnow
from claims.settings import Settings
from notifications.delivery import claim_batch, deliver_pending


def _queue(engine, emails: list[str], kind: str = "received", language: str = "ru") -> None:
    with Session(engine) as s:
        items = [(outbox.Recipient(None, f"KZR-AAAA-{i:04d}", language, addr), kind, {}, None)
                 for i, addr in enumerate(emails)]
        outbox.enqueue_batch(s, items)
        s.commit()


def _states(engine) -> dict[str, str]:
    with Session(engine) as s:
        return {n.to_email: n.state for n in s.execute(select(Notification)).scalars()}


def _settings(smtp_url: str | None, maildir) -> Settings:
    return Settings(smtp_url=smtp_url, maildir=str(maildir), public_url="https://restitution.example")


def _message_ids(server) -> list[str]:
    return [email.message_from_bytes(e.content)["Message-ID"] for e in server.handler.envelopes]


def test_delivered_over_smtp_once_even_when_run_again(engine, smtp_server, tmp_path):
    server = smtp_server()
    _queue(engine, [f"victim{i}@example.kz" for i in range(7)])
    settings = _settings(f"smtp://127.0.0.1:{server.port}", tmp_path / "mail")

    first = deliver_pending(engine, batch_size=3, settings=settings)
    second = deliver_pending(engine, batch_size=3, settings=settings)

    assert (first.sent, first.batches) == (7, 3)
    assert second.sent == 0 and second.batches == 0
    assert len(server.handler.envelopes) == 7
    assert len(set(_message_ids(server))) == 7
    assert set(_states(engine).values()) == {"sent"}


def test_server_down_is_retried_later_and_then_delivered(engine, smtp_server, unused_port, tmp_path):
    _queue(engine, ["late@example.kz"])
    down = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{unused_port}", tmp_path))
    assert (down.sent, down.retry) == (0, 1)
    with Session(engine) as s:
        n = s.execute(select(Notification)).scalar_one()
        assert n.state == "pending" and n.last_error and n.next_attempt_at > utcnow()
        # the backoff has passed
        s.execute(update(Notification).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
        s.commit()
    server = smtp_server()
    up = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{server.port}", tmp_path))
    assert up.sent == 1
    assert _states(engine) == {"late@example.kz": "sent"}


def test_refused_recipient_is_a_permanent_failure_with_its_reason(engine, smtp_server, tmp_path):
    server = smtp_server()
    _queue(engine, ["reject-me@example.kz", "fine@example.kz"])
    rep = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{server.port}", tmp_path))
    assert (rep.sent, rep.failed) == (1, 1)
    with Session(engine) as s:
        bad = s.execute(select(Notification).where(Notification.state == "failed")).scalar_one()
    assert "550" in bad.last_error or "rejected" in bad.last_error.lower()
    assert [e.rcpt_tos for e in server.handler.envelopes] == [["fine@example.kz"]]


def test_a_crash_between_sending_and_marking_resends_at_most_once_with_the_same_id(
        engine, smtp_server, tmp_path):
    server = smtp_server()
    _queue(engine, ["crash@example.kz"])
    settings = _settings(f"smtp://127.0.0.1:{server.port}", tmp_path)
    # A worker claims the notification, sends it, and dies before marking it sent.
    claimed = claim_batch(engine, 10)
    from notifications.render import render
    from notifications.transport import transport_from_settings

    n = claimed[0]
    msg = render(n.kind, n.language, dict(n.context), public_url=settings.public_url,
                 mail_from=settings.mail_from, to=n.to_email, notification_id=n.id)
    transport_from_settings(settings.smtp_url, settings.maildir).send_many([msg])
    # While its claim is fresh nobody else takes it…
    assert deliver_pending(engine, settings=settings).sent == 0
    # …once the lease has run out, the next worker takes it over and sends it once more.
    with Session(engine) as s:
        s.execute(update(Notification).values(claimed_at=utcnow() - dt.timedelta(hours=1)))
        s.commit()
    assert deliver_pending(engine, settings=settings).sent == 1
    assert deliver_pending(engine, settings=settings).sent == 0
    ids = _message_ids(server)
    assert len(ids) == 2 and ids[0] == ids[1]


def test_maildir_is_the_default_without_smtp(engine, tmp_path):
    _queue(engine, ["a@example.kz", "b@example.kz"], kind="received", language="kk")
    rep = deliver_pending(engine, settings=_settings(None, tmp_path / "mail"))
    assert rep.sent == 2
    files = list((tmp_path / "mail" / "new").iterdir())
    assert len(files) == 2
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["Content-Language"] == "kk"


# --------------------------------------------------------------------------- secrets


def _queue_secrets(engine, emails: list[str]) -> None:
    """One token_reset and one address_change_requested notification per address."""
    with Session(engine) as s:
        items = []
        for i, addr in enumerate(emails):
            claim = outbox.Recipient(None, f"KZR-SECR-{i:04d}", "en", addr)
            items.append((claim, "token_reset", {"name": "Aigerim", "access_token": f"tok-secret-{i}"}, None))
            items.append((claim, "address_change_requested",
                          {"code": f"98765{i}", "payout_network": "tron",
                           "payout_address": "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8", "expires_minutes": 15},
                          None))
        outbox.enqueue_batch(s, items)
        s.commit()


def _contexts(engine) -> dict[tuple[str, str], tuple[str, dict]]:
    with Session(engine) as s:
        return {(n.to_email, n.kind): (n.state, n.context) for n in s.execute(select(Notification)).scalars()}


def test_tokens_and_codes_are_blanked_once_sent_and_only_then(engine, smtp_server, unused_port, tmp_path):
    _queue_secrets(engine, ["ok@example.kz", "later@example.kz"])
    # the SMTP server is down: the messages will be sent again and must keep their secrets
    down = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{unused_port}", tmp_path))
    assert down.retry == 4
    kept = _contexts(engine)
    assert kept[("ok@example.kz", "token_reset")] == (
        "pending", {"reference": "KZR-SECR-0000", "name": "Aigerim", "access_token": "tok-secret-0"})
    assert kept[("later@example.kz", "address_change_requested")][1]["code"] == "987651"

    with Session(engine) as s:
        s.execute(update(Notification).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
        s.commit()
    server = smtp_server()
    up = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{server.port}", tmp_path))
    assert up.sent == 4
    # the messages carried them…
    bodies = b"\n".join(e.content for e in server.handler.envelopes)
    for secret in (b"tok-secret-0", b"tok-secret-1", b"987650", b"987651"):
        assert secret in bodies
    # …the database no longer does; everything else of the context stays
    after = _contexts(engine)
    assert after[("ok@example.kz", "token_reset")] == (
        "sent", {"reference": "KZR-SECR-0000", "name": "Aigerim", "access_token": ""})
    state, ctx = after[("later@example.kz", "address_change_requested")]
    assert state == "sent" and ctx == {
        "reference": "KZR-SECR-0001", "code": "", "payout_network": "tron",
        "payout_address": "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8", "expires_minutes": 15}
    # a rerun sends nothing (and the blanked rows are never rendered again)
    assert deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{server.port}", tmp_path)).sent == 0


def test_a_secret_is_blanked_when_its_notification_fails_for_good(engine, smtp_server, tmp_path):
    server = smtp_server()
    _queue_secrets(engine, ["reject-me@example.kz"])
    rep = deliver_pending(engine, settings=_settings(f"smtp://127.0.0.1:{server.port}", tmp_path))
    assert rep.failed == 2
    after = _contexts(engine)
    assert after[("reject-me@example.kz", "token_reset")] == (
        "failed", {"reference": "KZR-SECR-0000", "name": "Aigerim", "access_token": ""})
    assert after[("reject-me@example.kz", "address_change_requested")][1]["code"] == ""


def test_blanking_changes_only_the_secrets():
    from notifications.delivery import _blanked

    assert _blanked({"reference": "R", "amount": "5"}) is None
    assert _blanked({"reference": "R", "code": ""}) is None
    assert _blanked({"reference": "R", "code": "123456", "name": "A"}) == {"reference": "R", "code": "", "name": "A"}


# --------------------------------------------------------------------------- several processes


def _maildir_ids(path) -> list[str]:
    return [email.message_from_bytes(f.read_bytes())["Message-ID"] for f in (path / "new").iterdir()]


def test_helper_processes_deliver_each_notification_once(engine, tmp_path):
    """Two processes share the backlog (each takes its own batches); every notice is
    delivered exactly once, as with one process."""
    _queue(engine, [f"v{i}@example.kz" for i in range(40)], kind="received", language="kk")
    _queue_secrets(engine, ["s@example.kz"])
    settings = _settings(None, tmp_path / "mail")
    # two batches of 10, one for each process, then the rest
    first = deliver_pending(engine, settings=settings, batch_size=10, max_batches=2, workers=2)
    assert (first.sent, first.batches) == (20, 2)
    with Session(engine) as s:
        workers = set(s.execute(select(Notification.claimed_by).where(Notification.state == "sent")).scalars())
    assert len(workers) == 2  # this process and a helper
    rest = deliver_pending(engine, settings=settings, batch_size=10, workers=2)
    assert (rest.sent, rest.failed, rest.retry) == (22, 0, 0)
    assert deliver_pending(engine, settings=settings, workers=2).batches == 0
    ids = _maildir_ids(tmp_path / "mail")
    assert len(ids) == 42 and len(set(ids)) == 42
    states = _contexts(engine)
    assert {state for state, _ in states.values()} == {"sent"}
    assert states[("s@example.kz", "token_reset")][1]["access_token"] == ""


def test_a_large_backlog_uses_every_core_and_a_small_one_stays_in_process(engine, tmp_path, monkeypatch):
    import notifications.delivery as delivery

    monkeypatch.setattr(delivery.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(delivery, "PARALLEL_MIN_DUE", 20)
    _queue(engine, [f"v{i}@example.kz" for i in range(19)])
    assert delivery._auto_workers(engine, 5, None) == 1  # 19 due < 20
    _queue(engine, ["one-more@example.kz"])
    assert delivery._auto_workers(engine, 5, None) == 2  # 20 due
    assert delivery._auto_workers(engine, 5, 3) == 1     # asked for 15 at most
    _queue(engine, [f"w{i}@example.kz" for i in range(10)])
    # a transport object cannot be shared with another process: one process
    calls = []
    monkeypatch.setattr(delivery, "_helpers", lambda n: calls.append(n))
    from notifications.transport import MaildirTransport

    rep = deliver_pending(engine, settings=_settings(None, tmp_path / "mail"), batch_size=5,
                          transport=MaildirTransport(tmp_path / "mail", sync="none"))
    assert rep.sent == 30 and calls == []


def test_an_in_memory_database_is_never_shared():
    from sqlalchemy import create_engine

    from notifications.delivery import _shareable_url

    assert _shareable_url(create_engine("sqlite://")) is None
    assert _shareable_url(create_engine("sqlite:///:memory:")) is None
    assert _shareable_url(create_engine("sqlite:///var/x.db")) == "sqlite:///var/x.db"
    assert _shareable_url(create_engine("postgresql+psycopg://u:p%40ss@h/db")) == "postgresql+psycopg://u:p%40ss@h/db"


def test_a_helper_that_dies_leaves_its_claim_to_a_later_run(engine, tmp_path, monkeypatch, caplog):
    """This process finishes the backlog alone; the dead helper's claim is taken over once its
    lease has passed, and the helpers are started afresh next time."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import notifications.delivery as delivery

    _queue(engine, [f"v{i}@example.kz" for i in range(12)])
    claim_batch(engine, 5)  # what the helper had taken when it died

    class DeadPool:
        def submit(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            fut: Future = Future()
            fut.set_exception(BrokenProcessPool("killed"))
            return fut

    dropped = []
    monkeypatch.setattr(delivery, "_helpers", lambda n: DeadPool())
    monkeypatch.setattr(delivery, "stop_helpers", lambda: dropped.append(True))
    settings = _settings(None, tmp_path / "mail")
    rep = deliver_pending(engine, settings=settings, batch_size=4, workers=2)
    assert (rep.sent, rep.failed) == (7, 0) and dropped == [True]
    assert "helper process died" in caplog.text
    with Session(engine) as s:
        s.execute(update(Notification).where(Notification.state == "sending")
                  .values(claimed_at=utcnow() - dt.timedelta(hours=1)))
        s.commit()
    assert deliver_pending(engine, settings=settings, workers=1).sent == 5
    assert set(_states(engine).values()) == {"sent"}
