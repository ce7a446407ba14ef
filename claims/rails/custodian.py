"""The custodian-file rail: TRON (and any network without a node of ours).

The program does not sign these transfers: a custodian or an exchange does, from the
instructions we hand it, and reports back what it did.

Instructions (``instructions.csv``)
    ``payout_id,network,address,amount,idempotency_key`` — one line per payout handed to the
    custodian (state ``exported``, and it keeps its line once confirmed or failed), in the
    order they were handed over. A payout is exported (``pending → exported``) by the executor
    or, at the latest, when finance first reads the instructions; its address is read from
    the claim at that moment (a claim that is not payable then is ``held`` instead) and never
    changes afterwards, so every read gives the same lines, each payout once. A failed payout
    that finance retries is exported again as a new attempt on a line of its own, with the
    idempotency key ``KEY-N`` (N = the attempt), so the custodian never mistakes the new
    attempt for the old one. The file is streamed (:func:`instruction_csv_chunks`: 10,000
    lines at a time, after the export has committed), so a round of any size is handed over
    in bounded memory — the CLI's ``payouts instructions --out`` and both downloads.

Confirmations (``payout_id,tx_id,amount[,status]``, status ``confirmed`` by default or
``failed``) — :func:`import_confirmations`:
    - a malformed file changes nothing: :class:`~claims.errors.InvalidInput` (422) naming
      every bad line (``line N: reason``; the header is line 1);
    - a row matching an exported payout (same payout, same amount) confirms it (``tx_id``
      recorded, ``paid`` notice) or marks it failed (``failed`` notice);
    - a row whose payout, ``tx_id`` and amount equal what is recorded counts as ``already``:
      the same file twice records nothing twice;
    - any other row — an unknown payout, another amount, another ``tx_id`` for a payout already
      confirmed, a payout never handed over — confirms nothing, is listed under
      ``mismatches`` and recorded as a :class:`~claims.models.Mismatch` (once), which stops
      further transfers of the round until finance resolves it. The file's matching rows are
      recorded all the same.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TextIO

from sqlalchemy import select
from sqlmodel import Session

from claims import audit, rounds
from claims.audit import Actor, bind_value, bulk_insert, json_str
from claims.db import lock_clause
from claims.errors import InvalidInput, PayoutError
from claims.gc_pause import gc_paused
from claims.models import (
    CustodianConfirmation,
    DistributionRound,
    Payout,
    PayoutAttempt,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import AmountError, format_amount, parse_amount
from claims.payouts import (
    INSERT_CHUNK,
    RAIL_CUSTODIAN,
    _marks,
    _rows,
    _sql,
    _unindexed,
    classify,
    close_attempts,
    hold_many,
    maybe_settle,
    notify_outcomes,
    open_attempts,
    record_mismatch,
    require_finance,
)

P = PayoutState
INSTRUCTION_COLUMNS = ("payout_id", "network", "address", "amount", "idempotency_key")
CONFIRMATION_COLUMNS = ("payout_id", "tx_id", "amount")
STATUSES = ("confirmed", "failed")
MAX_ROWS = 1_000_000
INSTRUCTION_BATCH = 10_000
MAX_TX_ID = 128


# ------------------------------------------------------------------ export and instructions


def export_pending(session: Session, round_id: int, *, actor: Actor,
                   limit: int | None = None) -> dict[str, int]:
    """``pending → exported`` for the round's pending custodian payouts (addresses read from
    the claims now; claims not payable → ``held``). Only a ``released`` round exports.
    Returns ``{"selected", "exported", "held"}``."""
    status = session.execute(
        select(DistributionRound.status).where(DistributionRound.id == round_id)
    ).scalar_one()
    if status != RoundStatus.released.value:
        return {"selected": 0, "exported": 0, "held": 0}
    stmt = (
        select(Payout.id, Payout.claim_id, Payout.amount, Payout.attempt, Payout.network)
        .where(Payout.round_id == round_id, Payout.rail == RAIL_CUSTODIAN,
               Payout.state == P.pending.value)
        .order_by(Payout.id)
    )
    if limit:
        stmt = stmt.limit(limit)
    if lock_clause(session):
        stmt = stmt.with_for_update(skip_locked=True)
    rows = [tuple(r) for r in session.connection().execute(stmt).all()]
    if not rows:
        return {"selected": 0, "exported": 0, "held": 0}
    exported = held = 0
    for i in range(0, len(rows), INSERT_CHUNK):
        items, hold = classify(session, rows[i : i + INSERT_CHUNK])
        held += hold_many(session, hold, actor=actor)
        if not items:
            continue
        now_db = bind_value(session, Payout.__table__.c.updated_at, utcnow())
        state, pending = P.exported.value, P.pending.value
        res = _sql(session, "UPDATE payout SET state = ?, address = ?, updated_at = ? "
                   "WHERE id = ? AND state = ? AND attempt = ?",
                   [(state, c.address, now_db, c.payout_id, pending, c.attempt) for c in items])
        if res.rowcount != len(items):
            raise PayoutError("payouts changed while being exported; nothing was exported, "
                              "run again")
        open_attempts(session, [(c.payout_id, c.attempt, None, c.address) for c in items])
        # audit.record(…, "payouts.exported", "round", round_id, after={"rail": …,
        # "payouts": [ids], "amount": total}), its text written directly
        ids = ",".join([str(c.payout_id) for c in items])
        audit.record_rows(session, [(
            actor.name, actor.role, "payouts.exported", "round", str(round_id), "null",
            f'{{"amount":{sum(c.amount for c in items)},"payouts":[{ids}],'
            f'"rail":{json_str(RAIL_CUSTODIAN)}}}')])
        exported += len(items)
    return {"selected": len(rows), "exported": exported, "held": held}


_CONFIRMATION_COLUMNS = ("round_id", "payout_id", "tx_id", "amount", "status", "created_at")
_BEFORE_EXPORTED = '{"state":"exported"}'


def instruction_key(key: str, attempt: int) -> str:
    return key if attempt == 1 else f"{key}-{attempt}"


@gc_paused()
def prepare_instructions(session: Session, round_id: object, *, actor: Actor | None = None,
                         export: bool = True) -> int:
    """The round's id, after exporting its pending custodian payouts (``export``: a finance
    read; the caller commits before handing the lines over). Raises ``NotFound`` for an
    unknown round."""
    rnd = rounds.get_round(session, round_id)
    if export:
        if actor is None:  # pragma: no cover - programming error
            raise ValueError("exporting needs the acting finance officer")
        require_finance(actor, "export custodian instructions")
        export_pending(session, rnd.id, actor=actor)
    return rnd.id


def instruction_rows(session: Session, round_pk: int,
                     batch: int = INSTRUCTION_BATCH) -> Iterator[tuple[str, str, str, str, str]]:
    """The instruction lines of round ``round_pk`` (see the module docstring) as tuples in
    :data:`INSTRUCTION_COLUMNS` order, read ``batch`` rows at a time: a round of any size
    streams in bounded memory."""
    stmt = (
        select(Payout.id, Payout.network, PayoutAttempt.address, Payout.amount,
               Payout.idempotency_key, PayoutAttempt.attempt)
        .join(PayoutAttempt, PayoutAttempt.payout_id == Payout.id)
        .where(Payout.round_id == round_pk, Payout.rail == RAIL_CUSTODIAN,
               PayoutAttempt.address.is_not(None))
        .order_by(PayoutAttempt.id)
        .execution_options(yield_per=batch)
    )
    for part in session.connection().execute(stmt).partitions():
        yield from [(str(pid), network, address, format_amount(amount),
                     instruction_key(key, attempt))
                    for pid, network, address, amount, key, attempt in part]


def instruction_csv_chunks(session: Session, round_pk: int,
                           batch: int = INSTRUCTION_BATCH) -> Iterator[str]:
    """The instructions file of round ``round_pk`` in pieces of ``batch`` lines, the header
    first: for a download or a file that never holds the whole round in memory."""
    for text, _lines in _csv_chunks(session, round_pk, batch):
        yield text


def write_instructions(session: Session, round_pk: int, file: TextIO) -> int:
    """Write the instructions file of round ``round_pk`` to ``file`` (streamed); returns the
    number of instruction lines."""
    total = 0
    for text, lines in _csv_chunks(session, round_pk, INSTRUCTION_BATCH):
        file.write(text)
        total += lines
    return total


def stream_instructions(round_pk: int, engine: Any = None) -> Iterator[str]:
    """:func:`instruction_csv_chunks` in a read transaction of its own (for a download
    served after the export's transaction committed)."""
    from claims.db import session_scope

    with session_scope(engine, write=False) as s:
        yield from instruction_csv_chunks(s, round_pk)


def _csv_chunks(session: Session, round_pk: int, batch: int) -> Iterator[tuple[str, int]]:
    """(CSV text, instruction lines in it): the header alone, then ``batch`` lines a piece."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INSTRUCTION_COLUMNS)
    yield buf.getvalue(), 0
    rows = instruction_rows(session, round_pk, batch)
    while part := list(islice(rows, batch)):
        buf.seek(0)
        buf.truncate()
        w.writerows(part)
        yield buf.getvalue(), len(part)


# ------------------------------------------------------------------ confirmations


@dataclass(frozen=True)
class ConfirmationRow:
    line: int
    payout_id: int
    tx_id: str
    amount: int
    status: str


def parse_confirmations(data: str | bytes) -> list[ConfirmationRow]:
    """Parse a confirmations file; every bad line named (``InvalidInput``, nothing kept)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput([{"field": "line 1", "message": "the file is not UTF-8 text"}],
                               "line 1: the file is not UTF-8 text") from None
    data = data.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(data))
    errors: list[dict[str, str]] = []

    def bad(line: int, message: str) -> None:
        errors.append({"field": f"line {line}", "message": message})

    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as exc:
        header = []
        bad(1, f"not CSV: {exc}")
    names = [h.strip().lower() for h in header]
    if not names and not errors:
        bad(1, "the file is empty; expected the header payout_id,tx_id,amount[,status]")
    missing = [c for c in CONFIRMATION_COLUMNS if c not in names]
    if names and missing:
        bad(1, "missing column(s) " + ", ".join(missing)
            + "; expected payout_id,tx_id,amount[,status]")
    if names and len(set(names)) != len(names):
        bad(1, "a column is named twice")
    out: list[ConfirmationRow] = []
    if errors:
        raise InvalidInput(errors, "\n".join(f"{e['field']}: {e['message']}" for e in errors))
    idx = {n: i for i, n in enumerate(names)}
    i_pid, i_tx, i_amount = idx["payout_id"], idx["tx_id"], idx["amount"]
    i_status = idx.get("status")
    width = len(names)
    short = width - 1 if names[-1] == "status" else -1  # the optional status left out
    line = 1
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or (not fields[0].strip() and all(not f.strip() for f in fields)):
                continue
            if len(out) + len(errors) >= MAX_ROWS:
                bad(line, f"more than {MAX_ROWS} rows")
                break
            if len(fields) == short:
                fields = [*fields, ""]  # the optional status left out on this row
            if len(fields) != width:
                bad(line, f"{len(fields)} fields, the header has {width}")
                continue
            problems = []
            pid_text = fields[i_pid].strip()
            pid = None
            if not (pid_text.isascii() and pid_text.isdigit()) or pid_text.startswith("0") \
                    or len(pid_text) > 18:
                problems.append(f"payout_id {pid_text!r} is not a payout id")
            else:
                pid = int(pid_text)
            tx_id = fields[i_tx].strip()
            if not tx_id:
                problems.append("tx_id is empty")
            elif len(tx_id) > MAX_TX_ID or not tx_id.isprintable() or " " in tx_id:
                # isprintable() is False for every whitespace character but the ASCII space
                problems.append("tx_id must be at most 128 printable characters without spaces")
            amount = None
            try:
                amount = parse_amount(fields[i_amount].strip(), allow_zero=False)
            except AmountError as exc:
                problems.append(f"amount {exc}")
            status = fields[i_status].strip().lower() if i_status is not None else ""
            status = status or "confirmed"
            if status not in STATUSES:
                problems.append("status must be confirmed or failed")
            if problems:
                bad(line, "; ".join(problems))
                continue
            out.append(ConfirmationRow(line, pid, tx_id, amount, status))  # type: ignore[arg-type]
    except csv.Error as exc:
        line = reader.line_num
        bad(line, f"not CSV: {exc}")
    if errors:
        raise InvalidInput(errors, "\n".join(f"{e['field']}: {e['message']}" for e in errors))
    return out


