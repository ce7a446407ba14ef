"""Web filings: concurrent filings share one transaction (:class:`GroupCommit`), and a
request's whole filing with its ``Idempotency-Key`` (:func:`file_request`, docs/api.md)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from claims import audit, idempotency
from claims.db import is_sqlite
from claims.db.gate import WriteGate, drain_gate, write_gate
from claims.errors import DomainError
from claims.cases import get_open_case
from claims.intake.filing import Filed, file_claim_tx, file_many, reissue_token
from claims.intake.validation import Prepared, prepare_with_case

__all__ = ["IDEMPOTENCY_SCOPE", "GroupCommit", "file_request", "group_commit"]

#: The scope of filings' idempotency keys.
IDEMPOTENCY_SCOPE = "claims"

Batch = list[tuple[Prepared, "idempotency.Ticket | None"]]


class GroupCommit:
    """Concurrent filings on one event loop share one transaction ("group commit").

    :meth:`file_async` queues a validated filing and awaits its outcome. The first filing that
    finds no batch being written starts a drain task on the loop: it takes whatever is queued
    (up to :attr:`max_batch`) and files it in one transaction with
    :func:`claims.intake.file_many` — one duplicate query, one multi-row insert, one outbox
    insert, one audit-chain append for the lot — then yields once so that requests that
    arrived meanwhile are validated and queued, and writes the next batch. Batches thus form
    by themselves under load, and a lone filing is written at once without waiting. Each
    filing gets its own outcome: a duplicate or a closed case refuses only that claim; if a
    batch transaction fails as a whole (a race with another process on the same IIN, a
    reference collision), each of its claims is filed again on its own.

    The statements run on the event-loop thread itself, deliberately: a separate writer thread
    would release and re-take the GIL on every database call while the loop thread validates
    requests, and each re-take waits out the interpreter's switch interval (a "convoy").
    What the loop must not sit through is *waiting*, and that is done off the loop, in a
    worker thread, while the loop goes on reading and validating the requests that form the
    next batch: waiting for the write gate (:func:`claims.db.gate.drain_gate`: another process
    is writing; processes take turns fairly) and the COMMIT (PostgreSQL's WAL flush; SQLite
    now and then runs a checkpoint).

    :meth:`file` (blocking callers: the no-JS form, idempotent filings) writes one filing in
    its own transaction, queued by :func:`claims.db.gate.write_gate`.
    """

    def __init__(self, engine: Engine, *, source: str = "web", max_batch: int = 128) -> None:
        self.engine = engine
        self.source = source
        self.max_batch = max_batch
        self._queue: list[tuple[Prepared, idempotency.Ticket | None, Any]] = []
        self._draining = False

    def file(self, prepared: Prepared, ticket: idempotency.Ticket | None = None) -> Filed:
        """File one claim in its own transaction (blocking)."""
        with write_gate(self.engine):
            return file_claim_tx(prepared, engine=self.engine, source=self.source, ticket=ticket)

    async def file_async(self, prepared: Prepared,
                         ticket: idempotency.Ticket | None = None) -> Filed:
        """File one claim with whatever else is queued meanwhile; its outcome."""
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

        gate = drain_gate(self.engine)
        # PostgreSQL: a batch's claims and notifications are written before the gate (the
        # other processes' batches meanwhile append to the audit chain and commit); only the
        # audit append and the commit pass it. SQLite: one writer at a time, the gate first.
        late = not is_sqlite(self.engine)
        try:
            while self._queue:
                if not late:
                    await gate.enter_async()  # the loop goes on queueing filings meanwhile
                try:
                    batch = self._queue[:self.max_batch]
                    del self._queue[:len(batch)]
                    outcomes = await self._run([(p, t) for p, t, _ in batch],
                                               gate=gate if late else None)
                finally:
                    if not late:
                        gate.exit()
                _settle(batch, outcomes)
                await asyncio.sleep(0)  # let the requests that arrived meanwhile queue up
        finally:
            self._draining = False
            for _, _, future in self._queue:  # pragma: no cover - only when cancelled
                if not future.done():
                    future.set_exception(RuntimeError("the filing queue stopped"))
            self._queue.clear()

    async def _run(self, batch: Batch, *, gate: WriteGate | None = None) -> list[Any]:
        """File ``batch`` in one transaction, its COMMIT awaited in a worker thread: the
        statements are quick, but a commit may wait for the disk (PostgreSQL's WAL flush, a
        SQLite checkpoint now and then), and the loop goes on reading and validating the next
        batch's requests meanwhile. ``gate``: entered here for the audit append and the
        commit only (else the caller holds the gate)."""
        import asyncio

        session: Session | None = Session(self.engine, expire_on_commit=False)
        commit = None
        entered = False
        try:
            if gate is None:
                outcomes = self._file_in(session, batch)
            else:
                events: list[audit.Event] = []
                outcomes = self._file_in(session, batch, events)
                if events:
                    await gate.enter_async()
                    entered = True
                    audit.record_batch(session, events)
            commit = asyncio.get_running_loop().run_in_executor(None, session.commit)
            await asyncio.shield(commit)
            return outcomes
        except asyncio.CancelledError:  # pragma: no cover - shutdown: let the commit finish
            if commit is not None and not commit.done():
                _close_when_done(commit, session, gate if entered else None)
                session, entered = None, False
            raise
        except IntegrityError:
            session.close()  # rolls the batch back
            session = None
            return [self._file_one(p, t) for p, t in batch]
        except Exception as exc:  # nothing was stored: every claim of the batch fails alike
            return [exc] * len(batch)
        finally:
            if session is not None:
                session.close()
            if entered:
                gate.exit()

    def _file_in(self, s: Session, batch: Batch,
                 audit_events: list[audit.Event] | None = None) -> list[Any]:
        """File ``batch`` in the transaction of ``s`` (one :func:`file_many` per case);
        ``audit_events``: see :func:`file_many`."""
        outcomes: list[Any] = [None] * len(batch)
        by_case: dict[str, list[int]] = {}
        for i, (p, _) in enumerate(batch):
            by_case.setdefault(p.case_code, []).append(i)
        for code, idx in by_case.items():
            try:
                case = get_open_case(s, code)
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

    def _file_one(self, prepared: Prepared, ticket: idempotency.Ticket | None) -> Any:
        """One claim of a failed batch, filed again on its own (the gate is held)."""
        try:
            return file_claim_tx(prepared, engine=self.engine, source=self.source, ticket=ticket)
        except Exception as exc:
            return exc


def _settle(batch: list[tuple[Prepared, Any, Any]], outcomes: list[Any]) -> None:
    """Hand each queued filing its outcome (a request that went away is skipped)."""
    for (_, _, future), outcome in zip(batch, outcomes):
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _close_when_done(commit, session: Session, gate: WriteGate | None) -> None:  # pragma: no cover
    """Close ``session`` (and leave ``gate``) once the ``commit`` under way has finished."""

    def done(_) -> None:
        session.close()
        if gate is not None:
            gate.exit()

    commit.add_done_callback(done)


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


def file_request(data: Mapping[str, Any], key: str | None = None, *,
                 prepared: Prepared | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """A filing request's whole filing, blocking (run it in a worker thread): validated
    (unless ``prepared`` is given; every bad field and the case's problem at once), filed
    in its own transaction, the 201 body returned.

    ``key`` (``Idempotency-Key``): a repeat with the same body answers the same reference
    with a *fresh* access token (the one given before stops working); the same key with
    another body, or while the first is in flight, is refused (:mod:`claims.idempotency`); a
    failed filing frees its key."""
    from claims.db import get_engine, session_scope

    prepared = prepared or prepare_with_case(data, engine=engine)
    engine = engine or get_engine()
    committer = group_commit(engine)
    if key is None:
        return committer.file(prepared).response()
    idempotency.check_key(key)
    outcome = idempotency.begin(engine, IDEMPOTENCY_SCOPE, key, idempotency.request_hash(data))
    if isinstance(outcome, idempotency.Replay):
        stored = outcome.response
        with session_scope(engine) as s:
            token = reissue_token(s, stored["reference"])
        return {"reference": stored["reference"], "status": stored["status"],
                "access_token": token, "warnings": stored.get("warnings", [])}
    try:
        return committer.file(prepared, outcome).response()
    except BaseException:
        idempotency.abandon(engine, outcome)
        raise
