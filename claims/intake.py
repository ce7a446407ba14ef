"""Victim intake: filing a claim and everything a claimant does with it afterwards.

Pure domain (no HTTP): the API (``api/routes/victims.py``), the web pages
(``api/pages/public.py``) and ``restitution claims import`` all call these functions, so one
rule holds for every way a claim comes in.

Filing (CONTRACT.md "HTTP API — Victims"):

* :func:`prepare` validates every field at once (:func:`claims.validators.validate_claim_fields`)
  and computes what needs no database: the IIN's keyed hash (duplicates), its Fernet
  ciphertext (staff) and mask. A bad field → :class:`~claims.errors.InvalidInput` listing
  every bad field. The IIN itself is never stored in plain, never logged, never returned.
* :func:`file_claim` stores a prepared claim in the caller's transaction: the case must be
  open (else 422 naming ``case_id``), one claim per IIN per case (409 revealing nothing about
  the other claim; the unique ``(case_id, iin_hash)`` constraint backs the check), a random
  reference ``KZR-XXXX-XXXX`` (Crockford base32), a random access token of 192 bits stored
  as SHA-256, the ``received`` notification and the audit event — all in that transaction.
  The audit event is written last so the audit-chain lock is held as briefly as possible.
* :func:`file_many` files a batch with bulk inserts (the CSV import).

Afterwards (each needs the claim's access token, checked by :func:`find_claim`): documents
(``claims/documents.py``), :func:`reply` to a request for information, :func:`dispute` the
recognized loss, :func:`request_address_change` / :func:`confirm_address_change` of the
payout address (a code mailed to the e-mail on file), :func:`reset_token` (by reference and
e-mail, answered the same whether or not they match), and :func:`status_view` (what the
status page and ``GET /api/v1/claims/{reference}`` show).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import re
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from fractions import Fraction
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from claims import audit, idempotency, lifecycle, outbox
from claims.audit import Actor
from claims.crypto import (
    encrypt,
    iin_hash,
    mask_iin,
    new_code,
    new_token,
    new_tokens,
    pii_hash,
    token_hash,
    token_matches,
)
from claims.errors import (
    Conflict,
    DomainError,
    DuplicateClaim,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    TooManyAttempts,
)
from claims.gc_pause import gc_paused
from claims.models import (
    AddressChange,
    Allocation,
    AuditEvent,
    Case,
    Claim,
    ClaimMessage,
    ClaimStatus,
    Decision,
    DistributionRound,
    Flag,
    Payout,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import AmountError, format_amount, format_rate, parse_amount
from claims.validators import (
    FieldErrors,
    ValidationFailed,
    email_key,
    name_key,
    normalize_address_key,
    validate_claim_fields,
    validate_payout_address,
)

__all__ = [
    "CLAIM_FIELDS",
    "REQUIRED_FIELDS",
    "Prepared",
    "Filed",
    "new_reference",
    "normalize_reference",
    "prepare",
    "case_problem",
    "open_case",
    "file_claim",
    "file_claim_tx",
    "file_many",
    "reissue_token",
    "find_claim",
    "status_view",
    "reply",
    "dispute",
    "request_address_change",
    "confirm_address_change",
    "reset_token",
    "ImportOutcome",
    "csv_row_to_data",
    "import_rows",
]

#: The API's claim fields, in the contract's order (also the CSV import's header).
CLAIM_FIELDS = (
    "case_id",
    "full_name",
    "iin",
    "date_of_birth",
    "email",
    "phone",
    "language",
    "scheme_account",
    "claimed_amount",
    "evidence_tx_hashes",
    "payout_network",
    "payout_address",
    "consent",
)
REQUIRED_FIELDS = tuple(
    f for f in CLAIM_FIELDS if f not in ("date_of_birth", "scheme_account", "evidence_tx_hashes")
)

MAX_MESSAGE_LEN = 5000
#: An address-change code is valid this long, may be tried this often, requested this often.
ADDRESS_CODE_TTL = dt.timedelta(minutes=30)
ADDRESS_CODE_ATTEMPTS = 5
ADDRESS_CHANGES_PER_DAY = 5

# ----------------------------------------------------------------------------- references

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERENCE_RE = re.compile(r"KZR-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}")
# What people mistype when copying a reference (Crockford's decoding rules).
_CROCKFORD_FIX = str.maketrans({"O": "0", "I": "1", "L": "1"})


# RFC 4648's base32 digits → Crockford's (the same 5 bits per character).
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD.encode())


def new_reference() -> str:
    """``KZR-XXXX-XXXX``: 40 random bits in Crockford base32, upper case."""
    return new_references(1)[0]


def new_references(n: int) -> list[str]:
    """``n`` references as :func:`new_reference` makes them, from one read of the random
    source (5 random bytes are 8 base32 characters)."""
    chars = base64.b32encode(secrets.token_bytes(5 * n)).translate(_TO_CROCKFORD).decode()
    return [f"KZR-{chars[i:i + 4]}-{chars[i + 4:i + 8]}" for i in range(0, 8 * n, 8)]


def normalize_reference(text: object) -> str | None:
    """A reference as typed (any case, spaces around, O for 0, I/L for 1) → canonical, or None."""
    if not isinstance(text, str):
        return None
    ref = text.strip().upper()
    if len(ref) != 13 or not ref.startswith("KZR-"):
        return None
    ref = "KZR-" + ref[4:].translate(_CROCKFORD_FIX)
    return ref if REFERENCE_RE.fullmatch(ref) else None


# ----------------------------------------------------------------------------- filing


@dataclass
class Prepared:
    """A validated filing: the claim's column values (IIN hashed, encrypted and masked)."""

    case_code: str
    values: dict[str, Any]
    warnings: list[dict[str, str]]

    @property
    def iin_hash(self) -> str:
        return self.values["iin_hash"]


@dataclass
class Filed:
    claim_id: int
    row: dict[str, Any]  # the inserted row's column values (but its id)
    reference: str
    access_token: str
    warnings: list[dict[str, str]] = field(default_factory=list)

    @cached_property
    def claim(self) -> Any:
        """The inserted row's values and id as attributes (not an ORM object: cheaper)."""
        return SimpleNamespace(id=self.claim_id, **self.row)

    def response(self) -> dict[str, Any]:
        """The 201 body (CONTRACT)."""
        return {
            "reference": self.reference,
            "status": ClaimStatus.submitted.value,
            "access_token": self.access_token,
            "warnings": self.warnings,
        }


