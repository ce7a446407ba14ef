"""Fixtures for the notification tests: a real SMTP server (aiosmtpd) on loopback, with
optional implicit TLS, STARTTLS and AUTH, and a self-signed certificate made for the test."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A loopback port nobody listens on (a server that is down)."""
    return free_port()


class RecordingHandler:
    """Stores every accepted envelope. Recipients starting with ``reject`` get 550, with
    ``busy`` get 450; a sender starting with ``blocked`` gets 550; a message whose content
    contains ``REFUSE-DATA`` gets 554, ``CLOSE-421`` gets 421 (service closing)."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: ANN001
        if address.startswith("blocked"):
            return "550 5.7.1 Sender rejected"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        if address.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: user unknown"
        if address.startswith("busy"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if b"REFUSE-DATA" in envelope.content:
            return "554 5.7.1 Message refused"
        if b"CLOSE-421" in envelope.content:
            return "421 4.3.2 Service shutting down"
        self.envelopes.append(envelope)
        return "250 OK queued"


@dataclass
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Tls(cert_path, key_path)


@dataclass
class Server:
    controller: Controller
    handler: RecordingHandler
    port: int
    logins: list[tuple[str, str]] = field(default_factory=list)

    @property
    def envelopes(self) -> list[Any]:
        return self.handler.envelopes


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., Server]]:
    """``smtp_server(mode="plain"|"smtps"|"starttls", auth=None|(user, password))`` → a running server."""
    started: list[Controller] = []

    def start(mode: str = "plain", auth: tuple[str, str] | None = None, tls: Tls | None = None) -> Server:
        handler = RecordingHandler()
        port = free_port()
        logins: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {}
        if mode == "smtps":
            assert tls is not None
            kwargs["ssl_context"] = tls.server_context()
        elif mode == "starttls":
            assert tls is not None
            kwargs["tls_context"] = tls.server_context()
            kwargs["require_starttls"] = True
        if auth is not None:

            def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
                if not isinstance(auth_data, LoginPassword):
                    return AuthResult(success=False, handled=False)
                login, password = auth_data.login.decode(), auth_data.password.decode()
                logins.append((login, password))
                if (login, password) == auth:
                    return AuthResult(success=True, auth_data=auth_data)
                return AuthResult(success=False, handled=False)

            kwargs["authenticator"] = authenticator
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = mode != "plain"
        controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mx.test", **kwargs)
        controller.start()
        started.append(controller)
        return Server(controller, handler, port, logins)

    yield start
    for controller in started:
        controller.stop()
