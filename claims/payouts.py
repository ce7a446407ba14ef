"""Payouts: release a round, pay every allocation exactly once, reconcile, settle.

DESIGN.md "Payouts"; CONTRACT.md (payout statuses, the finance endpoints, Round money).

Model
-----
One :class:`~claims.models.Payout` per (round, claim) — unique in the database, with an
idempotency key derived from both (:func:`payout_key`). A payout's ``rail`` follows its
network: ``ethereum`` → ``evm`` (the program's wallet pays through :mod:`claims.rails.evm`),
anything else (``tron``) → ``custodian`` (instructions for a custodian, its confirmations
imported: :mod:`claims.rails.custodian`). States move forward only (:data:`ALLOWED`)::

    pending → signed → broadcast → confirmed | failed          (EVM rail)
    pending → exported → confirmed | failed                     (custodian rail)
    pending ⇄ held                                              (finance, or the executor when
                                                                 the claim is not payable)
    failed → pending                                            (retry: a new attempt)
    signed | broadcast → pending                                (the signed transaction was
                                                                 proven expired: a new attempt)
    broadcast → signed                                          (its batch reverted: the halves
                                                                 are signed as new attempts)

``Payout.attempt`` is the number of the payout's current (or next) attempt; every attempt
has a :class:`~claims.models.PayoutAttempt` row (the transaction or export it went out with,
the address read then, and how it ended). A payout is never created twice: a retry is a new
attempt of the same payout.

Release (:func:`release_round`, finance only)
---------------------------------------------
In one transaction: the round (``approved``, or ``released``/``settled`` with allocations
that have no payout yet — disputes settled later) takes the release token with a conditional
``UPDATE … WHERE release_token IS NULL`` (so of concurrent releases exactly one is accepted,
enforced by the database), one ``pending`` payout is inserted per allocation with an amount
> 0 and no payout, the round becomes ``released`` and the audit event is written. A release
while one runs (the token is set: its payouts are not all done) or with nothing left to pay
→ :class:`~claims.errors.PayoutAlreadyTriggered` (409). The token is given back by the
executor when no payout of the round is ``pending``, ``signed`` or ``broadcast``.

Execution (:func:`execute_round`)
---------------------------------
Runs a released round to the end and may be run again at any time (after a crash, by the
background loop of ``serve``, by ``payouts execute``, by the Prefect flow
``execute_payouts``): a ``stopped`` round is left alone; EVM transactions in flight are
resumed first (:class:`claims.rails.evm_exec.EvmExecutor`), the wallet's token and gas are
checked against the pending EVM total before any new transfer (an underfunded wallet stops
the round with the reason, nothing sent), then pending EVM payouts are paid in batches
(``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL) and pending custodian payouts exported.
Each payout's address is read from its claim when it is signed or exported; a claim that is
not payable then (flagged, e.g. after an address change; blocked address; another network)
has its payout ``held`` with the reason.

Reconciliation, mismatches, settling
------------------------------------
EVM payouts are confirmed only when the receipt's ``Transfer`` events carry the recipient and
amount; custodian payouts when the custodian's confirmation matches. :func:`reconcile_round`
checks every confirmed payout again (chain or confirmation). A mismatch (:func:`record_mismatch`)
stops the round (``stopped``, with the reason) until finance resolves every open mismatch
(:func:`resolve_mismatch`, which resumes the round) — or, for any other stop (an underfunded
wallet), restarts it (:func:`restart_round`). A round settles when every payout is confirmed
and the confirmed total equals the round's ``allocated`` (:func:`maybe_settle`).

Notices: ``paid`` (amount, transaction id, network) and ``failed`` go through the outbox in
the transaction that changes the payout.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, exists, func, select, update
from sqlmodel import Session

from claims import audit, outbox, rounds
from claims.audit import Actor, bind_value, bulk_insert, driver_sql, json_str
from claims.db import is_sqlite, lock_clause, session_scope
from claims.errors import (
    Conflict,
    Forbidden,
    IllegalTransition,
    InvalidInput,
    NotFound,
    PayoutAlreadyTriggered,
    PayoutError,
)
from claims.gc_pause import gc_paused
from claims.lifecycle import PAYABLE
from claims.models import (
    Allocation,
    ChainTx,
    Claim,
    CustodianConfirmation,
    DistributionRound,
    Mismatch,
    Payout,
    PayoutAttempt,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import format_amount

log = logging.getLogger("restitution.payouts")

P = PayoutState
R = RoundStatus

STATES: tuple[str, ...] = tuple(s.value for s in PayoutState)
#: A release runs while any payout of the round is in one of these states.
ACTIVE = (P.pending.value, P.signed.value, P.broadcast.value)
IN_FLIGHT = (P.signed.value, P.broadcast.value)

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (P.pending.value, P.held.value),
        (P.held.value, P.pending.value),
        (P.pending.value, P.signed.value),
        (P.pending.value, P.exported.value),
        (P.pending.value, P.failed.value),  # refused before anything was sent
        (P.signed.value, P.broadcast.value),
        (P.signed.value, P.confirmed.value),  # mined before "broadcast" was recorded
        (P.signed.value, P.failed.value),
        (P.signed.value, P.pending.value),  # proven expired: a new attempt
        (P.broadcast.value, P.confirmed.value),
        (P.broadcast.value, P.failed.value),
        (P.broadcast.value, P.pending.value),  # proven expired: a new attempt
        (P.broadcast.value, P.signed.value),  # its batch reverted: halves signed anew
        (P.exported.value, P.confirmed.value),
        (P.exported.value, P.failed.value),
        (P.failed.value, P.pending.value),  # retry: a new attempt of the same payout
    }
)

RAIL_EVM = "evm"
RAIL_CUSTODIAN = "custodian"
EVM_NETWORKS = frozenset({"ethereum"})

#: Payouts per EVM transaction (one Disperse batch) and per custodian export step.
BATCH_SIZE = 200
INSERT_CHUNK = 5000

#: Open flags that stop a claim's payouts at signing (besides a status that is not payable).
BLOCKING_FLAGS = ("address_changed", "blocked_address")

FINANCE = "finance"

# The hot paths (a round of a million payouts) write their SQL directly (``?`` markers, in the
# driver's style through :func:`claims.audit.driver_sql`) and their audit events and notices
# as canonical text (:func:`claims.audit.record_rows`, :func:`claims.outbox.enqueue_rows`):
# the same rows, events and notices as the generic helpers, without per-row statement
# compilation and type processing.


def _marks(n: int) -> str:
    """``?, ?, …`` (``n`` markers) for an ``IN (…)`` list."""
    return ", ".join(["?"] * n)


def _sql(session: Session, sql: str, params: Any = ()) -> Any:
    """Run ``sql`` (``?`` markers) in the session's transaction: a tuple of parameters runs it
    once, a list of tuples runs it for each (``executemany``). Pending ORM changes are flushed
    first, as ``session.execute`` would."""
    session.flush()
    return session.connection().exec_driver_sql(driver_sql(session, sql), params)


def _unindexed(session: Session, column: str) -> str:
    """``column`` in a condition that must not pick SQLite's index: ``+column`` on SQLite (its
    planner, without statistics, prefers e.g. the round's index over the ids of an
    ``id IN (…)`` list — a scan of the whole round per chunk), ``column`` elsewhere."""
    return f"+{column}" if is_sqlite(session.get_bind()) else column


def _rows(session: Session, sql: str, params: Any = ()) -> list:
    """The rows of a ``SELECT`` (``?`` markers), fetched at once."""
    return _sql(session, sql, params).fetchall()


def _canonical_value(value: Any) -> str:
    """``audit.canonical_text(audit.jsonable(value))`` of a str, an int or None."""
    if value is None:
        return "null"
    if type(value) is str:
        return json_str(value)
    if type(value) is int:
        return int.__repr__(value)
    return audit.canonical_text(audit.jsonable(value))


def payout_key(round_id: int, claim_id: int) -> str:
    """The payout's idempotency key: one per (round, claim), the same on every release."""
    return hashlib.sha256(f"payout:{round_id}:{claim_id}".encode()).hexdigest()[:32]


