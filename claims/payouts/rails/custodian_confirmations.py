"""The custodian's confirmations coming back (``payout_id,tx_id,amount[,status]``, status
``confirmed`` by default or ``failed``; docs/formats.md) — :func:`import_confirmations`:

- a malformed file changes nothing: :class:`~claims.errors.InvalidInput` (422) naming every
  bad line (``line N: reason``; the header is line 1);
- a row matching an exported payout (same payout, same amount) confirms it (``tx_id``
  recorded, ``paid`` notice) or marks it failed (``failed`` notice);
- a row whose payout, ``tx_id`` and amount equal what is recorded counts as ``already``: the
  same file twice records nothing twice;
- any other row — an unknown payout, another amount, another ``tx_id`` for a payout already
  confirmed, a payout never handed over — confirms nothing, is listed under ``mismatches``
  and recorded as a :class:`~claims.models.Mismatch` (once), which stops further transfers of
  the round until finance resolves it. The file's matching rows are recorded all the same.

The instructions going out are :mod:`claims.payouts.rails.custodian`'s.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlmodel import Session

from claims import audit, rounds
from claims.audit import Actor
from claims.db import bind_value, bulk_insert, lock_clause, session_scope, update_rows
from claims.errors import InvalidInput
from claims.gc_pause import gc_paused
from claims.models import CustodianConfirmation, Payout, PayoutState, utcnow
from claims.money import AmountError, format_amount, parse_amount
from claims import db
from claims.payouts.common import RAIL_CUSTODIAN, chunked, require_finance
from claims.payouts.reconciliation import maybe_settle, record_mismatch
from claims.payouts.records import close_attempts, notify_outcomes

P = PayoutState
CONFIRMATION_COLUMNS = ("payout_id", "tx_id", "amount")
STATUSES = ("confirmed", "failed")
MAX_ROWS = 1_000_000
MAX_TX_ID = 128


# ------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class ConfirmationRow:
    line: int
    payout_id: int
    tx_id: str
    amount: int
    status: str


@dataclass(frozen=True)
class _Columns:
    """Where each column is in the file's rows; ``short``: the width of a row that leaves the
    optional last column ``status`` out (-1 when it is not last)."""

    payout_id: int
    tx_id: int
    amount: int
    status: int | None
    width: int
    short: int


def _error(line: int, message: str) -> dict[str, str]:
    return {"field": f"line {line}", "message": message}


def _invalid(errors: list[dict[str, str]]) -> InvalidInput:
    return InvalidInput(errors, "\n".join(f"{e['field']}: {e['message']}" for e in errors))


def parse_confirmations(data: str | bytes) -> list[ConfirmationRow]:
    """Parse a confirmations file; every bad line named (``InvalidInput``, nothing kept)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid([_error(1, "the file is not UTF-8 text")]) from None
    reader = csv.reader(io.StringIO(data.removeprefix("\ufeff")))
    errors: list[dict[str, str]] = []
    columns = _read_header(reader, errors)
    if columns is None:
        raise _invalid(errors)
    out: list[ConfirmationRow] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or (not fields[0].strip() and all(not f.strip() for f in fields)):
                continue
            if len(out) + len(errors) >= MAX_ROWS:
                errors.append(_error(line, f"more than {MAX_ROWS} rows"))
                break
            row, problem = _parse_row(line, fields, columns)
            if row is None:
                errors.append(_error(line, problem))
            else:
                out.append(row)
    except csv.Error as exc:
        errors.append(_error(reader.line_num, f"not CSV: {exc}"))
    if errors:
        raise _invalid(errors)
    return out


def _read_header(reader: Any, errors: list[dict[str, str]]) -> _Columns | None:
    """The header's columns, or None with the reasons in ``errors``."""
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        header = []
        errors.append(_error(1, f"not CSV: {exc}"))
    names = [h.strip().lower() for h in header]
    if not names and not errors:
        errors.append(_error(1, "the file is empty; expected the header "
                                "payout_id,tx_id,amount[,status]"))
    missing = [c for c in CONFIRMATION_COLUMNS if c not in names]
    if names and missing:
        errors.append(_error(1, "missing column(s) " + ", ".join(missing)
                             + "; expected payout_id,tx_id,amount[,status]"))
    if names and len(set(names)) != len(names):
        errors.append(_error(1, "a column is named twice"))
    if errors:
        return None
    idx = {n: i for i, n in enumerate(names)}
    width = len(names)
    return _Columns(idx["payout_id"], idx["tx_id"], idx["amount"], idx.get("status"), width,
                    width - 1 if names[-1] == "status" else -1)


