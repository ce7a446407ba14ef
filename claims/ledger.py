"""The seized ledger: import, totals, match keys, summary, insiders.

CSV format (CONTRACT.md, "Ledger CSV"): header ``account_id,entry_type,amount,occurred_at``
plus any of ``tx_hash,wallet,email,phone,iin,insider`` in any order (names are trimmed and
matched case-insensitively; an unknown or repeated column is a header error). Line numbers
count the header as line 1 and read ``line N: reason``; blank lines are skipped.

Rules of a row (every bad row is reported; any bad row rejects the whole file, nothing stored):

- ``account_id``: required, at most 128 characters, no control characters (trimmed).
- ``entry_type``: ``deposit``, ``withdrawal`` or ``bonus`` (case-insensitive). A bonus or
  referral payout counts as withdrawn (fictitious profit paid out).
- ``amount``: CONTRACT's amount form via :func:`claims.money.parse_amount` and **greater than
  0** — a ledger movement of 0 moves nothing and usually means a broken export, so it is
  refused ("must be greater than 0") rather than silently stored.
- ``occurred_at``: ISO 8601 (``datetime.fromisoformat``): a date and time with or without an
  offset (``Z`` allowed), or a date alone (midnight). **A time without an offset is taken as
  UTC.** Stored as UTC. More than a day in the future is refused.
- ``tx_hash`` (optional): 64 hex digits with or without ``0x``.
- ``wallet`` (optional): a TRON (``T…``) or Ethereum (``0x…``, EIP-55 when mixed case)
  address; the network is read from its shape.
- ``email`` / ``phone`` / ``iin`` (optional): :mod:`claims.validators` rules. The IIN is stored
  **only** as :func:`claims.crypto.iin_hash`, never in plain; error messages never echo
  personal data.
- ``insider`` (optional): ``true`` / ``false`` (case-insensitive; blank = false). A ``true``
  marks the account insider; a later ``false`` never unmarks it (use the CLI to change it).

Identity (CONTRACT): a row is (account_id, entry_type, amount, occurred_at, tx_hash) plus its
position among identical rows of the file. ``row_key`` is the first 128 bits (32 hex digits) of
the SHA-256 of ``account_id␟entry_type␟amount-in-micro␟occurred_at-UTC␟tx_hash`` for the first
such row and of ``sha256(first_key + "#" + n)`` for the n-th identical row (n ≥ 2); 128 bits
make a collision unthinkable (≈ 10⁻²⁷ for a million rows) and keep the unique index half the
size of a 64-digit key's, which halves the cost of its random-order inserts.
``(case_id, row_key)`` is unique, so importing a file again, or a file that extends it, adds
only the new rows; two identical rows within one file are both kept.

Match keys (table ``ledger_identifier``, read by verification — query
``(case_id, kind, value)``; every value is normalized exactly as below, so normalize the claim's
side the same way before looking it up):

| kind      | value                                                                      |
|-----------|----------------------------------------------------------------------------|
| `tx_hash` | 64 lower-case hex digits **without** ``0x`` (strip ``0x`` from an Ethereum  |
|           | evidence hash first: :func:`tx_hash_key`)                                  |
| `iin`     | :func:`claims.crypto.iin_hash` of the IIN (same as ``Claim.iin_hash``)      |
| `email`   | :func:`claims.validators.email_key` of the validated address (as           |
|           | ``Claim.email_key``)                                                        |
| `phone`   | E.164 from :func:`claims.validators.validate_phone` (as ``Claim.phone``)    |
| `wallet`  | :func:`claims.validators.normalize_address_key` (as                        |
|           | ``Claim.payout_address_key``)                                               |

``ledger_entry`` stores the same normalized ``tx_hash``, ``email`` and ``phone``, the
``wallet`` (EIP-55 for a mixed-case Ethereum address; an all-lower-case one as the ledger spells
it; TRON as given) and ``iin_hash``.

Totals (``ledger_account``): ``deposits``; ``withdrawals`` = withdrawals + bonuses; ``bonuses``;
``insider``. Only newly added rows are added to them (set-based SQL), so re-imports change
nothing.

How it is fast with flat memory: the file is streamed through :mod:`csv` once; a generator
validates each row (cached values, then the rules above with a fast path for the usual
spellings) and feeds the bulk writer of a TEMP staging table directly (``executemany`` on
SQLite, ``COPY`` on PostgreSQL), inside the one transaction of the import. What stays in memory is bounded whatever
the file size: one row, small caches of repeated values (amounts, wallets, e-mails, phones, IIN
hashes; 8,192 each) and, on SQLite, the connection's fixed page cache (``claims.db``). Then
set-based SQL: entries are written with ``INSERT … SELECT … ON CONFLICT (case_id, row_key) DO
NOTHING``; only when some row was not added (a re-import, an extended file, identical rows) are
identical rows looked for (GROUP BY on a 64-bit prefix of the key) and their n-th copies added
under their own keys. Only the staged rows that start a run of equal (account, identity
values) carry the account id and identity values (see :class:`_Stage`): accounts, identity
match keys and insiders come from those few rows, and each entry takes its account and identity
values from its run's row, found by line number; the totals and tx-hash keys come from the new
entries. (Measured and left out, on SQLite: checking the cells in SQL from a staging table of
raw text — its string functions and GLOB cost more per row than the inline checks, and the row
key needs a Python function anyway; one regular expression over the whole row instead of the
per-cell inline checks — the same cost per row (≈ 2.6 µs); a 256 MiB page cache instead of 64 —
about a tenth less CPU at a million rows for twice the peak memory.) Any bad row raises
:class:`~claims.errors.LedgerImportError` after the whole file has been read (so it names every
bad line) and before anything is written outside the staging table; the transaction then rolls
back. Imports of one case are serialized (the case row is locked on PostgreSQL;
SQLite's IMMEDIATE transaction serializes all writers).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, select, text
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.errors import LedgerImportError, NotFound
from claims.gc_pause import gc_paused
from claims.models import LedgerAccount

__all__ = [
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "ENTRY_TYPES",
    "IDENTIFIER_KINDS",
    "ImportResult",
    "import_ledger",
    "ledger_summary",
    "mark_insider",
    "tx_hash_key",
]

REQUIRED_COLUMNS = ("account_id", "entry_type", "amount", "occurred_at")
OPTIONAL_COLUMNS = ("tx_hash", "wallet", "email", "phone", "iin", "insider")
ENTRY_TYPES = ("deposit", "withdrawal", "bonus")
IDENTIFIER_KINDS = ("tx_hash", "iin", "email", "phone", "wallet")
MAX_ACCOUNT_ID = 128
ROW_KEY_BYTES = 16  # row_key: the first 128 bits of a SHA-256, in hex (see the module docstring)
PROGRESS_EVERY = 50_000
_CACHE = 1 << 13  # per cache: memory stays small and flat; account rows are contiguous

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, rows_read, bytes_read)``: phase ``"reading"`` every ``progress_every``
rows and once at the end of the file, then ``"storing"`` once before the set-based SQL."""

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069\udc80-\udcff]")
_UNDECODABLE = re.compile(r"[\udc80-\udcff]")
_ENTRY_MAP = {t: t for t in ENTRY_TYPES}


