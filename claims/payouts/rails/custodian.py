"""The custodian-file rail: TRON (and any network without a node of ours).

The program does not sign these transfers: a custodian or an exchange does, from the
instructions we hand it, and reports back what it did (its confirmations:
:mod:`claims.payouts.rails.custodian_confirmations`, whose names this module re-exports).
The file formats: docs/formats.md.

Instructions (``instructions.csv``)
    ``payout_id,network,address,amount,idempotency_key`` — one line per payout handed to the
    custodian (state ``exported``, and it keeps its line once confirmed or failed), in the
    order they were handed over. A payout is exported (``pending → exported``) by the executor
    or, at the latest, when finance first reads the instructions; its address is read from
    the claim at that moment (a claim that is not payable then is ``held`` instead) and never
    changes afterwards, so every read gives the same lines, each payout once. A failed payout
    that finance retries is exported again as a new attempt on a line of its own, with the
    idempotency key ``KEY-N`` (N = the attempt), so the custodian never mistakes the new
    attempt for the old one. The file is streamed (:func:`instruction_csv_chunks`:
    :data:`INSTRUCTION_BATCH` lines at a time, after the export has committed), so a round of
    any size is handed over in bounded memory — the CLI's ``payouts instructions --out`` and
    both downloads.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from itertools import islice
from typing import Any, TextIO

from sqlalchemy import select
from sqlmodel import Session

from claims import audit, rounds
from claims.audit import Actor
from claims.db import bind_value, for_update, session_scope, update_rows
from claims.errors import PayoutError
from claims.gc_pause import gc_paused
from claims.models import (
    DistributionRound,
    Payout,
    PayoutAttempt,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import format_amount
from claims.payouts.common import FINANCE, RAIL_CUSTODIAN, chunked, require_finance
from claims.payouts.rails.custodian_confirmations import (
    CONFIRMATION_COLUMNS,
    ConfirmationRow,
    import_confirmations,
    import_confirmations_file,
    parse_confirmations,
    simulate_custodian,
    simulated_confirmations,
)
from claims.payouts.records import classify, hold_many, open_attempts

P = PayoutState
INSTRUCTION_COLUMNS = ("payout_id", "network", "address", "amount", "idempotency_key")
#: Instruction lines per piece of a streamed instructions file.
INSTRUCTION_BATCH = 10_000
#: Pending custodian payouts exported per step of a run (at least the run's batch size).
EXPORT_STEP = 1000


# ------------------------------------------------------------------ export


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
    stmt = for_update(stmt, session, skip_locked=True)
    rows = [tuple(r) for r in session.connection().execute(stmt).all()]
    exported = held = 0
    for part in chunked(rows):
        items, hold = classify(session, part)
        held += hold_many(session, hold, actor=actor)
        if items:
            _export(session, round_id, items, actor)
            exported += len(items)
    return {"selected": len(rows), "exported": exported, "held": held}


def _export(session: Session, round_id: int, items: list, actor: Actor) -> None:
    """Payable payouts → ``exported`` with the address read now, an attempt row each, one
    audit event for the lot."""
    table = Payout.__table__
    now = bind_value(session, table.c.updated_at, utcnow())
    pending = P.pending.value
    changed = update_rows(session, table, keys=("id", "state", "attempt"), columns=("address",),
                          rows=[(c.payout_id, pending, c.attempt, c.address) for c in items],
                          extra_sql="state = ?, updated_at = ?", extra=(P.exported.value, now))
    if changed != len(items):
        raise PayoutError("payouts changed while being exported; nothing was exported, "
                          "run again")
    open_attempts(session, [(c.payout_id, c.attempt, None, c.address) for c in items])
    audit.record(session, actor, "payouts.exported", "round", round_id, after={
        "rail": RAIL_CUSTODIAN, "payouts": [c.payout_id for c in items],
        "amount": sum(c.amount for c in items)})


# ------------------------------------------------------------------ instructions


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


def open_instructions(round_id: object, *, actor: Actor,
                      engine: Any = None) -> tuple[int, Iterator[str]]:
    """The round's instructions file for ``actor`` to download: finance's read exports the
    round's pending custodian payouts first (committed before the lines go out); anyone
    else's reads what was exported, changing nothing. Returns the round's id and the file's
    pieces (:func:`stream_instructions`)."""
    finance = actor.role == FINANCE
    with session_scope(engine, write=finance) as s:
        rid = prepare_instructions(s, round_id, actor=actor if finance else None, export=finance)
    return rid, stream_instructions(rid, engine)


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


__all__ = [
    "CONFIRMATION_COLUMNS", "EXPORT_STEP", "INSTRUCTION_BATCH", "INSTRUCTION_COLUMNS",
    "ConfirmationRow", "export_pending",
    "import_confirmations", "import_confirmations_file", "instruction_csv_chunks",
    "instruction_key", "instruction_rows", "open_instructions", "parse_confirmations",
    "prepare_instructions", "simulate_custodian", "simulated_confirmations",
    "stream_instructions", "write_instructions",
]
