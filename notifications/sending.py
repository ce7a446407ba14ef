"""What both transports share: the result of sending a message, and what a message is to send.

A transport answers one :class:`Result` per message (:class:`Outcome` ``delivered``,
``temporary`` or ``permanent``, with a reason). Reasons never carry a full email address
(:func:`scrub` masks them: ``v***@example.kz``) and messages' content is never logged, so
access codes and confirmation codes stay out of logs.

A message's envelope, Message-ID and bytes are read from what :mod:`notifications.render`
composed when it is a rendered message, else from its headers (any ``EmailMessage``).
"""

from __future__ import annotations

import enum
import logging
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Protocol, Sequence

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


def recipient_problem(rcpts: list[str]) -> str | None:
    """Why a message cannot go to ``rcpts`` (the first bad one, masked), or ``None``."""
    if not rcpts:
        return "no recipient address"
    for rcpt in rcpts:
        problem = address_problem(rcpt)
        if problem is not None:
            return f"{problem}: {mask_address(rcpt)}"
    return None


def log_summary(kind: str, results: list[Result], started: float) -> None:
    """One log line per batch: how many messages were delivered, deferred and refused."""
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


def log_failure(result: Result) -> None:
    """A warning for a message not delivered, with its Message-ID and the (scrubbed) reason."""
    if not result.delivered:
        log.warning("notification %s: %s failure: %s", result.message_id, result.outcome.value, result.reason)