def prepare(data: Mapping[str, Any]) -> Prepared:
    """Validate a filing (every bad field at once) and compute its stored values.

    No database access. Raises :class:`InvalidInput` with ``errors`` naming each bad field.
    Unknown keys are ignored (the form's buttons, future fields).
    """
    if not isinstance(data, Mapping):
        raise InvalidInput([{"field": "body", "message": "must be a JSON object"}])
    try:
        clean, warnings = validate_claim_fields(data)
    except FieldErrors as exc:
        raise InvalidInput(exc.errors) from None
    iin = clean["iin"]
    network = clean["payout_network"]
    address = clean["payout_address"]
    values = {
        "full_name": clean["full_name"],
        "name_key": name_key(clean["full_name"]),
        "iin_hash": iin_hash(iin),
        "iin_encrypted": encrypt(iin),
        "iin_masked": mask_iin(iin),
        "birth_date": clean["birth_date"],
        "date_of_birth": clean["date_of_birth"],
        "email": clean["email"],
        "email_key": email_key(clean["email"]),
        "phone": clean["phone"],
        "language": clean["language"],
        "scheme_account": clean["scheme_account"],
        "claimed_amount": clean["claimed_amount"],
        "evidence_tx_hashes": clean["evidence_tx_hashes"],
        "payout_network": network,
        "payout_address": address,
        "payout_address_key": normalize_address_key(network, address),
    }
    return Prepared(case_code=clean["case_id"], values=values, warnings=warnings)


def case_problem(session: Session, code: object) -> dict[str, str] | None:
    """The ``case_id`` error for ``code`` (unknown, closed, past its deadline), or None."""
    try:
        open_case(session, code)
    except InvalidInput as exc:
        return exc.errors[0]
    return None


def open_case(session: Session, code: object) -> Case:
    """The open case ``code``; unknown or closed → :class:`InvalidInput` naming ``case_id``."""
    from claims.cases import get_open_case

    return get_open_case(session, code)


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
        case = open_case_fast(session, prepared.case_code)
    dup = session.connection().execute(
        _DUP_MANY, {"case_id": case.id, "hashes": [prepared.iin_hash]}).first()
    if dup is not None:
        raise DuplicateClaim("a claim for this IIN has already been filed in this case")
    now = utcnow()
    token = new_token()
    reference = new_reference()
    row = _claim_row(case, prepared, reference, token, source, now)
    # A Core insert: constructing an ORM object costs more than the insert on this hot path.
    claim_id = session.connection().execute(
        insert(Claim.__table__).returning(Claim.__table__.c.id), row
    ).scalar_one()
    filed = Filed(claim_id, row, reference, token, prepared.warnings)
    _queue_received(session, [filed])
    if ticket is not None:
        idempotency.complete(
            session, ticket, 201,
            {"reference": reference, "status": row["status"], "warnings": prepared.warnings},
        )
    _record_events(session, [_filed_event(Actor.claimant(reference), row, case.code, claim_id)])
    return filed


