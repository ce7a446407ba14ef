"""Delivery over SMTP (``RESTITUTION_SMTP_URL``): the URL, and one connection per batch."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Sequence
from urllib.parse import unquote, urlsplit

from notifications.sending import (
    Outcome,
    Result,
    address_problem,
    envelope,
    log_failure,
    log_summary,
    message_id_of,
    recipient_problem,
    scrub,
)


_SCHEMES = {"smtp": (25, "plain"), "smtp+starttls": (587, "starttls"), "smtps": (465, "tls")}


@dataclass(frozen=True)
class SmtpUrl:
    host: str
    port: int
    security: Literal["plain", "starttls", "tls"]
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never the password
        user = f"{self.username}:***@" if self.username else ""
        scheme = {"plain": "smtp", "starttls": "smtp+starttls", "tls": "smtps"}[self.security]
        return f"SmtpUrl({scheme}://{user}{self.host}:{self.port})"


def parse_smtp_url(url: str) -> SmtpUrl:
    """``smtp://host:port``, ``smtp+starttls://…``, ``smtps://…``, with ``user:pass@``
    (percent-encoded) allowed. Raises ``ValueError`` naming what is wrong (never the password)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError("RESTITUTION_SMTP_URL must start with smtp://, smtp+starttls:// or smtps://")
    default_port, security = _SCHEMES[scheme]
    host = parts.hostname
    if not host:
        raise ValueError("RESTITUTION_SMTP_URL has no host")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("RESTITUTION_SMTP_URL has an invalid port") from None
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ValueError("RESTITUTION_SMTP_URL has a password without a user name")
    return SmtpUrl(host, port, security, username or None, password)  # type: ignore[arg-type]


class _ConnectionLost(Exception):
    """The server went away during a transaction."""


def _code_outcome(code: int) -> Outcome:
    return Outcome.PERMANENT if 500 <= code < 600 else Outcome.TEMPORARY


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}"


