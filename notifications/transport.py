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

The transports live in :mod:`notifications.smtp` and :mod:`notifications.maildir`, what they
share (results, envelopes, recipient checks, log-safe reasons) in :mod:`notifications.sending`;
this module names them all and picks one.
"""

from __future__ import annotations

import os

from notifications.maildir import MaildirTransport
from notifications.sending import (
    Outcome,
    Result,
    Transport,
    address_problem,
    envelope,
    mask_address,
    message_id_of,
    scrub,
    wire_bytes,
)
from notifications.smtp import SmtpTransport, SmtpUrl, parse_smtp_url

__all__ = [
    "MaildirTransport", "Outcome", "Result", "SmtpTransport", "SmtpUrl", "Transport",
    "address_problem", "envelope", "mask_address", "message_id_of", "parse_smtp_url", "scrub",
    "transport_from_settings", "wire_bytes",
]


def transport_from_settings(smtp_url: str | None, maildir: str | os.PathLike[str], **options: object) -> Transport:
    """SMTP when ``RESTITUTION_SMTP_URL`` is set (non-empty), else the Maildir at
    ``RESTITUTION_MAILDIR``. ``options`` go to the chosen class (``timeout=``, ``sync=``…)."""
    if smtp_url and smtp_url.strip():
        return SmtpTransport(smtp_url, **options)  # type: ignore[arg-type]
    return MaildirTransport(maildir, **options)  # type: ignore[arg-type]

