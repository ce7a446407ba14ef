"""The outbox delivered through a real SMTP server on loopback (aiosmtpd) and the Maildir:
claimed before sending, marked after, so a rerun never sends twice, a crash between causes
at most one resend with the same Message-ID, a server that is down is retried later, and a
refused recipient is a permanent failure with its reason."""

from __future__ import annotations

import datetime as dt
import email
from types import SimpleNamespace

from sqlalchemy import select, update
from sqlmodel import Session

from claims import outbox
from claims.models import Notification, utcnow
from claims.settings import Settings
from notifications.delivery import claim_batch, deliver_pending


def _queue(engine, emails: list[str], kind: str = "received", language: str = "ru") -> None:
    with Session(engine) as s:
        items = [(SimpleNamespace(id=None, reference=f"KZR-AAAA-{i:04d}", language=language,
                                  email=addr), kind, {}, None) for i, addr in enumerate(emails)]
        outbox.enqueue_many(s, items)
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