class SmtpTransport:
    """SMTP delivery, one connection per ``send_many`` batch.

    Per message: a malformed recipient → permanent (the server is not asked); the server's 5xx
    refusing the recipient or the message → permanent; 4xx → temporary. The rest of the batch
    continues. If the server drops the connection, the transport reconnects and retries that
    message once; if it cannot reconnect, the message and the rest of the batch are temporary.
    Connection refused, timeouts, TLS or authentication failures → temporary for the batch.
    A 5xx refusing our sender (``MAIL FROM``) is reported as temporary: it is a configuration
    problem (``RESTITUTION_MAIL_FROM``), not the recipient's, and must not lose the notice.

    ``ssl_context`` defaults to the system's verified context (``SSL_CERT_FILE`` is honoured).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        max_reconnects: int = 3,
    ):
        self.url = parse_smtp_url(url)
        self.timeout = timeout
        self._ssl_context = ssl_context
        # smtplib would otherwise ask DNS for our FQDN on every connection.
        self.local_hostname = local_hostname or socket.gethostname() or "localhost"
        self.max_reconnects = max_reconnects

    def __repr__(self) -> str:
        return f"SmtpTransport({self.url!r})"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def connect(self) -> smtplib.SMTP:
        """Open, secure and authenticate one connection (raises on failure)."""
        u = self.url
        conn: smtplib.SMTP
        if u.security == "tls":
            conn = smtplib.SMTP_SSL(
                u.host, u.port, local_hostname=self.local_hostname, timeout=self.timeout, context=self.ssl_context
            )
        else:
            conn = smtplib.SMTP(u.host, u.port, local_hostname=self.local_hostname, timeout=self.timeout)
        try:
            conn.ehlo()
            if u.security == "starttls":
                conn.starttls(context=self.ssl_context)
                conn.ehlo()
            if u.username:
                conn.login(u.username, u.password or "")
        except BaseException:
            _close(conn)
            raise
        return conn

    def _connect_or_reason(self) -> tuple[smtplib.SMTP | None, str]:
        try:
            return self.connect(), ""
        except smtplib.SMTPAuthenticationError as exc:
            return None, scrub(f"SMTP authentication failed: {_reply(exc.smtp_code, exc.smtp_error)}")
        except smtplib.SMTPNotSupportedError as exc:
            return None, scrub(f"SMTP server does not support what the URL asks: {exc}")
        except smtplib.SMTPResponseException as exc:
            return None, scrub(f"SMTP server refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}")
        except ssl.SSLError as exc:
            return None, scrub(f"TLS failed with the SMTP server: {exc.reason or exc}")
        except (socket.timeout, TimeoutError):
            return None, "cannot connect to the SMTP server: timed out"
        except (OSError, smtplib.SMTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return None, scrub(f"cannot connect to the SMTP server: {reason}")

    def send_many(self, messages: Sequence[EmailMessage]) -> list[Result]:
        started = time.perf_counter()
        results: list[Result | None] = [None] * len(messages)
        prepared: list[tuple[int, str, list[str], str | None]] = []
        for i, msg in enumerate(messages):
            mid = message_id_of(msg)
            try:
                sender, rcpts = envelope(msg)
            except Exception as exc:  # headers that cannot be read will never be
                results[i] = Result(Outcome.PERMANENT, scrub(f"cannot read the message's addresses: {exc}"), mid)
                continue
            problem = recipient_problem(rcpts)
            if problem is not None:
                results[i] = Result(Outcome.PERMANENT, problem, mid)
            else:
                prepared.append((i, sender, rcpts, mid))

        conn: smtplib.SMTP | None = None
        drops = 0
        fatal = ""  # once set, the rest of the batch is temporary with this reason
        try:
            for i, sender, rcpts, mid in prepared:
                if fatal:
                    results[i] = Result(Outcome.TEMPORARY, fatal, mid)
                    continue
                tries = 0
                while True:
                    if conn is None:
                        conn, reason = self._connect_or_reason()
                        if conn is None:
                            fatal = reason
                            results[i] = Result(Outcome.TEMPORARY, reason, mid)
                            break
                    try:
                        results[i] = self._send_one(conn, messages[i], sender, rcpts, mid)
                    except _ConnectionLost as lost:
                        _close(conn)
                        conn = None
                        drops += 1
                        tries += 1
                        if drops > self.max_reconnects:
                            fatal = "SMTP server keeps dropping the connection"
                        if tries >= 2 or fatal:  # retried once on a fresh connection already
                            results[i] = Result(Outcome.TEMPORARY, str(lost), mid)
                            break
                        continue
                    if conn.sock is None:  # the server said 421 and smtplib closed it
                        conn = None
                    break
        finally:
            if conn is not None:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    _close(conn)
        final = [r if r is not None else Result(Outcome.TEMPORARY, "not attempted", message_id_of(messages[k])) for k, r in enumerate(results)]
        for r in final:
            log_failure(r)
        log_summary("smtp", final, started)
        return final

    def _send_one(
        self, conn: smtplib.SMTP, msg: EmailMessage, sender: str, rcpts: list[str], mid: str | None
    ) -> Result:
        try:
            if getattr(msg, "wire_bytes", None) is not None and not getattr(msg, "smtputf8", False):
                options: list[str] = []
                if not getattr(msg, "eight_bit", False):
                    data = msg.wire_bytes()  # type: ignore[attr-defined]
                elif conn.has_extn("8bitmime"):
                    data = msg.wire_bytes()  # type: ignore[attr-defined]
                    options.append("BODY=8BITMIME")
                else:  # RFC 6152: no 8bit data to a server that did not announce it
                    data = msg.seven_bit_bytes()  # type: ignore[attr-defined]
                refused = _sendmail(conn, sender, rcpts, data.replace(b"\n", b"\r\n"), options)
            else:
                refused = conn.send_message(msg, from_addr=sender, to_addrs=rcpts)
        except smtplib.SMTPRecipientsRefused as exc:
            replies = list(exc.recipients.values())
            outcome = (
                Outcome.PERMANENT
                if replies and all(_code_outcome(code) is Outcome.PERMANENT for code, _ in replies)
                else Outcome.TEMPORARY
            )
            code, text = replies[0] if replies else (0, b"")
            return Result(outcome, scrub(f"recipient refused: {_reply(code, text)}"), mid)
        except smtplib.SMTPSenderRefused as exc:
            return Result(Outcome.TEMPORARY, scrub(f"sender refused: {_reply(exc.smtp_code, exc.smtp_error)}"), mid)
        except smtplib.SMTPDataError as exc:
            return Result(_code_outcome(exc.smtp_code), scrub(f"message refused: {_reply(exc.smtp_code, exc.smtp_error)}"), mid)
        except smtplib.SMTPNotSupportedError as exc:
            return Result(Outcome.PERMANENT, scrub(f"the SMTP server cannot take this message: {exc}"), mid)
        except smtplib.SMTPServerDisconnected as exc:
            raise _ConnectionLost(scrub(f"SMTP server closed the connection: {exc}")) from None
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                raise _ConnectionLost(scrub(f"SMTP server closing: {_reply(exc.smtp_code, exc.smtp_error)}")) from None
            return Result(_code_outcome(exc.smtp_code), scrub(f"SMTP error: {_reply(exc.smtp_code, exc.smtp_error)}"), mid)
        except (socket.timeout, TimeoutError):
            raise _ConnectionLost("SMTP server timed out") from None
        except OSError as exc:
            raise _ConnectionLost(scrub(f"SMTP connection failed: {exc.strerror or exc}")) from None
        except UnicodeError:
            return Result(Outcome.PERMANENT, "the SMTP server cannot take non-ASCII addresses", mid)
        if refused:
            # Some recipients of a multi-recipient message were refused; the others have it.
            code, text = next(iter(refused.values()))
            return Result(Outcome.DELIVERED, scrub(f"some recipients refused: {_reply(code, text)}"), mid)
        return Result(Outcome.DELIVERED, "", mid)

    def close(self) -> None:
        """Nothing stays open between batches."""

    def __enter__(self) -> "SmtpTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sendmail(conn: smtplib.SMTP, sender: str, rcpts: list[str], data: bytes, options: list[str]) -> dict[str, tuple[int, bytes]]:
    """``smtplib.SMTP.sendmail`` for addresses already checked by :func:`address_problem`.

    Same commands, replies and exceptions, without ``quoteaddr``'s address parser (which costs
    more CPU than the rest of the transaction): the addresses are written as ``<addr>``.
    """
    if address_problem(sender) is not None and sender != "":
        raise smtplib.SMTPSenderRefused(501, b"malformed sender address", sender)
    opts = ""
    if conn.does_esmtp:
        extra = list(options)
        if conn.has_extn("size"):
            extra.append(f"SIZE={len(data)}")
        opts = "".join(" " + o for o in extra)
    code, resp = conn.docmd("MAIL", f"FROM:<{sender}>{opts}")
    if code != 250:
        _end_transaction(conn, code)
        raise smtplib.SMTPSenderRefused(code, resp, sender)
    refused: dict[str, tuple[int, bytes]] = {}
    for rcpt in rcpts:
        code, resp = conn.docmd("RCPT", f"TO:<{rcpt}>")
        if code not in (250, 251):
            refused[rcpt] = (code, resp)
        if code == 421:
            conn.close()
            raise smtplib.SMTPRecipientsRefused(refused)
    if len(refused) == len(rcpts):
        _end_transaction(conn, 0)
        raise smtplib.SMTPRecipientsRefused(refused)
    try:
        code, resp = conn.data(data)
    except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
        _end_transaction(conn, exc.smtp_code)
        raise
    if code != 250:
        _end_transaction(conn, code)
        raise smtplib.SMTPDataError(code, resp)
    return refused


def _end_transaction(conn: smtplib.SMTP, code: int) -> None:
    """After a refusal: 421 means the server is closing; otherwise RSET for the next message."""
    if code == 421:
        conn.close()
        return
    try:
        conn.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def _close(conn: smtplib.SMTP) -> None:
    try:
        conn.close()
    except OSError:
        pass
