"""Crash injection at every step of the EVM executor, then resume: every claim is paid
exactly once, the chain total equals the database's confirmed total. Also: a signed
transaction whose nonce went elsewhere (expired → new attempt), a pending transaction waited
for, and a resume against another chain refused. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from payouts_seed import USDT, fresh_eth, make_staff_actor, seed_round
from sqlalchemy import func, select

from claims import payouts
from claims.db import session_scope
from claims.models import ChainTx, DistributionRound, Payout, PayoutAttempt
from claims.payouts.rails.evm import EvmRail
from claims.payouts.rails.evm_exec import STEPS


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def rail() -> EvmRail:
    r = EvmRail()
    r.bootstrap(100_000_000 * USDT)
    return r


@pytest.fixture
def fin(engine):
    return make_staff_actor(engine, "finance")


def release(engine, round_id, actor):
    with session_scope(engine) as s:
        return payouts.release_round(s, round_id, actor=actor, idempotency_key="k")


def crasher(step: str, occurrences: set[int]):
    seen = Counter()

    def on_step(name: str, info: dict) -> None:
        if name == step:
            seen[name] += 1
            if seen[name] in occurrences:
                raise Crash(f"{name} #{seen[name]}")

    return on_step, seen


def run_until_done(engine, round_id, rail, on_step, batch_size=8, max_runs=20):
    crashes = 0
    for _ in range(max_runs):
        try:
            return payouts.execute_round(engine, round_id, rail=rail, batch_size=batch_size,
                                         on_step=on_step), crashes
        except Crash:
            crashes += 1
    raise AssertionError("the run never finished")


def transfers_by_recipient(engine, rail, round_id) -> Counter:
    """Every Transfer of the token from the wallet in the round's mined transactions."""
    with session_scope(engine, write=False) as s:
        hashes = s.execute(select(ChainTx.tx_hash).where(ChainTx.round_id == round_id)
                           ).scalars().all()
    out = Counter()
    for h in hashes:
        r = rail.receipt(h, wait=False)
        if r is not None and r.ok:
            for t in r.transfers:
                assert t.sender == rail.address.lower()
                out[t.to] += 1
    return out


def check_exactly_once(engine, rail, seeded, bad, wallet_before):
    with session_scope(engine, write=False) as s:
        rows = {p.claim_id: p for p in s.execute(
            select(Payout).where(Payout.round_id == seeded.round_id)).scalars()}
        n_payouts = s.execute(select(func.count()).select_from(Payout)).scalar_one()
    assert n_payouts == len(seeded.claims)
    chain_total = 0
    for c in seeded.evm:
        bal = rail.token_balance(c.address)
        chain_total += bal
        if c is bad:
            assert bal == 0 and rows[c.id].state == "failed"
        else:
            assert bal == c.amount, f"{c.reference} got {bal}, allocated {c.amount}"
            assert rows[c.id].state == "confirmed"
    db_total = sum(p.amount for p in rows.values() if p.state == "confirmed")
    assert chain_total == db_total
    assert wallet_before - rail.balances()["token_micro"] == db_total
    per_recipient = transfers_by_recipient(engine, rail, seeded.round_id)
    for c in seeded.evm:
        assert per_recipient[c.address.lower()] == (0 if c is bad else 1)


@pytest.mark.parametrize("occurrences", [(1,), (2, 4)], ids=["first", "second+fourth"])
@pytest.mark.parametrize("step", STEPS)
def test_crash_then_resume_pays_every_claim_exactly_once(engine, fin, rail, step, occurrences):
    seeded = seed_round(engine, [("ethereum", USDT + i * 17) for i in range(25)])
    bad = seeded.evm[13]
    rail.blacklist(bad.address)  # batch 2 reverts and is bisected: crash paths include it
    release(engine, seeded.round_id, fin)
    wallet_before = rail.balances()["token_micro"]
    on_step, seen = crasher(step, set(occurrences))
    out, crashes = run_until_done(engine, seeded.round_id, rail, on_step)
    assert crashes == len(occurrences), f"{step} reached {seen[step]} times"
    assert out["stopped"] is None
    check_exactly_once(engine, rail, seeded, bad, wallet_before)
    with session_scope(engine, write=False) as s:
        txs = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars().all()
        # every signed transaction ended mined or reverted: none was left, none expired
        assert {t.state for t in txs} <= {"mined", "reverted"}
        # no payout was ever in two mined transactions
        mined = {t.id for t in txs if t.state == "mined"}
        carried = Counter(a.payout_id for a in s.execute(select(PayoutAttempt)).scalars()
                          if a.chain_tx_id in mined)
        assert max(carried.values()) == 1
        rnd = s.get(DistributionRound, seeded.round_id)
        assert rnd.release_token is None and rnd.status == "released"  # one failed