def tx_hash_key(value: str) -> str | None:
    """The match key of a transaction hash (:func:`claims.validators.tx_hash_key`: 64
    lower-case hex digits without ``0x``), or ``None`` when it is not such a hash."""
    from claims.validators import ValidationFailed
    from claims.validators import tx_hash_key as key

    try:
        return key(value.strip())
    except ValidationFailed:
        return None


@dataclass
class ImportResult:
    case: str
    rows_read: int
    rows_added: int
    accounts_added: int
    identifiers_added: int
    insiders_marked: int
    duplicates_in_file: int
    file_sha256: str

    @property
    def rows_existing(self) -> int:
        """Rows of the file that were already stored (re-import / extended file)."""
        return self.rows_read - self.rows_added

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_existing"] = self.rows_existing
        return d


# ----------------------------------------------------------------------------- reading


class _HashingReader(io.RawIOBase):
    """A raw binary stream that hashes (SHA-256) and counts what passes through."""

    def __init__(self, source: Any) -> None:
        self._src = source
        self.sha = hashlib.sha256()
        self.bytes = 0
        # False once a byte sequence that is not UTF-8 has passed: only then does the reading
        # loop look for the undecodable characters in each row (C-speed check of the bytes).
        self.utf8_ok = True
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._src.read(len(b))
        if isinstance(data, str):  # a text stream: hash its UTF-8 bytes
            data = data.encode("utf-8")
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.bytes += n
        if self.utf8_ok:
            try:
                self._utf8.decode(data, final=not n)
            except UnicodeDecodeError:
                self.utf8_ok = False
        return n


