"""Validation of a claimant's identity, contact details and payout address.

docs/formats.md describes these formats for the people who type them; this module is the only
place that implements them. Every check raises :class:`ValidationFailed` naming the field the
API and the CSV import report (docs/api.md: a 422 lists every bad field), and
:func:`validate_claim_fields` checks a whole claim at once, raising :class:`FieldErrors` with
*every* bad field.

Input conventions (the same for every text field):

* Surrounding whitespace is ignored; the cleaned values have none.
* Phones may be typed with spaces, hyphens and parentheses (``+7 (701) 234-56-78``); the clean
  value is E.164 (``+77012345678``). The national trunk form ``8 701 …`` is refused with a
  message asking for ``+7``: it is ambiguous once the number leaves Kazakhstan.
* Ethereum addresses come back EIP-55 checksummed; all-lower/all-upper input is accepted with a
  warning (its checksum cannot be checked). TRON addresses come back as given.
* Evidence transaction hashes: Ethereum ``0x`` + 64 hex; TRON 64 hex with or without ``0x``.
  Clean values are lower case; TRON ones without ``0x`` (the form TRON explorers show).

Messages never contain the value that was checked: IINs, e-mail addresses and phones are
personal data and 422 bodies may end up in logs.

Import cost: only the standard library and ``base58`` at import time; ``eth_hash`` (keccak)
and ``email_validator`` are imported on first use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import base58

from claims.money import parse_amount

__all__ = [
    "ValidationFailed",
    "FieldErrors",
    "ErrorCollector",
    "NETWORKS",
    "LANGUAGES",
    "validate_iin",
    "iin_sex",
    "make_iin",
    "validate_tron_address",
    "validate_eth_address",
    "to_checksum_address",
    "validate_payout_address",
    "validate_any_address",
    "validate_network",
    "detect_network",
    "normalize_address_key",
    "make_tron_address",
    "make_eth_address",
    "validate_phone",
    "validate_email",
    "email_key",
    "validate_full_name",
    "name_key",
    "validate_language",
    "validate_tx_hash",
    "validate_date_of_birth",
    "validate_case_code",
    "validate_claim_fields",
]

T = TypeVar("T")

NETWORKS = ("tron", "ethereum")
LANGUAGES = ("kk", "ru", "en")
MAX_NAME_LEN = 200
MAX_SCHEME_ACCOUNT_LEN = 100
MAX_EVIDENCE_HASHES = 100


# --------------------------------------------------------------------------------------
# Errors


class ValidationFailed(ValueError):
    """One bad field: ``field`` is the name the API reports, ``message`` plain English."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class FieldErrors(ValueError):
    """Several bad fields at once; ``errors`` is ``[{"field", "message"}, ...]`` in order."""

    def __init__(self, errors: Iterable[Mapping[str, str] | tuple[str, str]]) -> None:
        items: list[dict[str, str]] = []
        for e in errors:
            if isinstance(e, tuple):
                field, message = e
            else:
                field, message = e["field"], e["message"]
            items.append({"field": field, "message": message})
        if not items:
            raise ValueError("FieldErrors needs at least one error")
        self.errors = items
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in items))

    @property
    def fields(self) -> list[str]:
        return [e["field"] for e in self.errors]


