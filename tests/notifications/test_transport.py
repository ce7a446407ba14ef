"""Delivery over a real SMTP server (aiosmtpd on loopback) and into a real Maildir."""

from __future__ import annotations

import email
import email.policy
import logging
import mailbox
import stat
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import pytest

from notifications.render import RenderedMessage, render
from notifications.transport import (
    MaildirTransport,
    Outcome,
    SmtpTransport,
    address_problem,
    mask_address,
    parse_smtp_url,
    scrub,
    transport_from_settings,
)

PUBLIC_URL = "https://restitution.example.kz"
MAIL_FROM = "Restitution <no-reply@restitution.example.kz>"
TOKEN = "tok_secret_5b4a39281706aa"


def message(
    nid: int,
    to: str = "victim@example.kz",
    lang: str = "ru",
    kind: str = "token_reset",
    **ctx: object,
) -> RenderedMessage:
    context: dict[str, object] = {"reference": "KZR-7Q2M-X9KD", "access_token": TOKEN}
    context.update(ctx)
    return render(kind, lang, context, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to=to, notification_id=nid)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


# --------------------------------------------------------------------------- URL


def test_parse_smtp_url() -> None:
    u = parse_smtp_url("smtp://mail.example.kz")
    assert (u.host, u.port, u.security, u.username) == ("mail.example.kz", 25, "plain", None)
    u = parse_smtp_url("smtp+starttls://mailer%40example.kz:p%40ss%3Aw0rd@mail.example.kz")
    assert (u.host, u.port, u.security) == ("mail.example.kz", 587, "starttls")
    assert (u.username, u.password) == ("mailer@example.kz", "p@ss:w0rd")
    assert "p@ss" not in repr(u) and "w0rd" not in repr(SmtpTransport("smtps://u:w0rd@h"))
    u = parse_smtp_url("smtps://u:p@[::1]:2465")
    assert (u.host, u.port, u.security) == ("::1", 2465, "tls")
    for bad in ("http://mail.example.kz", "smtp://", "smtp://h:notaport", "smtp://:pw@h"):
        with pytest.raises(ValueError):
            parse_smtp_url(bad)


def test_transport_from_settings(tmp_path: Path) -> None:
    assert isinstance(transport_from_settings(None, tmp_path / "mail"), MaildirTransport)
    assert isinstance(transport_from_settings("  ", tmp_path / "mail"), MaildirTransport)
    assert (tmp_path / "mail" / "new").is_dir() and (tmp_path / "mail" / "tmp").is_dir()
    assert (tmp_path / "mail" / "cur").is_dir()
    smtp = transport_from_settings("smtp://127.0.0.1:2525", tmp_path / "mail", timeout=3)
    assert isinstance(smtp, SmtpTransport) and smtp.timeout == 3


def test_address_checks_and_masking() -> None:
    assert address_problem("victim@example.kz") is None
    assert address_problem("айгүл@пошта.kz") is None
    assert address_problem("victim@localhost") is None
    for bad in ("", "not-an-address", "a@@b.kz", "a b@c.kz", "@c.kz", "a@", "a@b..kz", ".a@b.kz", "a@-b.kz"):
        assert address_problem(bad) is not None, bad
    assert mask_address("victim@example.kz") == "v***@example.kz"
    assert scrub("550 5.1.1 <victim@example.kz>: rejected\r\n more") == "550 5.1.1 <v***@example.kz>: rejected more"


# --------------------------------------------------------------------------- SMTP


def test_plain_smtp_delivers_the_batch_on_one_connection(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    msgs = [message(1, "a@example.kz", "kk"), message(2, "b@example.kz", "ru"), message(3, "c@example.kz", "en")]
    results = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5).send_many(msgs)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    assert [r.message_id for r in results] == [f"<notification-{i}@restitution.example.kz>" for i in (1, 2, 3)]
    assert [e.rcpt_tos for e in server.envelopes] == [["a@example.kz"], ["b@example.kz"], ["c@example.kz"]]
    assert {e.mail_from for e in server.envelopes} == {"no-reply@restitution.example.kz"}
    received = parse(server.envelopes[0].content)
    assert received["Message-ID"] == "<notification-1@restitution.example.kz>"
    assert received["Subject"] == str(msgs[0]["Subject"])
    assert received["Content-Language"] == "kk"
    assert [p.get_content_type() for p in received.iter_parts()] == ["text/plain", "text/html"]
    assert TOKEN in received.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # CRLF on the wire, no bare LF
    assert b"\r\n" in server.envelopes[0].original_content
    assert b"\n" not in server.envelopes[0].original_content.replace(b"\r\n", b"")


