"""How the claimant is reached: e-mail address, phone and language (docs/formats.md).

Phones may be typed with spaces, hyphens and parentheses (``+7 (701) 234-56-78``); the clean
value is E.164 (``+77012345678``). The national trunk form ``8 701 …`` is refused with a
message asking for ``+7``: it is ambiguous once the number leaves Kazakhstan.

E-mail addresses follow email-validator's rules and normalization (no deliverability check).
The addresses nearly everyone types take a shortcut with the same result, and the check of a
domain — most of the work — is done once per domain (:func:`validate_email`).
:func:`email_key` is the key addresses are compared on (``duplicate_email``, docs/lifecycle.md).

Messages never contain the value that was checked: e-mail addresses and phones are personal
data and 422 bodies may end up in logs. ``email_validator`` is imported on first use only.
"""

from __future__ import annotations

import re
from functools import lru_cache

from claims.validators.common import ValidationFailed, required_text

__all__ = [
    "LANGUAGES",
    "validate_phone",
    "validate_email",
    "email_message",
    "email_key",
    "validate_language",
]

LANGUAGES = ("kk", "ru", "en")


# --------------------------------------------------------------------------------------
# Phones

_PHONE_SEPARATORS = str.maketrans("", "", " \u00a0-()")
_KZ_PHONE = re.compile(r"\+7[0-9]{10}")


def validate_phone(phone: object) -> str:
    """A Kazakhstan phone in E.164: ``+7`` and 10 digits; returns ``+7XXXXXXXXXX``.

    Spaces, hyphens and parentheses in the input are ignored; nothing else is.
    """
    text = required_text("phone", phone, what="a phone number")
    compact = text.translate(_PHONE_SEPARATORS)
    if _KZ_PHONE.fullmatch(compact):
        return compact
    if not re.fullmatch(r"\+?[0-9]+", compact):
        raise ValidationFailed(
            "phone", "may contain only +, digits, spaces, hyphens and parentheses"
        )
    if not compact.startswith("+"):
        raise ValidationFailed(
            "phone",
            "must be in international form: +7 followed by 10 digits (e.g. +7 701 234 5678)",
        )
    if not compact.startswith("+7"):
        raise ValidationFailed("phone", "must be a Kazakhstan number: +7 followed by 10 digits")
    raise ValidationFailed("phone", f"must have 10 digits after +7, not {len(compact) - 2}")


# --------------------------------------------------------------------------------------
# E-mail addresses


def validate_email(email: object) -> str:
    """A syntactically valid e-mail address, normalized (no deliverability check).

    The rules and the normalization are email-validator's. The addresses nearly everyone
    types (:data:`_SIMPLE_EMAIL`) take a shortcut with the same result: their local part is
    kept as typed, and their domain's check — most of the cost — is done once per domain."""
    text = required_text("email", email, what="an e-mail address")
    simple = _SIMPLE_EMAIL.fullmatch(text)
    if simple is not None:
        normalized = _simple_email(simple[1], simple[2])
        if normalized is not None:
            return normalized
    from email_validator import EmailNotValidError
    from email_validator import validate_email as _ev

    try:
        result = _ev(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationFailed("email", email_message(str(exc))) from None
    return result.normalized


# An ASCII dot-atom local part of letters, digits and ``_+-`` (always valid and kept as typed
# by email-validator), then an ASCII domain (checked by email-validator on its own).
_SIMPLE_EMAIL = re.compile(r"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)@([A-Za-z0-9.-]+)")
_EMAIL_MAX_LENGTH = 254  # email-validator's limits (RFC 5321), bytes
_LOCAL_PART_MAX_LENGTH = 64


def _simple_email(local: str, domain: str) -> str | None:
    """email-validator's normalized form of ``local@domain`` (a :data:`_SIMPLE_EMAIL` match),
    or None when the full check must decide (a bad domain — for its message —, a length
    limit, a role mailbox such as ``Info@`` that email-validator lower-cases)."""
    import email_validator

    names = _email_domain(domain, email_validator.TEST_ENVIRONMENT,
                          email_validator.GLOBALLY_DELIVERABLE)
    if names is None or len(local) > _LOCAL_PART_MAX_LENGTH:
        return None
    if local.lower() in _case_insensitive_mailboxes():
        return None
    normalized, ascii_domain = names
    longest = max(len(domain), len(normalized.encode()), len(ascii_domain))
    if len(local) + 1 + longest > _EMAIL_MAX_LENGTH:
        return None
    return f"{local}@{normalized}"


@lru_cache(maxsize=4096)
def _email_domain(domain: str, test_environment: bool,
                  globally_deliverable: bool) -> tuple[str, str] | None:
    """email-validator's ``(domain, ascii_domain)`` for ``domain`` (its check of the part
    after the @-sign depends on nothing else but these two settings), or None when bad."""
    from email_validator import EmailNotValidError
    from email_validator import validate_email as _ev

    try:
        result = _ev("a@" + domain, check_deliverability=False,
                     test_environment=test_environment,
                     globally_deliverable=globally_deliverable)
    except EmailNotValidError:
        return None
    return result.domain, result.ascii_domain


@lru_cache(maxsize=1)
def _case_insensitive_mailboxes() -> frozenset[str]:
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

    return frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def email_message(msg: str) -> str:
    """Our message for email-validator's refusal ``msg``: without its "The email address is
    not valid." preamble (the field already says which value is meant)."""
    msg = msg.strip()
    for prefix in ("The email address is not valid. ", "The e-mail address is not valid. "):
        if msg.startswith(prefix) and len(msg) > len(prefix):
            msg = msg[len(prefix):]
    return msg or "is not a valid e-mail address"


def email_key(email: str) -> str:
    """Comparison key of a (validated) e-mail for ``duplicate_email``: case-folded."""
    return email.strip().casefold()


# --------------------------------------------------------------------------------------
# Language of correspondence


def validate_language(lang: object) -> str:
    """``kk``, ``ru`` or ``en`` (:data:`LANGUAGES`): the language of the claimant's notices."""
    text = required_text("language", lang)
    if text not in LANGUAGES:
        raise ValidationFailed("language", "must be kk, ru or en")
    return text