def rail_for(network: str) -> str:
    return RAIL_EVM if network in EVM_NETWORKS else RAIL_CUSTODIAN


def check_move(src: str, dst: str) -> None:
    if (src, dst) not in ALLOWED:
        raise IllegalTransition(f"a payout cannot go from {src} to {dst}")


def require_finance(actor: Actor, doing: str) -> None:
    if actor.role != FINANCE:
        raise Forbidden(f"only finance may {doing}; you are {actor.role}")


def parse_payout_id(payout_id: object) -> int:
    if isinstance(payout_id, bool):
        raise NotFound("no such payout")
    if isinstance(payout_id, int) and payout_id > 0:
        return payout_id
    if isinstance(payout_id, str) and payout_id.isascii() and payout_id.isdigit() \
            and 0 < len(payout_id) <= 18 and payout_id[0] != "0":
        return int(payout_id)
    raise NotFound("no such payout")


@dataclass(frozen=True)
class ClaimRef:
    """What a notice needs of a claim (stands in for ``Claim`` in
    :func:`claims.outbox.enqueue_many`)."""

    id: int
    reference: str
    language: str
    email: str
    full_name: str


def claim_refs(session: Session, claim_ids: Iterable[int]) -> dict[int, ClaimRef]:
    ids = sorted(set(claim_ids))
    out: dict[int, ClaimRef] = {}
    for i in range(0, len(ids), INSERT_CHUNK):
        chunk = ids[i : i + INSERT_CHUNK]
        for row in _rows(session, "SELECT id, reference, language, email, full_name FROM claim "
                        f"WHERE id IN ({_marks(len(chunk))})", tuple(chunk)):
            out[row[0]] = ClaimRef(*row)
    return out


def paid_context(amount: int, tx_id: str, network: str, chain_id: int | None,
                 name: str | None) -> dict:
    """The ``paid`` notice: amount, transaction id, and the network for the explorer link —
    given only where a public explorer shows the transaction (TRON, Ethereum mainnet; not the
    in-process test chain)."""
    ctx: dict[str, Any] = {"amount": amount, "tx_id": tx_id, "name": name}
    if network == "tron" or (network == "ethereum" and chain_id == 1):
        ctx["payout_network"] = network
    return ctx


# ------------------------------------------------------------------ release