def _open(file: Any) -> tuple[_HashingReader, IO[str], Any, str | None]:
    """(hashing raw reader, text stream, thing to close or None, file name).

    Bytes that are not UTF-8 are decoded with ``surrogateescape`` so that the row holding them
    can be named (a strict decoder fails a whole read-ahead chunk, lines away); such rows are
    refused as "not UTF-8 text".
    """
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
        raw = _HashingReader(fh)
        name, to_close = path.name, fh
    else:
        # Text streams are re-encoded (and hashed) as UTF-8.
        raw = _HashingReader(_TextAsBytes(file) if isinstance(file, io.TextIOBase) else file)
        name = getattr(file, "name", None)
        name = Path(name).name if isinstance(name, str) else None
        to_close = None
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    stream = io.TextIOWrapper(
        buffered, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    return raw, stream, to_close, name


class _TextAsBytes:
    """``read(n)`` of UTF-8 bytes over a text stream (for file objects opened in text mode)."""

    def __init__(self, f: IO[str]) -> None:
        self._f = f
        self._pending = b""

    def read(self, n: int) -> bytes:
        while len(self._pending) < n:
            chunk = self._f.read(1 << 16)
            if not chunk:
                break
            self._pending += chunk.encode("utf-8")
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


# ----------------------------------------------------------------------------- field rules


class _Rules:
    """Per-import field checks with bounded caches (raw cell → clean value) for the values that
    repeat across rows. The caches die with the import: personal data never outlives it.

    Every ``check_*`` takes the raw cell and returns the clean value or raises
    ``ValueError("field: reason")``; the usual spellings take a fast path, and the values
    that repeat (amounts, wallets, e-mails, phones, IINs) are cached by the import's loop."""

    def __init__(self, pii_key: str) -> None:
        from claims import validators as v
        from claims.crypto import iin_hash
        from claims.money import parse_amount

        self._v = v
        self._iin_hash = iin_hash
        self._parse_amount = parse_amount
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
        if len(cache) >= _CACHE:
            cache.clear()
        cache[key] = value
        return value

    def check_account(self, s: str) -> str:
        s = s.strip()
        if not s:
            raise ValueError("account_id: is required")
        if len(s) > MAX_ACCOUNT_ID:
            raise ValueError(f"account_id: must be at most {MAX_ACCOUNT_ID} characters")
        if _CONTROL.search(s):
            raise ValueError("account_id: must not contain control characters")
        return s

    def check_entry_type(self, s: str) -> str:
        t = _ENTRY_MAP.get(s) or _ENTRY_MAP.get(s.strip().lower())
        if t is None:
            if not s.strip():
                raise ValueError("entry_type: is required")
            raise ValueError("entry_type: must be deposit, withdrawal or bonus")
        return t

    def check_amount(self, s: str) -> int:
        if s == "":
            raise ValueError("amount: is required")
        try:
            value = self._parse_amount(s)
        except ValueError as exc:
            raise ValueError(f"amount: {exc}") from None
        if value == 0:
            raise ValueError("amount: must be greater than 0")
        if len(self.amounts) < _CACHE:  # keep the first (most common) amounts; no churn
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
        body = s[2:] if s[:2] == "0x" else s
        if _HEX64.fullmatch(body):  # the usual spelling: 64 hex digits, maybe after 0x
            return body.lower()
        if not s.strip():
            return None
        key = tx_hash_key(s)
        if key is None:
            raise ValueError("tx_hash: must be 64 hexadecimal digits (with or without 0x)")
        return key

    def _optional(self, field: str, cache: dict, fn: Callable[[str], Any], s: str) -> Any:
        text_ = s.strip()
        if not text_:
            return None
        try:
            value = fn(text_)
        except self._v.ValidationFailed as exc:
            raise ValueError(f"{field}: {exc.message}") from None
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        return self._remember(cache, s, value)

    def _wallet(self, s: str) -> tuple[str, str]:
        """(the address as stored in ledger_entry, its match key)."""
        if _ETH_LOWER.fullmatch(s) and s != _ETH_ZERO:
            # All lower case: nothing to check beyond the shape (no EIP-55 checksum to verify),
            # so skip computing one; the ledger's own spelling is stored.
            return s, self._v.normalize_address_key("ethereum", s)
        network, canonical, _warnings = self._v.validate_any_address(s, field="wallet")
        return canonical, self._v.normalize_address_key(network, canonical)

    def _email(self, s: str) -> str:
        if _plain_ascii_email(s):
            return self._v.email_key(s)
        return self._v.email_key(self._v.validate_email(s))

    def _iin(self, s: str) -> str:
        self._v.validate_iin(s)
        return self._iin_hash(s, self._pii_key)

    def check_wallet(self, s: str) -> tuple[str, str] | None:
        return self._optional("wallet", self.wallets, self._wallet, s)

    def check_email(self, s: str) -> str | None:
        return self._optional("email", self.emails, self._email, s)

    def check_phone(self, s: str) -> str | None:
        return self._optional("phone", self.phones, self._v.validate_phone, s)

    def check_iin(self, s: str) -> str | None:
        return self._optional("iin", self.iins, self._iin, s)

    def check_insider(self, s: str) -> bool:
        t = _INSIDER.get(s)
        if t is None:
            t = _INSIDER.get(s.strip().lower())
            if t is None:
                raise ValueError("insider: must be true or false")
        return t


_fromisoformat = dt.datetime.fromisoformat
_ETH_LOWER = re.compile(r"0x[0-9a-f]{40}")
_ETH_ZERO = "0x" + "0" * 40
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")
_EMAIL_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _plain_ascii_email(s: str) -> bool:
    """A shortcut past email-validator (tens of µs a call) for the plain ASCII addresses that
    fill real exports: true only for addresses email-validator accepts unchanged apart from
    case (dot-atom local part ≤ 64, LDH labels ≤ 63 without "--", an alphabetic TLD that is
    not a special-use name, ≤ 254 characters), whose key is therefore
    ``email_key`` of the text itself. Anything else goes through ``validate_email``."""
    if len(s) > 254 or s.count("@") != 1:
        return False
    local, domain = s.split("@")
    if len(local) > 64 or not _EMAIL_LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2 or "--" in domain:  # "xn--" and other reserved "??--" labels
        return False
    tld = labels[-1]
    if not (2 <= len(tld) <= 63 and tld.isascii() and tld.isalpha()):
        return False
    if tld.lower() in _SPECIAL_TLDS:
        return False
    return all(_EMAIL_LABEL.fullmatch(label) for label in labels[:-1])
_INSIDER = {"": False, "false": False, "true": True}


def _parse_header(row: list[str]) -> tuple[dict[str, int], list[str]]:
    if any(_UNDECODABLE.search(c) for c in row):
        return {}, ["is not UTF-8 text (save the file as UTF-8)"]
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


# ----------------------------------------------------------------------------- staging


_STAGE_COLS = (
    "line", "k", "row_key", "run_line", "entry_type", "amount", "occurred_at", "tx_hash",
    "account_id", "wallet", "wallet_key", "email", "phone", "iin_hash", "insider",
)


class _Stage:
    """The TEMP staging table and its bulk writer (``executemany`` of a generator on SQLite,
    ``COPY`` on PostgreSQL).

    A *run* is a stretch of rows with the same account and identity values (wallet, e-mail,
    phone, IIN hash, insider): a few per account, as exports list an account's rows together.
    Only the row that starts a run carries those values (``account_id`` … ``insider``; ``''``
    and 0 on the others); every row names its run's first line in ``run_line``. The accounts, the
    identity match keys and the insiders are built from the run starts (``ledger_ident``), and
    each entry takes its account and identity values from its run: a staged row stays small
    (less than half the bytes to write, read and drop) and an entry's account is found by line
    number rather than by account id.

    A missing value is staged as ``''`` (made NULL when the rows are stored), not ``None``:
    :mod:`sqlite3` binds ``None`` through its adapter lookup, measured at ~0.3 µs a value, which
    made the 7 identity cells of a row that does not start a run cost more than the rest of it."""

    TABLES = ("ledger_stage", "ledger_ident", "ledger_agg")

    def __init__(self, session: Session) -> None:
        self.conn = session.connection()
        self.sqlite = self.conn.dialect.name == "sqlite"
        self.dbapi = self.conn.connection.dbapi_connection
        self.drop()
        ts = "TEXT" if self.sqlite else "TIMESTAMP"
        pk = "INTEGER PRIMARY KEY" if self.sqlite else "BIGINT PRIMARY KEY"
        self.tail = "" if self.sqlite else " ON COMMIT DROP"
        self.conn.exec_driver_sql(
            f"CREATE TEMP TABLE ledger_stage (line {pk}, k BIGINT NOT NULL, "
            f"row_key VARCHAR(32) NOT NULL, run_line BIGINT NOT NULL, "
            f"entry_type VARCHAR(16) NOT NULL, amount BIGINT NOT NULL, occurred_at {ts} NOT NULL, "
            f"tx_hash VARCHAR(128) NOT NULL, account_id VARCHAR(128) NOT NULL, "
            f"wallet VARCHAR(128) NOT NULL, wallet_key VARCHAR(128) NOT NULL, "
            f"email VARCHAR(320) NOT NULL, phone VARCHAR(32) NOT NULL, "
            f"iin_hash VARCHAR(64) NOT NULL, insider INTEGER NOT NULL){self.tail}"
        )
        self.conn.exec_driver_sql(
            f"CREATE TEMP TABLE ledger_ident (line {pk}, account_pk BIGINT, "
            f"account_id VARCHAR(128) NOT NULL, wallet VARCHAR(128), wallet_key VARCHAR(128), "
            f"email VARCHAR(320), phone VARCHAR(32), iin_hash VARCHAR(64), "
            f"insider INTEGER NOT NULL){self.tail}"
        )

    def write(self, rows: Any) -> None:
        """Stream ``rows`` (an iterator of tuples in ``_STAGE_COLS`` order) into the stage."""
        cursor = self.dbapi.cursor()
        try:
            if self.sqlite:
                cursor.executemany(
                    f"INSERT INTO ledger_stage VALUES ({', '.join('?' * len(_STAGE_COLS))})",
                    rows,
                )
            else:
                with cursor.copy(
                    f"COPY ledger_stage ({', '.join(_STAGE_COLS)}) FROM STDIN"
                ) as copy:
                    write_row = copy.write_row
                    for r in rows:
                        write_row(r)
        finally:
            cursor.close()

    def drop(self) -> None:
        schema = "temp" if self.sqlite else "pg_temp"
        for table in self.TABLES:
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table}")