def test_one_connection_per_batch(smtp_server, monkeypatch) -> None:  # noqa: ANN001
    server = smtp_server()
    transport = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5)
    connects = []
    real = transport.connect
    monkeypatch.setattr(transport, "connect", lambda: connects.append(1) or real())
    assert all(r.delivered for r in transport.send_many([message(i) for i in range(5)]))
    assert len(connects) == 1
    assert all(r.delivered for r in transport.send_many([message(i) for i in range(5, 8)]))
    assert len(connects) == 2 and len(server.envelopes) == 8


def test_utf8_bodies_go_as_8bit_or_as_base64_to_a_server_without_8bitmime(smtp_server, monkeypatch) -> None:  # noqa: ANN001
    server = smtp_server()
    msg = message(90, lang="kk")
    assert msg.eight_bit
    transport = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5)
    assert transport.send_many([msg])[0].delivered
    first = server.envelopes[0]
    assert "BODY=8BITMIME" in first.mail_options
    assert "Өтініш нөмірі".encode() in first.content  # readable UTF-8 on the wire

    real = transport.connect

    def without_8bitmime():  # noqa: ANN202
        conn = real()
        conn.esmtp_features.pop("8bitmime", None)
        return conn

    monkeypatch.setattr(transport, "connect", without_8bitmime)
    assert transport.send_many([msg])[0].delivered
    second = server.envelopes[1]
    assert "BODY=8BITMIME" not in second.mail_options
    assert second.content.isascii()
    got = [parse(e.content) for e in (first, second)]
    assert [p["Content-Transfer-Encoding"] for p in got[1].iter_parts()] == ["base64", "base64"]
    for kind in ("plain", "html"):  # the same text (8bit arrives with the wire's CRLF line ends)
        eight, seven = (g.get_body((kind,)).get_content().replace("\r\n", "\n") for g in got)  # type: ignore[union-attr]
        assert eight == seven and "Өтініш нөмірі" in seven
    assert got[0]["Message-ID"] == got[1]["Message-ID"]


def test_smtps_delivers(smtp_server, tls) -> None:  # noqa: ANN001
    server = smtp_server("smtps", tls=tls)
    transport = SmtpTransport(f"smtps://127.0.0.1:{server.port}", timeout=5, ssl_context=tls.client_context())
    results = transport.send_many([message(10, lang="kk")])
    assert results[0].delivered, results[0].reason
    assert parse(server.envelopes[0].content)["Message-ID"] == "<notification-10@restitution.example.kz>"


def test_smtps_refuses_an_unverified_certificate(smtp_server, tls) -> None:  # noqa: ANN001
    server = smtp_server("smtps", tls=tls)
    results = SmtpTransport(f"smtps://127.0.0.1:{server.port}", timeout=5).send_many([message(11)])
    assert results[0].outcome is Outcome.TEMPORARY and "TLS" in results[0].reason
    assert server.envelopes == []


def test_starttls_with_authentication(smtp_server, tls) -> None:  # noqa: ANN001
    server = smtp_server("starttls", auth=("mailer@example.kz", "s3cr:et@"), tls=tls)
    url = f"smtp+starttls://mailer%40example.kz:s3cr%3Aet%40@127.0.0.1:{server.port}"
    results = SmtpTransport(url, timeout=5, ssl_context=tls.client_context()).send_many([message(20), message(21)])
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2, results
    assert server.logins == [("mailer@example.kz", "s3cr:et@")]
    assert len(server.envelopes) == 2

    wrong = f"smtp+starttls://mailer%40example.kz:wrong@127.0.0.1:{server.port}"
    results = SmtpTransport(wrong, timeout=5, ssl_context=tls.client_context()).send_many([message(22), message(23)])
    assert [r.outcome for r in results] == [Outcome.TEMPORARY] * 2
    assert "authentication failed" in results[0].reason and "wrong" not in results[0].reason
    assert len(server.envelopes) == 2