def _parse_row(line: int, fields: list[str],
               columns: _Columns) -> tuple[ConfirmationRow | None, str]:
    """One data row: the row, or None and why it is bad."""
    if len(fields) == columns.short:
        fields = [*fields, ""]  # the optional status left out on this row
    if len(fields) != columns.width:
        return None, f"{len(fields)} fields, the header has {columns.width}"
    problems = []
    pid_text = fields[columns.payout_id].strip()
    pid = None
    if not (pid_text.isascii() and pid_text.isdigit()) or pid_text.startswith("0") \
            or len(pid_text) > 18:
        problems.append(f"payout_id {pid_text!r} is not a payout id")
    else:
        pid = int(pid_text)
    tx_id = fields[columns.tx_id].strip()
    if not tx_id:
        problems.append("tx_id is empty")
    elif len(tx_id) > MAX_TX_ID or not tx_id.isprintable() or " " in tx_id:
        # isprintable() is False for every whitespace character but the ASCII space
        problems.append("tx_id must be at most 128 printable characters without spaces")
    amount = None
    try:
        amount = parse_amount(fields[columns.amount].strip(), allow_zero=False)
    except AmountError as exc:
        problems.append(f"amount {exc}")
    status = fields[columns.status].strip().lower() if columns.status is not None else ""
    status = status or "confirmed"
    if status not in STATUSES:
        problems.append("status must be confirmed or failed")
    if problems:
        return None, "; ".join(problems)
    return ConfirmationRow(line, pid, tx_id, amount, status), ""  # type: ignore[arg-type]


# ------------------------------------------------------------------ the stand-in custodian


def simulate_custodian(instructions: TextIO, confirmations: TextIO) -> int:
    """The embedded default's stand-in custodian (the demo and the benches play it): reads an
    instructions file and writes the confirmations file that confirms every line, with a
    transaction id derived from its idempotency key (64 hex, TRON-shaped), line by line.
    Returns the lines confirmed. Never used with a real custodian."""
    w = csv.writer(confirmations, lineterminator="\n")
    w.writerow(["payout_id", "tx_id", "amount", "status"])
    n = 0
    for line in csv.DictReader(instructions):
        tx = hashlib.sha256(f"custodian:{line['idempotency_key']}".encode()).hexdigest()
        w.writerow([line["payout_id"], tx, line["amount"], "confirmed"])
        n += 1
    return n


def simulated_confirmations(instructions_text: str) -> str:
    """:func:`simulate_custodian` of an instructions file given as text."""
    out = io.StringIO()
    simulate_custodian(io.StringIO(instructions_text), out)
    return out.getvalue()


# ------------------------------------------------------------------ import


@dataclass
class _Sorted:
    """A file's rows against what is recorded: payouts ``(id, rail, amount, state, tx_id,
    attempt, claim_id, network)`` to confirm or fail with their row, rows already recorded,
    and mismatching rows with the reason."""

    confirm: list[tuple[ConfirmationRow, tuple]] = field(default_factory=list)
    fail: list[tuple[ConfirmationRow, tuple]] = field(default_factory=list)
    already: int = 0
    mismatches: list[tuple[ConfirmationRow, str]] = field(default_factory=list)


_CONFIRMATION_COLUMNS = ("round_id", "payout_id", "tx_id", "amount", "status", "created_at")