# ----------------------------------------------------------------------------- import


def import_ledger(
    session_or_engine: Session | Engine | None,
    case_code: str,
    file: Any,
    actor: Actor | None = None,
    progress: ProgressFn | None = None,
    *,
    progress_every: int = PROGRESS_EVERY,
) -> ImportResult:
    """Import a ledger CSV (a path, or a binary or text file object) into case ``case_code``.

    With an engine (or ``None``: the configured database) the import runs in its own
    transaction and commits; with a session it runs in the caller's transaction (roll it back
    on error). Raises ``NotFound`` for an unknown case and ``LedgerImportError`` listing every
    bad line; nothing is stored then.
    """
    if isinstance(session_or_engine, Session):
        return _import(session_or_engine, case_code, file, actor, progress, progress_every)
    from claims.db import get_engine, session_scope

    engine = session_or_engine if session_or_engine is not None else get_engine()
    with session_scope(engine) as session:
        return _import(session, case_code, file, actor, progress, progress_every)


@gc_paused()
def _import(
    session: Session,
    case_code: str,
    file: Any,
    actor: Actor | None,
    progress: ProgressFn | None,
    progress_every: int,
) -> ImportResult:
    from claims.cases import get_case_by_code
    from claims.db import bulk_cache
    from claims.settings import get_settings

    # Lock the case: imports of one case are serialized (PostgreSQL; SQLite's IMMEDIATE
    # transaction already serializes writers), so "rows with id > max" are this import's.
    case = get_case_by_code(session, case_code, for_update=True)
    case_id = case.id
    bulk_cache(session)
    rules = _Rules(get_settings().pii_key)
    raw, stream, to_close, file_name = _open(file)
    try:
        stage = _Stage(session)
        rows_read, errors = _read_into_stage(stream, raw, rules, stage, progress, progress_every)
        if errors:
            raise LedgerImportError(errors)
        if progress:
            progress("storing", rows_read, raw.bytes)
        result = _store(session, stage, case_id, case.code, rows_read, raw.sha.hexdigest())
        stage.drop()
    finally:
        rules.clear()
        if to_close is not None:
            to_close.close()
        else:
            stream.detach()  # leave the caller's file object open
    audit.record(
        session, actor or Actor.operator(), "ledger.import", "case", case.code,
        after={**result.as_dict(), "file_name": file_name},
    )
    return result