def test_starttls_required_by_the_server_but_not_used(smtp_server, tls) -> None:  # noqa: ANN001
    server = smtp_server("starttls", tls=tls)
    results = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5).send_many([message(30)])
    assert results[0].outcome is Outcome.TEMPORARY and results[0].reason
    assert server.envelopes == []


def test_server_down_is_a_temporary_failure(unused_port: int) -> None:
    transport = SmtpTransport(f"smtp://127.0.0.1:{unused_port}", timeout=2)
    results = transport.send_many([message(80), message(81, "not-an-address"), message(82)])
    assert [r.outcome for r in results] == [Outcome.TEMPORARY, Outcome.PERMANENT, Outcome.TEMPORARY]
    assert results[0].reason.startswith("cannot connect to the SMTP server")
    assert results[2].reason == results[0].reason


def test_recipient_problems_are_permanent_and_the_batch_goes_on(smtp_server, caplog) -> None:  # noqa: ANN001
    server = smtp_server()
    msgs = [
        message(40, "first@example.kz"),
        message(41, "not-an-address"),
        message(42, "reject-me@example.kz"),
        message(43, "busy@example.kz"),
        message(44, "a@@b.kz"),
        message(45, "last@example.kz"),
    ]
    with caplog.at_level(logging.DEBUG, logger="restitution.notifications"):
        results = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5).send_many(msgs)
    outcomes = [r.outcome for r in results]
    assert outcomes == [
        Outcome.DELIVERED,
        Outcome.PERMANENT,
        Outcome.PERMANENT,
        Outcome.TEMPORARY,
        Outcome.PERMANENT,
        Outcome.DELIVERED,
    ]
    assert "malformed recipient address" in results[1].reason
    assert results[2].reason.startswith("recipient refused: 550")
    assert "r***@example.kz" in results[2].reason and "reject-me@" not in results[2].reason
    assert results[3].reason.startswith("recipient refused: 450")
    assert [e.rcpt_tos for e in server.envelopes] == [["first@example.kz"], ["last@example.kz"]]
    logged = caplog.text
    assert "reject-me@example.kz" not in logged and "first@example.kz" not in logged
    assert TOKEN not in logged
    assert "<notification-42@restitution.example.kz>" in logged


def test_a_refused_message_is_permanent(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    msgs = [message(50, lang="en", kind="needs_info", request="REFUSE-DATA please"), message(51)]
    results = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5).send_many(msgs)
    assert results[0].outcome is Outcome.PERMANENT and results[0].reason.startswith("message refused: 554")
    assert results[1].delivered and len(server.envelopes) == 1


def test_a_refused_sender_is_temporary_and_421_reconnects(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    url = f"smtp://127.0.0.1:{server.port}"
    blocked = render(
        "received", "en", {"reference": "KZR-1"}, public_url=PUBLIC_URL, mail_from="blocked@restitution.example.kz",
        to="victim@example.kz", notification_id=55,
    )
    results = SmtpTransport(url, timeout=5).send_many([blocked, message(56)])
    assert results[0].outcome is Outcome.TEMPORARY and results[0].reason.startswith("sender refused: 550")
    assert results[1].delivered

    closing = message(57, lang="en", kind="needs_info", request="CLOSE-421 now")
    results = SmtpTransport(url, timeout=5).send_many([closing, message(58)])
    assert results[0].outcome is Outcome.TEMPORARY and "421" in results[0].reason
    assert results[1].delivered
    assert [parse(e.content)["Message-ID"] for e in server.envelopes] == [
        "<notification-56@restitution.example.kz>",
        "<notification-58@restitution.example.kz>",
    ]


def test_reconnects_when_the_server_drops_the_connection(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    dropped: list[str] = []
    original = server.handler.handle_DATA

    async def drop_once(srv, session, envelope):  # noqa: ANN001
        mid = parse(envelope.content)["Message-ID"]
        if mid == "<notification-61@restitution.example.kz>" and not dropped:
            dropped.append(mid)
            srv.transport.close()  # the connection dies before the reply
            return "250 never sent"
        return await original(srv, session, envelope)

    server.handler.handle_DATA = drop_once
    transport = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5)
    results = transport.send_many([message(60), message(61), message(62)])
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3, results
    assert dropped
    ids = [parse(e.content)["Message-ID"] for e in server.envelopes]
    assert ids == [f"<notification-{i}@restitution.example.kz>" for i in (60, 61, 62)]


def test_same_notification_resent_keeps_its_message_id(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    transport = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5)
    transport.send_many([message(70)])
    transport.send_many([message(70)])  # e.g. a crash between sending and marking
    ids = [parse(e.content)["Message-ID"] for e in server.envelopes]
    assert ids == ["<notification-70@restitution.example.kz>"] * 2


def test_concurrent_batches_use_parallel_connections(smtp_server) -> None:  # noqa: ANN001
    server = smtp_server()
    transport = SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5)
    batches = [[message(100 + 10 * b + i, f"v{b}{i}@example.kz") for i in range(5)] for b in range(4)]
    # One transport, several threads: each send_many opens its own connection.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(transport.send_many, batches))
    assert [[r.outcome for r in rs] for rs in results] == [[Outcome.DELIVERED] * 5] * 4
    assert sorted(e.rcpt_tos[0] for e in server.envelopes) == sorted(f"v{b}{i}@example.kz" for b in range(4) for i in range(5))


