"""The email itself: headers, the two parts, and the bytes sent.

:func:`build_message` turns a rendered (subject, text, html) into a :class:`RenderedMessage`
(``multipart/alternative``: ``text/plain`` then ``text/html``) with the headers From, To,
Subject (RFC 2047 for non-ASCII), Date, ``Message-ID: <notification-{id}@{domain}>`` (derived
from the notification id only, so a retry resends the same id and a receiver can drop the
duplicate), ``Content-Language``, ``Auto-Submitted: auto-generated``,
``X-Auto-Response-Suppress: All`` and ``X-Restitution-Kind``.

Bodies are 7bit when ASCII, 8bit UTF-8 when every line fits in 998 bytes (as the standard
library's default policy chooses; SMTP then announces ``BODY=8BITMIME`` and falls back to base64
for a server without it), base64 otherwise.

The standard library's email generator and parser cost more than the rest of a message's work,
so the message is composed here as bytes directly and the returned :class:`RenderedMessage`
carries them; :mod:`notifications.transport` sends those bytes unless the message was changed
after rendering (then the standard generator serializes it). The object is a complete
``EmailMessage``: headers, ``get_body()``, ``get_content()`` all work — its header list and
parts are built the first time they are used (a message that is only sent never needs them).
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import default as DEFAULT_POLICY
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from notifications.context import LINE_BREAKS, RenderError

_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BARE_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")


_BUILD_LOCK = threading.RLock()


class RenderedMessage(EmailMessage):
    """An ``EmailMessage`` that also holds its serialization, composed while rendering.

    ``wire_bytes()`` returns the message as bytes with ``\\n`` line ends (a Maildir file; SMTP
    turns them into CRLF). If headers or parts were changed after rendering, it falls back to
    the standard generator, so the bytes always describe the object.

    A rendered message is usually only sent, so its ``EmailMessage`` state (header list, the
    two parts) is built the first time anything reads or changes it, not while rendering;
    until then ``wire_bytes()`` and ``wire_message_id()`` answer from the composed bytes.
    """

    envelope_from: str
    envelope_to: list[str]
    smtputf8: bool
    #: a part is sent as 8bit UTF-8 (SMTP needs the server's 8BITMIME, else ``seven_bit_bytes``)
    eight_bit: bool

    @classmethod
    def _composed(cls, headers: list[tuple[str, str]], parts: list[tuple[str, str, str]], wire: bytes,
                  sources: tuple[str, str, str, str]) -> "RenderedMessage":
        msg = cls.__new__(cls)
        msg.__dict__.update(_pending=(headers, parts), _wire=wire, _sources=sources)
        return msg

    def __getattr__(self, name: str) -> Any:
        # Only called for an attribute the object does not have (yet): build the EmailMessage
        # state once (under a lock: another thread may look at the same message), then look again.
        if name.startswith("__"):
            raise AttributeError(name)
        with _BUILD_LOCK:
            pending = self.__dict__.pop("_pending", None)
            if pending is not None:
                self._build(*pending)
        if name in self.__dict__:
            return self.__dict__[name]
        raise AttributeError(name)

    def _build(self, headers: list[tuple[str, str]], parts: list[tuple[str, str, str]]) -> None:
        EmailMessage.__init__(self, policy=DEFAULT_POLICY)
        for key, value in headers:
            self.set_raw(key, value)
        payload = []
        for ctype, cte, body in parts:
            part = EmailMessage(policy=DEFAULT_POLICY)
            part.set_raw("Content-Type", ctype)
            part.set_raw("Content-Transfer-Encoding", cte)
            # 8bit bytes surrogate-escaped, as the email parser holds them
            part.set_payload(body.encode("utf-8").decode("ascii", "surrogateescape") if cte == "8bit" else body)
            payload.append(part)
        self.set_payload(payload)
        self._wire_snapshot = _snapshot(self)

    def _unchanged(self) -> bool:
        return "_pending" in self.__dict__ or _snapshot(self) == self._wire_snapshot

    def wire_bytes(self) -> bytes:
        wire = self.__dict__.get("_wire")
        if wire is not None and self._unchanged():
            return wire
        return self.as_bytes(policy=self.policy.clone(linesep="\n"))

    def wire_message_id(self) -> str | None:
        """The Message-ID as written."""
        pending = self.__dict__.get("_pending")
        if pending is not None:
            return next((v for k, v in pending[0] if k == "Message-ID"), None)
        for key, value in self.raw_items():
            if key.lower() == "message-id":
                return " ".join(str(value).split()) or None
        return None

    def seven_bit_bytes(self) -> bytes:
        """The same message with base64 parts, for an SMTP server without 8BITMIME."""
        sources = self.__dict__.get("_sources")
        if sources is None or not self._unchanged():
            return self.as_bytes(policy=self.policy.clone(linesep="\n", cte_type="7bit"))
        wire, _, _ = _compose(*sources, allow_8bit=False)
        return wire


def _snapshot(msg: EmailMessage) -> tuple[Any, ...]:
    payload = msg._payload  # type: ignore[attr-defined]
    if not isinstance(payload, list):
        return (tuple(msg._headers), payload)  # type: ignore[attr-defined]
    return (
        tuple(msg._headers),  # type: ignore[attr-defined]
        tuple((tuple(p._headers), p._payload) for p in payload),
    )


@lru_cache(maxsize=64)
def _from_header(mail_from: str) -> tuple[str, str]:
    """(header value, envelope sender) for a configured sender such as ``Name <a@b>``."""
    if LINE_BREAKS.search(mail_from) or "\n" in mail_from:
        raise RenderError("mail_from must be one line")
    name, addr = parseaddr(mail_from)
    if not addr or "@" not in addr:
        raise RenderError("mail_from is not an email address")
    if mail_from.isascii():
        return mail_from, addr
    return formataddr((name, addr), charset="utf-8"), addr


def _to_header(to: str) -> tuple[str, list[str], bool]:
    """(header value, envelope recipients, needs SMTPUTF8) for the recipient(s)."""
    if not to or "\n" in to or "\r" in to or "\x00" in to:
        raise RenderError("the recipient must be one line")
    if _BARE_ADDRESS.fullmatch(to):
        if to.isascii():
            return to, [to], False
        local, _, domain = to.rpartition("@")
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
        addr = f"{local}@{domain}"
        return addr, [addr], not addr.isascii()
    pairs = getaddresses([to])
    rcpts = [addr for _, addr in pairs if addr] or [to]
    if to.isascii():
        return to, rcpts, False
    value = ", ".join(formataddr((n, a), charset="utf-8") if n else a for n, a in pairs)
    return value, rcpts, not value.isascii()


def _encode_subject(subject: str) -> str:
    if subject.isascii() and "=?" not in subject:
        if len(subject) <= 66:
            return subject
        lines: list[str] = []  # fold at spaces (unfolding gives the spaces back)
        for word in subject.split(" "):
            if lines and len(lines[-1]) + 1 + len(word) <= 66:
                lines[-1] += " " + word
            else:
                lines.append(word)
        if all(0 < len(line) <= 76 for line in lines):
            return "\n ".join(lines)
    # RFC 2047 encoded words of at most 42 UTF-8 bytes (56 base64 characters, so that even the
    # first line with "Subject: " stays within 78 characters), never splitting a
    # character, folded one word per line.
    raw = subject.encode("utf-8")
    words: list[str] = []
    start, end = 0, len(raw)
    while start < end:
        stop = min(start + 42, end)
        while stop < end and (raw[stop] & 0xC0) == 0x80:  # a continuation byte: back off
            stop -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:stop]).decode('ascii')}?=")
        start = stop
    return "\n ".join(words)


@lru_cache(maxsize=16)
def _id_domain(public_url: str) -> str:
    host = urlsplit(public_url).hostname
    if not host:
        raise RenderError("public_url has no host")
    return host


def _message_id_domain(host: str) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]"  # an IPv6 literal
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise RenderError("domain_for_message_id is not a domain") from None
    if not _DOMAIN_RE.fullmatch(host):
        raise RenderError("domain_for_message_id is not a domain")
    return host


_now_cache: tuple[int, str] = (-1, "")


def _now_header() -> str:
    """The Date header for now (UTC), made once a second: the header has no finer unit."""
    global _now_cache
    second = int(time.time())
    cached = _now_cache
    if cached[0] != second:
        cached = _now_cache = (second, format_datetime(datetime.fromtimestamp(second, timezone.utc)))
    return cached[1]


def message_id(notification_id: int | str, domain: str) -> str:
    """``<notification-{id}@{domain}>``: the same notification always gets the same id."""
    return f"<notification-{notification_id}@{domain}>"


def _part(text: str, subtype: str, boundary: str, allow_8bit: bool = True) -> tuple[str, str, str]:
    """(Content-Type, Content-Transfer-Encoding, payload).

    7bit for plain ASCII, 8bit for UTF-8 text with lines of at most 998 bytes (readable files,
    smaller messages, fewer lines for a server to read; SMTP announces ``BODY=8BITMIME``), else
    base64.
    """
    if not text.endswith("\n"):
        text += "\n"
    ctype = f'text/{subtype}; charset="utf-8"'
    data = text.encode("utf-8")
    if ("--" + boundary) not in text and max(map(len, data.split(b"\n"))) <= 998:
        if len(data) == len(text):
            return ctype, "7bit", text
        if allow_8bit:
            return ctype, "8bit", text
    return ctype, "base64", _base64_lines(data)


_BASE64_LINE = re.compile(r".{1,76}")


def _base64_lines(data: bytes) -> str:
    """Base64 in lines of 76 characters, each ending with a newline (as ``encodebytes``)."""
    encoded = binascii.b2a_base64(data, newline=False).decode("ascii")
    return "\n".join(_BASE64_LINE.findall(encoded)) + "\n"

def notification_id_text(notification_id: int | str) -> str:
    """The notification id as it appears in the Message-ID and the MIME boundary."""
    nid = str(notification_id)
    if not _ID_RE.fullmatch(nid):
        raise RenderError("notification_id must be 1-64 letters, digits, '.', '_' or '-'")
    return nid


def message_id_domain(domain_for_message_id: str | None, public_url: str) -> str:
    """The Message-ID's domain: ``domain_for_message_id``, else the host of ``public_url``."""
    return _message_id_domain(domain_for_message_id or _id_domain(public_url))