def _read_into_stage(
    stream: IO[str],
    raw: _HashingReader,
    rules: _Rules,
    stage: _Stage,
    progress: ProgressFn | None,
    progress_every: int,
) -> tuple[int, list[str]]:
    """Stream, validate and stage every row; returns (rows, bad lines).

    One pass, one generator feeding the bulk writer directly (no per-chunk lists): each cell is
    looked up in the caches, else checked by ``rules.check_*`` (which fill them); any ``ValueError`` → :func:`_diagnose` names every problem of the line.
    After the first bad line rows are no longer staged, only checked (to name every bad line).
    """
    errors: list[str] = []
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return 0, [f"line 1: {_read_error(exc)}"]
    if header is None or not any(c.strip() for c in header):
        what = "the file is empty" if header is None else "the line is blank"
        return 0, [f"line 1: {what}; expected the header {','.join(REQUIRED_COLUMNS)}"]
    index, problems = _parse_header(header)
    if problems:
        return 0, [f"line 1: {p}" for p in problems]
    counter = [0]

    def rows() -> Any:
        ncols = len(header)
        i_acct, i_type, i_amt, i_when = (index[c] for c in REQUIRED_COLUMNS)
        i_tx, i_wallet, i_email, i_phone, i_iin, i_ins = (index.get(c) for c in OPTIONAL_COLUMNS)
        amounts, wallets, emails = rules.amounts, rules.wallets, rules.emails
        phones, iins = rules.phones, rules.iins
        check_entry_type, check_amount = rules.check_entry_type, rules.check_amount
        check_when, check_tx = rules.check_occurred_at, rules.check_tx_hash
        check_wallet = rules.check_wallet
        check_email, check_phone, check_iin = rules.check_email, rules.check_phone, rules.check_iin
        check_insider = rules.check_insider
        control = _CONTROL.search
        entry_map = _ENTRY_MAP
        insider_map = _INSIDER
        sha256 = hashlib.sha256
        from_bytes = int.from_bytes
        add_error = errors.append
        n = 0
        last = reader.line_num
        next_progress = progress_every if progress else -1
        prev: tuple = ()
        run_line = 0
        tx = w = email = phone = iin_h = None
        ins = False
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                add_error(f"line {last + 1}: {_read_error(exc)}")
                last = reader.line_num
                continue
            line = last + 1
            last = reader.line_num
            if len(row) != ncols:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                n += 1
                add_error(f"line {line}: has {len(row)} fields, the header has {ncols}")
            elif not raw.utf8_ok and any(_UNDECODABLE.search(c) for c in row):
                n += 1
                add_error(f"line {line}: {_diagnose(rules, row, index)[0]}")
            else:
                n += 1
                try:
                    acct = row[i_acct].strip()
                    if not acct or len(acct) > MAX_ACCOUNT_ID or control(acct):
                        raise ValueError
                    cell = row[i_type]
                    etype = entry_map.get(cell) or check_entry_type(cell)
                    cell = row[i_amt]
                    amount = amounts.get(cell) or check_amount(cell)
                    when = check_when(row[i_when])
                    tx = check_tx(cell) if i_tx is not None and (cell := row[i_tx]) else None
                    if i_wallet is not None:
                        w = (wallets.get(cell) or check_wallet(cell)) if (
                            cell := row[i_wallet]) else None
                    if i_email is not None:
                        email = (emails.get(cell) or check_email(cell)) if (
                            cell := row[i_email]) else None
                    if i_phone is not None:
                        phone = (phones.get(cell) or check_phone(cell)) if (
                            cell := row[i_phone]) else None
                    if i_iin is not None:
                        iin_h = (iins.get(cell) or check_iin(cell)) if (
                            cell := row[i_iin]) else None
                    if i_ins is not None:
                        cell = row[i_ins]
                        ins = insider_map.get(cell)
                        if ins is None:
                            ins = check_insider(cell)
                except ValueError:
                    add_error(f"line {line}: {'; '.join(_diagnose(rules, row, index))}")
                else:
                    if not errors:  # once the file is refused, rows are only checked
                        digest = sha256(
                            f"{acct}\x1f{etype}\x1f{amount}\x1f{when}\x1f{tx or ''}".encode()
                        ).digest()
                        k = from_bytes(digest[:8], "big", signed=True)
                        key = digest[:ROW_KEY_BYTES].hex()
                        ident = (acct, w, email, phone, iin_h, ins)
                        if ident == prev:
                            yield (line, k, key, run_line, etype, amount, when, tx or "",
                                   "", "", "", "", "", "", 0)
                        else:
                            prev, run_line = ident, line
                            yield (line, k, key, line, etype, amount, when, tx or "",
                                   acct, w[0] if w else "", w[1] if w else "", email or "",
                                   phone or "", iin_h or "", 1 if ins else 0)
            if n == next_progress:
                next_progress += progress_every
                progress("reading", n, raw.bytes)  # type: ignore[misc]
        counter[0] = n

    stage.write(rows())
    n = counter[0]
    if progress:
        progress("reading", n, raw.bytes)
    return n, errors


