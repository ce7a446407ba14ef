"""The ledger CSV's header and the rules of its cells (the format: docs/formats.md, "Ledger
CSV").

Header: ``account_id,entry_type,amount,occurred_at`` plus any of
``tx_hash,wallet,email,phone,iin,insider`` in any order (names are trimmed and matched
case-insensitively; an unknown or repeated column is a header error).

Rules of a row (every bad row is reported; any bad row rejects the whole file):

- ``account_id``: required, at most 128 characters, no control characters (trimmed).
- ``entry_type``: ``deposit``, ``withdrawal`` or ``bonus`` (case-insensitive). A bonus or
  referral payout counts as withdrawn (fictitious profit paid out).
- ``amount``: the amount form of :func:`claims.money.parse_amount` and **greater than 0** — a
  ledger movement of 0 moves nothing and usually means a broken export, so it is refused
  ("must be greater than 0") rather than silently stored.
- ``occurred_at``: ISO 8601 (``datetime.fromisoformat``): a date and time with or without an
  offset (``Z`` allowed), or a date alone (midnight). **A time without an offset is taken as
  UTC.** Stored as UTC. More than a day in the future is refused.
- ``tx_hash`` (optional): :func:`claims.validators.tx_hash_key` — 64 hex digits with or
  without ``0x``, stored lower case without ``0x``.
- ``wallet`` (optional): a TRON (``T…``) or Ethereum (``0x…``, EIP-55 when mixed case)
  address; the network is read from its shape.
- ``email`` / ``phone`` / ``iin`` (optional): :mod:`claims.validators` rules. The IIN is kept
  **only** as :func:`claims.crypto.iin_hash`, never in plain; error messages never echo
  personal data.
- ``insider`` (optional): ``true`` / ``false`` (case-insensitive; blank = false). A ``true``
  marks the account insider; a later ``false`` never unmarks it (use the CLI to change it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from claims import validators
from claims.crypto import iin_hash
from claims.money import parse_amount

REQUIRED_COLUMNS = ("account_id", "entry_type", "amount", "occurred_at")
OPTIONAL_COLUMNS = ("tx_hash", "wallet", "email", "phone", "iin", "insider")
ENTRY_TYPES = ("deposit", "withdrawal", "bonus")
MAX_ACCOUNT_ID = 128
#: Values each cache of a :class:`Rules` keeps: memory stays small and flat (an account's rows
#: are contiguous, so its repeated values are found while they are needed).
CACHE_SIZE = 1 << 13

#: Characters an account id may not hold (control, bidirectional overrides, undecodable bytes).
CONTROL = re.compile(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069\udc80-\udcff]")
#: Bytes that were not UTF-8, as the ``surrogateescape`` decoding of the file leaves them.
UNDECODABLE = re.compile(r"[\udc80-\udcff]")
#: The usual spellings of the entry types and of the insider flag, as they are.
ENTRY_MAP = {t: t for t in ENTRY_TYPES}
INSIDER_MAP = {"": False, "false": False, "true": True}

NOT_UTF8 = "is not UTF-8 text (save the file as UTF-8)"

_fromisoformat = dt.datetime.fromisoformat
_ETH_LOWER = re.compile(r"0x[0-9a-f]{40}")
_ETH_ZERO = "0x" + "0" * 40


class Rules:
    """Per-import field checks with bounded caches (raw cell → clean value) for the values that
    repeat across rows. The caches die with the import: personal data never outlives it.

    Every ``check_*`` takes the raw cell and returns the clean value or raises
    ``ValueError("field: reason")``; the usual time spelling takes a fast path, and the values
    that repeat (amounts, wallets, e-mails, phones, IINs) are cached for the import's loop,
    which looks a cell up in :attr:`amounts` … :attr:`iins` before it calls the check."""

    def __init__(self, pii_key: str) -> None:
        self._pii_key = pii_key
        self.future_limit = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(tzinfo=None)
        self.future_text = self.future_limit.isoformat(" ", "microseconds")
        self.amounts: dict[str, int] = {}
        self.wallets: dict[str, tuple[str, str]] = {}
        self.emails: dict[str, str] = {}
        self.phones: dict[str, str] = {}
        self.iins: dict[str, str] = {}

    def clear(self) -> None:
        for cache in (self.amounts, self.wallets, self.emails, self.phones, self.iins):
            cache.clear()

    @staticmethod
    def _remember(cache: dict, key: str, value: Any) -> Any:
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[key] = value
        return value

    def check_account(self, s: str) -> str:
        s = s.strip()
        if not s:
            raise ValueError("account_id: is required")
        if len(s) > MAX_ACCOUNT_ID:
            raise ValueError(f"account_id: must be at most {MAX_ACCOUNT_ID} characters")
        if CONTROL.search(s):
            raise ValueError("account_id: must not contain control characters")
        return s

    def check_entry_type(self, s: str) -> str:
        t = ENTRY_MAP.get(s) or ENTRY_MAP.get(s.strip().lower())
        if t is None:
            if not s.strip():
                raise ValueError("entry_type: is required")
            raise ValueError("entry_type: must be deposit, withdrawal or bonus")
        return t

    def check_amount(self, s: str) -> int:
        if s == "":
            raise ValueError("amount: is required")
        try:
            value = parse_amount(s)
        except ValueError as exc:
            raise ValueError(f"amount: {exc}") from None
        if value == 0:
            raise ValueError("amount: must be greater than 0")
        if len(self.amounts) < CACHE_SIZE:  # keep the first (most common) amounts; no churn
            self.amounts[s] = value
        return value

    def check_occurred_at(self, s: str) -> str:
        # Fast path: "YYYY-MM-DDTHH:MM:SSZ" (or a space for T), the usual export form.
        if (len(s) == 20 and s[19] == "Z" and s[10] in "T " and s[4] == "-" and s[7] == "-"
                and s[13] == ":" and s[16] == ":"):
            try:
                _fromisoformat(s[:19])  # a real date and time
            except ValueError:
                pass  # the general path explains
            else:
                out = f"{s[:10]} {s[11:19]}.000000"
                if out <= self.future_text:
                    return out
        return self._occurred_at(s)

    def _occurred_at(self, s: str) -> str:
        try:
            when = _fromisoformat(s)
        except ValueError:
            text_ = s.strip()
            if not text_:
                raise ValueError("occurred_at: is required") from None
            try:
                when = _fromisoformat(text_)
            except ValueError:
                raise ValueError(
                    "occurred_at: must be an ISO 8601 date and time, e.g. 2023-05-01T12:30:00Z"
                ) from None
        offset = when.utcoffset()
        if offset is not None:  # aware: to UTC; naive: taken as UTC
            try:
                when = (when - offset if offset else when).replace(tzinfo=None)
            except OverflowError:
                raise ValueError("occurred_at: is out of range") from None
        if when > self.future_limit:
            raise ValueError("occurred_at: is in the future")
        return when.isoformat(" ", "microseconds")

    def check_tx_hash(self, s: str) -> str | None:
        try:
            return validators.tx_hash_key(s)
        except validators.ValidationFailed:
            pass
        text_ = s.strip()
        if not text_:
            return None
        try:
            return validators.tx_hash_key(text_)
        except validators.ValidationFailed:
            raise ValueError(
                "tx_hash: must be 64 hexadecimal digits (with or without 0x)") from None

    def _optional(self, field: str, cache: dict, fn: Callable[[str], Any], s: str) -> Any:
        text_ = s.strip()
        if not text_:
            return None
        try:
            value = fn(text_)
        except validators.ValidationFailed as exc:
            raise ValueError(f"{field}: {exc.message}") from None
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        return self._remember(cache, s, value)

    @staticmethod
    def _wallet(s: str) -> tuple[str, str]:
        """(the address as stored in ledger_entry, its match key)."""
        if _ETH_LOWER.fullmatch(s) and s != _ETH_ZERO:
            # All lower case: nothing to check beyond the shape (no EIP-55 checksum to verify),
            # so skip computing one; the ledger's own spelling is stored.
            return s, validators.normalize_address_key("ethereum", s)
        network, canonical, _warnings = validators.validate_any_address(s, field="wallet")
        return canonical, validators.normalize_address_key(network, canonical)

    @staticmethod
    def _email(s: str) -> str:
        return validators.email_key(validators.validate_email(s))

    def _iin(self, s: str) -> str:
        validators.validate_iin(s)
        return iin_hash(s, self._pii_key)

    def check_wallet(self, s: str) -> tuple[str, str] | None:
        return self._optional("wallet", self.wallets, self._wallet, s)

    def check_email(self, s: str) -> str | None:
        return self._optional("email", self.emails, self._email, s)

    def check_phone(self, s: str) -> str | None:
        return self._optional("phone", self.phones, validators.validate_phone, s)

    def check_iin(self, s: str) -> str | None:
        return self._optional("iin", self.iins, self._iin, s)

    def check_insider(self, s: str) -> bool:
        t = INSIDER_MAP.get(s)
        if t is None:
            t = INSIDER_MAP.get(s.strip().lower())
            if t is None:
                raise ValueError("insider: must be true or false")
        return t

    def diagnose(self, row: list[str], index: dict[str, int]) -> list[str]:
        """Every problem of a bad row (the slow path; the import's loop stops at the first)."""
        if any(UNDECODABLE.search(cell) for cell in row):
            return [NOT_UTF8]
        checks = [
            ("account_id", self.check_account),
            ("entry_type", self.check_entry_type),
            ("amount", self.check_amount),
            ("occurred_at", self.check_occurred_at),
            ("tx_hash", self.check_tx_hash),
            ("wallet", self.check_wallet),
            ("email", self.check_email),
            ("phone", self.check_phone),
            ("iin", self.check_iin),
            ("insider", self.check_insider),
        ]
        problems = []
        for column, check in checks:
            i = index.get(column)
            if i is None:
                continue
            try:
                check(row[i])
            except ValueError as exc:
                problems.append(str(exc))
        return problems or ["is not a valid ledger row"]


def parse_header(row: list[str]) -> tuple[dict[str, int], list[str]]:
    """(column name → position, problems) of the header row."""
    if any(UNDECODABLE.search(c) for c in row):
        return {}, [NOT_UTF8]
    names = [c.strip().lower() for c in row]
    problems: list[str] = []
    index: dict[str, int] = {}
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    for i, name in enumerate(names):
        if name in index:
            problems.append(f"column {name!r} appears twice")
        elif name not in allowed:
            shown = name if name else "(empty)"
            problems.append(f"unknown column {shown!r} (allowed: {', '.join(allowed)})")
        else:
            index[name] = i
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        problems.insert(0, f"missing required column{'s' if len(missing) > 1 else ''}: "
                           f"{', '.join(missing)}")
    return index, problems


def read_error(exc: Exception) -> str:
    """A line the CSV reader could not read, in words."""
    return f"not readable as CSV ({exc})"
