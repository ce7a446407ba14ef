"""One pass over a ledger file: every row checked (:mod:`claims.ledger.rules`) and, while the
file is good, streamed into the staging table (:mod:`claims.ledger.staging`).

Line numbers count the header as line 1 and read ``line N: reason``; blank lines are skipped.
Every bad line is named: after the first one, rows are only checked, no longer staged.

Row identity (docs/formats.md, "Ledger CSV"): a row is (account_id, entry_type, amount,
occurred_at, tx_hash) plus its position among identical rows of the file. Its ``row_key`` is the
first 128 bits (32 hex digits) of the SHA-256 of
``account_id␟entry_type␟amount-in-micro␟occurred_at-UTC␟tx_hash`` for the first such row and
:func:`nth_row_key` for the n-th identical row (n ≥ 2). 128 bits make a collision practically
impossible and keep the unique index half the size of a 64-digit key's, which makes its
random-order inserts cheaper. ``(case_id, row_key)`` is unique, so importing a file again, or a
file that extends it, adds only the new rows; two identical rows within one file are both kept.

The stream is one generator feeding the bulk writer directly (no per-chunk lists): each cell is
looked up in the rules' caches, else checked by ``Rules.check_*`` (which fill them); the usual
spellings take inline fast paths. A row that fails any check is diagnosed by
:meth:`~claims.ledger.rules.Rules.diagnose`, which names every problem of the line. Only the
row that starts a *run* of equal identity values carries them into the stage (see
:class:`~claims.ledger.staging.Stage`).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from claims.ledger.rules import (
    CONTROL,
    ENTRY_MAP,
    INSIDER_MAP,
    MAX_ACCOUNT_ID,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    UNDECODABLE,
    Rules,
    parse_header,
    read_error,
)
from claims.ledger.source import HashingReader, Source
from claims.ledger.staging import Stage

#: row_key: the first 128 bits of a SHA-256, in hex.
ROW_KEY_BYTES = 16
PROGRESS_EVERY = 50_000

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, rows_read, bytes_read)``: phase ``"reading"`` every ``progress_every``
rows and once at the end of the file, then ``"storing"`` once before the set-based SQL."""


def nth_row_key(first_key: str, n: int) -> str:
    """The key of the n-th (n ≥ 2) row identical to the row whose key is ``first_key``."""
    return hashlib.sha256(f"{first_key}#{n}".encode()).digest()[:ROW_KEY_BYTES].hex()


def read_into_stage(
    source: Source,
    rules: Rules,
    stage: Stage,
    progress: ProgressFn | None,
    progress_every: int,
) -> tuple[int, list[str]]:
    """Stream, check and stage every row of ``source``; returns (rows, bad lines)."""
    reader = csv.reader(source.stream, strict=True)
    ncols, index, errors = read_header(reader)
    if errors:
        return 0, errors
    counter = [0]
    stage.write(staged_rows(csv_rows(reader, errors), ncols, index, source.raw, rules, errors,
                            counter, progress, progress_every))
    n = counter[0]
    if progress:
        progress("reading", n, source.raw.bytes)
    return n, errors


def read_header(reader: Any) -> tuple[int, dict[str, int], list[str]]:
    """(number of columns, column name → position, bad lines) of the header line."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return 0, {}, [f"line 1: {read_error(exc)}"]
    if header is None or not any(c.strip() for c in header):
        what = "the file is empty" if header is None else "the line is blank"
        return 0, {}, [f"line 1: {what}; expected the header {','.join(REQUIRED_COLUMNS)}"]
    index, problems = parse_header(header)
    return len(header), index, [f"line 1: {p}" for p in problems]


def csv_rows(reader: Any, errors: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every row that is not blank; a line the CSV reader cannot read
    is added to ``errors``."""
    add_error = errors.append
    last = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            add_error(f"line {last + 1}: {read_error(exc)}")
            last = reader.line_num
            continue
        line = last + 1
        last = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line (a header has at least 4 columns)
        yield line, row


def staged_rows(
    rows: Iterator[tuple[int, list[str]]],
    ncols: int,
    index: dict[str, int],
    raw: HashingReader,
    rules: Rules,
    errors: list[str],
    counter: list[int],
    progress: ProgressFn | None,
    progress_every: int,
) -> Iterator[tuple]:
    """The stage's rows (:data:`~claims.ledger.staging.STAGE_COLUMNS` order) of the good rows,
    while no row is bad; every bad row is added to ``errors``. ``counter[0]``: rows read."""
    i_acct, i_type, i_amt, i_when = (index[c] for c in REQUIRED_COLUMNS)
    i_tx, i_wallet, i_email, i_phone, i_iin, i_ins = (index.get(c) for c in OPTIONAL_COLUMNS)
    amounts, wallets, emails, phones, iins = (rules.amounts, rules.wallets, rules.emails,
                                              rules.phones, rules.iins)
    check_entry_type, check_amount = rules.check_entry_type, rules.check_amount
    check_when, check_tx, check_wallet = (rules.check_occurred_at, rules.check_tx_hash,
                                          rules.check_wallet)
    check_email, check_phone, check_iin = rules.check_email, rules.check_phone, rules.check_iin
    check_insider, control, entry_map, insider_map = (rules.check_insider, CONTROL.search,
                                                      ENTRY_MAP, INSIDER_MAP)
    sha256, from_bytes, add_error = hashlib.sha256, int.from_bytes, errors.append
    n, next_progress = 0, (progress_every if progress else -1)
    prev: tuple = ()
    run_line = 0
    tx = w = email = phone = iin_h = None
    ins = False
    for line, row in rows:
        n += 1
        if len(row) != ncols:
            add_error(f"line {line}: has {len(row)} fields, the header has {ncols}")
        elif not raw.utf8_ok and any(UNDECODABLE.search(c) for c in row):
            add_error(f"line {line}: {rules.diagnose(row, index)[0]}")
        else:
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
                add_error(f"line {line}: {'; '.join(rules.diagnose(row, index))}")
            else:
                if not errors:  # once the file is refused, rows are only checked
                    digest = sha256(
                        f"{acct}\x1f{etype}\x1f{amount}\x1f{when}\x1f{tx or ''}".encode()).digest()
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