@gc_paused()
def release_round(
    session: Session, round_id: object, *, actor: Actor, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Release the round's unpaid allocations (see the module docstring). Returns the answer
    (``round_id, release_id, status, payouts, amount, rails``). Raises ``Forbidden`` (not
    finance), ``NotFound``, ``Conflict`` (round not approved / stopped),
    ``PayoutAlreadyTriggered`` (a release runs, or nothing left to pay)."""
    require_finance(actor, "release payouts")
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.status == R.stopped.value:
        raise PayoutError(
            f"round {rnd.id} is stopped ({rnd.stopped_reason or 'no reason recorded'}); "
            "resolve its mismatches or restart it first"
        )
    if rnd.status not in (R.approved.value, R.released.value, R.settled.value):
        raise Conflict(f"round {rnd.id} is {rnd.status}; only an approved round can be released")
    release_id = uuid.uuid4().hex
    took = session.execute(
        update(DistributionRound)
        .where(
            DistributionRound.id == rnd.id,
            DistributionRound.release_token.is_(None),
            DistributionRound.status.in_((R.approved.value, R.released.value, R.settled.value)),
        )
        .values(release_token=release_id)
        .execution_options(synchronize_session=False)
    )
    if took.rowcount != 1:
        raise PayoutAlreadyTriggered(
            f"a release of round {rnd.id} is still running; wait until its payouts are done"
        )
    rows = session.connection().execute(
        select(Allocation.id, Allocation.claim_id, Allocation.amount, Claim.payout_network)
        .join(Claim, Claim.id == Allocation.claim_id)
        .where(
            Allocation.round_id == rnd.id,
            Allocation.amount > 0,
            ~exists().where(Payout.round_id == rnd.id, Payout.claim_id == Allocation.claim_id),
        )
        .order_by(Allocation.claim_id)
    ).all()
    if not rows:
        raise PayoutAlreadyTriggered(f"round {rnd.id} has nothing left to pay")
    now = utcnow()
    now_db = bind_value(session, Payout.__table__.c.created_at, now)
    by_rail: dict[str, dict[str, int]] = {}
    rid = rnd.id
    pending = P.pending.value
    values = []
    total = 0
    for alloc_id, claim_id, amount, network in rows:
        rail = rail_for(network)
        agg = by_rail.get(rail)
        if agg is None:
            agg = by_rail[rail] = {"count": 0, "amount": 0}
        agg["count"] += 1
        agg["amount"] += amount
        total += amount
        values.append((rid, claim_id, alloc_id, payout_key(rid, claim_id), amount, rail, network,
                       pending, 1, release_id, now_db, now_db))
    del rows
    for i in range(0, len(values), INSERT_CHUNK):
        _insert(session, Payout.__table__, _PAYOUT_COLUMNS, values[i : i + INSERT_CHUNK])
    before = {"status": rnd.status}
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id)
        .values(status=R.released.value, released_at=rnd.released_at or now)
        .execution_options(synchronize_session=False)
    )
    audit.record(session, actor, "round.released", "round", rnd.id, before=before, after={
        "status": R.released.value, "release_id": release_id, "payouts": len(values),
        "amount": total, "rails": by_rail, "idempotency_key": idempotency_key,
    })
    session.expire(rnd)
    return {
        "round_id": str(rnd.id),
        "release_id": release_id,
        "status": R.released.value,
        "payouts": len(values),
        "amount": format_amount(total),
        "rails": {k: {"count": v["count"], "amount": format_amount(v["amount"])}
                  for k, v in sorted(by_rail.items())},
    }


_PAYOUT_COLUMNS = ("round_id", "claim_id", "allocation_id", "idempotency_key", "amount", "rail",
                   "network", "state", "attempt", "release_id", "created_at", "updated_at")


def _insert(session: Session, table: Any, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """:func:`claims.audit.bulk_insert`, a constraint violation raised as SQLAlchemy's
    ``IntegrityError`` on every backend (``COPY`` raises the driver's own)."""
    from sqlalchemy.exc import IntegrityError

    dbapi = session.get_bind().dialect.loaded_dbapi
    try:
        bulk_insert(session, table, columns, rows)
    except IntegrityError:
        raise
    except dbapi.IntegrityError as exc:
        raise IntegrityError(f"INSERT INTO {table.name}", None, exc) from exc


# ------------------------------------------------------------------ payability at signing


@dataclass
class Candidate:
    """A pending payout about to be signed or exported, with its claim's current address."""

    payout_id: int
    claim_id: int
    amount: int
    attempt: int
    network: str
    address: str = ""
    chain_tx_id: int | None = None  # the reverted batch it was in (a split), else None

    def __hash__(self) -> int:  # pay_with_bisect keeps them in lists only; hashable for sets
        return hash(self.payout_id)


def classify(
    session: Session, rows: Sequence[tuple[int, int, int, int, str]]
) -> tuple[list[Candidate], list[tuple[int, int, str]]]:
    """Split pending payouts ``(payout_id, claim_id, amount, attempt, network)`` into those
    payable now (with the claim's current address, canonical) and those to hold
    ``(payout_id, claim_id, reason)``."""
    from claims.models import BlockedAddress
    from claims.validators import ValidationFailed, normalize_address_key, validate_payout_address

    claim_ids = sorted({r[1] for r in rows})
    claims: dict[int, tuple] = {}
    flags: dict[int, set[str]] = {}
    for i in range(0, len(claim_ids), INSERT_CHUNK):
        chunk = tuple(claim_ids[i : i + INSERT_CHUNK])
        marks = _marks(len(chunk))
        for c in _rows(session, "SELECT id, status, payout_network, payout_address, reference "
                      f"FROM claim WHERE id IN ({marks})", chunk):
            claims[c[0]] = c
        for cid, code in _rows(
            session, f"SELECT claim_id, code FROM flag WHERE claim_id IN ({marks}) AND "
            f"resolved_at IS NULL AND {_unindexed(session, 'code')} "
            f"IN ({_marks(len(BLOCKING_FLAGS))})",
            chunk + BLOCKING_FLAGS,
        ):
            flags.setdefault(cid, set()).add(code)
    keys = {}
    for cid, (_, _, network, address, _) in claims.items():
        try:
            keys[cid] = normalize_address_key(network, address)
        except Exception:  # noqa: BLE001 - an unreadable address is held below
            keys[cid] = None
    blocked: set[str] = set()
    wanted = sorted({k for k in keys.values() if k})
    for i in range(0, len(wanted), INSERT_CHUNK):
        chunk = tuple(wanted[i : i + INSERT_CHUNK])
        blocked.update(r[0] for r in _rows(
            session, f"SELECT address_key FROM {BlockedAddress.__tablename__} "
            f"WHERE address_key IN ({_marks(len(chunk))})", chunk))
    payable, hold = [], []
    for payout_id, claim_id, amount, attempt, network in rows:
        claim = claims.get(claim_id)
        if claim is None:  # pragma: no cover - a foreign key
            hold.append((payout_id, claim_id, "the claim is missing"))
            continue
        _, status, claim_network, address, _ = claim
        reason = None
        if status not in PAYABLE:
            reason = f"the claim is {status}; a caseworker must approve it again"
        elif flags.get(claim_id):
            reason = "the claim has an open flag (" + ", ".join(sorted(flags[claim_id])) + ")"
        elif claim_network != network:
            reason = (f"the claim's payout network changed from {network} to {claim_network}; "
                      "this payout cannot follow it")
        elif keys.get(claim_id) in blocked:
            reason = "the payout address is on the blocked list"
        if reason is None:
            try:
                address, _ = validate_payout_address(claim_network, address)
            except ValidationFailed as exc:
                reason = f"the payout address is not valid: {exc}"
        if reason is not None:
            hold.append((payout_id, claim_id, reason))
        else:
            payable.append(Candidate(payout_id, claim_id, amount, attempt, network, address))
    return payable, hold


def hold_many(session: Session, items: Sequence[tuple[int, int, str]], *, actor: Actor) -> int:
    """``pending → held`` with the reason (the executor, at signing/export)."""
    if not items:
        return 0
    now_db = bind_value(session, Payout.__table__.c.updated_at, utcnow())
    held, pending = P.held.value, P.pending.value
    res = _sql(session, "UPDATE payout SET state = ?, failure_reason = ?, updated_at = ? "
               "WHERE id = ? AND state = ?",
               [(held, reason, now_db, pid, pending) for pid, _, reason in items])
    if res.rowcount != len(items):
        raise PayoutError("payouts changed while they were being held; run again")
    # audit.record_many(…, ("payout.held", "payout", pid, {"state": "pending"},
    # {"state": "held", "reason": reason})), its texts written directly
    audit.record_rows(session, [
        (actor.name, actor.role, "payout.held", "payout", str(pid), '{"state":"pending"}',
         f'{{"reason":{_canonical_value(reason)},"state":"held"}}')
        for pid, _, reason in items
    ])
    return len(items)


def open_attempts(
    session: Session, rows: Sequence[tuple[int, int, int | None, str | None]]
) -> None:
    """Create or update the attempt rows ``(payout_id, attempt, chain_tx_id, address)``."""
    if not rows:
        return
    ids = sorted({r[0] for r in rows})
    existing = set()
    for i in range(0, len(ids), INSERT_CHUNK):
        chunk = tuple(ids[i : i + INSERT_CHUNK])
        existing.update((p, a) for p, a in _rows(
            session, "SELECT payout_id, attempt FROM payout_attempt "
            f"WHERE payout_id IN ({_marks(len(chunk))})", chunk))
    now_db = bind_value(session, PayoutAttempt.__table__.c.created_at, utcnow())
    if existing:
        new = [(p, a, c, addr, now_db) for p, a, c, addr in rows if (p, a) not in existing]
        old = [(c, addr, p, a) for p, a, c, addr in rows if (p, a) in existing]
    else:
        new = [(p, a, c, addr, now_db) for p, a, c, addr in rows]
        old = []
    if new:
        _insert(session, PayoutAttempt.__table__, _ATTEMPT_COLUMNS, new)
    if old:
        _sql(session, "UPDATE payout_attempt SET chain_tx_id = ?, address = ? "
             "WHERE payout_id = ? AND attempt = ?", old)


_ATTEMPT_COLUMNS = ("payout_id", "attempt", "chain_tx_id", "address", "created_at")


def close_attempts(session: Session, rows: Sequence[tuple[int, int, str, str | None]]) -> None:
    """Record how attempts ended ``(payout_id, attempt, outcome, reason)``."""
    if not rows:
        return
    _sql(session, "UPDATE payout_attempt SET outcome = ?, reason = ? "
         "WHERE payout_id = ? AND attempt = ?", [(o, r, p, a) for p, a, o, r in rows])


def notify_outcomes(
    session: Session, paid: Sequence[tuple[int, int, str, str, int | None]],
    failed: Sequence[tuple[int, int]],
) -> None:
    """Queue ``paid`` notices ``(claim_id, amount, tx_id, network, chain_id)`` and ``failed``
    notices ``(claim_id, amount)``: each context is ``{"reference": …, **context}`` as
    ``json.dumps`` writes it (what :func:`claims.outbox.enqueue_many` stores), the context
    the one :func:`paid_context` gives (``failed``: amount and name), read with the claims'
    values in one query per chunk."""
    if not paid and not failed:
        return
    ids = sorted({p[0] for p in paid} | {f[0] for f in failed})
    refs: dict[int, tuple] = {}  # claim id → (reference, language, email, name)
    for i in range(0, len(ids), INSERT_CHUNK):
        chunk = tuple(ids[i : i + INSERT_CHUNK])
        for cid, *ref in _rows(
            session, "SELECT id, reference, language, email, full_name FROM claim "
            f"WHERE id IN ({_marks(len(chunk))})", chunk,
        ):
            refs[cid] = ref
    text = outbox.context_text
    rows = []
    for claim_id, amount, tx_id, network, chain_id in paid:
        reference, language, email, name = refs[claim_id]
        rows.append((claim_id, "paid", language, email,
                     text(reference, paid_context(amount, tx_id, network, chain_id, name))))
    for claim_id, amount in failed:
        reference, language, email, name = refs[claim_id]
        rows.append((claim_id, "failed", language, email,
                     text(reference, {"amount": amount, "name": name})))
    outbox.enqueue_rows(session, rows)


# ------------------------------------------------------------------ finance: one payout


def get_payout(session: Session, payout_id: object, *, lock: bool = False) -> Payout:
    pid = parse_payout_id(payout_id)
    stmt = select(Payout).where(Payout.id == pid)
    if lock and lock_clause(session):
        stmt = stmt.with_for_update()
    payout = session.execute(stmt).scalar_one_or_none()
    if payout is None:
        raise NotFound(f"no payout {pid}")
    return payout


def _move_one(session: Session, payout: Payout, to: str, *, actor: Actor, action: str,
              values: dict, audit_extra: dict | None = None) -> Payout:
    src = payout.state
    check_move(src, to)
    now = utcnow()
    res = session.execute(
        update(Payout)
        .where(Payout.id == payout.id, Payout.state == src, Payout.attempt == payout.attempt)
        .values(state=to, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise IllegalTransition(f"payout {payout.id} changed meanwhile; it is no longer {src}")
    audit.record(session, actor, action, "payout", payout.id,
                 before={"state": src, "attempt": payout.attempt},
                 after={"state": to, **{k: v for k, v in values.items() if k != "updated_at"},
                        **(audit_extra or {})})
    session.expire(payout)
    session.refresh(payout)
    return payout


def hold_payout(session: Session, payout_id: object, *, actor: Actor,
                reason: str | None = None) -> Payout:
    """``pending → held`` (finance): the executor leaves it alone until resumed."""
    require_finance(actor, "hold a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.pending.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a pending payout "
                                "can be held")
    why = f"held by {actor.name}" + (f": {reason.strip()}" if reason and reason.strip() else "")
    return _move_one(session, payout, P.held.value, actor=actor, action="payout.held",
                     values={"failure_reason": why})


def resume_payout(session: Session, payout_id: object, *, actor: Actor) -> Payout:
    """``held → pending`` (finance). Refused while its claim is not payable (the executor
    would hold it again): a caseworker decides the claim first."""
    require_finance(actor, "resume a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.held.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a held payout "
                                "can be resumed")
    _, hold = classify(session, [(payout.id, payout.claim_id, payout.amount, payout.attempt,
                                  payout.network)])
    if hold:
        raise Conflict(f"payout {payout.id} cannot be resumed: {hold[0][2]}")
    return _move_one(session, payout, P.pending.value, actor=actor, action="payout.resumed",
                     values={"failure_reason": None})


def retry_payout(session: Session, payout_id: object, *, actor: Actor) -> Payout:
    """``failed → pending`` as a new attempt of the same payout (finance). Only a failure
    proven final: its transaction reverted (mined), expired, was never sent, or the custodian
    reported it failed."""
    require_finance(actor, "retry a payout")
    payout = get_payout(session, payout_id, lock=True)
    if payout.state != P.failed.value:
        raise IllegalTransition(f"payout {payout.id} is {payout.state}; only a failed payout "
                                "can be retried")
    if payout.chain_tx_id is not None:
        tx_state = session.execute(
            select(ChainTx.state).where(ChainTx.id == payout.chain_tx_id)).scalar_one()
        if tx_state not in ("reverted", "expired"):
            raise Conflict(f"payout {payout.id}: its transaction is {tx_state}, not proven final")
    rnd = rounds.get_round(session, payout.round_id)
    if rnd.status == R.settled.value:  # pragma: no cover - a settled round has no failure
        raise Conflict(f"round {rnd.id} is settled")
    attempt = payout.attempt + 1
    moved = _move_one(
        session, payout, P.pending.value, actor=actor, action="payout.retried",
        values={"attempt": attempt, "failure_reason": None, "chain_tx_id": None, "tx_id": None,
                "gas_used": None, "fee_wei": None},
    )
    open_attempts(session, [(moved.id, attempt, None, None)])
    close_attempts(session, [(moved.id, attempt, None, f"retry requested by {actor.name}")])
    return moved


# ------------------------------------------------------------------ round stop / restart


def stop_round(session: Session, round_id: int, reason: str, *, actor: Actor) -> bool:
    """Stop further transfers of the round (``stopped`` with the reason). False when it was
    stopped already (the first reason stays)."""
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.status == R.stopped.value:
        return False
    res = session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id, DistributionRound.status != R.stopped.value)
        .values(status=R.stopped.value, stopped_reason=reason[:4000])
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # pragma: no cover - locked above
        return False
    audit.record(session, actor, "round.stopped", "round", rnd.id,
                 before={"status": rnd.status}, after={"status": R.stopped.value,
                                                       "reason": reason})
    session.expire(rnd)
    log.warning("round %s stopped: %s", rnd.id, reason)
    return True


def open_mismatches(session: Session, round_id: int) -> int:
    return session.execute(
        select(func.count()).select_from(Mismatch)
        .where(Mismatch.round_id == round_id, Mismatch.resolved_at.is_(None))
    ).scalar_one()


def _unstop(session: Session, rnd: DistributionRound, actor: Actor, action: str,
            extra: dict) -> None:
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id, DistributionRound.status == R.stopped.value)
        .values(status=R.released.value, stopped_reason=None)
        .execution_options(synchronize_session=False)
    )
    audit.record(session, actor, action, "round", rnd.id,
                 before={"status": R.stopped.value, "reason": rnd.stopped_reason},
                 after={"status": R.released.value, **extra})
    session.expire(rnd)


def restart_round(session: Session, round_id: object, *, actor: Actor) -> DistributionRound:
    """``stopped → released`` (finance), e.g. after the wallet was topped up. Refused while a
    mismatch of the round is open."""
    require_finance(actor, "restart a round")
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.status != R.stopped.value:
        raise Conflict(f"round {rnd.id} is {rnd.status}, not stopped")
    n = open_mismatches(session, rnd.id)
    if n:
        raise Conflict(f"round {rnd.id} has {n} open mismatch(es); resolve them first")
    if rnd.released_at is None:  # pragma: no cover - only released rounds stop
        raise Conflict(f"round {rnd.id} was never released")
    _unstop(session, rnd, actor, "round.restarted", {})
    return rounds.get_round(session, rnd.id)


def record_mismatch(
    session: Session, round_id: int, *, payout_id: int | None, source: str, reason: str,
    detail: dict, actor: Actor,
) -> tuple[Mismatch, bool]:
    """Record a reconciliation mismatch (once: the same payout, source and detail are not
    recorded again) and stop the round. Returns (mismatch, created)."""
    detail = audit.jsonable(detail)
    found = session.execute(
        select(Mismatch).where(
            Mismatch.round_id == round_id, Mismatch.source == source,
            (Mismatch.payout_id == payout_id) if payout_id is not None
            else Mismatch.payout_id.is_(None),
        )
    ).scalars().all()
    for m in found:
        if m.detail == detail and m.reason == reason:
            return m, False
    m = Mismatch(round_id=round_id, payout_id=payout_id, source=source, reason=reason,
                 detail=detail, created_at=utcnow())
    session.add(m)
    session.flush()
    audit.record(session, actor, "payout.mismatch", "round", round_id, after={
        "mismatch": m.id, "payout": payout_id, "source": source, "reason": reason,
        "detail": detail})
    stop_round(session, round_id, f"mismatch {m.id}: {reason}", actor=actor)
    return m, True


def mismatch_view(m: Mismatch) -> dict[str, Any]:
    return {
        "id": str(m.id), "round_id": str(m.round_id),
        "payout_id": str(m.payout_id) if m.payout_id is not None else None,
        "source": m.source, "reason": m.reason, "detail": m.detail,
        "created_at": m.created_at.isoformat(),
        "resolved_at": m.resolved_at.isoformat() if m.resolved_at else None,
    }


def list_mismatches(session: Session, round_id: object) -> list[dict[str, Any]]:
    rnd = rounds.get_round(session, round_id)
    return [mismatch_view(m) for m in session.execute(
        select(Mismatch).where(Mismatch.round_id == rnd.id).order_by(Mismatch.id)
    ).scalars()]


def resolve_mismatch(session: Session, round_id: object, mismatch_id: object, *,
                     actor: Actor, reason: str) -> dict[str, Any]:
    """Finance records how a mismatch was resolved; when it was the round's last open one,
    the round goes back from ``stopped`` to ``released`` (transfers resume)."""
    require_finance(actor, "resolve a mismatch")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput([{"field": "reason", "message": "say how it was resolved"}])
    rnd = rounds.get_round(session, round_id, lock=True)
    mid = parse_payout_id(mismatch_id) if not isinstance(mismatch_id, int) else mismatch_id
    m = session.execute(
        select(Mismatch).where(Mismatch.id == mid, Mismatch.round_id == rnd.id)
    ).scalar_one_or_none()
    if m is None:
        raise NotFound(f"no mismatch {mid} in round {rnd.id}")
    if m.resolved_at is not None:
        raise Conflict(f"mismatch {m.id} was resolved already")
    m.resolved_at = utcnow()
    m.resolved_by = actor.staff_id
    session.add(m)
    session.flush()
    audit.record(session, actor, "payout.mismatch_resolved", "round", rnd.id,
                 after={"mismatch": m.id, "reason": reason.strip()})
    if rnd.status == R.stopped.value and open_mismatches(session, rnd.id) == 0:
        _unstop(session, rnd, actor, "round.restarted", {"after_mismatch": m.id})
    return mismatch_view(m)


# ------------------------------------------------------------------ summaries


def state_totals(session: Session, round_id: int) -> dict[str, dict[str, int]]:
    totals = {s: {"count": 0, "amount": 0} for s in STATES}
    for state, count, amount in session.execute(
        select(Payout.state, func.count(), func.coalesce(func.sum(Payout.amount), 0))
        .where(Payout.round_id == round_id).group_by(Payout.state)
    ):
        totals[state] = {"count": int(count), "amount": int(amount)}
    return totals


def wallet_view(rail: Any) -> dict[str, Any]:
    """The payout wallet on the EVM rail: address, token and gas balances, chain identity."""
    try:
        bal = rail.balances()
        ident = rail.chain_identity()
    except Exception as exc:  # noqa: BLE001 - a node that does not answer is shown, not fatal
        return {"network": "ethereum", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        "network": "ethereum",
        "address": bal["address"],
        "token": rail.token_address,
        "token_balance": format_amount(bal["token_micro"]),
        "gas_balance_wei": str(bal["gas_wei"]),
        "chain_id": ident.chain_id,
        "genesis_hash": ident.genesis_hash,
        "in_process": bool(rail.in_process),
    }


def summary(session: Session, round_id: object, *, wallet: dict | None = None) -> dict[str, Any]:
    """CONTRACT's ``GET /rounds/{id}/payouts``: ``total``, ``by_state`` (every state) and
    ``wallet``, plus the round's status, stop reason, open mismatches and money."""
    rnd = rounds.get_round(session, round_id)
    totals = state_totals(session, rnd.id)
    count = sum(v["count"] for v in totals.values())
    amount = sum(v["amount"] for v in totals.values())
    evm_pending = session.execute(
        select(func.count(), func.coalesce(func.sum(Payout.amount), 0)).where(
            Payout.round_id == rnd.id, Payout.rail == RAIL_EVM,
            Payout.state.in_((P.pending.value, P.held.value)))
    ).one()
    unreleased = session.execute(
        select(func.count(), func.coalesce(func.sum(Allocation.amount), 0)).where(
            Allocation.round_id == rnd.id, Allocation.amount > 0,
            ~exists().where(Payout.round_id == rnd.id, Payout.claim_id == Allocation.claim_id))
    ).one()
    return {
        "round_id": str(rnd.id),
        "round_status": rnd.status,
        "stopped_reason": rnd.stopped_reason,
        "release_running": rnd.release_token is not None,
        "allocated": format_amount(rnd.allocated),
        "confirmed": format_amount(totals[P.confirmed.value]["amount"]),
        "unreleased": {"count": int(unreleased[0]), "amount": format_amount(int(unreleased[1]))},
        "open_mismatches": open_mismatches(session, rnd.id),
        "total": {"count": count, "amount": format_amount(amount)},
        "by_state": {s: {"count": v["count"], "amount": format_amount(v["amount"])}
                     for s, v in totals.items()},
        "wallet": {**(wallet or {}),
                   "evm_to_pay": {"count": int(evm_pending[0]),
                                  "amount": format_amount(int(evm_pending[1]))}},
    }


def payout_view(p: Payout, reference: str | None = None) -> dict[str, Any]:
    return {
        "id": str(p.id), "round_id": str(p.round_id), "claim": reference,
        "state": p.state, "rail": p.rail, "network": p.network, "address": p.address,
        "amount": format_amount(p.amount), "attempt": p.attempt, "tx_id": p.tx_id,
        "chain_id": p.chain_id, "gas_used": p.gas_used,
        "fee_wei": str(p.fee_wei) if p.fee_wei is not None else None,
        "reason": p.failure_reason, "idempotency_key": p.idempotency_key,
        "updated_at": p.updated_at.isoformat(),
        "confirmed_at": p.confirmed_at.isoformat() if p.confirmed_at else None,
    }


def get_payout_view(session: Session, payout_id: object) -> dict[str, Any]:
    p = get_payout(session, payout_id)
    ref = session.execute(select(Claim.reference).where(Claim.id == p.claim_id)).scalar_one()
    return payout_view(p, ref)


def list_payouts(session: Session, round_id: object, *, state: str | None = None,
                 limit: int = 100, offset: int = 0) -> dict[str, Any]:
    rnd = rounds.get_round(session, round_id)
    if state is not None and state not in STATES:
        raise InvalidInput([{"field": "state", "message": "must be one of " + ", ".join(STATES)}])
    cond = [Payout.round_id == rnd.id] + ([Payout.state == state] if state else [])
    total = session.execute(select(func.count()).select_from(Payout).where(*cond)).scalar_one()
    rows = session.execute(
        select(Payout, Claim.reference).join(Claim, Claim.id == Payout.claim_id)
        .where(*cond).order_by(Payout.id).limit(limit).offset(offset)
    ).all()
    return {"items": [payout_view(p, ref) for p, ref in rows], "total": int(total)}


# ------------------------------------------------------------------ settle


def maybe_settle(session: Session, round_id: int, *, actor: Actor) -> bool:
    """``released → settled`` when every payout is confirmed (and reconciled), every
    allocation has its payout, nothing is open, and the confirmed total equals
    ``allocated`` (CONTRACT "Round money")."""
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.status != R.released.value:
        return False
    totals = state_totals(session, rnd.id)
    if any(v["count"] for s, v in totals.items() if s != P.confirmed.value):
        return False
    confirmed = totals[P.confirmed.value]["amount"]
    if confirmed != rnd.allocated:
        return False
    if open_mismatches(session, rnd.id):
        return False
    unreconciled = session.execute(
        select(func.count()).select_from(Payout)
        .where(Payout.round_id == rnd.id, Payout.reconciled_at.is_(None))
    ).scalar_one()
    if unreconciled:
        return False
    session.execute(
        update(DistributionRound)
        .where(DistributionRound.id == rnd.id, DistributionRound.status == R.released.value)
        .values(status=R.settled.value, release_token=None)
        .execution_options(synchronize_session=False)
    )
    audit.record(session, actor, "round.settled", "round", rnd.id,
                 before={"status": R.released.value},
                 after={"status": R.settled.value, "confirmed": confirmed,
                        "payouts": totals[P.confirmed.value]["count"]})
    session.expire(rnd)
    return True


def finish_release(session: Session, round_id: int, *, actor: Actor) -> bool:
    """Give the release token back when nothing of the round is pending or in flight (held,
    exported, failed and confirmed payouts do not keep a release running). A stopped round
    keeps it: its release resumes when the round is restarted."""
    rnd = rounds.get_round(session, round_id, lock=True)
    if rnd.release_token is None or rnd.status == R.stopped.value:
        return False
    active = session.execute(
        select(func.count()).select_from(Payout)
        .where(Payout.round_id == rnd.id, Payout.state.in_(ACTIVE))
    ).scalar_one()
    if active:
        return False
    session.execute(
        update(DistributionRound).where(DistributionRound.id == rnd.id)
        .values(release_token=None).execution_options(synchronize_session=False)
    )
    audit.record(session, actor, "round.release_done", "round", rnd.id,
                 after={"release_id": rnd.release_token})
    session.expire(rnd)
    return True


# ------------------------------------------------------------------ reconciliation


def reconcile_round(engine: Engine, round_id: object, *, actor: Actor,
                    rail: Any = None) -> dict[str, Any]:
    """Check every confirmed payout of the round against the chain (recipient, amount, token
    from the payout wallet: ``rail.verify_transfers``) or the custodian's confirmation. Every
    mismatch is recorded and stops the round, saying why. EVM payouts recorded on another
    chain than the rail's are not checked (``other_chain``): the rail refuses to assume
    (``ChainMismatch``). Settles the round when everything matches. Returns ``{"checked",
    "ok", "mismatches": [{"payout_id", "reason"}], "other_chain", "settled", "status"}``."""
    with session_scope(engine, write=False) as s:
        rnd = rounds.get_round(s, round_id)
        rid = rnd.id
        rows = s.execute(
            select(Payout.id, Payout.rail, Payout.address, Payout.amount, Payout.tx_id,
                   Payout.chain_id, Payout.genesis_hash)
            .where(Payout.round_id == rid, Payout.state == P.confirmed.value)
            .order_by(Payout.id)
        ).all()
        confirmations: dict[int, list[tuple[str, int, str]]] = {}
        cust_ids = [r[0] for r in rows if r[1] == RAIL_CUSTODIAN]
        for i in range(0, len(cust_ids), INSERT_CHUNK):
            for pid, tx, amount, status in s.execute(
                select(CustodianConfirmation.payout_id, CustodianConfirmation.tx_id,
                       CustodianConfirmation.amount, CustodianConfirmation.status)
                .where(CustodianConfirmation.payout_id.in_(cust_ids[i : i + INSERT_CHUNK]))
            ):
                confirmations.setdefault(pid, []).append((tx, amount, status))
    ok_ids: list[int] = []
    bad: list[tuple[int, str, dict]] = []
    other_chain = 0
    evm = [r for r in rows if r[1] == RAIL_EVM]
    if evm:
        if rail is None:
            rail = default_rail()
        ident = rail.chain_identity()
        by_tx: dict[str, list] = {}
        for r in evm:
            if (r[5], (r[6] or "").lower()) != (ident.chain_id, ident.genesis_hash.lower()):
                other_chain += 1
                continue
            by_tx.setdefault(r[4], []).append(r)
        for tx_hash, group in by_tx.items():
            results = rail.verify_transfers(tx_hash, [(r[2], r[3]) for r in group])
            for r, (ok, why) in zip(group, results, strict=True):
                if ok:
                    ok_ids.append(r[0])
                else:
                    bad.append((r[0], f"payout {r[0]}: {why}",
                                {"tx_id": tx_hash, "address": r[2], "amount": r[3]}))
    for r in rows:
        if r[1] != RAIL_CUSTODIAN:
            continue
        found = confirmations.get(r[0], [])
        if any(tx == r[4] and amount == r[3] and status == "confirmed"
               for tx, amount, status in found):
            ok_ids.append(r[0])
        else:
            why = (f"payout {r[0]} is confirmed ({r[4]}, {format_amount(r[3])} USDT) but no "
                   "custodian confirmation matches it")
            bad.append((r[0], why, {"tx_id": r[4], "amount": r[3]}))
    settled = False
    with session_scope(engine) as s:
        now = utcnow()
        for i in range(0, len(ok_ids), INSERT_CHUNK):
            s.execute(
                update(Payout).where(Payout.id.in_(ok_ids[i : i + INSERT_CHUNK]),
                                     Payout.reconciled_at.is_(None))
                .values(reconciled_at=now).execution_options(synchronize_session=False)
            )
        if bad:
            s.execute(
                update(Payout).where(Payout.id.in_([b[0] for b in bad]))
                .values(reconciled_at=None).execution_options(synchronize_session=False)
            )
        for pid, why, detail in bad:
            record_mismatch(s, rid, payout_id=pid,
                            source="chain" if detail.get("address") else "custodian",
                            reason=why, detail=detail, actor=actor)
        audit.record(s, actor, "round.reconciled", "round", rid, after={
            "checked": len(rows), "ok": len(ok_ids), "mismatches": len(bad),
            "other_chain": other_chain})
        if not bad and not other_chain:
            settled = maybe_settle(s, rid, actor=actor)
        status = rounds.get_round(s, rid).status
    return {
        "round_id": str(rid), "checked": len(rows), "ok": len(ok_ids),
        "mismatches": [{"payout_id": str(p), "reason": why} for p, why, _ in bad],
        "other_chain": other_chain, "settled": settled, "status": status,
    }


# ------------------------------------------------------------------ execution


_FUNDED: set[tuple[str, str, int]] = set()
_FUNDED_LOCK = threading.Lock()


def default_rail() -> Any:
    """The process's EVM rail from the settings (``RESTITUTION_EVM_*``; in-process chain by
    default)."""
    from claims.rails.evm import rail_from_settings
    from claims.settings import get_settings

    return rail_from_settings(get_settings())


def fund_in_process(rail: Any, engine: Engine, round_id: int, needed: int) -> bool:
    """The embedded default: on the in-process chain, deploy the contracts and mint the
    round's pool to the payout wallet (once per round and process) when the wallet cannot
    cover ``needed``. Never on a real node. Returns whether it minted."""
    if not getattr(rail, "in_process", False):
        return False
    key = (str(engine.url), rail.chain_identity().genesis_hash, round_id)
    with _FUNDED_LOCK:
        if rail.token_address is not None and (
            key in _FUNDED or rail.balances()["token_micro"] >= needed
        ):
            return False
        with session_scope(engine, write=False) as s:
            pool = rounds.get_round(s, round_id).pool
        rail.bootstrap(max(pool, needed))
        _FUNDED.add(key)
        return True


@dataclass
class RunResult:
    round_id: int
    status: str = ""
    stopped: str | None = None
    confirmed: int = 0
    failed: int = 0
    held: int = 0
    exported: int = 0
    expired: int = 0
    transactions: int = 0
    batches: int = 0
    settled: bool = False
    funded: bool = False

    def add(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            if hasattr(self, k) and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if k == "round_id" else v) for k, v in self.__dict__.items()}