def test_signed_transaction_is_rebroadcast_never_signed_again(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", 2 * USDT + i) for i in range(5)])
    release(engine, seeded.round_id, fin)
    on_step, _ = crasher("after_sign", {1})
    with pytest.raises(Crash):
        payouts.execute_round(engine, seeded.round_id, rail=rail, on_step=on_step)
    with session_scope(engine, write=False) as s:
        (tx,) = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars()
        assert tx.state == "signed" and rail.tx_status(tx.tx_hash) == "unknown"
        assert {p.state for p in s.execute(select(Payout)).scalars()} == {"signed"}
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 5 and out["transactions"] == 0 and out["status"] == "settled"
    with session_scope(engine, write=False) as s:
        (again,) = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars()
        assert (again.id, again.tx_hash, again.state) == (tx.id, tx.tx_hash, "mined")
        assert {p.tx_id for p in s.execute(select(Payout)).scalars()} == {tx.tx_hash}


def test_a_signed_transaction_whose_nonce_went_elsewhere_expires_into_a_new_attempt(
    engine, fin, rail
):
    seeded = seed_round(engine, [("ethereum", 3 * USDT + i) for i in range(4)])
    release(engine, seeded.round_id, fin)
    wallet_before = rail.balances()["token_micro"]
    on_step, _ = crasher("after_sign", {1})
    with pytest.raises(Crash):
        payouts.execute_round(engine, seeded.round_id, rail=rail, on_step=on_step)
    with session_scope(engine, write=False) as s:
        (tx,) = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars()
    # Another transaction of the wallet takes the recorded nonce (an operator, another tool).
    stranger = fresh_eth()
    rail.send_and_wait(rail.sign_transfer(stranger, 1, tx.nonce))
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["expired"] == 4 and out["confirmed"] == 4 and out["status"] == "settled"
    with session_scope(engine, write=False) as s:
        assert s.get(ChainTx, tx.id).state == "expired"
        for p in s.execute(select(Payout)).scalars():
            assert p.attempt == 2 and p.state == "confirmed" and p.tx_id != tx.tx_hash
            tries = s.execute(select(PayoutAttempt).where(PayoutAttempt.payout_id == p.id)
                              .order_by(PayoutAttempt.attempt)).scalars().all()
            assert [(t.attempt, t.outcome) for t in tries] == [(1, "expired"), (2, "confirmed")]
    for c in seeded.evm:
        assert rail.token_balance(c.address) == c.amount
    assert wallet_before - rail.balances()["token_micro"] == sum(c.amount for c in seeded.evm) + 1


def test_broadcast_but_not_mined_is_waited_for(engine, fin):
    r = EvmRail()
    r.bootstrap(1000 * USDT)
    seeded = seed_round(engine, [("ethereum", USDT + i) for i in range(3)])
    release(engine, seeded.round_id, fin)
    on_step, _ = crasher("after_broadcast_recorded", {1})
    r.set_auto_mine(False)
    try:
        with pytest.raises(Crash):
            payouts.execute_round(engine, seeded.round_id, rail=r, on_step=on_step)
        with session_scope(engine, write=False) as s:
            (tx,) = s.execute(select(ChainTx)).scalars()
        assert tx.state == "broadcast" and r.tx_status(tx.tx_hash) == "pending"
        timer = threading.Timer(0.5, r.mine)
        timer.start()
        t0 = time.monotonic()
        out = payouts.execute_round(engine, seeded.round_id, rail=r)
        assert time.monotonic() - t0 >= 0.4  # it waited for the block
    finally:
        r.set_auto_mine(True)
    assert out["confirmed"] == 3 and out["transactions"] == 0
    for c in seeded.evm:
        assert r.token_balance(c.address) == c.amount


def test_resume_on_another_chain_is_refused_and_the_round_stopped(engine, fin, rail):
    seeded = seed_round(engine, [("ethereum", USDT) for _ in range(3)])
    release(engine, seeded.round_id, fin)
    on_step, _ = crasher("after_sign", {1})
    with pytest.raises(Crash):
        payouts.execute_round(engine, seeded.round_id, rail=rail, on_step=on_step)
    other = EvmRail()  # a new in-process chain: what a restarted process would have
    other.bootstrap(1000 * USDT)
    sent_before = other.w3.eth.get_transaction_count(other.address)
    out = payouts.execute_round(engine, seeded.round_id, rail=other)
    assert out["stopped"] and "another chain" in out["stopped"]
    assert other.w3.eth.get_transaction_count(other.address) == sent_before
    with session_scope(engine, write=False) as s:
        rnd = s.get(DistributionRound, seeded.round_id)
        assert rnd.status == "stopped" and "genesis" in rnd.stopped_reason
        assert {p.state for p in s.execute(select(Payout)).scalars()} == {"signed"}
    # Back on the recorded chain, finance restarts: the same transaction pays, once.
    with session_scope(engine) as s:
        payouts.restart_round(s, seeded.round_id, actor=fin)
    out = payouts.execute_round(engine, seeded.round_id, rail=rail)
    assert out["confirmed"] == 3 and out["transactions"] == 0
    for c in seeded.evm:
        assert rail.token_balance(c.address) == USDT and other.token_balance(c.address) == 0