def _claim_row(case: Case, prepared: Prepared, reference: str, token: str, source: str,
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


def _queue_received(session: Session, filed: Sequence[Filed]) -> None:
    """The ``received`` notification of each new claim (its context is JSON-native already:
    stored as :func:`claims.outbox.context_text` writes it)."""
    outbox.enqueue_rows(session, [
        (f.claim_id, "received", f.row["language"], f.row["email"],
         outbox.context_text(f.reference, {
             "name": f.row["full_name"],
             "claimed_amount": format_amount(f.row["claimed_amount"]),
             "payout_network": f.row["payout_network"],
         }))
        for f in filed
    ])


def _filed_event(actor: Actor, row: Mapping[str, Any], case_code: str,
                 claim_id: int) -> tuple[Any, ...]:
    """The ``claim.filed`` audit event of a claim row, as :func:`claims.audit.record_rows`
    takes it, followed by the claim's id (its ``after`` holds JSON-native values only: their
    canonical text is written directly)."""
    # No personal data in the trail beyond what staff need to follow it.
    after = {
        "status": row["status"],
        "case_id": case_code,
        "source": row["source"],
        "claimed_amount": row["claimed_amount"],
        "payout_network": row["payout_network"],
        "language": row["language"],
    }
    return (actor.name, actor.role, "claim.filed", "claim", row["reference"], "null",
            audit.canonical_text(after), claim_id)


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


def file_many(
    session: Session,
    case: Case,
    prepared: Sequence[Prepared],
    *,
    source: str = "import",
    actor: Actor | None = None,
    tickets: Sequence[idempotency.Ticket | None] | None = None,
    check_references: bool = True,
    audit_events: list[tuple] | None = None,
) -> list[Filed | DomainError]:
    """File a batch for one open ``case`` with bulk statements, in the caller's transaction.

    Returns, for each input in order, a :class:`Filed` or the error that refused it
    (:class:`DuplicateClaim`: an IIN already filed in the case or earlier in this batch;
    :class:`IdempotencyConflict`: its key was taken over meanwhile). The audit events (one per
    claim: by ``actor``, or each claim's claimant when ``actor`` is None) and ``received``
    notifications are written in bulk too; ``tickets`` (aligned with ``prepared``) are the
    idempotency keys completed in the same transaction. ``check_references=False`` skips the
    query that makes sure the random references are new (a collision then fails the insert
    with ``IntegrityError``: for callers that retry, such as :class:`GroupCommit`).
    ``audit_events``: a list the audit events (:func:`_filed_event`'s) are
    added to instead of being written — the caller writes them (:func:`_record_events`) later
    in the same transaction.
    """
    tickets = list(tickets) if tickets is not None else [None] * len(prepared)
    conn = session.connection()
    existing: set[str] = set()
    for chunk in _chunks(sorted({p.iin_hash for p in prepared}), 500):
        existing.update(conn.execute(_DUP_MANY, {"case_id": case.id, "hashes": list(chunk)}).scalars())
    results: list[Any] = [None] * len(prepared)
    todo: list[int] = []
    seen: set[str] = set()
    for i, p in enumerate(prepared):
        if p.iin_hash in existing:
            results[i] = DuplicateClaim("a claim for this IIN has already been filed in this case")
        elif p.iin_hash in seen:
            results[i] = DuplicateClaim("the same IIN appears earlier in this batch")
        else:
            seen.add(p.iin_hash)
            todo.append(i)
    if not todo:
        return results
    if check_references:
        refs = _fresh_references(session, len(todo))
    else:
        refs = list(dict.fromkeys(new_references(len(todo))))
        while len(refs) < len(todo):  # pragma: no cover - 40 random bits rarely repeat
            refs = list(dict.fromkeys([*refs, new_reference()]))
    now = utcnow()
    rows: dict[int, dict[str, Any]] = {}
    tokens: dict[int, str] = {}
    for i, ref, token in zip(todo, refs, new_tokens(len(todo))):
        tokens[i] = token
        rows[i] = _claim_row(case, prepared[i], ref, tokens[i], source, now)
        ticket = tickets[i]
        if ticket is not None:
            try:
                idempotency.complete(session, ticket, 201, {
                    "reference": ref, "status": ClaimStatus.submitted.value,
                    "warnings": prepared[i].warnings})
            except IdempotencyConflict as exc:
                results[i] = exc
                del rows[i]
    todo = [i for i in todo if i in rows]
    if not todo:
        return results
    ordered = [rows[i] for i in todo]
    ids = _insert_claims(session, ordered)
    filed: list[Filed] = []
    for i, claim_id in zip(todo, ids):
        row = rows[i]
        f = Filed(claim_id, row, row["reference"], tokens[i], prepared[i].warnings)
        results[i] = f
        filed.append(f)
    _queue_received(session, filed)
    events = [_filed_event(actor or Actor.claimant(f.reference), f.row, case.code, f.claim_id)
              for f in filed]
    if audit_events is not None:
        audit_events.extend(events)
    else:
        _record_events(session, events)
    return results


def _insert_claims(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert claim rows (the same keys in each); their ids, in order.

    The ids are taken first (:func:`claims.db.next_ids`) and the rows written by
    :func:`claims.audit.bulk_insert` (``COPY`` / one ``executemany``), their values bound by
    each column type's own bind processing: the rows stored are those of an ORM insert,
    without ``INSERT … RETURNING``'s per-row parameter handling (on psycopg, ~0.15 ms a
    row). Other databases: ``INSERT … RETURNING``."""
    if not rows:
        return []
    from claims.db import next_ids

    conn = session.connection()
    dialect = conn.dialect
    table = Claim.__table__
    ids = next_ids(conn, table.name, len(rows))
    if ids is None:  # pragma: no cover - the project runs on SQLite and PostgreSQL
        return _insert_claims_returning(session, rows)
    names = list(rows[0])
    # Column by column (each value through its column's bind processing), then row tuples.
    columns: list[list[Any]] = [ids]
    for name, proc in zip(names, _bind_processors(session, names)):
        values = [row[name] for row in rows]
        columns.append(values if proc is None else list(map(audit.bind_repeats(proc), values)))
    try:
        audit.bulk_insert(session, table, ("id", *names), list(zip(*columns)))
    except dialect.loaded_dbapi.IntegrityError as exc:  # COPY's error, unwrapped: as SQLAlchemy's
        raise IntegrityError("INSERT INTO claim", None, exc) from exc
    return ids


def _insert_claims_returning(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """:func:`_insert_claims` by ``INSERT … RETURNING`` (SQLAlchemy's insertmanyvalues)."""
    table = Claim.__table__
    ids: list[int] = []
    for chunk in _chunks(rows, 1000):
        ids.extend(session.connection().execute(
            insert(table).returning(table.c.id, sort_by_parameter_order=True), chunk
        ).scalars())
    return ids


_processors: dict[tuple[str, tuple[str, ...]], list] = {}


def _bind_processors(session: Session, names: list[str]) -> list:
    """Each claim column's bind processing on the session's dialect (None: taken as is)."""
    dialect = session.get_bind().dialect
    key = (dialect.name, tuple(names))
    procs = _processors.get(key)
    if procs is None:
        table = Claim.__table__
        procs = _processors[key] = [audit.bind_processor(session, table.c[n]) for n in names]
    return procs


def _record_events(session: Session, events: list[tuple]) -> None:
    """Audit events (:func:`_filed_event`'s: a row of :func:`claims.audit.record_rows` and
    the claim's id) in order: one chain append for the lot."""
    if events:
        audit.record_rows(session, [e[:7] for e in events], [e[7] for e in events])


# ----------------------------------------------------------------------------- group commit


@contextmanager
def write_gate(engine: Engine):
    """Queue this process's SQLite writers on a lock, and the processes on an ``flock`` of a
    file beside the database, instead of letting SQLite's busy handler poll with sleeps (which
    collapses throughput and stretches latencies to seconds when many requests write at once).
    A no-op on PostgreSQL, whose row locks queue writers by themselves."""
    gate = _gate(engine)
    if gate is None:
        yield
        return
    gate.enter()
    try:
        yield
    finally:
        gate.exit()


class _Gate:
    """The write gate of one database: a process-wide lock, then an ``flock`` of a file.

    Processes queue fairly: a second ``flock`` (the *turnstile*) is held while waiting for the
    gate, so a process leaving the gate and coming straight back waits behind the one that
    was already waiting, instead of winning the race for the lock again and again."""

    def __init__(self, database: str | None) -> None:
        self.lock = threading.Lock()
        self.fd = _gate_fd(database)
        self.turnstile = _gate_fd(database, ".write-queue") if self.fd is not None else None

    def enter(self) -> None:
        self.lock.acquire()
        if self.fd is None:
            return
        import fcntl

        try:
            if self.turnstile is not None:
                fcntl.flock(self.turnstile, fcntl.LOCK_EX)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            finally:
                if self.turnstile is not None:
                    fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        except BaseException:
            self.lock.release()
            raise

    def try_enter(self) -> bool:
        """Enter without waiting, when nobody holds the gate or waits for it."""
        if not self.lock.acquire(blocking=False):
            return False
        if self.fd is None:
            return True
        import fcntl

        try:
            if self.turnstile is not None:
                fcntl.flock(self.turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                if self.turnstile is not None:
                    fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        except BlockingIOError:
            self.lock.release()
            return False
        except BaseException:
            self.lock.release()
            raise
        return True

    def exit(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.lock.release()

    async def enter_async(self) -> None:
        """Enter without blocking the event loop: the wait (another process writing) happens
        in a worker thread while the loop goes on reading and validating requests."""
        import asyncio

        if self.try_enter():
            return
        entering = asyncio.get_running_loop().run_in_executor(None, self.enter)
        try:
            await asyncio.shield(entering)
        except BaseException:  # cancelled while waiting: leave once the thread has entered
            entering.add_done_callback(lambda f: f.exception() is None and self.exit())
            raise


def _drain_gate(engine: Engine) -> _Gate | None:
    """The gate :class:`GroupCommit` batches pass: :func:`write_gate`'s on SQLite; on
    PostgreSQL one per database for this host's processes (an ``flock`` in the var
    directory), because their batches queue on the audit chain's head row anyway and a batch
    waiting for that row lock would hold its process's event loop; waiting for the gate does
    not (:meth:`_Gate.enter_async`). Row locks still order writers across hosts."""
    if engine.dialect.name == "sqlite":
        return _gate(engine)
    key = engine.url.render_as_string(hide_password=True)
    gate = _gates.get(key)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(key)
            if gate is None:
                import hashlib

                from claims.settings import var_dir

                digest = hashlib.sha256(key.encode()).hexdigest()[:16]
                gate = _gates[key] = _Gate(str(var_dir() / f"db-{digest}"))
    return gate


_gates: dict[str | None, _Gate] = {}
_gate_fds: dict[tuple[str | None, str], int | None] = {}
_gates_lock = threading.Lock()


def _gate(engine: Engine) -> _Gate | None:
    """The write gate of ``engine``'s database; None on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    gate = _gates.get(database)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(database)
            if gate is None:
                gate = _gates[database] = _Gate(database)
    return gate


def _gate_fd(database: str | None, suffix: str = ".write-lock") -> int | None:
    key = (database, suffix)
    if key in _gate_fds:
        return _gate_fds[key]
    fd = None
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            import fcntl  # noqa: F401  (POSIX only)

            fd = os.open(f"{database}{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
        except (ImportError, OSError):
            fd = None
    _gate_fds[key] = fd
    return fd


class GroupCommit:
    """Concurrent filings on one event loop share one transaction ("group commit").

    :meth:`file_async` queues a validated filing and awaits its outcome. The first filing that
    finds no batch being written starts a drain task on the loop: it takes whatever is queued
    (up to :attr:`max_batch`) and files it in one transaction with :func:`file_many` — one
    duplicate query, one multi-row insert, one outbox insert, one audit-chain append for the
    lot — then yields once so that requests that arrived meanwhile are validated and queued,
    and writes the next batch. Batches thus form by themselves under load, and a lone filing
    is written at once without waiting. Each filing gets its own outcome: a duplicate or a
    closed case refuses only that claim; if a batch transaction fails as a whole (a race with
    another process on the same IIN, a reference collision), each of its claims is filed again
    on its own.

    The statements run on the event-loop thread itself, deliberately: a separate writer thread
    would release and re-take the GIL on every database call while the loop thread validates
    requests, and each re-take waits out the interpreter's switch interval (a "convoy" that
    measured ~30 ms per batch). What the loop must not sit through is *waiting*, and that is
    done off the loop, in a worker thread, while the loop goes on reading and validating the
    requests that form the next batch: waiting for the write gate (:func:`_drain_gate`:
    another process is writing; processes take turns fairly) and the COMMIT (PostgreSQL's
    WAL flush takes milliseconds; SQLite's now and then runs a checkpoint).

    :meth:`file` (blocking callers: the no-JS form, idempotent filings) writes one filing in
    its own transaction, queued by :func:`write_gate`.
    """

    def __init__(self, engine: Engine, *, source: str = "web", max_batch: int = 128) -> None:
        self.engine = engine
        self.source = source
        self.max_batch = max_batch
        self._queue: list[tuple[Prepared, idempotency.Ticket | None, Any]] = []
        self._draining = False
        # A PostgreSQL commit waits for the WAL flush, and a SQLite commit now and then runs a
        # WAL checkpoint (fsync): the loop should sit through neither.
        self._commit_in_thread = True

    def file(self, prepared: Prepared, ticket: idempotency.Ticket | None = None) -> Filed:
        with write_gate(self.engine):
            return file_claim_tx(prepared, engine=self.engine, source=self.source, ticket=ticket)

    async def file_async(self, prepared: Prepared, ticket: idempotency.Ticket | None = None) -> Filed:
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((prepared, ticket, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        import asyncio

        gate = _drain_gate(self.engine)
        gated = gate is not None
        # PostgreSQL: a batch's claims and notifications are written before the gate (the
        # other processes' batches meanwhile append to the audit chain and commit); only the
        # audit append and the commit pass it. SQLite: one writer at a time, the gate first.
        late = gated and self.engine.dialect.name != "sqlite"
        try:
            while self._queue:
                if gate is not None and not late:
                    await gate.enter_async()  # the loop goes on queueing filings meanwhile
                try:
                    batch = self._queue[:self.max_batch]
                    del self._queue[:len(batch)]
                    items = [(p, t) for p, t, _ in batch]
                    if self._commit_in_thread:
                        outcomes = await self._run_async(items, gated=gated,
                                                         gate=gate if late else None)
                    else:
                        outcomes = self._run(items, gated=gated)
                finally:
                    if gate is not None and not late:
                        gate.exit()
                for (_, _, future), outcome in zip(batch, outcomes):
                    if future.done():  # the request went away meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                await asyncio.sleep(0)  # let the requests that arrived meanwhile queue up
        finally:
            self._draining = False
            for _, _, future in self._queue:  # pragma: no cover - only when cancelled
                if not future.done():
                    future.set_exception(RuntimeError("the filing queue stopped"))
            self._queue.clear()

    def _run(self, batch: list[tuple[Prepared, idempotency.Ticket | None]], *,
             gated: bool = False) -> list[Any]:
        """File ``batch``; ``gated``: the caller holds the write gate already."""
        try:
            return self._file_batch(batch, gated=gated)
        except IntegrityError:
            return [self._file_one(p, t, gated=gated) for p, t in batch]
        except Exception as exc:  # nothing was stored: every claim of the batch fails alike
            return [exc] * len(batch)

    async def _run_async(self, batch: list[tuple[Prepared, idempotency.Ticket | None]], *,
                         gated: bool = False, gate: _Gate | None = None) -> list[Any]:
        """:meth:`_run` with the COMMIT awaited in a worker thread: the statements are quick,
        but a commit may wait for the disk, and the loop goes on reading and validating the
        next batch's requests meanwhile."""
        import asyncio

        from sqlmodel import Session

        session: Session | None = Session(self.engine, expire_on_commit=False)
        commit = None
        entered = False
        try:
            if gate is None:
                outcomes = self._file_in(session, batch)
            else:  # ``gate`` is entered for the audit append and the commit only
                events: list[tuple] = []
                outcomes = self._file_in(session, batch, events)
                if events:
                    await gate.enter_async()
                    entered = True
                    _record_events(session, events)
            commit = asyncio.get_running_loop().run_in_executor(None, session.commit)
            await asyncio.shield(commit)
            return outcomes
        except asyncio.CancelledError:  # pragma: no cover - shutdown: let the commit finish
            if commit is not None and not commit.done():
                owned, session = session, None
                owned_gate = gate if entered else None
                entered = False

                def done(_) -> None:
                    owned.close()
                    if owned_gate is not None:
                        owned_gate.exit()

                commit.add_done_callback(done)
            raise
        except IntegrityError:
            session.close()  # rolls the batch back
            session = None
            return [self._file_one(p, t, gated=gated) for p, t in batch]
        except Exception as exc:  # nothing was stored: every claim of the batch fails alike
            return [exc] * len(batch)
        finally:
            if session is not None:
                session.close()
            if entered:
                gate.exit()

    def _file_batch(self, batch: list[tuple[Prepared, idempotency.Ticket | None]], *,
                    gated: bool = False) -> list[Any]:
        from contextlib import nullcontext

        from claims.db import session_scope

        with (nullcontext() if gated else write_gate(self.engine)), session_scope(self.engine) as s:
            return self._file_in(s, batch)

    def _file_in(self, s: Session, batch: list[tuple[Prepared, idempotency.Ticket | None]],
                 audit_events: list[tuple] | None = None) -> list[Any]:
        """File ``batch`` in the transaction of ``s`` (one :func:`file_many` per case);
        ``audit_events``: see :func:`file_many`."""
        outcomes: list[Any] = [None] * len(batch)
        by_case: dict[str, list[int]] = {}
        for i, (p, _) in enumerate(batch):
            by_case.setdefault(p.case_code, []).append(i)
        for code, idx in by_case.items():
            try:
                case = open_case_fast(s, code)
            except DomainError as exc:
                for i in idx:
                    outcomes[i] = exc
                continue
            results = file_many(
                s, case, [batch[i][0] for i in idx], source=self.source,
                tickets=[batch[i][1] for i in idx], check_references=False,
                audit_events=audit_events,
            )
            for i, r in zip(idx, results):
                outcomes[i] = r
        return outcomes

    def _file_one(self, prepared: Prepared, ticket: idempotency.Ticket | None, *,
                  gated: bool = False) -> Any:
        try:
            if gated:
                return file_claim_tx(prepared, engine=self.engine, source=self.source,
                                     ticket=ticket)
            return self.file(prepared, ticket)
        except Exception as exc:
            return exc


_committers: dict[tuple, GroupCommit] = {}
_committers_lock = threading.Lock()


def group_commit(engine: Engine, source: str = "web") -> GroupCommit:
    """The :class:`GroupCommit` for ``engine``, ``source`` and the running event loop (if any)."""
    try:
        import asyncio

        loop_id = id(asyncio.get_running_loop())
    except RuntimeError:
        loop_id = None
    key = (id(engine), source, loop_id)
    with _committers_lock:
        gc = _committers.get(key)
        if gc is None or gc.engine is not engine:
            gc = _committers[key] = GroupCommit(engine, source=source)
        return gc


_CASE_BY_CODE = None
_DUP_MANY = None
_REFS_TAKEN = None


def _statements() -> None:
    global _CASE_BY_CODE, _DUP_MANY, _REFS_TAKEN
    from sqlalchemy import bindparam

    case = Case.__table__
    claim = Claim.__table__
    _CASE_BY_CODE = select(case.c.id, case.c.code, case.c.status, case.c.deadline).where(
        case.c.code == bindparam("code"))
    _DUP_MANY = select(claim.c.iin_hash).where(
        claim.c.case_id == bindparam("case_id"),
        claim.c.iin_hash.in_(bindparam("hashes", expanding=True)))
    _REFS_TAKEN = select(claim.c.reference).where(
        claim.c.reference.in_(bindparam("refs", expanding=True)))


def open_case_fast(session: Session, code: str) -> Any:
    """:func:`open_case` with one Core query on the hot path; the refusals (and the rule of
    what is open) stay :mod:`claims.cases`'s."""
    from claims.cases import get_open_case, is_open

    row = session.connection().execute(_CASE_BY_CODE, {"code": code}).first()
    if row is not None and is_open(row):
        return row
    return get_open_case(session, code)  # raises the precise refusal


def _chunks(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _fresh_references(session: Session, n: int) -> list[str]:
    """``n`` new references, distinct and not yet in the database."""
    refs: list[str] = []
    conn = session.connection()
    while len(refs) < n:
        want = n - len(refs)
        batch = list(dict.fromkeys(new_references(want)))
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


# ----------------------------------------------------------------------------- access


_NOT_FOUND = "no claim with this reference and access token"


def find_claim(session: Session, reference: object, token: object, *, lock: bool = False) -> Claim:
    """The claim when ``token`` is its access token. An unknown reference, a missing or a
    wrong token all raise the same :class:`NotFound` (and cost the same comparison)."""
    ref = normalize_reference(reference)
    claim = None
    if ref is not None:
        stmt = select(Claim).where(Claim.reference == ref)
        if lock and session.get_bind().dialect.name != "sqlite":
            stmt = stmt.with_for_update()
        claim = session.execute(stmt).scalar_one_or_none()
    tok = token if isinstance(token, str) and len(token) <= 256 else None
    if not token_matches(tok, claim.access_token_hash if claim is not None else None):
        raise NotFound(_NOT_FOUND)
    assert claim is not None
    return claim


# ----------------------------------------------------------------------------- status


EXPLORERS = {
    ("tron", None): "https://tronscan.org/#/transaction/{tx}",
    ("ethereum", 1): "https://etherscan.io/tx/{tx}",
    ("ethereum", 11155111): "https://sepolia.etherscan.io/tx/{tx}",
}
VISIBLE_ROUNDS = (RoundStatus.approved.value, RoundStatus.released.value,
                  RoundStatus.settled.value)


def explorer_url(network: str, chain_id: int | None, tx_id: str | None) -> str | None:
    """A public block explorer's page for a transaction, when there is one (not for the
    in-process test chain)."""
    if not tx_id:
        return None
    template = EXPLORERS.get((network, chain_id if network == "ethereum" else None))
    return template.format(tx=tx_id) if template else None


# Audit actions a claimant sees on the timeline, as event codes (the words are the page's).
TIMELINE_ACTIONS = {
    "claim.filed": "filed",
    "claim.document_added": "document_added",
    "claim.replied": "replied",
    "claim.disputed": "disputed",
    "claim.dispute_settled": "dispute_settled",
    "claim.address_change_requested": "address_change_requested",
    "claim.address_changed": "address_changed",
    "claim.token_reset": "token_reset",
    "claim.token_reissued": "token_reset",
}


def _timeline_event(action: str, before: dict | None, after: dict | None) -> str | None:
    if action in TIMELINE_ACTIONS:
        return TIMELINE_ACTIONS[action]
    b = (before or {}).get("status") if isinstance(before, dict) else None
    a = (after or {}).get("status") if isinstance(after, dict) else None
    if a and a != b and a in ClaimStatus.__members__:
        if b == ClaimStatus.disputed.value and a == ClaimStatus.approved.value:
            return "dispute_settled"
        return f"status_{a}"
    return None


def status_view(session: Session, claim: Claim) -> dict[str, Any]:
    """What the claimant may see of their claim, as codes and amounts (the API and the page
    put words in the claimant's language on it). Never the IIN, flags or staff notes."""
    requests = [
        {"id": str(m.id), "asked_at": m.created_at.isoformat(), "text": m.body}
        for m in session.execute(
            select(ClaimMessage)
            .where(ClaimMessage.claim_id == claim.id, ClaimMessage.kind == "request",
                   ClaimMessage.answered_at.is_(None))
            .order_by(ClaimMessage.id)
        ).scalars()
    ]
    allocations = []
    for alloc, number, rate in session.execute(
        select(Allocation, DistributionRound.number, DistributionRound.rate)
        .join(DistributionRound, DistributionRound.id == Allocation.round_id)
        .where(Allocation.claim_id == claim.id, DistributionRound.status.in_(VISIBLE_ROUNDS))
        .order_by(DistributionRound.number)
    ):
        allocations.append({
            "round": number,
            "amount": format_amount(alloc.amount),
            "reserved": format_amount(alloc.reserved),
            "rate_percent": _rate_percent(rate),
        })
    payouts = []
    for p, number in session.execute(
        select(Payout, DistributionRound.number)
        .join(DistributionRound, DistributionRound.id == Payout.round_id)
        .where(Payout.claim_id == claim.id)
        .order_by(DistributionRound.number, Payout.id)
    ):
        payouts.append({
            "round": number,
            "state": p.state,
            "amount": format_amount(p.amount),
            "network": p.network,
            "tx_id": p.tx_id,
            "explorer_url": explorer_url(p.network, p.chain_id, p.tx_id),
            "updated_at": p.updated_at.isoformat(),
        })
    timeline = []
    for at, action, before, after in session.execute(
        select(AuditEvent.occurred_at, AuditEvent.action, AuditEvent.before, AuditEvent.after)
        .where(AuditEvent.claim_pk == claim.id, AuditEvent.subject_type == "claim",
               AuditEvent.subject_id == claim.reference)
        .order_by(AuditEvent.id)
    ):
        event = _timeline_event(action, before, after)
        if event is not None:
            timeline.append({"at": at.isoformat(), "event": event})
    reason = None
    if claim.status == ClaimStatus.rejected.value:
        reason = session.execute(
            select(Decision.reason).where(Decision.claim_id == claim.id,
                                          Decision.decision == "reject")
            .order_by(Decision.id.desc()).limit(1)
        ).scalar_one_or_none()
    shown_loss = claim.recognized_loss if claim.status in lifecycle.PAYABLE or allocations else None
    return {
        "reference": claim.reference,
        "status": claim.status,
        "language": claim.language,
        "recognized_loss": format_amount(shown_loss) if shown_loss is not None else None,
        "claimed_amount": format_amount(claim.claimed_amount),
        "payout_network": claim.payout_network,
        "payout_address": claim.payout_address,
        "rejection_reason": reason,
        "requests": requests,
        "allocations": allocations,
        "payouts": payouts,
        "timeline": timeline,
    }


def _rate_percent(rate: str) -> str:
    try:
        num, _, den = rate.partition("/")
        value = Fraction(int(num), int(den or 1))
    except (ValueError, ZeroDivisionError):
        return "0"
    return format_rate(value * 100, 4)


# ----------------------------------------------------------------------------- claimant acts


def _message_text(value: object, field_name: str, *, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValidationFailed(field_name, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field_name, "must be text (a string)")
    text = value.strip()
    if len(text) > MAX_MESSAGE_LEN:
        raise ValidationFailed(field_name, f"must be at most {MAX_MESSAGE_LEN} characters")
    if "\x00" in text:
        raise ValidationFailed(field_name, "must not contain NUL characters")
    return text


def _one(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValidationFailed as exc:
        raise InvalidInput([exc.as_dict()]) from None


def reply(session: Session, claim: Claim, message: object) -> ClaimMessage:
    """Answer the open request(s) for information; the claim goes back to ``verifying``."""
    text = _one(_message_text, message, "message")
    if claim.status != ClaimStatus.needs_info.value:
        raise Conflict("a reply is only possible while information is requested")
    now = utcnow()
    msg = ClaimMessage(claim_id=claim.id, kind="reply", body=text, created_at=now)
    session.add(msg)
    session.flush()
    session.execute(
        update(ClaimMessage)
        .where(ClaimMessage.claim_id == claim.id, ClaimMessage.kind == "request",
               ClaimMessage.answered_at.is_(None))
        .values(answered_at=now)
        .execution_options(synchronize_session=False)
    )
    lifecycle.transition(
        session, claim, ClaimStatus.verifying, actor=Actor.claimant(claim.reference),
        action="claim.replied", audit_extra={"message_id": msg.id},
    )
    return msg


def dispute(session: Session, claim: Claim, reason: object, amount: object = None) -> ClaimMessage:
    """Contest the recognized loss of an approved claim (``amount``: what the claimant says
    it should be, optional)."""
    errors = []
    text = None
    value = None
    try:
        text = _message_text(reason, "reason")
    except ValidationFailed as exc:
        errors.append(exc.as_dict())
    if amount is not None and amount != "":
        try:
            value = parse_amount(amount, allow_zero=False)
        except AmountError as exc:
            errors.append({"field": "amount", "message": str(exc)})
    if errors:
        raise InvalidInput(errors)
    if claim.status != ClaimStatus.approved.value:
        raise Conflict("only an approved claim can be disputed")
    msg = ClaimMessage(claim_id=claim.id, kind="dispute", body=text, amount=value,
                       created_at=utcnow())
    session.add(msg)
    session.flush()
    context = {"name": claim.full_name}
    if value is not None:
        context["amount"] = format_amount(value)
    lifecycle.transition(
        session, claim, ClaimStatus.disputed, actor=Actor.claimant(claim.reference),
        action="claim.disputed", notify="dispute_received", notify_context=context,
        audit_extra={"message_id": msg.id, "amount": value},
    )
    return msg


def _code_hash(claim_id: int, code: str) -> str:
    # Keyed: a six-digit code's plain SHA-256 would be reversed in microseconds.
    return pii_hash(f"{claim_id}:{code}", kind="address-code")


def request_address_change(
    session: Session, claim: Claim, payout_network: object, payout_address: object
) -> tuple[AddressChange, list[dict[str, str]]]:
    """Start a payout address change: re-validated, a code mailed to the e-mail on file (never
    answered to the caller), stored keyed-hashed with an expiry. Returns ``(change, warnings)``."""
    try:
        address, warns = validate_payout_address(payout_network, payout_address)
    except ValidationFailed as exc:
        raise InvalidInput([exc.as_dict()]) from None
    network = str(payout_network).strip()
    if claim.status == ClaimStatus.rejected.value:
        raise Conflict("the payout address of a rejected claim cannot be changed")
    key = normalize_address_key(network, address)
    if network == claim.payout_network and key == claim.payout_address_key:
        raise InvalidInput([{"field": "payout_address", "message": "is already the payout address"}])
    now = utcnow()
    recent = session.execute(
        select(func.count(AddressChange.id), func.min(AddressChange.created_at)).where(
            AddressChange.claim_id == claim.id,
            AddressChange.created_at > now - dt.timedelta(days=1),
        )
    ).one()
    if recent[0] >= ADDRESS_CHANGES_PER_DAY:
        wait = int((recent[1] + dt.timedelta(days=1) - now).total_seconds()) + 1
        raise TooManyAttempts("too many address change requests today; try again later",
                              retry_after=max(1, wait))
    # A new request replaces any pending one.
    session.execute(
        update(AddressChange)
        .where(AddressChange.claim_id == claim.id, AddressChange.applied_at.is_(None),
               AddressChange.expires_at > now)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    code = new_code()
    change = AddressChange(
        claim_id=claim.id, payout_network=network, payout_address=address,
        code_hash=_code_hash(claim.id, code), attempts=0, created_at=now,
        expires_at=now + ADDRESS_CODE_TTL,
    )
    session.add(change)
    session.flush()
    outbox.enqueue(session, claim, "address_change_requested", {
        "name": claim.full_name,
        "code": code,
        "payout_network": network,
        "payout_address": address,
        "expires_minutes": int(ADDRESS_CODE_TTL.total_seconds() // 60),
    })
    audit.record(session, Actor.claimant(claim.reference), "claim.address_change_requested",
                 "claim", claim.reference,
                 after={"change_id": change.id, "payout_network": network})
    return change, [{"field": "payout_address", "message": w} for w in warns]


@dataclass
class AddressConfirmation:
    applied: bool
    reason: str | None = None  # why not (wrong code)
    held_payouts: int = 0
    flagged: bool = False


def confirm_address_change(session: Session, claim: Claim, code: object) -> AddressConfirmation:
    """Apply the pending address change when ``code`` is right.

    A wrong code counts an attempt and returns ``applied=False``: the caller commits (the
    count must stick) and then refuses the request. No pending change → :class:`Conflict`;
    attempts used up → :class:`TooManyAttempts` (request a new code).

    Applying: the claim's address changes (audited, versioned; prepared rounds go stale); a
    claim that was approved is flagged ``address_changed`` (``approved → flagged``; a
    disputed claim gets the flag and stays disputed); its pending payouts are held; the
    claimant is told (``address_changed``, with the old and the new address).
    """
    now = utcnow()
    stmt = (
        select(AddressChange)
        .where(AddressChange.claim_id == claim.id, AddressChange.applied_at.is_(None),
               AddressChange.expires_at > now)
        .order_by(AddressChange.id.desc()).limit(1)
    )
    if session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    change = session.execute(stmt).scalar_one_or_none()
    if change is None:
        raise Conflict("no address change is waiting for confirmation (it may have expired); "
                       "request a new one")
    if change.attempts >= ADDRESS_CODE_ATTEMPTS:
        raise TooManyAttempts("too many wrong codes; request a new address change",
                              retry_after=60)
    given = code.strip() if isinstance(code, str) else ""
    if not hmac.compare_digest(_code_hash(claim.id, given), change.code_hash):
        change.attempts += 1
        session.add(change)
        session.flush()
        left = ADDRESS_CODE_ATTEMPTS - change.attempts
        return AddressConfirmation(False, f"is wrong ({left} attempt(s) left)")
    change.applied_at = now
    session.add(change)
    session.flush()
    actor = Actor.claimant(claim.reference)
    old = {"payout_network": claim.payout_network, "payout_address": claim.payout_address}
    new = {"payout_network": change.payout_network, "payout_address": change.payout_address}
    was = claim.status
    lifecycle.touch(
        session, claim, actor=actor, action="claim.address_changed",
        values={**new, "payout_address_key": normalize_address_key(change.payout_network,
                                                                     change.payout_address)},
        audit_extra={"change_id": change.id},
    )
    flagged = False
    if was in (ClaimStatus.approved.value, ClaimStatus.disputed.value):
        session.add(Flag(
            claim_id=claim.id, code="address_changed", created_at=now,
            message=(f"The claimant changed the payout address after approval (was "
                     f"{old['payout_network']} {old['payout_address']}, now "
                     f"{new['payout_network']} {new['payout_address']})."),
        ))
        session.flush()
        flagged = True
        if was == ClaimStatus.approved.value:
            lifecycle.transition(
                session, claim, ClaimStatus.flagged, actor=actor, action="claim.flagged",
                audit_extra={"flags": ["address_changed"]},
            )
    held = session.execute(
        update(Payout)
        .where(Payout.claim_id == claim.id, Payout.state == PayoutState.pending.value)
        .values(state=PayoutState.held.value, updated_at=now)
        .returning(Payout.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    if held:
        audit.record_many(session, actor, [
            ("payout.held", "payout", pid, {"state": "pending"},
             {"state": "held", "because": "address_changed"}) for pid in held
        ])
    outbox.enqueue(session, claim, "address_changed", {
        "name": claim.full_name,
        "old_payout_network": old["payout_network"],
        "old_payout_address": old["payout_address"],
        "new_payout_network": new["payout_network"],
        "new_payout_address": new["payout_address"],
    })
    return AddressConfirmation(True, held_payouts=len(held), flagged=flagged)


def reset_token(session: Session, reference: object, email: object) -> bool:
    """When ``reference`` and ``email`` match a claim, a new access token is stored (hashed)
    and mailed to the e-mail on file (``token_reset``); the old one stops working. Returns
    whether they matched — callers answer the same either way (202)."""
    ref = normalize_reference(reference)
    claim = None
    if ref is not None:
        claim = session.execute(select(Claim).where(Claim.reference == ref)).scalar_one_or_none()
    given = email_key(email) if isinstance(email, str) else ""
    stored = claim.email_key if claim is not None else "\x00"
    if not hmac.compare_digest(given.encode(), stored.encode()) or claim is None:
        return False
    token = new_token()
    session.execute(
        update(Claim).where(Claim.id == claim.id)
        .values(access_token_hash=token_hash(token))
        .execution_options(synchronize_session=False)
    )
    outbox.enqueue(session, claim, "token_reset", {"name": claim.full_name, "access_token": token})
    audit.record(session, Actor.claimant(claim.reference), "claim.token_reset", "claim",
                 claim.reference, after={"by": "email"})
    return True


# ----------------------------------------------------------------------------- bulk import


@dataclass
class ImportOutcome:
    """What :func:`import_rows` did: ``filed`` (line, reference, access token; empty when the
    caller takes them chunk by chunk instead, ``keep_filed=False``), ``filed_count`` and
    ``rejected`` (line, field, message) — every refusal of a line is listed."""

    filed: list[tuple[int, str, str]] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    filed_count: int = 0

    @property
    def rejected_lines(self) -> int:
        return len({line for line, _, _ in self.rejected})


def csv_row_to_data(row: Mapping[str, str], code: str) -> dict[str, Any]:
    """A claim CSV row (the API's fields as cells) → the API's claim body.

    ``evidence_tx_hashes`` are joined by ``;``; ``consent`` is ``true``/``false``; empty optional
    cells mean "not given"; a ``case_id`` cell, when present and not empty, must be ``code``.
    """
    data: dict[str, Any] = {}
    for name in CLAIM_FIELDS:
        cell = row.get(name)
        if cell is None:
            continue
        if name == "consent":
            data[name] = cell.strip().lower() == "true"
        elif name in ("date_of_birth", "scheme_account", "evidence_tx_hashes") and not cell.strip():
            continue
        else:
            data[name] = cell
    given = (row.get("case_id") or "").strip()
    data["case_id"] = given or code
    return data


@gc_paused()
def import_rows(
    code: str,
    rows: Iterable[tuple[int, Mapping[str, str]]],
    *,
    engine: Engine | None = None,
    actor: Actor | None = None,
    chunk_size: int = 25_000,
    on_chunk=None,
    keep_filed: bool = True,
) -> ImportOutcome:
    """File CSV rows ``(line, row)`` for case ``code`` by the API's rules (the same
    :func:`prepare` and :func:`file_many`): bad rows are refused by line and skipped, good
    rows filed in bulk, one transaction per ``chunk_size`` rows. ``on_chunk(filed)`` is
    called after each committed chunk with its ``(line, reference, token)`` triples;
    ``keep_filed=False`` leaves them out of the outcome (a caller that writes them as they
    come keeps memory flat: only the counts and the refusals are kept).

    25,000 rows a transaction: each commit writes every index page it dirtied, and a claim
    dirties a page in each of its random-key indexes (reference, IIN hash, name, e-mail,
    address) — 1,000 a commit wrote 9.3 GB for 300k claims, 10,000 wrote 2.8 GB and cost 16 %
    less CPU; for 1M claims (pipeline bench) 25,000 a commit took 117 s and wrote 9.6 GB
    against 130 s and 15.4 GB for 10,000. A chunk holds the write lock for 1–3 s at that
    size (web filings wait for it; the busy timeout is 60 s).

    An unknown or closed case raises :class:`InvalidInput` naming ``case_id`` before anything
    is filed.
    """
    from claims.db import get_engine, session_scope

    actor = actor or Actor.operator()
    with session_scope(engine, write=False) as s:
        open_case(s, code)
    outcome = ImportOutcome()
    seen: dict[str, int] = {}  # IIN hash → first line (duplicates within the file)
    batch: list[tuple[int, Prepared]] = []

    def flush() -> None:
        if not batch:
            return
        engine_ = engine or get_engine()
        with write_gate(engine_), session_scope(engine_) as s:
            case = open_case(s, code)
            results = file_many(s, case, [p for _, p in batch], source="import", actor=actor)
        done = []
        for (line, _), res in zip(batch, results):
            if isinstance(res, Filed):
                done.append((line, res.reference, res.access_token))
            else:
                outcome.rejected.append((line, "iin", res.detail))
        outcome.filed_count += len(done)
        if keep_filed:
            outcome.filed.extend(done)
        if on_chunk is not None:
            on_chunk(done)
        batch.clear()

    for line, row in rows:
        data = csv_row_to_data(row, code)
        if data["case_id"] != code:
            outcome.rejected.append((line, "case_id", f"must be {code} (the case being imported)"))
            continue
        try:
            prepared = prepare(data)
        except InvalidInput as exc:
            outcome.rejected.extend((line, e["field"], e["message"]) for e in exc.errors)
            continue
        first = seen.get(prepared.iin_hash)
        if first is not None:
            outcome.rejected.append((line, "iin", f"the same IIN is on line {first}"))
            continue
        seen[prepared.iin_hash] = line
        batch.append((line, prepared))
        if len(batch) >= chunk_size:
            flush()
    flush()
    outcome.rejected.sort(key=lambda r: r[0])
    return outcome


_statements()
