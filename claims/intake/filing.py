"""Filing: storing prepared claims, one (:func:`file_claim`) or a batch (:func:`file_many`).

Each filing, in the caller's transaction: the case must be open (else 422 naming
``case_id``), one claim per IIN per case (409 revealing nothing about the other claim; the
unique ``(case_id, iin_hash)`` constraint backs the check), a random reference
``KZR-XXXX-XXXX``, a random access token of 192 bits stored as SHA-256, the ``received``
notification and the ``claim.filed`` audit event (docs/api.md; docs/lifecycle.md).
The audit events are written last so that the audit chain's lock is held as briefly as
possible.

A batch is written with bulk statements: one duplicate query, one claim insert (ids taken
ahead, :func:`claims.db.next_ids`), one outbox insert, one audit-chain append.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from claims import audit, idempotency, outbox
from claims.audit import Actor
from claims.crypto import new_token, new_tokens, token_hash
from claims.db import bind_processor, bind_repeats, bulk_insert, is_sqlite, next_ids
from claims.errors import DomainError, DuplicateClaim, IdempotencyConflict, NotFound
from claims.intake import references
from claims.cases import get_open_case
from claims.intake.validation import Prepared
from claims.models import Case, Claim, ClaimStatus, utcnow
from claims.money import format_amount

__all__ = [
    "Filed",
    "file_claim",
    "file_claim_tx",
    "file_many",
    "insert_claims",
    "insert_claims_returning",
    "reissue_token",
]

_DUPLICATE = "a claim for this IIN has already been filed in this case"


@dataclass
class Filed:
    """A filed claim: its id, the inserted row's values (but its id), its reference, its
    access token (given once) and the filing's warnings."""

    claim_id: int
    row: dict[str, Any]
    reference: str
    access_token: str
    warnings: list[dict[str, str]] = field(default_factory=list)

    @cached_property
    def claim(self) -> Any:
        """The inserted row's values and id as attributes (not an ORM object: cheaper)."""
        return SimpleNamespace(id=self.claim_id, **self.row)

    def response(self) -> dict[str, Any]:
        """The 201 body (docs/api.md)."""
        return {
            "reference": self.reference,
            "status": ClaimStatus.submitted.value,
            "access_token": self.access_token,
            "warnings": self.warnings,
        }


# ----------------------------------------------------------------------------- one claim


def file_claim(
    session: Session,
    prepared: Prepared,
    *,
    source: str = "web",
    ticket: idempotency.Ticket | None = None,
    case: Case | None = None,
) -> Filed:
    """Store one prepared claim in the caller's transaction (see the module docstring).

    ``ticket``: the idempotency key this filing completes (its stored answer is written in
    the same transaction). Raises :class:`InvalidInput` (case), :class:`DuplicateClaim`;
    a reference collision surfaces as ``IntegrityError`` (use :func:`file_claim_tx`).
    """
    if case is None:
        case = get_open_case(session, prepared.case_code)
    dup = session.connection().execute(
        _DUP_MANY, {"case_id": case.id, "hashes": [prepared.iin_hash]}).first()
    if dup is not None:
        raise DuplicateClaim(_DUPLICATE)
    token = new_token()
    reference = references.new_reference()
    row = _claim_row(case, prepared, reference, token, source, utcnow())
    # A Core insert: constructing an ORM object costs more than the insert on this hot path.
    claim_id = session.connection().execute(
        insert(Claim.__table__).returning(Claim.__table__.c.id), row
    ).scalar_one()
    filed = Filed(claim_id, row, reference, token, prepared.warnings)
    _queue_received(session, [filed])
    if ticket is not None:
        idempotency.complete(session, ticket, 201, _stored_answer(filed.row, prepared))
    audit.record_batch(session, [_filed_event(Actor.claimant(reference), filed, case.code)])
    return filed


def file_claim_tx(
    prepared: Prepared,
    *,
    engine: Engine | None = None,
    source: str = "web",
    ticket: idempotency.Ticket | None = None,
    attempts: int = 4,
) -> Filed:
    """:func:`file_claim` in its own transaction, retried when the random reference collided
    (an ``IntegrityError`` that is not the IIN: the retry's duplicate check tells them apart)."""
    from claims.db import session_scope

    for i in range(attempts):
        try:
            with session_scope(engine) as s:
                return file_claim(s, prepared, source=source, ticket=ticket)
        except IntegrityError:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _claim_row(case: Any, prepared: Prepared, reference: str, token: str, source: str,
               now: dt.datetime) -> dict[str, Any]:
    return {
        "case_id": case.id,
        "reference": reference,
        "status": ClaimStatus.submitted.value,
        "access_token_hash": token_hash(token),
        "consent_at": now,
        "source": source,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        **prepared.values,
    }


