"""Reconciliation, mismatches, stopping and settling a round (docs/payouts.md).

EVM payouts are confirmed only when the receipt's ``Transfer`` events carry the recipient and
amount; custodian payouts when the custodian's confirmation matches. :func:`reconcile_round`
checks every confirmed payout again (chain or confirmation). A mismatch
(:func:`record_mismatch`) stops the round (``stopped``, with the reason) until finance
resolves every open mismatch (:func:`resolve_mismatch`, which resumes the round) — or, for
any other stop (an underfunded wallet), restarts it (:func:`restart_round`). A round settles
when every payout is confirmed and the confirmed total equals the round's ``allocated``
(:func:`maybe_settle`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlmodel import Session

from claims import audit, rounds
from claims.audit import Actor
from claims.db import session_scope
from claims.errors import Conflict, InvalidInput, NotFound
from claims.models import (
    CustodianConfirmation,
    DistributionRound,
    Mismatch,
    Payout,
    PayoutState,
    RoundStatus,
    utcnow,
)
from claims.money import format_amount
from claims.payouts.common import (
    RAIL_CUSTODIAN,
    RAIL_EVM,
    chunked,
    parse_payout_id,
    require_finance,
)
from claims.payouts.rails.evm import default_rail
from claims.payouts.views import mismatch_view, open_mismatches, state_totals

log = logging.getLogger("restitution.payouts")

P = PayoutState
R = RoundStatus


# ------------------------------------------------------------------ stop, restart


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


# ------------------------------------------------------------------ mismatches


def record_mismatch(
    session: Session, round_id: int, *, payout_id: int | None, source: str, reason: str,
    detail: dict, actor: Actor,
) -> tuple[Mismatch, bool]:
    """Record a reconciliation mismatch (once: the same payout, source and detail are not
    recorded again) and stop the round. ``detail`` holds plain values (str, int, None).
    Returns (mismatch, created)."""
    detail = dict(detail)
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


# ------------------------------------------------------------------ settle


def maybe_settle(session: Session, round_id: int, *, actor: Actor) -> bool:
    """``released → settled`` when every payout is confirmed (and reconciled), every
    allocation has its payout, nothing is open, and the confirmed total equals
    ``allocated`` (the round's money: docs/payouts.md)."""
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


# ------------------------------------------------------------------ reconciliation


@dataclass
class Findings:
    """What a reconciliation found: payouts that match, mismatches ``(payout id, reason,
    detail)``, and EVM payouts recorded on another chain (not checked)."""

    ok: list[int] = field(default_factory=list)
    bad: list[tuple[int, str, dict]] = field(default_factory=list)
    other_chain: int = 0


def reconcile_round(engine: Engine, round_id: object, *, actor: Actor,
                    rail: Any = None) -> dict[str, Any]:
    """Check every confirmed payout of the round against the chain (recipient, amount, token
    from the payout wallet: ``rail.verify_transfers``) or the custodian's confirmation
    (finance). Every mismatch is recorded and stops the round, saying why. EVM payouts
    recorded on another chain than the rail's are not checked (``other_chain``): the rail
    refuses to assume. Settles the round when everything matches. Returns ``{"round_id",
    "checked", "ok", "mismatches": [{"payout_id", "reason"}], "other_chain", "settled",
    "status"}``."""
    require_finance(actor, "reconcile a round")
    rid, rows, confirmations = _confirmed_payouts(engine, round_id)
    found = Findings()
    if any(r[1] == RAIL_EVM for r in rows):
        if rail is None:
            rail = default_rail()
        _check_on_chain(rows, rail, found)
    _check_confirmations(rows, confirmations, found)
    settled, status = _record_findings(engine, rid, len(rows), found, actor)
    return {
        "round_id": str(rid), "checked": len(rows), "ok": len(found.ok),
        "mismatches": [{"payout_id": str(p), "reason": why} for p, why, _ in found.bad],
        "other_chain": found.other_chain, "settled": settled, "status": status,
    }


def _confirmed_payouts(engine: Engine, round_id: object) -> tuple[int, list, dict]:
    """The round's id, its confirmed payouts ``(id, rail, address, amount, tx_id, chain_id,
    genesis_hash)`` and the custodian's confirmations of them, by payout."""
    with session_scope(engine, write=False) as s:
        rid = rounds.get_round(s, round_id).id
        rows = s.execute(
            select(Payout.id, Payout.rail, Payout.address, Payout.amount, Payout.tx_id,
                   Payout.chain_id, Payout.genesis_hash)
            .where(Payout.round_id == rid, Payout.state == P.confirmed.value)
            .order_by(Payout.id)
        ).all()
        confirmations: dict[int, list[tuple[str, int, str]]] = {}
        for chunk in chunked([r[0] for r in rows if r[1] == RAIL_CUSTODIAN]):
            for pid, tx, amount, status in s.execute(
                select(CustodianConfirmation.payout_id, CustodianConfirmation.tx_id,
                       CustodianConfirmation.amount, CustodianConfirmation.status)
                .where(CustodianConfirmation.payout_id.in_(chunk))
            ):
                confirmations.setdefault(pid, []).append((tx, amount, status))
    return rid, rows, confirmations


def _check_on_chain(rows: list, rail: Any, found: Findings) -> None:
    """The EVM payouts against their transactions' receipts, one read per transaction."""
    ident = rail.chain_identity()
    by_tx: dict[str, list] = {}
    for r in rows:
        if r[1] != RAIL_EVM:
            continue
        if (r[5], (r[6] or "").lower()) != (ident.chain_id, ident.genesis_hash.lower()):
            found.other_chain += 1
            continue
        by_tx.setdefault(r[4], []).append(r)
    for tx_hash, group in by_tx.items():
        results = rail.verify_transfers(tx_hash, [(r[2], r[3]) for r in group])
        for r, (ok, why) in zip(group, results, strict=True):
            if ok:
                found.ok.append(r[0])
            else:
                found.bad.append((r[0], f"payout {r[0]}: {why}",
                                  {"tx_id": tx_hash, "address": r[2], "amount": r[3]}))


def _check_confirmations(rows: list, confirmations: dict, found: Findings) -> None:
    """The custodian payouts against the custodian's confirmations."""
    for r in rows:
        if r[1] != RAIL_CUSTODIAN:
            continue
        if any(tx == r[4] and amount == r[3] and status == "confirmed"
               for tx, amount, status in confirmations.get(r[0], [])):
            found.ok.append(r[0])
        else:
            why = (f"payout {r[0]} is confirmed ({r[4]}, {format_amount(r[3])} USDT) but no "
                   "custodian confirmation matches it")
            found.bad.append((r[0], why, {"tx_id": r[4], "amount": r[3]}))


def _record_findings(engine: Engine, rid: int, checked: int, found: Findings,
                     actor: Actor) -> tuple[bool, str]:
    """Mark the matching payouts reconciled, record every mismatch (stopping the round),
    write the audit event and settle when everything matched. Returns (settled, status)."""
    settled = False
    with session_scope(engine) as s:
        now = utcnow()
        for chunk in chunked(found.ok):
            s.execute(
                update(Payout).where(Payout.id.in_(chunk), Payout.reconciled_at.is_(None))
                .values(reconciled_at=now).execution_options(synchronize_session=False)
            )
        if found.bad:
            s.execute(
                update(Payout).where(Payout.id.in_([b[0] for b in found.bad]))
                .values(reconciled_at=None).execution_options(synchronize_session=False)
            )
        for pid, why, detail in found.bad:
            record_mismatch(s, rid, payout_id=pid,
                            source="chain" if detail.get("address") else "custodian",
                            reason=why, detail=detail, actor=actor)
        audit.record(s, actor, "round.reconciled", "round", rid, after={
            "checked": checked, "ok": len(found.ok), "mismatches": len(found.bad),
            "other_chain": found.other_chain})
        if not found.bad and not found.other_chain:
            settled = maybe_settle(s, rid, actor=actor)
        status = rounds.get_round(s, rid).status
    return settled, status