def test_a_plain_email_message_is_sent_too(smtp_server, tmp_path: Path) -> None:  # noqa: ANN001
    server = smtp_server()
    msg = EmailMessage()
    msg["From"] = MAIL_FROM
    msg["To"] = "Айгүл <aigul@example.kz>"
    msg["Bcc"] = "hidden@example.kz"
    msg["Subject"] = "Сәлем"
    msg["Message-ID"] = "<plain-1@example.kz>"
    msg.set_content("Мәтін")
    assert SmtpTransport(f"smtp://127.0.0.1:{server.port}", timeout=5).send_many([msg])[0].delivered
    env = server.envelopes[0]
    assert env.rcpt_tos == ["aigul@example.kz", "hidden@example.kz"]
    received = parse(env.content)
    assert received["Subject"] == "Сәлем" and received["Bcc"] is None
    with MaildirTransport(tmp_path / "mail", sync="none") as maildir:
        assert maildir.send_many([msg])[0].delivered
    (only,) = list((tmp_path / "mail" / "new").iterdir())
    stored = parse(only.read_bytes())
    assert stored["Subject"] == "Сәлем" and stored["Bcc"] is None and stored["To"] == "Айгүл <aigul@example.kz>"


# --------------------------------------------------------------------------- Maildir


@pytest.mark.parametrize("sync", ["batch", "file", "none"])
def test_maildir_delivery(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "mail"
    msgs = [message(200 + i, f"v{i}@example.kz", lang) for i, lang in enumerate(["kk", "ru", "en", "kk"])]
    with MaildirTransport(path, sync=sync) as transport:  # type: ignore[arg-type]
        results = transport.send_many(msgs)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 4
    files = sorted((path / "new").iterdir())
    assert len(files) == 4 and list((path / "tmp").iterdir()) == []
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    box = mailbox.Maildir(str(path), create=False)
    got = {str(m["Message-ID"]): m for m in box}
    assert set(got) == {f"<notification-{200 + i}@restitution.example.kz>" for i in range(4)}
    for original in msgs:
        stored = parse(bytes(got[str(original["Message-ID"])]))
        assert stored["Subject"] == str(original["Subject"])
        assert stored["To"] == str(original["To"])
        assert stored.get_body(("plain",)).get_content() == original.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert [p.get_content_type() for p in stored.iter_parts()] == ["text/plain", "text/html"]
    assert b"\r\n" not in files[0].read_bytes()


def test_maildir_refuses_malformed_recipients_and_reports_write_failures(tmp_path: Path) -> None:
    path = tmp_path / "mail"
    transport = MaildirTransport(path, sync="none")
    results = transport.send_many([message(300, "not-an-address"), message(301)])
    assert results[0].outcome is Outcome.PERMANENT and "malformed recipient address" in results[0].reason
    assert results[1].delivered
    assert len(list((path / "new").iterdir())) == 1

    (path / "new").rename(tmp_path / "elsewhere")
    (path / "new").write_text("not a directory")
    results = transport.send_many([message(302)])
    assert results[0].outcome is Outcome.TEMPORARY and "cannot write to the Maildir" in results[0].reason
    assert list((path / "tmp").iterdir()) == []