def _stored_answer(row: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    """What an idempotency key keeps of a filing's answer (the token is not kept: a replay
    gets a fresh one)."""
    return {"reference": row["reference"], "status": row["status"],
            "warnings": prepared.warnings}


def _queue_received(session: Session, filed: Sequence[Filed]) -> None:
    """The ``received`` notification of each new claim, in one insert."""
    outbox.enqueue_batch(session, [
        (outbox.Recipient(f.claim_id, f.reference, f.row["language"], f.row["email"]),
         "received",
         {"name": f.row["full_name"],
          "claimed_amount": format_amount(f.row["claimed_amount"]),
          "payout_network": f.row["payout_network"]},
         None)
        for f in filed
    ])


def _filed_event(actor: Actor, filed: Filed, case_code: str) -> audit.Event:
    """The ``claim.filed`` audit event of a new claim."""
    row = filed.row
    # No personal data in the trail beyond what staff need to follow it.
    after = {
        "status": row["status"],
        "case_id": case_code,
        "source": row["source"],
        "claimed_amount": row["claimed_amount"],
        "payout_network": row["payout_network"],
        "language": row["language"],
    }
    return audit.Event(actor, "claim.filed", "claim", filed.reference, None, after,
                       filed.claim_id)


# ----------------------------------------------------------------------------- a batch


def file_many(
    session: Session,
    case: Any,
    prepared: Sequence[Prepared],
    *,
    source: str = "import",
    actor: Actor | None = None,
    tickets: Sequence[idempotency.Ticket | None] | None = None,
    check_references: bool = True,
    audit_events: list[audit.Event] | None = None,
) -> list[Filed | DomainError]:
    """File a batch for one open ``case`` with bulk statements, in the caller's transaction.

    Returns, for each input in order, a :class:`Filed` or the error that refused it
    (:class:`DuplicateClaim`: an IIN already filed in the case or earlier in this batch;
    :class:`IdempotencyConflict`: its key was taken over meanwhile). The audit events (one per
    claim: by ``actor``, or each claim's claimant when ``actor`` is None) and ``received``
    notifications are written in bulk too; ``tickets`` (aligned with ``prepared``) are the
    idempotency keys completed in the same transaction. ``check_references=False`` skips the
    query that makes sure the random references are new (a collision then fails the insert
    with ``IntegrityError``: for callers that retry, such as
    :class:`claims.intake.GroupCommit`). ``audit_events``: a list the ``claim.filed`` events
    are added to instead of being written — the caller writes them
    (:func:`claims.audit.record_batch`) later in the same transaction.
    """
    tickets = list(tickets) if tickets is not None else [None] * len(prepared)
    results, todo = _refuse_duplicates(session, case, prepared)
    if not todo:
        return results
    refs = _fresh_references(session, len(todo)) if check_references else _new_references(len(todo))
    rows, tokens = _claim_rows(session, case, prepared, todo, refs, tickets, source, results)
    todo = [i for i in todo if i in rows]
    if not todo:
        return results
    ids = insert_claims(session, [rows[i] for i in todo])
    filed: list[Filed] = []
    for i, claim_id in zip(todo, ids):
        row = rows[i]
        f = results[i] = Filed(claim_id, row, row["reference"], tokens[i], prepared[i].warnings)
        filed.append(f)
    _queue_received(session, filed)
    events = [_filed_event(actor or Actor.claimant(f.reference), f, case.code) for f in filed]
    if audit_events is not None:
        audit_events.extend(events)
    else:
        audit.record_batch(session, events)
    return results


def _refuse_duplicates(session: Session, case: Any,
                       prepared: Sequence[Prepared]) -> tuple[list[Any], list[int]]:
    """``(results, todo)``: a :class:`DuplicateClaim` in ``results`` for each IIN already filed
    in the case or earlier in the batch; the positions of the others in ``todo``."""
    conn = session.connection()
    existing: set[str] = set()
    for chunk in _chunks(sorted({p.iin_hash for p in prepared}), 500):
        existing.update(conn.execute(_DUP_MANY, {"case_id": case.id,
                                                 "hashes": list(chunk)}).scalars())
    results: list[Any] = [None] * len(prepared)
    todo: list[int] = []
    seen: set[str] = set()
    for i, p in enumerate(prepared):
        if p.iin_hash in existing:
            results[i] = DuplicateClaim(_DUPLICATE)
        elif p.iin_hash in seen:
            results[i] = DuplicateClaim("the same IIN appears earlier in this batch")
        else:
            seen.add(p.iin_hash)
            todo.append(i)
    return results, todo


def _claim_rows(session: Session, case: Any, prepared: Sequence[Prepared], todo: list[int],
                refs: list[str], tickets: Sequence[idempotency.Ticket | None], source: str,
                results: list[Any]) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """The claim row and access token of each position in ``todo``; the idempotency keys of
    those that have one are completed, and a key taken over meanwhile refuses its claim
    (:class:`IdempotencyConflict` in ``results``, no row)."""
    now = utcnow()
    rows: dict[int, dict[str, Any]] = {}
    tokens: dict[int, str] = {}
    for i, ref, token in zip(todo, refs, new_tokens(len(todo))):
        tokens[i] = token
        rows[i] = row = _claim_row(case, prepared[i], ref, token, source, now)
        ticket = tickets[i]
        if ticket is not None:
            try:
                idempotency.complete(session, ticket, 201, _stored_answer(row, prepared[i]))
            except IdempotencyConflict as exc:
                results[i] = exc
                del rows[i]
    return rows, tokens


def insert_claims(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert claim rows (the same keys in each); their ids, in order.

    The ids are taken first (:func:`claims.db.next_ids`) and the rows written by
    :func:`claims.db.bulk_insert` (``COPY`` / one ``executemany``), their values bound by
    each column type's own bind processing: the rows stored are those of an ORM insert,
    without ``INSERT … RETURNING``'s per-row parameter handling. Other databases:
    :func:`insert_claims_returning`."""
    if not rows:
        return []
    conn = session.connection()
    table = Claim.__table__
    ids = next_ids(conn, table.name, len(rows))
    if ids is None:  # pragma: no cover - the project runs on SQLite and PostgreSQL
        return insert_claims_returning(session, rows)
    names = list(rows[0])
    # Column by column (each value through its column's bind processing), then row tuples.
    columns: list[list[Any]] = [ids]
    for name, proc in zip(names, _bind_processors(session, names)):
        values = [row[name] for row in rows]
        columns.append(values if proc is None else list(map(bind_repeats(proc), values)))
    bulk_insert(session, table, ("id", *names), list(zip(*columns)))
    return ids


def insert_claims_returning(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """:func:`insert_claims` by ``INSERT … RETURNING`` (SQLAlchemy's insertmanyvalues)."""
    table = Claim.__table__
    ids: list[int] = []
    for chunk in _chunks(rows, 1000):
        ids.extend(session.connection().execute(
            insert(table).returning(table.c.id, sort_by_parameter_order=True), chunk
        ).scalars())
    return ids


_processors: dict[tuple[bool, tuple[str, ...]], list] = {}


def _bind_processors(session: Session, names: list[str]) -> list:
    """Each claim column's bind processing on the session's database (None: taken as is)."""
    key = (is_sqlite(session), tuple(names))
    procs = _processors.get(key)
    if procs is None:
        table = Claim.__table__
        procs = _processors[key] = [bind_processor(session, table.c[n]) for n in names]
    return procs


# ----------------------------------------------------------------------------- lookups


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _new_references(n: int) -> list[str]:
    """``n`` distinct new references (not checked against the database)."""
    refs = list(dict.fromkeys(references.new_references(n)))
    while len(refs) < n:  # pragma: no cover - 40 random bits rarely repeat
        refs = list(dict.fromkeys([*refs, references.new_reference()]))
    return refs


def _fresh_references(session: Session, n: int) -> list[str]:
    """``n`` new references, distinct and not yet in the database."""
    refs: list[str] = []
    conn = session.connection()
    while len(refs) < n:
        batch = list(dict.fromkeys(references.new_references(n - len(refs))))
        batch = [r for r in batch if r not in refs]
        taken: set[str] = set()
        for chunk in _chunks(batch, 500):
            taken.update(conn.execute(_REFS_TAKEN, {"refs": list(chunk)}).scalars())
        refs.extend(r for r in batch if r not in taken)
    return refs


def reissue_token(session: Session, reference: str, *, why: str = "idempotent replay") -> str:
    """A fresh access token for ``reference`` (an idempotent replay of its filing). The
    previous token stops working: at any time a claim has exactly one valid token."""
    token = new_token()
    res = session.execute(
        update(Claim).where(Claim.reference == reference)
        .values(access_token_hash=token_hash(token))
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise NotFound("no such claim")
    audit.record(session, Actor.claimant(reference), "claim.token_reissued", "claim", reference,
                 after={"why": why})
    return token


_claim_table = Claim.__table__
_DUP_MANY = select(_claim_table.c.iin_hash).where(
    _claim_table.c.case_id == bindparam("case_id"),
    _claim_table.c.iin_hash.in_(bindparam("hashes", expanding=True)))
_REFS_TAKEN = select(_claim_table.c.reference).where(
    _claim_table.c.reference.in_(bindparam("refs", expanding=True)))