@gc_paused()
def import_confirmations(session: Session, round_id: object, data: str | bytes, *,
                         actor: Actor) -> dict[str, Any]:
    """Apply a custodian's confirmations (see the module docstring). Returns
    ``{"confirmed", "failed", "already", "mismatches": [{"line", "payout_id", "reason"}]}``."""
    require_finance(actor, "import custodian confirmations")
    rows = parse_confirmations(data)
    rid = rounds.get_round(session, round_id, lock=True).id
    payouts, recorded = _recorded(session, rid, sorted({r.payout_id for r in rows}))
    found = _sort_rows(rid, rows, payouts, recorded)
    del recorded
    now = utcnow()
    _store_confirmations(session, rid, found, now)
    _mark_confirmed(session, found.confirm, actor, now)
    _mark_failed(session, found.fail, actor, now)
    # the notices: every ``paid`` one, then every ``failed`` one
    for part in chunked(found.confirm):
        notify_outcomes(session, [(p[6], p[2], r.tx_id, p[7], None) for r, p in part], [])
    for part in chunked(found.fail):
        notify_outcomes(session, [], [(p[6], p[2]) for _, p in part])
    for row, reason in found.mismatches:
        record_mismatch(session, rid, payout_id=row.payout_id if row.payout_id in payouts
                        else None, source="custodian", reason=reason,
                        detail={"payout_id": row.payout_id, "tx_id": row.tx_id,
                                "amount": row.amount, "status": row.status},
                        actor=actor)
    audit.record(session, actor, "payouts.confirmations_imported", "round", rid, after={
        "rows": len(rows), "confirmed": len(found.confirm), "failed": len(found.fail),
        "already": found.already, "mismatches": len(found.mismatches)})
    if found.confirm:
        maybe_settle(session, rid, actor=actor)
    return {
        "confirmed": len(found.confirm),
        "failed": len(found.fail),
        "already": found.already,
        "mismatches": [{"line": r.line, "payout_id": str(r.payout_id), "reason": why}
                       for r, why in found.mismatches],
    }


def import_confirmations_file(round_id: object, data: str | bytes, *, actor: Actor,
                              engine: Any = None) -> dict[str, Any]:
    """:func:`import_confirmations` in a transaction of its own, a malformed file refused
    (422) before the round is locked."""
    parse_confirmations(data)
    with session_scope(engine) as s:
        return import_confirmations(s, round_id, data, actor=actor)


def _recorded(session: Session, rid: int,
              ids: list[int]) -> tuple[dict[int, tuple], dict[int, set[tuple[str, int, str]]]]:
    """The round's payouts the file names (locked) and the confirmations already recorded
    for them ``(tx_id, amount, status)``."""
    payouts: dict[int, tuple] = {}
    recorded: dict[int, set[tuple[str, int, str]]] = {}
    lock = " FOR UPDATE" if lock_clause(session) else ""
    round_col = db.unindexed(session, "round_id")  # by id, not by scanning the round
    for chunk in chunked(ids):
        chunk = tuple(chunk)
        marks = db.markers(len(chunk))
        for p in db.fetch_all(session, "SELECT id, rail, amount, state, tx_id, attempt, claim_id, "
                          f"network FROM payout WHERE id IN ({marks}) AND {round_col} = ?{lock}",
                          (*chunk, rid)):
            payouts[p[0]] = tuple(p)
        for pid, tx, amount, status in db.fetch_all(
            session, "SELECT payout_id, tx_id, amount, status FROM custodian_confirmation "
            f"WHERE payout_id IN ({marks})", chunk,
        ):
            recorded.setdefault(pid, set()).add((tx, amount, status))
    return payouts, recorded