def active_counts(engine: Engine, round_id: int) -> dict[str, int]:
    """Payouts of the round still to work on, by rail: ``evm`` (pending, signed, broadcast)
    and ``custodian`` (pending)."""
    with session_scope(engine, write=False) as s:
        rows = s.execute(
            select(Payout.rail, func.count()).where(
                Payout.round_id == round_id, Payout.state.in_(ACTIVE))
            .group_by(Payout.rail)
        ).all()
        reverted = s.execute(
            select(func.count()).select_from(Payout).join(ChainTx, ChainTx.id == Payout.chain_tx_id)
            .where(Payout.round_id == round_id, ChainTx.state == "reverted",
                   Payout.state == P.broadcast.value)
        ).scalar_one()
    out = {RAIL_EVM: 0, RAIL_CUSTODIAN: 0}
    out.update({k: int(v) for k, v in rows})
    out["reverted"] = int(reverted)
    return out


class RoundRun:
    """One run of :func:`execute_round`, step by step (the Prefect flow calls the steps as
    tasks): :meth:`start`, :meth:`evm_prepare`, :meth:`evm_batch` until it returns None,
    :meth:`custodian_batch` until it returns None, :meth:`finish`."""

    def __init__(self, engine: Engine, round_id: int, *, rail: Any = None,
                 batch_size: int = BATCH_SIZE, on_step: Callable[[str, dict], None] | None = None,
                 actor: Actor | None = None) -> None:
        self.engine = engine
        self.round_id = round_id
        self._rail = rail
        # The embedded default funds its in-process chain; a rail given by the caller is used
        # as it is (tests, a real node).
        self.auto_fund = rail is None
        self.batch_size = max(1, int(batch_size))
        self.on_step = on_step
        self.actor = actor or Actor.system("payouts")
        self.result = RunResult(round_id)
        self._executor = None

    # ---- helpers
    def status(self) -> tuple[str, str | None]:
        with session_scope(self.engine, write=False) as s:
            rnd = rounds.get_round(s, self.round_id)
            return rnd.status, rnd.stopped_reason

    def stop(self, reason: str) -> None:
        with session_scope(self.engine) as s:
            stop_round(s, self.round_id, reason, actor=self.actor)
        self.result.stopped = reason

    def rail(self) -> Any:
        if self._rail is None:
            self._rail = default_rail()
        return self._rail

    def executor(self):
        if self._executor is None:
            from claims.rails.evm_exec import EvmExecutor

            self._executor = EvmExecutor(self.engine, self.round_id, self.rail(),
                                         batch_size=self.batch_size, on_step=self.on_step,
                                         actor=self.actor)
        return self._executor

    def _stopped(self) -> bool:
        status, reason = self.status()
        self.result.status = status
        if status == R.stopped.value:
            self.result.stopped = reason or "stopped"
            return True
        return False

    # ---- steps
    def start(self) -> bool:
        """Whether there is anything to do (the round is released and not stopped)."""
        if self._stopped():
            return False
        return self.result.status == R.released.value

    def evm_prepare(self) -> bool:
        """Resume EVM transactions in flight, then check the wallet against the pending EVM
        total (stopping the round when it cannot pay). Whether new EVM batches may go."""
        from claims.rails.evm import ChainMismatch

        counts = active_counts(self.engine, self.round_id)
        if not counts[RAIL_EVM] and not counts["reverted"]:
            return False
        ex = self.executor()
        try:
            self.result.add(ex.resume())
        except ChainMismatch as exc:
            self.stop(f"refusing to resume on another chain: {exc}")
            return False
        if self._stopped():
            return False
        count, total = ex.pending_totals()
        if count == 0:
            return False
        if self.auto_fund and fund_in_process(self.rail(), self.engine, self.round_id, total):
            self.result.funded = True
        problems = self.rail().check_funds(total, count, self.batch_size)
        if problems:
            self.stop("the payout wallet cannot pay the round's pending EVM payouts ("
                      f"{count}, {format_amount(total)} USDT): " + "; ".join(problems)
                      + ". Nothing was sent; top the wallet up, then restart the round.")
            return False
        if self.batch_size > 1 and self.rail().disperse_address is not None:
            self.rail().ensure_allowance()
        return True

    def evm_batch(self) -> dict[str, int] | None:
        """Pay one batch of pending EVM payouts; None when none is left (or the round
        stopped)."""
        if self._stopped():
            return None
        out = self.executor().pay_batch()
        if out is not None:
            self.result.add(out)
        return out

    @gc_paused()
    def custodian_batch(self) -> dict[str, int] | None:
        """Export one batch of pending custodian payouts; None when none is left."""
        from claims.rails import custodian

        if self._stopped():
            return None
        with session_scope(self.engine) as s:
            out = custodian.export_pending(s, self.round_id, actor=self.actor,
                                           limit=max(self.batch_size, 1000))
        if not out["selected"]:
            return None
        self.result.add({"exported": out["exported"], "held": out["held"], "batches": 1})
        return out

    def finish(self) -> RunResult:
        with session_scope(self.engine) as s:
            finish_release(s, self.round_id, actor=self.actor)
            self.result.settled = maybe_settle(s, self.round_id, actor=self.actor)
            self.result.status = rounds.get_round(s, self.round_id).status
        return self.result


