"""Payouts: release, the EVM executor on the in-process chain, hold/resume/retry, funds,
reconciliation, two workers. Runs on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from payouts_seed import USDT, fresh_eth, make_staff_actor, seed_round
from sqlalchemy import func, select, update

from claims import payouts
from claims.audit import Actor, verify_chain
from claims.db import session_scope
from claims.errors import Conflict, Forbidden, IllegalTransition, PayoutAlreadyTriggered
from claims.models import (
    AuditEvent,
    ChainTx,
    Claim,
    DistributionRound,
    Flag,
    Mismatch,
    Notification,
    Payout,
    PayoutAttempt,
    utcnow,
)
from claims.payouts.rails.evm import EvmRail


@pytest.fixture(scope="module")
def rail() -> EvmRail:
    r = EvmRail()
    r.bootstrap(100_000_000 * USDT)
    return r


@pytest.fixture
def fin(engine):
    return make_staff_actor(engine, "finance")


def state_of(engine, round_id) -> dict[int, Payout]:
    with session_scope(engine, write=False) as s:
        return {p.claim_id: p for p in s.execute(
            select(Payout).where(Payout.round_id == round_id)).scalars()}


def round_row(engine, round_id) -> DistributionRound:
    with session_scope(engine, write=False) as s:
        return s.get(DistributionRound, round_id)


def release(engine, round_id, actor):
    with session_scope(engine) as s:
        return payouts.release_round(s, round_id, actor=actor, idempotency_key="k")


# ------------------------------------------------------------------ release


def test_release_creates_one_pending_payout_per_allocation(engine, fin):
    seeded = seed_round(engine, [("ethereum", 5 * USDT), ("tron", 7 * USDT),
                                 ("ethereum", 0)], extra_pool=3 * USDT)
    out = release(engine, seeded.round_id, fin)
    assert out["payouts"] == 2 and out["amount"] == "12"
    assert out["rails"] == {"custodian": {"count": 1, "amount": "7"},
                            "evm": {"count": 1, "amount": "5"}}
    rows = state_of(engine, seeded.round_id)
    assert len(rows) == 2  # the zero allocation gets no payout
    for c in seeded.claims[:2]:
        p = rows[c.id]
        assert (p.state, p.amount, p.attempt) == ("pending", c.amount, 1)
        assert p.rail == ("evm" if c.network == "ethereum" else "custodian")
        assert p.idempotency_key == payouts.payout_key(seeded.round_id, c.id)
        assert p.release_id == out["release_id"]
    rnd = round_row(engine, seeded.round_id)
    assert rnd.status == "released" and rnd.release_token == out["release_id"]
    with session_scope(engine, write=False) as s:
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "round.released")).scalar_one()
        assert ev.after["payouts"] == 2 and ev.before == {"status": "approved"}
        assert verify_chain(s).ok
    # A second release while the first runs → 409; the database row is untouched.
    with pytest.raises(PayoutAlreadyTriggered, match="still running"):
        release(engine, seeded.round_id, fin)
    assert len(state_of(engine, seeded.round_id)) == 2


def test_only_finance_releases_and_only_approved_rounds(engine, fin):
    seeded = seed_round(engine, [("tron", USDT)])
    for role in ("caseworker", "admin", "auditor"):
        with pytest.raises(Forbidden):
            release(engine, seeded.round_id, Actor(f"x-{role}", role, None))
    prepared = seed_round(engine, [("tron", USDT)], status="prepared")
    with pytest.raises(Conflict, match="only an approved round"):
        release(engine, prepared.round_id, fin)
    assert state_of(engine, prepared.round_id) == {}


def test_nothing_left_to_pay_is_409_and_a_later_allocation_is_released(engine, fin):
    seeded = seed_round(engine, [("tron", USDT), ("tron", 2 * USDT)])
    release(engine, seeded.round_id, fin)
    payouts.execute_round(engine, seeded.round_id)  # custodian only: exported, token back
    rnd = round_row(engine, seeded.round_id)
    assert rnd.release_token is None and rnd.status == "released"
    with pytest.raises(PayoutAlreadyTriggered, match="nothing left to pay"):
        release(engine, seeded.round_id, fin)
    assert round_row(engine, seeded.round_id).release_token is None  # rolled back
    # A dispute settled later gives a new allocation: the next release pays only it.
    from payouts_seed import fresh_tron

    from claims.models import Allocation
    with session_scope(engine) as s:
        c = Claim(**{k: v for k, v in s.get(Claim, seeded.claims[0].id).model_dump().items()
                     if k not in ("id", "reference", "iin_hash")},
                  reference="KZR-LATE-0001", iin_hash="f" * 64)
        c.payout_address = fresh_tron()
        s.add(c)
        s.flush()
        s.add(Allocation(round_id=seeded.round_id, claim_id=c.id, claim_version=1,
                         amount=3 * USDT))
        s.execute(update(DistributionRound).where(DistributionRound.id == seeded.round_id)
                  .values(allocated=DistributionRound.allocated + 3 * USDT,
                          pool=DistributionRound.pool + 3 * USDT))
    out = release(engine, seeded.round_id, fin)
    assert out["payouts"] == 1 and out["amount"] == "3"
    assert len(state_of(engine, seeded.round_id)) == 3


def test_concurrent_releases_exactly_one_accepted(engine, fin):
    seeded = seed_round(engine, [("tron", USDT + i) for i in range(50)])
    results, barrier = [], threading.Barrier(6)

    def go():
        barrier.wait()
        try:
            results.append(release(engine, seeded.round_id, fin)["release_id"])
        except PayoutAlreadyTriggered as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in results if isinstance(r, str)]
    assert len(accepted) == 1 and len(results) == 6
    rows = state_of(engine, seeded.round_id)
    assert len(rows) == 50 and {p.release_id for p in rows.values()} == set(accepted)


# ------------------------------------------------------------------ EVM execution


def test_execute_pays_evm_once_and_exports_custodian(engine, fin, rail):
    specs = [("ethereum", USDT + i * 1001) for i in range(23)] + [("tron", 9 * USDT)]
    seeded = seed_round(engine, specs)
    release(engine, seeded.round_id, fin)
    before = rail.balances()["token_micro"]
    seen = []
    out = payouts.execute_round(engine, seeded.round_id, lambda d, t: seen.append((d, t)),
                                rail=rail, batch_size=10)
    assert out["confirmed"] == 23 and out["exported"] == 1 and out["transactions"] == 3
    assert seen[-1] == (24, 24) and seen[0] == (0, 24)
    rows = state_of(engine, seeded.round_id)
    paid = 0
    for c in seeded.evm:
        p = rows[c.id]
        assert p.state == "confirmed" and p.address == c.address
        assert rail.token_balance(c.address) == c.amount  # exactly once
        assert p.tx_id and p.gas_used > 0 and p.fee_wei > 0 and p.reconciled_at
        assert (p.chain_id, p.genesis_hash) == tuple(rail.chain_identity())
        paid += c.amount
    assert before - rail.balances()["token_micro"] == paid
    assert rows[seeded.tron[0].id].state == "exported"
    with session_scope(engine, write=False) as s:
        txs = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars().all()
        assert sorted(t.kind for t in txs) == ["batch", "batch", "batch"]
        assert all(t.state == "mined" and t.raw_tx.startswith("0x02") for t in txs)
        # gas and fee per payout add up to the transaction's
        for t in txs:
            ps = [p for p in rows.values() if p.chain_tx_id == t.id]
            assert sum(p.gas_used for p in ps) == t.gas_used
            assert sum(p.fee_wei for p in ps) == t.fee_wei
        notes = s.execute(select(Notification).where(Notification.kind == "paid")).scalars().all()
        assert len(notes) == 23
        assert notes[0].context["tx_id"].startswith("0x") and "amount" in notes[0].context
        assert "payout_network" not in notes[0].context  # the test chain: no explorer link
        attempts = s.execute(select(PayoutAttempt.outcome, func.count())
                             .group_by(PayoutAttempt.outcome)).all()
        assert dict(attempts) == {"confirmed": 23, None: 1}
        assert verify_chain(s).ok
    # The run gave the token back (nothing pending or in flight) and reruns change nothing.
    assert round_row(engine, seeded.round_id).release_token is None
    again = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert again["confirmed"] == 0 and again["transactions"] == 0


def test_summary_lists_every_state_and_the_wallet(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", 2 * USDT), ("tron", 3 * USDT)])
    release(engine, seeded.round_id, fin)
    with session_scope(engine, write=False) as s:
        v = payouts.summary(s, seeded.round_id, wallet=payouts.wallet_view(rail))
    assert set(v["by_state"]) == {"pending", "held", "signed", "broadcast", "exported",
                                  "confirmed", "failed"}
    assert v["total"] == {"count": 2, "amount": "5"}
    assert v["by_state"]["pending"] == {"count": 2, "amount": "5"}
    assert v["by_state"]["failed"] == {"count": 0, "amount": "0"}
    w = v["wallet"]
    assert w["address"] == rail.address and w["chain_id"] == rail.chain_id
    assert int(w["gas_balance_wei"]) > 0 and w["token_balance"] != "0"
    assert w["evm_to_pay"] == {"count": 1, "amount": "2"}


def test_underfunded_wallet_stops_cleanly_before_any_transfer(engine, fin):
    poor = EvmRail()
    poor.bootstrap(10 * USDT)
    seeded = seed_round(engine, [("ethereum", 4 * USDT) for _ in range(3)])
    release(engine, seeded.round_id, fin)
    nonce_before = poor.w3.eth.get_transaction_count(poor.address)
    out = payouts.execute_round(engine, seeded.round_id, rail=poor)
    assert out["stopped"] and "holds 10 USDT, 12 needed" in out["stopped"]
    assert poor.w3.eth.get_transaction_count(poor.address) == nonce_before  # nothing sent
    assert poor.balances()["token_micro"] == 10 * USDT
    rnd = round_row(engine, seeded.round_id)
    assert rnd.status == "stopped" and "Nothing was sent" in rnd.stopped_reason
    assert {p.state for p in state_of(engine, seeded.round_id).values()} == {"pending"}
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(ChainTx)).scalar_one() == 0
    # A stopped round does nothing, and a release is refused.
    assert payouts.execute_round(engine, seeded.round_id, rail=poor)["transactions"] == 0
    with pytest.raises(Conflict, match="stopped"):
        release(engine, seeded.round_id, fin)
    # Top up, restart: paid.
    poor.mint(poor.address, 2 * USDT)
    with session_scope(engine) as s:
        payouts.restart_round(s, seeded.round_id, actor=fin)
    out = payouts.execute_round(engine, seeded.round_id, rail=poor)
    assert out["confirmed"] == 3 and out["status"] == "settled"
    assert poor.balances()["token_micro"] == 0


def test_a_reverting_batch_is_isolated_and_retry_is_a_new_attempt(engine, fin, rail):
    specs = [("ethereum", 3 * USDT + i) for i in range(12)]
    seeded = seed_round(engine, specs)
    bad = seeded.evm[5]
    rail.blacklist(bad.address)
    release(engine, seeded.round_id, fin)
    out = payouts.execute_round(engine, seeded.round_id, rail=rail, batch_size=12)
    assert out["confirmed"] == 11 and out["failed"] == 1
    rows = state_of(engine, seeded.round_id)
    for c in seeded.evm:
        assert rail.token_balance(c.address) == (0 if c is bad else c.amount)
    p = rows[bad.id]
    assert p.state == "failed" and "blacklisted" in p.failure_reason
    with session_scope(engine, write=False) as s:
        states = dict(s.execute(select(ChainTx.kind, func.count()).where(
            ChainTx.round_id == seeded.round_id, ChainTx.state == "reverted")
            .group_by(ChainTx.kind)).all())
        assert states.get("batch") == 1  # the whole batch reverted once, then halves
        assert s.execute(select(Notification.kind).where(
            Notification.claim_id == bad.id)).scalars().all() == ["failed"]
        assert rnd_status(s, seeded.round_id) == "released"  # not everything confirmed
    # Retry: the same payout, a new attempt; the address is read again when signing.
    with pytest.raises(IllegalTransition):
        with session_scope(engine) as s:
            payouts.retry_payout(s, rows[seeded.evm[0].id].id, actor=fin)
    new_address = fresh_eth()
    with session_scope(engine) as s:
        s.execute(update(Claim).where(Claim.id == bad.id).values(
            payout_address=new_address, payout_address_key=new_address.lower()))
        retried = payouts.retry_payout(s, p.id, actor=fin)
        assert (retried.state, retried.attempt, retried.id) == ("pending", 2, p.id)
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 1 and out["status"] == "settled"
    assert rail.token_balance(new_address) == bad.amount and rail.token_balance(bad.address) == 0
    with session_scope(engine, write=False) as s:
        tries = s.execute(select(PayoutAttempt).where(PayoutAttempt.payout_id == p.id)
                          .order_by(PayoutAttempt.attempt)).scalars().all()
        assert [t.attempt for t in tries][-1] == 2
        assert tries[-1].outcome == "confirmed" and tries[-1].address == new_address
        assert any(t.outcome == "failed" and t.address == bad.address for t in tries)
        assert s.execute(select(func.count()).select_from(Payout).where(
            Payout.round_id == seeded.round_id)).scalar_one() == 12  # never a second payout


def rnd_status(s, round_id) -> str:
    return s.get(DistributionRound, round_id).status


def test_hold_resume_and_illegal_moves(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", USDT), ("ethereum", 2 * USDT)])
    release(engine, seeded.round_id, fin)
    held_claim = seeded.evm[0]
    pid = state_of(engine, seeded.round_id)[held_claim.id].id
    with session_scope(engine) as s:
        p = payouts.hold_payout(s, pid, actor=fin, reason="victim called")
        assert p.state == "held" and "victim called" in p.failure_reason
    with pytest.raises(IllegalTransition):
        with session_scope(engine) as s:
            payouts.hold_payout(s, pid, actor=fin)
    with pytest.raises(Forbidden):
        with session_scope(engine) as s:
            payouts.resume_payout(s, pid, actor=Actor("cw", "caseworker", None))
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 1
    assert rail.token_balance(held_claim.address) == 0
    assert round_row(engine, seeded.round_id).release_token is None  # held ≠ running
    with session_scope(engine) as s:
        assert payouts.resume_payout(s, pid, actor=fin).state == "pending"
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 1 and out["status"] == "settled"
    assert rail.token_balance(held_claim.address) == USDT
    for fn in (payouts.hold_payout, payouts.resume_payout, payouts.retry_payout):
        with pytest.raises(IllegalTransition):
            with session_scope(engine) as s:
                fn(s, pid, actor=fin)
    assert ("confirmed", "pending") not in payouts.ALLOWED
    assert all(src != "confirmed" for src, _ in payouts.ALLOWED)


def test_address_is_read_at_signing_and_unpayable_claims_are_held(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", USDT) for _ in range(4)])
    release(engine, seeded.round_id, fin)
    moved, flagged, blocked, ok = seeded.evm
    new_address = fresh_eth()
    from claims.models import BlockedAddress
    with session_scope(engine) as s:
        s.execute(update(Claim).where(Claim.id == moved.id).values(
            payout_address=new_address, payout_address_key=new_address.lower()))
        s.execute(update(Claim).where(Claim.id == flagged.id).values(status="flagged"))
        s.add(Flag(claim_id=flagged.id, code="address_changed", message="changed",
                   created_at=utcnow()))
        s.add(BlockedAddress(address_key=blocked.address.lower(), address=blocked.address,
                             reason="sanctioned", created_at=utcnow()))
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 2 and out["held"] == 2
    rows = state_of(engine, seeded.round_id)
    assert rows[moved.id].address == new_address and rail.token_balance(new_address) == USDT
    assert rail.token_balance(moved.address) == 0
    assert rows[flagged.id].state == "held" and "flagged" in rows[flagged.id].failure_reason
    assert rows[blocked.id].state == "held" and "blocked" in rows[blocked.id].failure_reason
    assert rows[ok.id].state == "confirmed"
    with pytest.raises(Conflict, match="cannot be resumed"):
        with session_scope(engine) as s:
            payouts.resume_payout(s, rows[flagged.id].id, actor=fin)


# ------------------------------------------------------------------ reconciliation


def test_reconcile_settles_or_stops_the_round_saying_why(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", 2 * USDT) for _ in range(3)])
    release(engine, seeded.round_id, fin)
    payouts.execute_round(engine, seeded.round_id, rail=rail)
    rep = payouts.reconcile_round(engine, seeded.round_id, actor=fin, rail=rail)
    assert rep["checked"] == 3 and rep["ok"] == 3 and rep["mismatches"] == []
    assert rep["status"] == "settled"
    # Someone edits a recorded amount: the chain disagrees → mismatch, round stopped.
    victim = seeded.evm[1]
    with session_scope(engine) as s:
        s.execute(update(Payout).where(Payout.claim_id == victim.id)
                  .values(amount=3 * USDT))
    rep = payouts.reconcile_round(engine, seeded.round_id, actor=fin, rail=rail)
    assert rep["ok"] == 2 and len(rep["mismatches"]) == 1
    assert "amount differs" in rep["mismatches"][0]["reason"]
    rnd = round_row(engine, seeded.round_id)
    assert rnd.status == "stopped" and "amount differs" in rnd.stopped_reason
    # The same mismatch is recorded once, however often it is found.
    payouts.reconcile_round(engine, seeded.round_id, actor=fin, rail=rail)
    with session_scope(engine, write=False) as s:
        (m,) = s.execute(select(Mismatch)).scalars().all()
    # Another chain: refuse to check instead of assuming.
    other = EvmRail()
    rep = payouts.reconcile_round(engine, seeded.round_id, actor=fin, rail=other)
    assert rep["other_chain"] == 3 and rep["ok"] == 0
    with session_scope(engine) as s:
        out = payouts.resolve_mismatch(s, seeded.round_id, m.id, actor=fin,
                                       reason="data entry corrected")
        assert out["resolved_at"]
    assert round_row(engine, seeded.round_id).status == "released"


# ------------------------------------------------------------------ two workers


def test_two_workers_never_pay_one_claim_twice(engine, fin, rail):
    """Two workers (threads, separate sessions) on one round and one wallet: batches taken
    with FOR UPDATE SKIP LOCKED (PostgreSQL) / the write lock (SQLite); nonces serialized."""
    seeded = seed_round(engine, [("ethereum", USDT + i) for i in range(60)])
    release(engine, seeded.round_id, fin)
    errors, results = [], []
    start = threading.Barrier(2)

    def worker():
        try:
            run = payouts.RoundRun(engine, seeded.round_id, rail=rail, batch_size=7)
            assert run.start()
            run.evm_prepare()
            start.wait()
            while (out := run.evm_batch()) is not None:
                results.append(out)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(r["confirmed"] for r in results) == 60
    for c in seeded.evm:
        assert rail.token_balance(c.address) == c.amount
    with session_scope(engine, write=False) as s:
        nonces = s.execute(select(ChainTx.nonce).where(ChainTx.round_id == seeded.round_id)
                           ).scalars().all()
        assert len(nonces) == len(set(nonces)) == sum(r["transactions"] for r in results)
        assert s.execute(select(func.count()).select_from(PayoutAttempt)).scalar_one() == 60
        confirmed = s.execute(select(func.sum(Payout.amount)).where(
            Payout.state == "confirmed")).scalar_one()
    assert confirmed == sum(c.amount for c in seeded.evm)


def test_a_worker_skips_payouts_another_worker_has_locked(engine, fin, rail):
    """PostgreSQL: rows locked by another worker's open transaction are skipped, not waited
    for (SQLite has one writer at a time: there the question does not arise)."""
    if engine.dialect.name == "sqlite":
        pytest.skip("FOR UPDATE SKIP LOCKED is PostgreSQL's; SQLite serializes writers")
    from sqlmodel import Session

    seeded = seed_round(engine, [("ethereum", USDT + i) for i in range(6)])
    release(engine, seeded.round_id, fin)
    rows = state_of(engine, seeded.round_id)
    locked = sorted(p.id for p in rows.values())[:2]
    other = Session(engine)
    other.execute(select(Payout).where(Payout.id.in_(locked)).with_for_update()).all()
    outs = []
    try:
        run = payouts.RoundRun(engine, seeded.round_id, rail=rail, batch_size=10)
        assert run.start() and run.evm_prepare()

        def work():
            outs.append(run.evm_batch())
            outs.append(run.evm_batch())

        t = threading.Thread(target=work)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the worker waited for rows another worker holds"
    finally:
        other.rollback()
        other.close()
    assert outs[0]["confirmed"] == 4 and outs[1] is None
    paid = {c.id for c in seeded.evm if rail.token_balance(c.address) == c.amount}
    assert {p.id for cid, p in rows.items() if cid in paid} == set(rows[c].id for c in paid)
    assert not paid & {cid for cid, p in rows.items() if p.id in locked}
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 2 and out["status"] == "settled"