def simulate_custodian(instructions: TextIO, confirmations: TextIO) -> int:
    """The embedded default's stand-in custodian (the demo and the benches play it): reads an
    instructions file and writes the confirmations file that confirms every line, with a
    transaction id derived from its idempotency key (64 hex, TRON-shaped), line by line.
    Returns the lines confirmed. Never used with a real custodian."""
    import hashlib

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


@gc_paused()
def import_confirmations(session: Session, round_id: object, data: str | bytes, *,
                         actor: Actor) -> dict[str, Any]:
    """Apply a custodian's confirmations (see the module docstring). Returns
    ``{"confirmed", "failed", "already", "mismatches": [{"line", "payout_id", "reason"}]}``."""
    require_finance(actor, "import custodian confirmations")
    rows = parse_confirmations(data)
    rnd = rounds.get_round(session, round_id, lock=True)
    rid = rnd.id
    ids = sorted({r.payout_id for r in rows})
    # payout id → (id, rail, amount, state, tx_id, attempt, claim_id, network)
    payouts: dict[int, tuple] = {}
    recorded: dict[int, set[tuple[str, int, str]]] = {}
    lock = " FOR UPDATE" if lock_clause(session) else ""
    round_col = _unindexed(session, "round_id")  # by id, not by scanning the round
    for i in range(0, len(ids), INSERT_CHUNK):
        chunk = tuple(ids[i : i + INSERT_CHUNK])
        marks = _marks(len(chunk))
        for p in _rows(session, "SELECT id, rail, amount, state, tx_id, attempt, claim_id, "
                      f"network FROM payout WHERE id IN ({marks}) AND {round_col} = ?{lock}",
                      (*chunk, rid)):
            payouts[p[0]] = tuple(p)
        for pid, tx, amount, status in _rows(
            session, "SELECT payout_id, tx_id, amount, status FROM custodian_confirmation "
            f"WHERE payout_id IN ({marks})", chunk,
        ):
            recorded.setdefault(pid, set()).add((tx, amount, status))
    # state and tx of each payout as this import goes (rows of one file may repeat)
    state = {pid: (p[3], p[4]) for pid, p in payouts.items()}
    confirm: list[tuple[ConfirmationRow, tuple]] = []
    fail: list[tuple[ConfirmationRow, tuple]] = []
    already = 0
    mismatches: list[tuple[ConfirmationRow, str]] = []
    exported, confirmed, failed = P.exported.value, P.confirmed.value, P.failed.value
    for row in rows:
        p = payouts.get(row.payout_id)
        if p is None:
            mismatches.append((row, f"no payout {row.payout_id} in round {rid}"))
            continue
        pid, rail, amount = p[0], p[1], p[2]
        if rail != RAIL_CUSTODIAN:
            mismatches.append((row, f"payout {pid} is paid on the {rail} rail, not by the "
                                    "custodian"))
            continue
        if row.amount != amount:
            mismatches.append((row, f"amount differs: the custodian reports "
                                    f"{format_amount(row.amount)} USDT, payout {pid} is "
                                    f"{format_amount(amount)} USDT"))
            continue
        key = (row.tx_id, row.amount, row.status)
        seen = recorded.get(pid)
        if seen is not None and key in seen:
            already += 1
            continue
        current, tx = state[pid]
        if current == exported:
            if row.status == "confirmed":
                confirm.append((row, p))
                state[pid] = (confirmed, row.tx_id)
            else:
                fail.append((row, p))
                state[pid] = (failed, row.tx_id)
            if seen is None:
                recorded[pid] = {key}
            else:
                seen.add(key)
        elif current == confirmed:
            mismatches.append((row, f"payout {pid} is confirmed with tx {tx}; the custodian "
                                    f"now reports {row.status} with tx {row.tx_id}"))
        elif current == failed:
            mismatches.append((row, f"payout {pid} was reported failed; the custodian now "
                                    f"reports {row.status} with tx {row.tx_id}"))
        else:
            mismatches.append((row, f"payout {pid} was not handed to the custodian (it is "
                                    f"{current})"))
    del recorded
    now = utcnow()
    if confirm or fail:
        now_db = bind_value(session, CustodianConfirmation.__table__.c.created_at, now)
        for part in (confirm, fail):
            for i in range(0, len(part), INSERT_CHUNK):
                bulk_insert(session, CustodianConfirmation.__table__, _CONFIRMATION_COLUMNS, [
                    (rid, p[0], r.tx_id, r.amount, r.status, now_db)
                    for r, p in part[i : i + INSERT_CHUNK]
                ])
    name, role = actor.name, actor.role
    if confirm:
        now_db = bind_value(session, Payout.__table__.c.updated_at, now)
        for i in range(0, len(confirm), INSERT_CHUNK):
            part = confirm[i : i + INSERT_CHUNK]
            res = _sql(session, "UPDATE payout SET state = ?, tx_id = ?, confirmed_at = ?, "
                       "reconciled_at = ?, failure_reason = NULL, updated_at = ? "
                       "WHERE id = ? AND state = ?",
                       [(confirmed, r.tx_id, now_db, now_db, now_db, p[0], exported)
                        for r, p in part])
            assert res.rowcount == len(part)
            close_attempts(session, [(p[0], p[5], "confirmed", None) for _, p in part])
            # audit.record_many(…, ("payout.confirmed", "payout", id, {"state": "exported"},
            # {"state": "confirmed", "tx_id", "amount", "source": "custodian", "line"})), its
            # texts written directly
            audit.record_rows(session, [
                (name, role, "payout.confirmed", "payout", str(p[0]), _BEFORE_EXPORTED,
                 f'{{"amount":{r.amount},"line":{r.line},"source":"custodian",'
                 f'"state":"confirmed","tx_id":{json_str(r.tx_id)}}}')
                for r, p in part
            ])
    if fail:
        now_db = bind_value(session, Payout.__table__.c.updated_at, now)
        for i in range(0, len(fail), INSERT_CHUNK):
            part = fail[i : i + INSERT_CHUNK]
            reasons = [f"the custodian reported it failed (tx {r.tx_id})" for r, _ in part]
            res = _sql(session, "UPDATE payout SET state = ?, tx_id = ?, failure_reason = ?, "
                       "updated_at = ? WHERE id = ? AND state = ?",
                       [(failed, r.tx_id, why, now_db, p[0], exported)
                        for (r, p), why in zip(part, reasons)])
            assert res.rowcount == len(part)
            close_attempts(session, [(p[0], p[5], "failed", why)
                                     for (_, p), why in zip(part, reasons)])
            audit.record_rows(session, [
                (name, role, "payout.failed", "payout", str(p[0]), _BEFORE_EXPORTED,
                 f'{{"line":{r.line},"source":"custodian","state":"failed",'
                 f'"tx_id":{json_str(r.tx_id)}}}')
                for r, p in part
            ])
    # the notices: every ``paid`` one, then every ``failed`` one
    for i in range(0, len(confirm), INSERT_CHUNK):
        notify_outcomes(session, [(p[6], p[2], r.tx_id, p[7], None)
                                  for r, p in confirm[i : i + INSERT_CHUNK]], [])
    for i in range(0, len(fail), INSERT_CHUNK):
        notify_outcomes(session, [], [(p[6], p[2]) for _, p in fail[i : i + INSERT_CHUNK]])
    for row, reason in mismatches:
        record_mismatch(session, rid, payout_id=row.payout_id if row.payout_id in payouts
                        else None, source="custodian", reason=reason,
                        detail={"payout_id": row.payout_id, "tx_id": row.tx_id,
                                "amount": row.amount, "status": row.status},
                        actor=actor)
    audit.record(session, actor, "payouts.confirmations_imported", "round", rid, after={
        "rows": len(rows), "confirmed": len(confirm), "failed": len(fail), "already": already,
        "mismatches": len(mismatches)})
    if confirm:
        maybe_settle(session, rid, actor=actor)
    return {
        "confirmed": len(confirm),
        "failed": len(fail),
        "already": already,
        "mismatches": [{"line": r.line, "payout_id": str(r.payout_id), "reason": why}
                       for r, why in mismatches],
    }