def execute_round(engine: Engine, round_id: object, progress: Callable[[int, int], None] | None
                  = None, *, rail: Any = None, batch_size: int = BATCH_SIZE,
                  on_step: Callable[[str, dict], None] | None = None,
                  actor: Actor | None = None) -> dict[str, Any]:
    """Run the round's payouts to the end (see the module docstring); safe to run again at
    any point. ``progress(done, total)`` after every batch; ``rail`` defaults to the
    process's rail from the settings (the in-process chain is funded with the round's pool
    when it cannot pay); ``on_step(name, info)`` is called at each crash-safe step (tests).
    Returns :class:`RunResult` as a dict."""
    with session_scope(engine, write=False) as s:
        rid = rounds.get_round(s, round_id).id
    run = RoundRun(engine, rid, rail=rail, batch_size=batch_size, on_step=on_step, actor=actor)
    if not run.start():
        return run.result.as_dict()
    counts = active_counts(engine, rid)
    total = counts[RAIL_EVM] + counts[RAIL_CUSTODIAN] + counts["reverted"]
    done = 0
    if progress:
        progress(0, total)
    if run.evm_prepare():
        while (out := run.evm_batch()) is not None:
            done += out.get("done", 0)
            if progress:
                progress(done, total)
    while run.result.stopped is None and (out := run.custodian_batch()) is not None:
        done += out["selected"]
        if progress:
            progress(done, total)
    result = run.finish()
    if progress:
        progress(total if result.stopped is None else done, total)
    return result.as_dict()