def _read_error(exc: Exception) -> str:
    return f"not readable as CSV ({exc})"


def _diagnose(rules: _Rules, row: list[str], index: dict[str, int]) -> list[str]:
    """Every problem of a bad row (the slow path; the fast path stops at the first)."""
    checks = [
        ("account_id", rules.check_account),
        ("entry_type", rules.check_entry_type),
        ("amount", rules.check_amount),
        ("occurred_at", rules.check_occurred_at),
        ("tx_hash", rules.check_tx_hash),
        ("wallet", rules.check_wallet),
        ("email", rules.check_email),
        ("phone", rules.check_phone),
        ("iin", rules.check_iin),
        ("insider", rules.check_insider),
    ]
    if any(_UNDECODABLE.search(cell) for cell in row):
        return ["is not UTF-8 text (save the file as UTF-8)"]
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


def _store(
    session: Session,
    stage: _Stage,
    case_id: int,
    case_code: str,
    rows_read: int,
    file_sha: str,
) -> ImportResult:
    conn = stage.conn
    p = {"c": case_id}

    # 1. The runs (see _Stage): a few rows per account.
    conn.exec_driver_sql(
        "INSERT INTO ledger_ident (line, account_id, wallet, wallet_key, email, phone, iin_hash, "
        "insider) SELECT line, account_id, NULLIF(wallet, ''), NULLIF(wallet_key, ''), "
        "NULLIF(email, ''), NULLIF(phone, ''), NULLIF(iin_hash, ''), insider "
        "FROM ledger_stage WHERE account_id <> ''"
    )

    max_before = conn.execute(text("SELECT coalesce(max(id), 0) FROM ledger_entry")).scalar()

    # 2. Accounts (new ones start at zero; totals follow from the new entries).
    accounts_added = conn.execute(text(
        "INSERT INTO ledger_account (case_id, account_id, deposits, withdrawals, bonuses, insider) "
        "SELECT :c, account_id, 0, 0, 0, false FROM ledger_ident WHERE true "
        "GROUP BY account_id ORDER BY account_id "
        "ON CONFLICT (case_id, account_id) DO NOTHING"
    ), p).rowcount
    conn.execute(text(
        "UPDATE ledger_ident SET account_pk = (SELECT a.id FROM ledger_account a "
        "WHERE a.case_id = :c AND a.account_id = ledger_ident.account_id)"
    ), p)

    # 3. Entries: only rows not stored before; account and identity values from their run
    # (CROSS JOIN: on SQLite the stage is the outer loop, in line order, and the run is found
    # by its line).
    insert_entries = (
        "INSERT INTO ledger_entry (case_id, account_pk, row_key, entry_type, amount, occurred_at, "
        "tx_hash, wallet, email, phone, iin_hash) "
        "SELECT :c, i.account_pk, s.row_key, s.entry_type, s.amount, s.occurred_at, "
        "NULLIF(s.tx_hash, ''), i.wallet, i.email, i.phone, i.iin_hash "
        "FROM ledger_stage s CROSS JOIN ledger_ident i WHERE i.line = s.run_line {} "
        "ON CONFLICT (case_id, row_key) DO NOTHING"
    )
    rows_added = conn.execute(text(insert_entries.format("ORDER BY s.line")), p).rowcount

    # 4. Identical rows within the file: the n-th (n ≥ 2) gets its own key. Only when some row
    # was not added (a re-import, an extended file, or identical rows: each such n-th row lost
    # the conflict on (case_id, row_key) to the first): those rows get their keys and go in.
    dup_rows = 0
    if rows_added < rows_read:
        dups = conn.execute(text(
            "SELECT line, row_key FROM ledger_stage WHERE k IN "
            "(SELECT k FROM ledger_stage GROUP BY k HAVING count(*) > 1) ORDER BY line"
        )).all()
        seen: dict[str, int] = {}
        fixes = []
        for line, key in dups:
            n = seen[key] = seen.get(key, 0) + 1
            if n > 1:
                nth = hashlib.sha256(f"{key}#{n}".encode()).digest()[:ROW_KEY_BYTES].hex()
                fixes.append({"k": nth, "line": line, "c": case_id})
        if fixes:
            dup_rows = len(fixes)
            conn.execute(text("UPDATE ledger_stage SET row_key = :k WHERE line = :line"), fixes)
            for fix in fixes:
                rows_added += conn.execute(
                    text(insert_entries.format("AND s.line = :line")), fix
                ).rowcount

    identifiers_added = 0
    if rows_added:
        new = {"c": case_id, "m": max_before}
        # 5. Totals from the new entries only.
        conn.exec_driver_sql(
            "CREATE TEMP TABLE ledger_agg (account_pk BIGINT PRIMARY KEY, dep BIGINT NOT NULL, "
            "wd BIGINT NOT NULL, bon BIGINT NOT NULL)"
            + stage.tail
        )
        conn.execute(text(
            "INSERT INTO ledger_agg (account_pk, dep, wd, bon) "
            "SELECT account_pk, "
            "sum(CASE WHEN entry_type = 'deposit' THEN amount ELSE 0 END), "
            "sum(CASE WHEN entry_type = 'deposit' THEN 0 ELSE amount END), "
            "sum(CASE WHEN entry_type = 'bonus' THEN amount ELSE 0 END) "
            "FROM ledger_entry WHERE id > :m AND +case_id = :c GROUP BY account_pk"
        ), new)
        agg = "(SELECT g.{} FROM ledger_agg g WHERE g.account_pk = ledger_account.id)"
        conn.execute(text(
            f"UPDATE ledger_account SET deposits = deposits + {agg.format('dep')}, "
            f"withdrawals = withdrawals + {agg.format('wd')}, "
            f"bonuses = bonuses + {agg.format('bon')} "
            "WHERE id IN (SELECT account_pk FROM ledger_agg)"
        ))
        # 6. Match keys: the tx hashes of the new entries (one per row) ...
        identifiers_added += conn.execute(text(
            "INSERT INTO ledger_identifier (case_id, kind, value, account_pk) "
            "SELECT :c, 'tx_hash', tx_hash, account_pk FROM ledger_entry "
            "WHERE id > :m AND +case_id = :c AND tx_hash IS NOT NULL "
            "ORDER BY tx_hash, account_pk "
            "ON CONFLICT (case_id, kind, value, account_pk) DO NOTHING"
        ), new).rowcount
    # ... and the identity values of the accounts, from the runs (ON CONFLICT: the values of
    # rows stored before are there already). GROUP BY, not DISTINCT: SQLite makes DISTINCT a
    # temporary B-tree in the temp database, whose small cache spills (1M accounts: 26 → 15
    # CPU s, 14.4 → 0.8 GB written); GROUP BY and ORDER BY share one sort.
    for kind, column in (("iin", "iin_hash"), ("email", "email"), ("phone", "phone"),
                         ("wallet", "wallet_key")):
        identifiers_added += conn.execute(text(
            f"INSERT INTO ledger_identifier (case_id, kind, value, account_pk) "
            f"SELECT :c, '{kind}', {column}, account_pk FROM ledger_ident "
            f"WHERE {column} IS NOT NULL GROUP BY {column}, account_pk "
            f"ORDER BY {column}, account_pk "
            f"ON CONFLICT (case_id, kind, value, account_pk) DO NOTHING"
        ), p).rowcount

    # 7. Insiders named by the file (never unmarked by an import).
    insiders_marked = conn.execute(text(
        "UPDATE ledger_account SET insider = true, "
        "insider_reason = coalesce(insider_reason, 'insider in the imported ledger') "
        "WHERE case_id = :c AND NOT insider AND id IN "
        "(SELECT account_pk FROM ledger_ident WHERE insider = 1)"
    ), p).rowcount

    return ImportResult(
        case=case_code,
        rows_read=rows_read,
        rows_added=rows_added,
        accounts_added=accounts_added,
        identifiers_added=identifiers_added,
        insiders_marked=insiders_marked,
        duplicates_in_file=dup_rows,
        file_sha256=file_sha,
    )