def _sort_rows(rid: int, rows: list[ConfirmationRow], payouts: dict[int, tuple],
               recorded: dict[int, set]) -> _Sorted:
    """Each row to confirm, fail, count as already recorded, or report as a mismatch, in the
    file's order (rows of one file may repeat a payout)."""
    state = {pid: (p[3], p[4]) for pid, p in payouts.items()}
    found = _Sorted()
    exported, confirmed, failed = P.exported.value, P.confirmed.value, P.failed.value
    for row in rows:
        p = payouts.get(row.payout_id)
        if p is None:
            found.mismatches.append((row, f"no payout {row.payout_id} in round {rid}"))
            continue
        pid, rail, amount = p[0], p[1], p[2]
        if rail != RAIL_CUSTODIAN:
            found.mismatches.append((row, f"payout {pid} is paid on the {rail} rail, not by "
                                          "the custodian"))
            continue
        if row.amount != amount:
            found.mismatches.append((row, f"amount differs: the custodian reports "
                                          f"{format_amount(row.amount)} USDT, payout {pid} is "
                                          f"{format_amount(amount)} USDT"))
            continue
        key = (row.tx_id, row.amount, row.status)
        seen = recorded.get(pid)
        if seen is not None and key in seen:
            found.already += 1
            continue
        current, tx = state[pid]
        if current == exported:
            ok = row.status == "confirmed"
            (found.confirm if ok else found.fail).append((row, p))
            state[pid] = (confirmed if ok else failed, row.tx_id)
            recorded.setdefault(pid, set()).add(key)
        elif current == confirmed:
            found.mismatches.append((row, f"payout {pid} is confirmed with tx {tx}; the "
                                          f"custodian now reports {row.status} with tx "
                                          f"{row.tx_id}"))
        elif current == failed:
            found.mismatches.append((row, f"payout {pid} was reported failed; the custodian "
                                          f"now reports {row.status} with tx {row.tx_id}"))
        else:
            found.mismatches.append((row, f"payout {pid} was not handed to the custodian (it "
                                          f"is {current})"))
    return found


def _store_confirmations(session: Session, rid: int, found: _Sorted, now) -> None:
    """The confirmations this file adds: the confirming rows, then the failing ones."""
    now_db = bind_value(session, CustodianConfirmation.__table__.c.created_at, now)
    for part in (found.confirm, found.fail):
        for chunk in chunked(part):
            bulk_insert(session, CustodianConfirmation.__table__, _CONFIRMATION_COLUMNS,
                        [(rid, p[0], r.tx_id, r.amount, r.status, now_db) for r, p in chunk])


def _mark_confirmed(session: Session, confirm: list[tuple[ConfirmationRow, tuple]],
                    actor: Actor, now) -> None:
    """``exported → confirmed`` (reconciled by the confirmation itself), attempts closed."""
    table = Payout.__table__
    now_db = bind_value(session, table.c.updated_at, now)
    exported, confirmed = P.exported.value, P.confirmed.value
    for part in chunked(confirm):
        changed = update_rows(
            session, table, keys=("id", "state"), columns=("tx_id",),
            rows=[(p[0], exported, r.tx_id) for r, p in part],
            extra_sql="state = ?, confirmed_at = ?, reconciled_at = ?, failure_reason = NULL, "
                      "updated_at = ?",
            extra=(confirmed, now_db, now_db, now_db))
        assert changed == len(part)
        close_attempts(session, [(p[0], p[5], "confirmed", None) for _, p in part])
        audit.record_batch(session, [
            (actor, "payout.confirmed", "payout", p[0], {"state": exported},
             {"state": confirmed, "tx_id": r.tx_id, "amount": r.amount, "source": "custodian",
              "line": r.line})
            for r, p in part
        ])


def _mark_failed(session: Session, fail: list[tuple[ConfirmationRow, tuple]], actor: Actor,
                 now) -> None:
    """``exported → failed`` with the custodian's transaction id, attempts closed."""
    table = Payout.__table__
    now_db = bind_value(session, table.c.updated_at, now)
    exported, failed = P.exported.value, P.failed.value
    for part in chunked(fail):
        reasons = [f"the custodian reported it failed (tx {r.tx_id})" for r, _ in part]
        changed = update_rows(
            session, table, keys=("id", "state"), columns=("tx_id", "failure_reason"),
            rows=[(p[0], exported, r.tx_id, why) for (r, p), why in zip(part, reasons)],
            extra_sql="state = ?, updated_at = ?", extra=(failed, now_db))
        assert changed == len(part)
        close_attempts(session, [(p[0], p[5], "failed", why)
                                 for (_, p), why in zip(part, reasons)])
        audit.record_batch(session, [
            (actor, "payout.failed", "payout", p[0], {"state": exported},
             {"state": failed, "tx_id": r.tx_id, "source": "custodian", "line": r.line})
            for r, p in part
        ])
