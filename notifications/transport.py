"""Deliver rendered emails: SMTP (``RESTITUTION_SMTP_URL``) or a local Maildir (the default).

A :class:`Transport` takes a batch and answers one :class:`Result` per message, in order:

* ``delivered`` — the server accepted it / the file is in ``new/`` and synced to disk;
* ``temporary`` — try again later (4xx, connection refused, timeout, server dropped the
  connection, authentication or TLS trouble, a full disk);
* ``permanent`` — never retry (5xx refusing the recipient or the message, a malformed recipient
  address), with the reason.

Reasons never carry a full email address (they are masked: ``v***@example.kz``) and messages'
content is never logged, so access codes and confirmation codes stay out of logs.

``transport_from_settings(settings.smtp_url, settings.maildir)`` picks the implementation.
Both are safe to use from several threads at once: each ``send_many`` call of
:class:`SmtpTransport` opens its own connection (one connection per batch), so parallel batches
mean parallel connections.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import logging
import mailbox
import os
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Literal, Protocol, Sequence
from urllib.parse import unquote, urlsplit

log = logging.getLogger("restitution.notifications")


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one message. ``reason`` is empty when delivered."""

    outcome: Outcome
    reason: str = ""
    message_id: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome is Outcome.DELIVERED


class Transport(Protocol):
    def send_many(self, messages: Sequence[EmailMessage]) -> list[Result]:
        """Deliver a batch; one result per message, in the same order. Never raises for a
        message's or the server's trouble (those are results)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- helpers

_EMAIL_IN_TEXT = re.compile(r"[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+")
_LOCAL_PART = re.compile(r"[^\s@<>()\[\],;:\"\\]+")
_DOMAIN_LABEL = re.compile(r"[^\s@<>()\[\],;:\"\\.]+")


def mask_address(address: str) -> str:
    """``victim@example.kz`` → ``v***@example.kz`` (enough to tell addresses apart in a log)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def scrub(text: str, limit: int = 300) -> str:
    """A server's words made safe to store: addresses masked, one line, bounded length."""
    text = " ".join(str(text).split())
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_address(m.group(0)), text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a recipient, or ``None`` if it looks deliverable.

    Syntax only (the server decides the rest): one ``@``, a local part without spaces or
    specials and without leading, trailing or doubled dots, a domain of non-empty labels.
    """
    if not address:
        return "no recipient address"
    if len(address) > 254:
        return "recipient address too long"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "malformed recipient address (no '@')"
    if not _LOCAL_PART.fullmatch(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return "malformed recipient address (local part)"
    labels = domain.split(".")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels) or any(
        label.startswith("-") or label.endswith("-") for label in labels
    ):
        return "malformed recipient address (domain)"
    return None


def message_id_of(msg: EmailMessage) -> str | None:
    """The Message-ID as written (read raw: parsing the header costs more than sending)."""
    fast = getattr(msg, "wire_message_id", None)
    if fast is not None:
        return fast()  # type: ignore[no-any-return]
    for name, value in msg.raw_items():
        if name.lower() == "message-id":
            return " ".join(str(value).split()) or None
    return None


def envelope(msg: EmailMessage) -> tuple[str, list[str]]:
    """(sender, recipients) for the SMTP envelope: from the rendering when known, else headers."""
    sender = getattr(msg, "envelope_from", None)
    rcpts = getattr(msg, "envelope_to", None)
    if sender is None:
        sender = parseaddr(str(msg.get("Sender") or msg.get("From") or ""))[1]
    if rcpts is None:
        values = [str(v) for name in ("To", "Cc", "Bcc") for v in (msg.get_all(name) or [])]
        rcpts = [addr for _, addr in getaddresses(values)]
    return sender, list(rcpts)


def wire_bytes(msg: EmailMessage) -> bytes:
    """The message as bytes with ``\\n`` line ends (composed at render time when unchanged)."""
    fast = getattr(msg, "wire_bytes", None)
    if fast is not None:
        return fast()  # type: ignore[no-any-return]
    if msg.get("Bcc") is not None:
        msg = _without_bcc(msg)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\n"))


def _without_bcc(msg: EmailMessage) -> EmailMessage:
    import copy

    clone = copy.copy(msg)
    del clone["Bcc"]
    return clone


def _recipient_problem(rcpts: list[str]) -> str | None:
    if not rcpts:
        return "no recipient address"
    for rcpt in rcpts:
        problem = address_problem(rcpt)
        if problem is not None:
            return f"{problem}: {mask_address(rcpt)}"
    return None


def _summary(kind: str, results: list[Result], started: float) -> None:
    counts = {o: 0 for o in Outcome}
    for r in results:
        counts[r.outcome] += 1
    log.info(
        "%s batch: %d delivered, %d temporary, %d permanent in %.3f s",
        kind,
        counts[Outcome.DELIVERED],
        counts[Outcome.TEMPORARY],
        counts[Outcome.PERMANENT],
        time.perf_counter() - started,
    )


def _log_failure(result: Result) -> None:
    if not result.delivered:
        log.warning("notification %s: %s failure: %s", result.message_id, result.outcome.value, result.reason)


# --------------------------------------------------------------------------- Maildir

_syncfs = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _syncfs = _libc.syncfs
        _syncfs.argtypes = [ctypes.c_int]
        _syncfs.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        _syncfs = None


class MaildirTransport:
    """A real Maildir (``tmp/``, ``new/``, ``cur/``; created if missing): each message is
    written to ``tmp/`` under a unique name and renamed into ``new/``, as a mail delivery agent
    does, mode 0600 (messages carry access codes).

    ``sync`` says when a delivered message is known to be on disk:

    * ``"batch"`` (default) — write the whole batch, then one ``syncfs`` of the file system
      (Linux) and an ``fsync`` of ``new/``; results are reported after that. A crash before it
      can only cause a resend with the same Message-ID;
    * ``"file"`` — ``fsync`` every file before its rename (the qmail protocol; several threads);
    * ``"none"`` — leave it to the kernel (tests, throw-away demos).
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: Literal["batch", "file", "none"] = "batch", threads: int = 8):
        if sync not in ("batch", "file", "none"):
            raise ValueError("sync must be 'batch', 'file' or 'none'")
        self.path = Path(path)
        # tmp/ new/ cur/, private; safe when several processes start on the same Maildir at once
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        mailbox.Maildir(str(self.path), create=False)  # what mail readers will open
        self.sync = sync
        self._tmp_dir = os.path.join(str(self.path), "tmp", "")
        self._new_dir = os.path.join(str(self.path), "new", "")
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        host = socket.gethostname() or "localhost"
        self._host = host.replace("/", r"\057").replace(":", r"\072")

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self.path)!r}, sync={self.sync!r})"

    def _unique_name(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1e6)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def _write(self, data: bytes, fsync: bool) -> str:
        name = self._unique_name()
        tmp = self._tmp_dir + name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = os.write(fd, data)
            if written < len(data):  # a short write (rare): the rest
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        try:
            os.rename(tmp, self._new_dir + name)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return name

    def _deliver(self, msg: EmailMessage) -> Result:
        mid = message_id_of(msg)
        try:
            _, rcpts = envelope(msg)
            problem = _recipient_problem(rcpts)
            if problem is not None:
                return Result(Outcome.PERMANENT, problem, mid)
            data = wire_bytes(msg)
        except Exception as exc:  # a message that cannot be serialized will never be
            return Result(Outcome.PERMANENT, scrub(f"cannot serialize the message: {exc}"), mid)
        try:
            self._write(data, self.sync == "file")
        except OSError as exc:
            return Result(Outcome.TEMPORARY, scrub(f"cannot write to the Maildir: {exc.strerror or exc}"), mid)
        return Result(Outcome.DELIVERED, "", mid)

    def send_many(self, messages: Sequence[EmailMessage]) -> list[Result]:
        started = time.perf_counter()
        if self.sync == "file" and len(messages) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="maildir")
            results = list(self._pool.map(self._deliver, messages))
        else:
            results = [self._deliver(m) for m in messages]
        if self.sync != "none" and any(r.delivered for r in results):
            try:
                self._sync_to_disk()
            except OSError as exc:
                reason = scrub(f"cannot sync the Maildir: {exc.strerror or exc}")
                results = [Result(Outcome.TEMPORARY, reason, r.message_id) if r.delivered else r for r in results]
        for r in results:
            _log_failure(r)
        _summary("maildir", results, started)
        return results

    def _sync_to_disk(self) -> None:
        fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            if self.sync == "batch":
                if _syncfs is not None:
                    if _syncfs(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                else:  # pragma: no cover - other systems: flush everything
                    os.sync()
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "MaildirTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- SMTP

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
            problem = _recipient_problem(rcpts)
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
            _log_failure(r)
        _summary("smtp", final, started)
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


# --------------------------------------------------------------------------- factory


def transport_from_settings(smtp_url: str | None, maildir: str | os.PathLike[str], **options: object) -> Transport:
    """SMTP when ``RESTITUTION_SMTP_URL`` is set (non-empty), else the Maildir at
    ``RESTITUTION_MAILDIR``. ``options`` go to the chosen class (``timeout=``, ``sync=``…)."""
    if smtp_url and smtp_url.strip():
        return SmtpTransport(smtp_url, **options)  # type: ignore[arg-type]
    return MaildirTransport(maildir, **options)  # type: ignore[arg-type]