def build_message(
    kind: str,
    language: str,
    subject: str,
    text: str,
    html: str,
    *,
    mail_from: str,
    to: str,
    nid: str,
    domain: str,
    date: datetime | None,
) -> "RenderedMessage":
    """The ``multipart/alternative`` email of a rendered notification, composed as bytes, with
    its SMTP envelope (sender, recipients, whether it needs SMTPUTF8 or 8BITMIME)."""
    from_value, envelope_from = _from_header(mail_from)
    to_value, envelope_to, smtputf8 = _to_header(to)
    boundary = f"==restitution-{nid}=="
    headers = [
        ("From", from_value),
        ("To", to_value),
        ("Subject", _encode_subject(subject)),
        ("Date", format_datetime(date) if date is not None else _now_header()),
        ("Message-ID", message_id(nid, domain)),
        ("Content-Language", language),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
        ("X-Restitution-Kind", kind),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative;\n boundary="{boundary}"'),
    ]

    head = "".join(f"{name}: {value}\n" for name, value in headers) + "\n"
    wire, parts, eight_bit = _compose(head, boundary, text, html, allow_8bit=True)
    msg = RenderedMessage._composed(headers, parts, wire, (head, boundary, text, html))
    msg.envelope_from = envelope_from
    msg.envelope_to = envelope_to
    msg.smtputf8 = smtputf8
    msg.eight_bit = eight_bit
    return msg


def _compose(head: str, boundary: str, text: str, html: str, *, allow_8bit: bool) -> tuple[bytes, list[tuple[str, str, str]], bool]:
    """(the message's bytes, its parts as (Content-Type, Content-Transfer-Encoding, payload),
    whether a part is 8bit)."""
    pieces = [head]
    parts = []
    eight_bit = False
    for body, subtype in ((text, "plain"), (html, "html")):
        ctype, cte, payload = _part(body, subtype, boundary, allow_8bit)
        eight_bit = eight_bit or cte == "8bit"
        parts.append((ctype, cte, payload))
        pieces.append(f"--{boundary}\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n{payload}\n")
    pieces.append(f"--{boundary}--\n")
    return "".join(pieces).encode("utf-8"), parts, eight_bit