# ----------------------------------------------------------------------------- reading back


def ledger_summary(session: Session, case_code: str) -> dict[str, Any]:
    """CONTRACT's ``{"accounts", "deposits", "withdrawals", "net_winners", "total_net_loss"}``:
    counts as ints, amounts as decimal strings; a case without a ledger gives zeros.
    ``withdrawals`` includes bonuses; ``net_winners`` counts accounts with withdrawals ≥
    deposits; ``total_net_loss`` = Σ max(0, deposits − withdrawals). Insider accounts count
    like any other (the ledger is reported as seized)."""
    from claims.cases import get_case_by_code
    from claims.money import format_amount

    case = get_case_by_code(session, case_code)
    row = session.execute(text(
        "SELECT count(*), coalesce(sum(deposits), 0), coalesce(sum(withdrawals), 0), "
        "coalesce(sum(CASE WHEN withdrawals >= deposits THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(CASE WHEN deposits > withdrawals THEN deposits - withdrawals ELSE 0 END), 0) "
        "FROM ledger_account WHERE case_id = :c"
    ), {"c": case.id}).one()
    accounts, deposits, withdrawals, winners, loss = (int(x) for x in row)
    return {
        "accounts": accounts,
        "deposits": format_amount(deposits),
        "withdrawals": format_amount(withdrawals),
        "net_winners": winners,
        "total_net_loss": format_amount(loss),
    }


