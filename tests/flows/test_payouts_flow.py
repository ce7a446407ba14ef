"""The Prefect flow ``execute-payouts`` under the shared test server: batches as tasks, a
crash mid-run, a rerun that finishes without paying anyone twice."""

from __future__ import annotations

import pytest
from payouts_seed import USDT, seed_round
from sqlalchemy import select

from claims import payouts
from claims.audit import Actor
from claims.db import session_scope
from claims.models import ChainTx, DistributionRound, Payout

FIN = Actor("fin", "finance")


def test_flow_runs_in_batches_survives_a_crash_and_reruns(engine, prefect_harness,
                                                          monkeypatch):
    from claims.payouts.rails import evm_exec
    from flows.payouts import execute_payouts

    seeded = seed_round(engine, [("ethereum", USDT + i) for i in range(7)]
                        + [("tron", 2 * USDT), ("tron", 3 * USDT)])
    with session_scope(engine) as s:
        payouts.release_round(s, seeded.round_id, actor=FIN)

    real_step = evm_exec.EvmExecutor._step
    fired = []

    def crash_once(self, name, **info):
        if name == "after_broadcast" and not fired:
            fired.append(name)
            raise RuntimeError("injected crash after broadcast")
        return real_step(self, name, **info)

    monkeypatch.setattr(evm_exec.EvmExecutor, "_step", crash_once)
    with pytest.raises(RuntimeError, match="injected crash"):
        execute_payouts(seeded.round_id, batch_size=3)
    assert fired
    with session_scope(engine, write=False) as s:
        states = sorted(p.state for p in s.execute(
            select(Payout).where(Payout.rail == "evm")).scalars())
    assert "signed" in states  # the first batch was sent but not recorded

    out = execute_payouts(seeded.round_id, batch_size=3)
    assert out["by_state"]["confirmed"]["count"] == 7
    assert out["by_state"]["exported"]["count"] == 2
    assert out["stopped"] is None and out["status"] == "released"
    rail = payouts.default_rail()
    for c in seeded.evm:
        assert rail.token_balance(c.address) == c.amount
    with session_scope(engine, write=False) as s:
        txs = s.execute(select(ChainTx).where(ChainTx.round_id == seeded.round_id)).scalars().all()
        assert len(txs) == 3 and {t.state for t in txs} == {"mined"}  # 3 + 3 + 1, none again
        assert s.get(DistributionRound, seeded.round_id).release_token is None

    again = execute_payouts(seeded.round_id, batch_size=3)
    assert again["transactions"] == 0 and again["confirmed"] == 0
