"""What both rails record as a payout moves, in bulk: who is payable at the moment a payout
is signed or exported (:func:`classify`, :func:`hold_many`), the attempt rows
(:func:`open_attempts`, :func:`close_attempts`) and the claimants' ``paid`` and ``failed``
notices (:func:`notify_outcomes`).

Every function takes a step's rows at once (one statement per
:data:`~claims.payouts.common.INSERT_CHUNK` rows), never one query per payout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from claims import audit, outbox
from claims.audit import Actor
from claims.db import bind_value, update_rows
from claims.errors import PayoutError
from claims.lifecycle import PAYABLE
from claims.models import BlockedAddress, Payout, PayoutAttempt, PayoutState, utcnow
from claims import db
from claims.payouts.common import BLOCKING_FLAGS, chunked

P = PayoutState


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


# ------------------------------------------------------------------ payable now?


def classify(
    session: Session, rows: Sequence[tuple[int, int, int, int, str]]
) -> tuple[list[Candidate], list[tuple[int, int, str]]]:
    """Split pending payouts ``(payout_id, claim_id, amount, attempt, network)`` into those
    payable now (with the claim's current address, canonical) and those to hold
    ``(payout_id, claim_id, reason)``."""
    from claims.validators import ValidationFailed, validate_payout_address

    claims, flags = _claims_and_flags(session, sorted({r[1] for r in rows}))
    keys, blocked = _blocked_keys(session, claims)
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


def _claims_and_flags(
    session: Session, claim_ids: list[int]
) -> tuple[dict[int, tuple], dict[int, set[str]]]:
    """The claims ``(id, status, network, address, reference)`` and their open blocking
    flags."""
    claims: dict[int, tuple] = {}
    flags: dict[int, set[str]] = {}
    for chunk in chunked(claim_ids):
        chunk = tuple(chunk)
        marks = db.markers(len(chunk))
        for c in db.fetch_all(session, "SELECT id, status, payout_network, payout_address, "
                          f"reference FROM claim WHERE id IN ({marks})", chunk):
            claims[c[0]] = c
        for cid, code in db.fetch_all(
            session, f"SELECT claim_id, code FROM flag WHERE claim_id IN ({marks}) AND "
            f"resolved_at IS NULL AND {db.unindexed(session, 'code')} "
            f"IN ({db.markers(len(BLOCKING_FLAGS))})",
            chunk + BLOCKING_FLAGS,
        ):
            flags.setdefault(cid, set()).add(code)
    return claims, flags


def _blocked_keys(session: Session, claims: dict[int, tuple]) -> tuple[dict[int, Any], set[str]]:
    """Each claim's address key, and those of the keys that are on the blocked list."""
    from claims.validators import normalize_address_key

    keys = {}
    for cid, (_, _, network, address, _) in claims.items():
        try:
            keys[cid] = normalize_address_key(network, address)
        except Exception:  # noqa: BLE001 - an unreadable address is held by classify()
            keys[cid] = None
    blocked: set[str] = set()
    for chunk in chunked(sorted({k for k in keys.values() if k})):
        blocked.update(r[0] for r in db.fetch_all(
            session, f"SELECT address_key FROM {BlockedAddress.__tablename__} "
            f"WHERE address_key IN ({db.markers(len(chunk))})", tuple(chunk)))
    return keys, blocked


def hold_many(session: Session, items: Sequence[tuple[int, int, str]], *, actor: Actor) -> int:
    """``pending → held`` ``(payout_id, claim_id, reason)`` with the reason (the executor, at
    signing or export); returns how many."""
    if not items:
        return 0
    table = Payout.__table__
    now = bind_value(session, table.c.updated_at, utcnow())
    pending = P.pending.value
    changed = update_rows(session, table, keys=("id", "state"), columns=("failure_reason",),
                          rows=[(pid, pending, reason) for pid, _, reason in items],
                          extra_sql="state = ?, updated_at = ?", extra=(P.held.value, now))
    if changed != len(items):
        raise PayoutError("payouts changed while they were being held; run again")
    audit.record_batch(session, [
        (actor, "payout.held", "payout", pid, {"state": pending},
         {"state": P.held.value, "reason": reason})
        for pid, _, reason in items
    ])
    return len(items)


# ------------------------------------------------------------------ attempts


_ATTEMPT_COLUMNS = ("payout_id", "attempt", "chain_tx_id", "address", "created_at")


def open_attempts(
    session: Session, rows: Sequence[tuple[int, int, int | None, str | None]]
) -> None:
    """Create or update the attempt rows ``(payout_id, attempt, chain_tx_id, address)``."""
    if not rows:
        return
    existing = set()
    for chunk in chunked(sorted({r[0] for r in rows})):
        existing.update((p, a) for p, a in db.fetch_all(
            session, "SELECT payout_id, attempt FROM payout_attempt "
            f"WHERE payout_id IN ({db.markers(len(chunk))})", tuple(chunk)))
    now = bind_value(session, PayoutAttempt.__table__.c.created_at, utcnow())
    new = [(p, a, c, addr, now) for p, a, c, addr in rows if (p, a) not in existing]
    old = [(p, a, c, addr) for p, a, c, addr in rows if (p, a) in existing]
    if new:
        db.bulk_insert(session, PayoutAttempt.__table__, _ATTEMPT_COLUMNS, new)
    if old:
        update_rows(session, PayoutAttempt.__table__, keys=("payout_id", "attempt"),
                    columns=("chain_tx_id", "address"), rows=old)


def close_attempts(
    session: Session, rows: Sequence[tuple[int, int, str | None, str | None]]
) -> None:
    """Record how attempts ended ``(payout_id, attempt, outcome, reason)``."""
    if rows:
        update_rows(session, PayoutAttempt.__table__, keys=("payout_id", "attempt"),
                    columns=("outcome", "reason"), rows=rows)


# ------------------------------------------------------------------ notices


def paid_context(amount: int, tx_id: str, network: str, chain_id: int | None,
                 name: str | None) -> dict:
    """The ``paid`` notice: amount, transaction id, and the network for the explorer link —
    given only where a public explorer shows the transaction (TRON, Ethereum mainnet; not the
    in-process test chain)."""
    ctx: dict[str, Any] = {"amount": amount, "tx_id": tx_id, "name": name}
    if network == "tron" or (network == "ethereum" and chain_id == 1):
        ctx["payout_network"] = network
    return ctx


def notify_outcomes(
    session: Session, paid: Sequence[tuple[int, int, str, str, int | None]],
    failed: Sequence[tuple[int, int]],
) -> None:
    """Queue ``paid`` notices ``(claim_id, amount, tx_id, network, chain_id)`` (the context
    :func:`paid_context` gives), then ``failed`` notices ``(claim_id, amount)`` (amount and
    name), with the claims' values read in one query per chunk."""
    if not paid and not failed:
        return
    ids = sorted({p[0] for p in paid} | {f[0] for f in failed})
    to: dict[int, tuple[outbox.Recipient, str]] = {}  # claim id → (recipient, name)
    for chunk in chunked(ids):
        for cid, reference, language, email, name in db.fetch_all(
            session, "SELECT id, reference, language, email, full_name FROM claim "
            f"WHERE id IN ({db.markers(len(chunk))})", tuple(chunk),
        ):
            to[cid] = (outbox.Recipient(cid, reference, language, email), name)
    notices = []
    for claim_id, amount, tx_id, network, chain_id in paid:
        who, name = to[claim_id]
        notices.append((who, "paid", paid_context(amount, tx_id, network, chain_id, name), None))
    for claim_id, amount in failed:
        who, name = to[claim_id]
        notices.append((who, "failed", {"amount": amount, "name": name}, None))
    outbox.enqueue_batch(session, notices)