# ------------------------------------------------------------------ background (serve)

_RUNNING: set[tuple[str, int]] = set()
_RUNNING_LOCK = threading.Lock()


def execute_in_background(round_id: int, engine: Engine | None = None) -> dict | None:
    """``execute_round`` unless this process already runs the round (then None). Errors are
    logged, not raised (a later run resumes)."""
    from claims.db import get_engine

    engine = engine or get_engine()
    key = (str(engine.url), int(round_id))
    with _RUNNING_LOCK:
        if key in _RUNNING:
            return None
        _RUNNING.add(key)
    try:
        return execute_round(engine, round_id)
    except Exception:  # noqa: BLE001 - the background must keep going; a rerun resumes
        log.exception("payout execution of round %s failed; it resumes on the next run",
                      round_id)
        return None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(key)


def due_rounds(engine: Engine) -> list[int]:
    """Released rounds with payouts pending or in flight."""
    with session_scope(engine, write=False) as s:
        return list(s.execute(
            select(DistributionRound.id).where(
                DistributionRound.status == R.released.value,
                exists().where(Payout.round_id == DistributionRound.id,
                               Payout.state.in_(ACTIVE)),
            ).order_by(DistributionRound.id)
        ).scalars())


def background(stop: threading.Event, interval: float = 10.0) -> None:
    """``serve``'s background hook (``claims.payouts:background``): every ``interval``
    seconds, run every released round that has payouts pending or in flight — this resumes a
    run that a crash or a restart interrupted."""
    from claims.db import get_engine

    while not stop.is_set():
        try:
            engine = get_engine()
            for rid in due_rounds(engine):
                if stop.is_set():
                    break
                execute_in_background(rid, engine)
        except Exception:  # noqa: BLE001
            log.exception("payout background pass failed")
        stop.wait(interval)


__all__ = [
    "ACTIVE", "ALLOWED", "BATCH_SIZE", "STATES", "Candidate", "RoundRun", "background",
    "check_move", "classify", "default_rail", "execute_round", "get_payout", "hold_payout",
    "list_mismatches", "list_payouts", "maybe_settle", "payout_key", "rail_for",
    "reconcile_round", "record_mismatch", "release_round", "resolve_mismatch",
    "restart_round", "resume_payout", "retry_payout", "stop_round", "summary",
]