class ErrorCollector:
    """Collects every bad field (and warning) of one record, then raises them together.

    >>> errs = ErrorCollector()
    >>> iin = errs.check("iin", validate_iin, "791028302728")
    >>> with errs.field("phone"):
    ...     phone = validate_phone("+7 701 234 56 78")
    >>> errs.raise_if_any()

    A :class:`ValidationFailed` keeps its own field (``validate_iin`` may name
    ``date_of_birth``); any other ``ValueError`` (e.g. ``claims.money.AmountError``) is filed
    under the field given here.
    """

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def warn(self, field: str, message: str) -> None:
        self.warnings.append({"field": field, "message": message})

    def has(self, field: str) -> bool:
        return any(e["field"] == field for e in self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def _record(self, field: str, exc: ValueError) -> None:
        if isinstance(exc, FieldErrors):
            self.errors.extend(exc.errors)
        elif isinstance(exc, ValidationFailed):
            self.add(exc.field, exc.message)
        else:
            self.add(field, str(exc))

    @contextmanager
    def field(self, field: str) -> Iterator[None]:
        """``with errs.field("x"): ...`` — a ``ValueError`` inside is recorded, not raised."""
        try:
            yield
        except ValueError as exc:
            self._record(field, exc)

    def check(self, field: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args)``; on a ``ValueError`` record it and return ``None``."""
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            self._record(field, exc)
            return None

    def raise_if_any(self) -> None:
        if self.errors:
            raise FieldErrors(self.errors)


# --------------------------------------------------------------------------------------
# Small helpers


def _text(field: str, value: object, *, what: str = "text") -> str:
    """A required string, stripped; ``None``/missing/blank → "is required"."""
    if value is None:
        raise ValidationFailed(field, "is required")
    if not isinstance(value, str):
        raise ValidationFailed(field, f"must be {what} (a string)")
    value = value.strip()
    if not value:
        raise ValidationFailed(field, "is required")
    return value


def _has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


# Control characters: Unicode categories Cc (C0, DEL, C1) and Cs (surrogates) — both fixed
# ranges — and the bidirectional embedding/override/isolate controls (invisible, used to
# spoof text).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


# --------------------------------------------------------------------------------------
# IIN (Kazakhstan individual identification number)

_IIN_RE = re.compile(r"[0-9]{12}")
_IIN_W1 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
_IIN_W2 = (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2)
_IIN_W_SUM = sum(_IIN_W1)  # == sum(_IIN_W2)
# digit 7 → (first year of the century, sex)
_IIN_CENTURY = {
    "1": (1800, "male"),
    "2": (1800, "female"),
    "3": (1900, "male"),
    "4": (1900, "female"),
    "5": (2000, "male"),
    "6": (2000, "female"),
}


def _iin_check_digit(first11: str) -> int | None:
    """The check digit of 11 digits, or ``None`` when both weight sets give 10."""
    digits = first11.encode()  # ASCII digits: d - 48 is the digit
    s = (sum(map(int.__mul__, digits, _IIN_W1)) - 48 * _IIN_W_SUM) % 11
    if s == 10:
        s = (sum(map(int.__mul__, digits, _IIN_W2)) - 48 * _IIN_W_SUM) % 11
        if s == 10:
            return None
    return s


def validate_iin(iin: object, date_of_birth: dt.date | None = None) -> dt.date:
    """Check an IIN and return the birth date it encodes.

    Raises :class:`ValidationFailed` on field ``iin`` — or on ``date_of_birth`` when the IIN is
    valid but its birth date differs from ``date_of_birth``.
    """
    iin = _text("iin", iin)
    if not _IIN_RE.fullmatch(iin):
        if len(iin) != 12 and iin.isascii() and iin.isdigit():
            raise ValidationFailed("iin", f"must have exactly 12 digits (got {len(iin)})")
        raise ValidationFailed("iin", "must be exactly 12 digits (0-9), nothing else")
    century_digit = iin[6]
    if century_digit not in _IIN_CENTURY:
        raise ValidationFailed(
            "iin",
            f"digit 7 of an IIN (century and sex) must be 1 to 6, not {century_digit}",
        )
    century, _sex = _IIN_CENTURY[century_digit]
    try:
        birth = dt.date(century + int(iin[0:2]), int(iin[2:4]), int(iin[4:6]))
    except ValueError:
        raise ValidationFailed(
            "iin", "digits 1-6 of an IIN (birth date YYMMDD) are not a real date"
        ) from None
    expected = _iin_check_digit(iin[:11])
    if expected is None:
        raise ValidationFailed("iin", "is not a valid IIN: these digits cannot have a check digit")
    if expected != int(iin[11]):
        raise ValidationFailed("iin", "IIN check digit is wrong — check for a typo")
    if birth > dt.date.today():
        raise ValidationFailed("iin", "the birth date in the IIN is in the future")
    if date_of_birth is not None and date_of_birth != birth:
        raise ValidationFailed("date_of_birth", "does not match the birth date in the IIN")
    return birth


def iin_sex(iin: str) -> str:
    """``"male"`` or ``"female"`` from digit 7 of a (validated) IIN."""
    validate_iin(iin)
    return _IIN_CENTURY[iin.strip()[6]][1]


def make_iin(birth_date: dt.date, sex: str, serial: int = 0) -> str:
    """A valid IIN for tests and the demo.

    ``sex`` is ``"male"``/``"female"`` (or ``"M"``/``"F"``); ``serial`` 0..9999 fills digits
    8-11. A serial whose check digit would be 10 under both weight sets is skipped: the next
    serial (wrapping at 10000) is used, so the result's serial may be ``serial + 1``.
    """
    s = sex.strip().lower()
    if s in ("m", "male"):
        odd = True
    elif s in ("f", "female"):
        odd = False
    else:
        raise ValueError("sex must be 'male' or 'female' ('M' or 'F')")
    if not 1800 <= birth_date.year <= 2099:
        raise ValueError("an IIN encodes birth years 1800 to 2099 only")
    if not 0 <= serial <= 9999:
        raise ValueError("serial must be 0..9999")
    century_digit = {1800: 1, 1900: 3, 2000: 5}[birth_date.year // 100 * 100] + (0 if odd else 1)
    head = f"{birth_date:%y%m%d}{century_digit}"
    for k in range(10000):
        first11 = f"{head}{(serial + k) % 10000:04d}"
        check = _iin_check_digit(first11)
        if check is not None:
            return f"{first11}{check}"
    raise AssertionError("unreachable: some serial always has a check digit")


# --------------------------------------------------------------------------------------
# TRON (TRC-20) addresses

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_SET = frozenset(_B58_ALPHABET)
# A base58 text's bytes → its digits' values (for ``bytes.translate``).
_B58_DIGITS = bytes.maketrans(_B58_ALPHABET.encode(), bytes(range(58)))
_TRON_PREFIX = 0x41
_ETH_SHAPE = re.compile(r"0[xX][0-9a-fA-F]{40}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_TRON_HEX = re.compile(r"41[0-9a-fA-F]{40}")


def _b58check_checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def _b58_tron_payload(addr: str) -> bytes | None:
    """The 25 bytes (prefix, account id, checksum) of a base58 TRON address, or None when its
    number is not a version-``0x41`` payload of that size. ``addr`` is base58 and starts with
    ``T`` (no leading ``1``: no leading zero bytes), so the number alone decides."""
    n = 0
    for digit in addr.encode().translate(_B58_DIGITS):
        n = n * 58 + digit
    if n >> 192 != _TRON_PREFIX:
        return None
    return n.to_bytes(25, "big")


def _looks_tron(addr: str) -> bool:
    return len(addr) == 34 and addr[0] == "T" and set(addr) <= _B58_SET


def validate_tron_address(addr: object, *, field: str = "payout_address") -> str:
    """Check a TRON base58check address (``T…``, 34 characters); return it stripped."""
    addr = _text(field, addr, what="an address")
    if _ETH_SHAPE.fullmatch(addr):
        raise ValidationFailed(field, "this is an Ethereum address; the network is tron")
    if _TRON_HEX.fullmatch(addr) or (addr[:2] in ("0x", "0X") and _TRON_HEX.fullmatch(addr[2:])):
        raise ValidationFailed(
            field, "this is a TRON address in hex form; give its base58 form starting with T"
        )
    if not addr.startswith("T"):
        raise ValidationFailed(field, "a TRON address starts with T")
    if not _B58_SET.issuperset(addr):
        bad = sorted({c for c in addr if c not in _B58_SET})
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValidationFailed(
            field,
            f"a TRON address uses base58 letters and digits only (no 0, O, I or l); "
            f"found {shown}",
        )
    if len(addr) != 34:
        raise ValidationFailed(field, f"a TRON address has 34 characters, not {len(addr)}")
    raw = _b58_tron_payload(addr)
    if raw is None:
        raise ValidationFailed(field, "is not a TRON address — check for a typo")
    if _b58check_checksum(raw[:21]) != raw[21:]:
        raise ValidationFailed(field, "TRON address checksum does not match — check for a typo")
    if raw[1:21] == bytes(20):
        raise ValidationFailed(field, "this is the TRON zero address; it cannot receive payouts")
    return addr


def make_tron_address(payload20: bytes) -> str:
    """The base58check TRON address of a 20-byte account id (for tests and the demo)."""
    if len(payload20) != 20:
        raise ValueError("a TRON account id has 20 bytes")
    raw = bytes([_TRON_PREFIX]) + bytes(payload20)
    return base58.b58encode(raw + _b58check_checksum(raw)).decode("ascii")


# --------------------------------------------------------------------------------------
# Ethereum (ERC-20) addresses


@lru_cache(maxsize=1)
def _keccak() -> Callable[[bytes], bytes]:
    from eth_hash.auto import keccak  # a costly import: on first use only

    return keccak


def to_checksum_address(addr: str) -> str:
    """EIP-55 form of ``0x`` + 40 hex (no validation beyond the shape)."""
    if not _ETH_SHAPE.fullmatch(addr):
        raise ValueError("an Ethereum address is 0x followed by 40 hexadecimal characters")
    lower = addr[2:].lower()
    digest = _keccak()(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c in "abcdef" and int(h, 16) >= 8 else c for c, h in zip(lower, digest)
    )


def validate_eth_address(addr: object, *, field: str = "payout_address") -> tuple[str, list[str]]:
    """Check ``0x`` + 40 hex with EIP-55; return ``(checksummed, warnings)``.

    Mixed case must match the checksum. All lower or all upper case (with any letter not in
    checksum form) is accepted with a warning.
    """
    addr = _text(field, addr, what="an address")
    if _looks_tron(addr):
        raise ValidationFailed(field, "this is a TRON address; the network is ethereum")
    if _HEX40.fullmatch(addr):
        raise ValidationFailed(field, "an Ethereum address starts with 0x")
    if not addr.startswith("0x"):
        if addr.startswith("0X"):
            raise ValidationFailed(field, "an Ethereum address starts with 0x (lower-case x)")
        raise ValidationFailed(field, "an Ethereum address starts with 0x")
    body = addr[2:]
    bad = sorted({c for c in body if c not in "0123456789abcdefABCDEF"})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValidationFailed(
            field, f"an Ethereum address has only hexadecimal digits (0-9, a-f) after 0x; "
            f"found {shown}"
        )
    if len(body) != 40:
        raise ValidationFailed(
            field, f"an Ethereum address has 40 hexadecimal digits after 0x, not {len(body)}"
        )
    if int(body, 16) == 0:
        raise ValidationFailed(
            field, "this is the Ethereum zero address; it cannot receive payouts"
        )
    checksummed = to_checksum_address(addr)
    if addr == checksummed:
        return checksummed, []
    if body == body.lower() or body == body.upper():
        case = "lower" if body == body.lower() else "upper"
        return checksummed, [
            f"the address is all {case} case, so its checksum (EIP-55) cannot be checked; "
            "make sure it is exactly right"
        ]
    raise ValidationFailed(
        field, "Ethereum address checksum (EIP-55 mixed case) does not match — check for a typo"
    )


def make_eth_address(payload20: bytes) -> str:
    """The EIP-55 address of a 20-byte account id (for tests and the demo)."""
    if len(payload20) != 20:
        raise ValueError("an Ethereum address has 20 bytes")
    return to_checksum_address("0x" + bytes(payload20).hex())


# --------------------------------------------------------------------------------------
# Payout addresses


def validate_network(network: object, *, field: str = "payout_network") -> str:
    network = _text(field, network)
    if network not in NETWORKS:
        raise ValidationFailed(field, "must be tron or ethereum")
    return network


def validate_payout_address(network: object, address: object) -> tuple[str, list[str]]:
    """``(canonical address, warnings)`` for ``network`` ``tron`` | ``ethereum``.

    An unknown network names ``payout_network``; an address of the other network (or a bad
    one) names ``payout_address``. Canonical: EIP-55 for Ethereum, as given for TRON.
    """
    network = validate_network(network)
    if network == "tron":
        return validate_tron_address(address), []
    return validate_eth_address(address)


def detect_network(address: str) -> str | None:
    """``"ethereum"``/``"tron"`` by shape (``0x`` + 40 hex / ``T`` + 33 base58), else None."""
    address = address.strip()
    if _ETH_SHAPE.fullmatch(address):
        return "ethereum"
    if _looks_tron(address):
        return "tron"
    return None


def normalize_address_key(network: str | None, address: str) -> str:
    """The comparison key of a payout address (duplicate wallets, the blocked list).

    Ethereum: lower case (case is only a checksum); TRON: as given (base58 is case-sensitive).
    With ``network=None`` the network is inferred from the shape (``blocked add ADDRESS``).
    """
    address = address.strip()
    if network is None:
        network = detect_network(address) or "tron"
    if network == "ethereum":
        return address.lower()
    if network == "tron":
        return address
    raise ValidationFailed("payout_network", "must be tron or ethereum")


def validate_any_address(address: object, *, field: str = "address") -> tuple[str, str, list[str]]:
    """``(network, canonical, warnings)`` for an address of either network (blocked list)."""
    text = _text(field, address, what="an address")
    if text[:2] in ("0x", "0X"):
        canonical, warnings = validate_eth_address(text, field=field)
        return "ethereum", canonical, warnings
    if text.startswith("T"):
        return "tron", validate_tron_address(text, field=field), []
    raise ValidationFailed(
        field, "is neither a TRON address (T…) nor an Ethereum address (0x…)"
    )


# --------------------------------------------------------------------------------------
# Transaction hashes (evidence)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def tx_hash_key(text: str, *, field: str = "evidence_tx_hashes") -> str:
    """The comparison key of a transaction hash on any network: 64 lower-case hex digits
    without ``0x`` (what evidence and the ledger's ``tx_hash`` are matched on)."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if not _HEX64.fullmatch(body):
        raise ValidationFailed(field, "a transaction hash is 64 hexadecimal digits (0x optional)")
    return body.lower()


def validate_tx_hash(h: object, network: str, *, field: str = "evidence_tx_hashes") -> str:
    """An evidence transaction hash, lower case.

    Ethereum: ``0x`` + 64 hex (returned with ``0x``). TRON: 64 hex with or without ``0x``
    (returned without, as TRON explorers show it).
    """
    text = _text(field, h, what="a transaction hash")
    if network == "ethereum":
        if text[:2] == "0x" and _HEX64.fullmatch(text[2:]):
            return text.lower()
        if _HEX64.fullmatch(text):
            raise ValidationFailed(field, "an Ethereum transaction hash starts with 0x")
        raise ValidationFailed(
            field, "an Ethereum transaction hash is 0x followed by 64 hexadecimal digits"
        )
    if network == "tron":
        body = text[2:] if text[:2] in ("0x", "0X") else text
        if _HEX64.fullmatch(body):
            return body.lower()
        raise ValidationFailed(field, "a TRON transaction id is 64 hexadecimal digits")
    raise ValidationFailed("payout_network", "must be tron or ethereum")


# --------------------------------------------------------------------------------------
# Contact details and the rest of a claim

_PHONE_SEPARATORS = str.maketrans("", "", " \u00a0-()")
_KZ_PHONE = re.compile(r"\+7[0-9]{10}")


def validate_phone(phone: object) -> str:
    """A Kazakhstan phone in E.164: ``+7`` and 10 digits; returns ``+7XXXXXXXXXX``.

    Spaces, hyphens and parentheses in the input are ignored; nothing else is.
    """
    text = _text("phone", phone, what="a phone number")
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


def validate_email(email: object) -> str:
    """A syntactically valid e-mail address, normalized (no deliverability check).

    The rules and the normalization are email-validator's. The addresses nearly everyone
    types (:data:`_SIMPLE_EMAIL`) take a shortcut with the same result: their local part is
    kept as typed, and their domain's check — most of the cost — is done once per domain."""
    text = _text("email", email, what="an e-mail address")
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
        raise ValidationFailed("email", _email_message(str(exc))) from None
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


def _email_message(msg: str) -> str:
    msg = msg.strip()
    for prefix in ("The email address is not valid. ", "The e-mail address is not valid. "):
        if msg.startswith(prefix) and len(msg) > len(prefix):
            msg = msg[len(prefix):]
    return msg or "is not a valid e-mail address"


def email_key(email: str) -> str:
    """Comparison key of a (validated) e-mail for ``duplicate_email``: case-folded."""
    return email.strip().casefold()


def validate_full_name(name: object) -> str:
    """1-200 characters, at least one letter, no control characters; NFC, spaces collapsed."""
    text = _text("full_name", name, what="a name")
    text = unicodedata.normalize("NFC", text)
    if _has_control(text):
        raise ValidationFailed("full_name", "must not contain control characters")
    text = " ".join(text.split())
    if len(text) > MAX_NAME_LEN:
        raise ValidationFailed(
            "full_name", f"must be at most {MAX_NAME_LEN} characters (got {len(text)})"
        )
    if not any(c.isalpha() for c in text):
        raise ValidationFailed("full_name", "must contain letters")
    return text


def name_key(name: str) -> str:
    """Comparison key of a (validated) full name for ``duplicate_identity``."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def validate_language(lang: object) -> str:
    text = _text("language", lang)
    if text not in LANGUAGES:
        raise ValidationFailed("language", "must be kk, ru or en")
    return text


_CASE_CODE = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")


def validate_case_code(code: object, *, field: str = "case_id") -> str:
    """A case CODE ``[a-z0-9][a-z0-9-]{1,63}`` (its existence is checked elsewhere)."""
    text = _text(field, code)
    if not _CASE_CODE.fullmatch(text):
        raise ValidationFailed(
            field,
            "must be a case code: 2-64 characters, lower-case letters, digits and hyphens, "
            "not starting with a hyphen",
        )
    return text


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EARLIEST_BIRTH = dt.date(1800, 1, 1)


def validate_date_of_birth(value: object) -> dt.date | None:
    """``None``/blank → ``None``; a ``date`` or an ISO ``YYYY-MM-DD`` string → ``date``."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise ValidationFailed("date_of_birth", "must be a date without a time (YYYY-MM-DD)")
    if isinstance(value, dt.date):
        d = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _ISO_DATE.fullmatch(text):
            raise ValidationFailed("date_of_birth", "must be a date in the form YYYY-MM-DD")
        try:
            d = dt.date.fromisoformat(text)
        except ValueError:
            raise ValidationFailed("date_of_birth", "is not a real date") from None
    else:
        raise ValidationFailed("date_of_birth", "must be a date in the form YYYY-MM-DD")
    if d > dt.date.today():
        raise ValidationFailed("date_of_birth", "is in the future")
    if d < _EARLIEST_BIRTH:
        raise ValidationFailed("date_of_birth", "is before 1800")
    return d


def _optional_text(field: str, value: object, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be text (a string)")
    text = value.strip()
    if not text:
        return None
    if _has_control(text):
        raise ValidationFailed(field, "must not contain control characters")
    if len(text) > max_len:
        raise ValidationFailed(field, f"must be at most {max_len} characters (got {len(text)})")
    return text


def _evidence_list(value: object) -> list[object]:
    """A list/tuple of hashes, or one CSV cell joined by ``;``; ``None``/blank → []."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(";")) if part]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValidationFailed("evidence_tx_hashes", "must be a list of transaction hashes")


def _validate_evidence(value: object, network: str | None) -> list[str]:
    items = _evidence_list(value)
    if len(items) > MAX_EVIDENCE_HASHES:
        raise ValidationFailed(
            "evidence_tx_hashes", f"at most {MAX_EVIDENCE_HASHES} transaction hashes"
        )
    out: list[str] = []
    problems: list[str] = []
    for i, item in enumerate(items, start=1):
        # Evidence may come from the scheme's chain, not the payout network: accept either
        # shape and keep the match key (64 lower-case hex digits, no 0x).
        try:
            h = tx_hash_key(_text("evidence_tx_hashes", item, what="a transaction hash"))
        except ValidationFailed as exc:
            problems.append(f"item {i}: {exc.message}")
            continue
        if h not in out:
            out.append(h)
    if problems:
        raise ValidationFailed("evidence_tx_hashes", "; ".join(problems))
    return out


def validate_claim_fields(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Check a whole claim filing (API body or CSV row); report every bad field at once.

    Returns ``(clean, warnings)``; raises :class:`FieldErrors`. ``clean`` holds normalized
    values: ``claimed_amount`` as int micro-USDT, ``date_of_birth`` as ``date`` or ``None``,
    ``birth_date`` (from the IIN), the ``iin`` itself (the caller hashes and encrypts it),
    ``evidence_tx_hashes`` as a list. Unknown extra keys are ignored. ``consent`` must be the
    boolean ``True`` (a CSV importer converts its cell first). Empty strings in optional
    fields mean "not given" (CSV cells).
    """
    errs = ErrorCollector()
    clean: dict[str, Any] = {}

    clean["case_id"] = errs.check("case_id", validate_case_code, data.get("case_id"))
    clean["full_name"] = errs.check("full_name", validate_full_name, data.get("full_name"))
    dob = errs.check("date_of_birth", validate_date_of_birth, data.get("date_of_birth"))
    clean["date_of_birth"] = dob
    # Compare with date_of_birth only when that field itself is fine.
    clean["birth_date"] = errs.check(
        "iin", validate_iin, data.get("iin"), None if errs.has("date_of_birth") else dob
    )
    clean["iin"] = data["iin"].strip() if clean["birth_date"] is not None else None
    clean["email"] = errs.check("email", validate_email, data.get("email"))
    clean["phone"] = errs.check("phone", validate_phone, data.get("phone"))
    clean["language"] = errs.check("language", validate_language, data.get("language"))
    clean["scheme_account"] = errs.check(
        "scheme_account",
        _optional_text,
        "scheme_account",
        data.get("scheme_account"),
        MAX_SCHEME_ACCOUNT_LEN,
    )
    amount = data.get("claimed_amount")
    if amount is None:
        errs.add("claimed_amount", "is required")
        clean["claimed_amount"] = None
    else:
        clean["claimed_amount"] = errs.check(
            "claimed_amount", parse_amount, amount, allow_zero=False
        )

    network = errs.check("payout_network", validate_network, data.get("payout_network"))
    clean["payout_network"] = network
    address = data.get("payout_address")
    if network is not None:
        checked = errs.check("payout_address", validate_payout_address, network, address)
        if checked is not None:
            clean["payout_address"], warnings = checked
            for w in warnings:
                errs.warn("payout_address", w)
        else:
            clean["payout_address"] = None
    else:
        # No usable network: still report an address that is no address of either network.
        checked_any = errs.check(
            "payout_address", validate_any_address, address, field="payout_address"
        )
        clean["payout_address"] = checked_any[1] if checked_any else None
    clean["evidence_tx_hashes"] = errs.check(
        "evidence_tx_hashes", _validate_evidence, data.get("evidence_tx_hashes"), network
    )

    consent = data.get("consent")
    if consent is not True:
        errs.add(
            "consent",
            "must be true: the claimant must consent to the processing of their personal data",
        )
    clean["consent"] = True if consent is True else None

    errs.raise_if_any()
    return clean, errs.warnings
