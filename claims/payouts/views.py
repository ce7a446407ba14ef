"""What finance reads about a round's payouts: totals by state, the payout wallet, the
payouts themselves and the round's mismatches (``GET /api/v1/rounds/{id}/payouts`` and
friends; docs/payouts.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, exists, func, select
from sqlmodel import Session

from claims import rounds
from claims.db import get_one, session_scope
from claims.errors import InvalidInput
from claims.models import Allocation, Claim, Mismatch, Payout, PayoutState
from claims.money import format_amount
from claims.payouts.common import RAIL_EVM, STATES, parse_payout_id
from claims.payouts.rails.evm import default_rail

P = PayoutState


def state_totals(session: Session, round_id: int) -> dict[str, dict[str, int]]:
    """``{state: {"count", "amount"}}`` of the round's payouts, every state present."""
    totals = {s: {"count": 0, "amount": 0} for s in STATES}
    for state, count, amount in session.execute(
        select(Payout.state, func.count(), func.coalesce(func.sum(Payout.amount), 0))
        .where(Payout.round_id == round_id).group_by(Payout.state)
    ):
        totals[state] = {"count": int(count), "amount": int(amount)}
    return totals


def open_mismatches(session: Session, round_id: int) -> int:
    return session.execute(
        select(func.count()).select_from(Mismatch)
        .where(Mismatch.round_id == round_id, Mismatch.resolved_at.is_(None))
    ).scalar_one()


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
    """The round's payouts (``GET /api/v1/rounds/{id}/payouts``): ``total``, ``by_state``
    (every state) and ``wallet``, plus the round's status, stop reason, open mismatches and
    money."""
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


def summary_with_wallet(round_id: object, *, engine: Engine | None = None,
                        rail: Any = None) -> dict[str, Any]:
    """:func:`summary` with the payout wallet read from the chain (``rail``: the process's
    rail by default). An unknown round is ``NotFound`` before the chain is asked."""
    with session_scope(engine, write=False) as s:
        rounds.get_round(s, round_id)
    wallet = wallet_view(rail if rail is not None else default_rail())
    with session_scope(engine, write=False) as s:
        return summary(s, round_id, wallet=wallet)


# ------------------------------------------------------------------ payouts


def get_payout(session: Session, payout_id: object, *, lock: bool = False) -> Payout:
    pid = parse_payout_id(payout_id)
    return get_one(session, select(Payout).where(Payout.id == pid), lock=lock,
                   missing=f"no payout {pid}")


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


# ------------------------------------------------------------------ mismatches


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