def get_account(session: Session, case_code: str, account_id: str) -> LedgerAccount:
    from claims.cases import get_case_by_code

    case = get_case_by_code(session, case_code)
    acct = session.execute(
        select(LedgerAccount).where(
            LedgerAccount.case_id == case.id, LedgerAccount.account_id == account_id.strip()
        )
    ).scalar_one_or_none()
    if acct is None:
        raise NotFound(f"no ledger account {account_id.strip()!r} in case {case.code}")
    return acct


def mark_insider(
    session: Session,
    case_code: str,
    account_id: str,
    reason: str | None = None,
    actor: Actor | None = None,
) -> LedgerAccount:
    """Mark a promoter/insider account (audited). Unknown case or account → ``NotFound``.
    Marking an insider again with the same reason changes nothing and records nothing."""
    acct = get_account(session, case_code, account_id)
    reason = " ".join((reason or "").split()) or "marked insider by the operator"
    if acct.insider and acct.insider_reason == reason:
        return acct
    before = {"insider": acct.insider, "insider_reason": acct.insider_reason}
    acct.insider = True
    acct.insider_reason = reason
    session.add(acct)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "ledger.mark_insider", "ledger_account",
        f"{case_code}/{acct.account_id}", before=before,
        after={"insider": True, "insider_reason": reason},
    )
    return acct
