"""The custodian-file rail: stable instructions, confirmations import with mismatch
detection, idempotent imports, failed rows, retry as a new line. SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest
from payouts_seed import USDT, fresh_tron, make_staff_actor, seed_round
from sqlalchemy import func, select, update

from claims import payouts
from claims.audit import Actor
from claims.db import session_scope
from claims.errors import Forbidden, InvalidInput
from claims.models import (
    Claim,
    CustodianConfirmation,
    DistributionRound,
    Mismatch,
    Notification,
    Payout,
)
from claims.money import format_amount
from claims.payouts.rails import custodian


@pytest.fixture
def fin(engine):
    return make_staff_actor(engine, "finance")


def released(engine, fin, specs):
    seeded = seed_round(engine, specs)
    with session_scope(engine) as s:
        payouts.release_round(s, seeded.round_id, actor=fin)
    return seeded


def read_instructions(engine, round_id, actor):
    """As finance reads them: the export committed, then the file."""
    with session_scope(engine) as s:
        rid = custodian.prepare_instructions(s, round_id, actor=actor)
    with session_scope(engine, write=False) as s:
        return "".join(custodian.instruction_csv_chunks(s, rid))


def payout_ids(engine, round_id) -> dict[int, int]:
    with session_scope(engine, write=False) as s:
        return dict(s.execute(select(Payout.claim_id, Payout.id)
                              .where(Payout.round_id == round_id)).all())


def confirm(engine, round_id, text, actor):
    with session_scope(engine) as s:
        return custodian.import_confirmations(s, round_id, text, actor=actor)


def counts(engine):
    with session_scope(engine, write=False) as s:
        return (s.execute(select(func.count()).select_from(CustodianConfirmation)).scalar_one(),
                s.execute(select(func.count()).select_from(Notification)).scalar_one(),
                s.execute(select(func.count()).select_from(Mismatch)).scalar_one())


def test_instructions_list_each_exported_payout_once_and_never_change(engine, fin):
    seeded = released(engine, fin, [("tron", 10 * USDT + i) for i in range(4)]
                      + [("ethereum", USDT)])
    first = read_instructions(engine, seeded.round_id, fin)
    rows = list(csv.DictReader(io.StringIO(first)))
    assert first.splitlines()[0] == "payout_id,network,address,amount,idempotency_key"
    ids = payout_ids(engine, seeded.round_id)
    assert [r["payout_id"] for r in rows] == [str(ids[c.id]) for c in seeded.tron]
    for r, c in zip(rows, seeded.tron, strict=True):
        assert (r["network"], r["address"], r["amount"]) == ("tron", c.address,
                                                             format_amount(c.amount))
        assert r["idempotency_key"] == payouts.payout_key(seeded.round_id, c.id)
    with session_scope(engine, write=False) as s:
        states = dict(s.execute(select(Payout.rail, Payout.state)).all())
    assert states == {"custodian": "exported", "evm": "pending"}  # no EVM line, EVM untouched
    # The claimant changes the address after export: the instruction stays as handed over.
    with session_scope(engine) as s:
        s.execute(update(Claim).where(Claim.id == seeded.tron[0].id)
                  .values(payout_address=fresh_tron()))
    assert read_instructions(engine, seeded.round_id, fin) == first
    # The auditor reads without exporting; a caseworker may not export.
    with session_scope(engine) as s:
        rid = custodian.prepare_instructions(s, seeded.round_id, export=False)
        assert "".join(custodian.instruction_csv_chunks(s, rid)) == first
    with pytest.raises(Forbidden):
        with session_scope(engine) as s:
            custodian.prepare_instructions(s, seeded.round_id, actor=Actor("cw", "caseworker"))


def test_streamed_instructions_are_the_same_file_in_bounded_pieces(engine, fin):
    """A round of any size is handed over streamed (CLI file, download): the same text as the
    lines read at once, in pieces of ``batch`` lines, the header alone first."""
    seeded = released(engine, fin, [("tron", 7 * USDT + i) for i in range(5)]
                      + [("ethereum", USDT)])
    with session_scope(engine) as s:
        rid = custodian.prepare_instructions(s, seeded.round_id, actor=fin)
    whole = read_instructions(engine, seeded.round_id, fin)
    with session_scope(engine, write=False) as s:
        rows = list(custodian.instruction_rows(s, rid, 2))
    assert [dict(zip(custodian.INSTRUCTION_COLUMNS, r)) for r in rows] == list(
        csv.DictReader(io.StringIO(whole)))
    assert len(rows) == 5  # the five TRON payouts, not the Ethereum one
    for batch in (1, 2, 5, 10_000):
        with session_scope(engine, write=False) as s:
            pieces = list(custodian.instruction_csv_chunks(s, rid, batch))
        assert "".join(pieces) == whole
        assert pieces[0] == "payout_id,network,address,amount,idempotency_key\n"
        assert [len(p.splitlines()) for p in pieces[1:]] == [
            min(batch, 5 - i) for i in range(0, 5, batch)]
    out = io.StringIO()
    with session_scope(engine, write=False) as s:
        assert custodian.write_instructions(s, rid, out) == 5
    assert out.getvalue() == whole
    assert "".join(custodian.stream_instructions(rid, engine)) == whole
    # Reading never exports: a round whose payouts are not exported yet streams no line.
    fresh = released(engine, fin, [("tron", USDT)])
    with session_scope(engine, write=False) as s:
        assert "".join(custodian.instruction_csv_chunks(s, fresh.round_id)) == (
            "payout_id,network,address,amount,idempotency_key\n")


def test_confirmations_confirm_fail_and_detect_mismatches(engine, fin):
    seeded = released(engine, fin, [("tron", 5 * USDT + i) for i in range(5)])
    read_instructions(engine, seeded.round_id, fin)
    ids = payout_ids(engine, seeded.round_id)
    p = [ids[c.id] for c in seeded.tron]
    a = [format_amount(c.amount) for c in seeded.tron]
    text = ("payout_id,tx_id,amount,status\n"
            f"{p[0]},{'a' * 64},{a[0]},confirmed\n"
            f"{p[1]},{'b' * 64},{a[1]}\n"
            f"{p[2]},CUST-77,{a[2]},failed\n"
            f"{p[3]},{'d' * 64},{format_amount(seeded.tron[3].amount + 1)},confirmed\n"
            f"999999,{'e' * 64},1\n")
    res = confirm(engine, seeded.round_id, text, fin)
    assert (res["confirmed"], res["failed"], res["already"]) == (2, 1, 0)
    lines = {m["line"]: m for m in res["mismatches"]}
    assert set(lines) == {5, 6}
    assert lines[5]["payout_id"] == str(p[3]) and "amount differs" in lines[5]["reason"]
    assert "no payout 999999" in lines[6]["reason"]
    with session_scope(engine, write=False) as s:
        rows = {x.id: x for x in s.execute(select(Payout)).scalars()}
        assert rows[p[0]].state == "confirmed" and rows[p[0]].tx_id == "a" * 64
        assert rows[p[2]].state == "failed" and "CUST-77" in rows[p[2]].failure_reason
        assert rows[p[3]].state == "exported"  # the mismatching row confirmed nothing
        rnd = s.get(DistributionRound, seeded.round_id)
        assert rnd.status == "stopped" and "amount differs" in rnd.stopped_reason
        kinds = sorted(s.execute(select(Notification.kind)).scalars())
        assert kinds == ["failed", "paid", "paid"]
        paid = s.execute(select(Notification).where(Notification.kind == "paid")
                         .order_by(Notification.id)).scalars().first()
        assert paid.context["payout_network"] == "tron" and paid.context["tx_id"] == "a" * 64
    # The same file again records nothing twice.
    before = counts(engine)
    again = confirm(engine, seeded.round_id, text, fin)
    assert (again["confirmed"], again["failed"], again["already"]) == (0, 0, 3)
    assert len(again["mismatches"]) == 2
    assert counts(engine) == before
    # A stopped round stops transfers: the executor does nothing, the rest stays exported.
    out = payouts.execute_round(engine, seeded.round_id)
    assert out["stopped"] and out["exported"] == 0
    # Another tx id for a payout already confirmed is a mismatch too.
    res = confirm(engine, seeded.round_id, f"payout_id,tx_id,amount\n{p[0]},OTHER,{a[0]}\n", fin)
    assert res["mismatches"][0]["reason"].startswith(f"payout {p[0]} is confirmed with tx")
    # Finance resolves the mismatches; the round resumes; the rest confirms; it settles.
    with session_scope(engine, write=False) as s:
        mids = s.execute(select(Mismatch.id).where(Mismatch.resolved_at.is_(None))).scalars().all()
    for mid in mids:
        with session_scope(engine) as s:
            payouts.resolve_mismatch(s, seeded.round_id, mid, actor=fin, reason="checked")
    with session_scope(engine, write=False) as s:
        assert s.get(DistributionRound, seeded.round_id).status == "released"
    res = confirm(engine, seeded.round_id,
                  f"payout_id,tx_id,amount\n{p[3]},T3,{a[3]}\n{p[4]},T4,{a[4]}\n", fin)
    assert res == {"confirmed": 2, "failed": 0, "already": 0, "mismatches": []}
    with session_scope(engine, write=False) as s:
        assert s.get(DistributionRound, seeded.round_id).status == "released"  # p[2] failed
    # Retry the failed one: a new attempt, exported on a line of its own, then confirmed.
    with session_scope(engine) as s:
        payouts.retry_payout(s, p[2], actor=fin)
    out = read_instructions(engine, seeded.round_id, fin)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["payout_id"] for r in rows].count(str(p[2])) == 2
    assert rows[-1]["idempotency_key"] == payouts.payout_key(seeded.round_id,
                                                             seeded.tron[2].id) + "-2"
    res = confirm(engine, seeded.round_id, f"payout_id,tx_id,amount\n{p[2]},T2,{a[2]}\n", fin)
    assert res["confirmed"] == 1
    with session_scope(engine, write=False) as s:
        assert s.get(DistributionRound, seeded.round_id).status == "settled"
        confirmed = s.execute(select(func.sum(Payout.amount)).where(
            Payout.state == "confirmed")).scalar_one()
        assert confirmed == s.get(DistributionRound, seeded.round_id).allocated
    rep = payouts.reconcile_round(engine, seeded.round_id, actor=fin)
    assert rep["checked"] == 5 and rep["ok"] == 5 and not rep["mismatches"]


def test_a_payout_not_handed_over_or_on_the_evm_rail_is_a_mismatch(engine, fin):
    seeded = released(engine, fin, [("tron", USDT), ("ethereum", USDT)])
    ids = payout_ids(engine, seeded.round_id)
    tron, eth = ids[seeded.tron[0].id], ids[seeded.evm[0].id]
    res = confirm(engine, seeded.round_id,
                  f"payout_id,tx_id,amount\n{tron},X,1\n{eth},Y,1\n", fin)
    reasons = [m["reason"] for m in res["mismatches"]]
    assert "not handed to the custodian" in reasons[0] and "evm rail" in reasons[1]
    assert res["confirmed"] == 0


@pytest.mark.parametrize("text, expected", [
    ("", ["line 1: the file is empty"]),
    ("payout_id,amount\n1,2\n", ["line 1: missing column(s) tx_id"]),
    ("payout_id,tx_id,amount,status\n1,T,1.5,paid\nx,T,1\n2,,1\n3,T,1.0000001\n4,T,-1\n5,T\n",
     ["line 2: status must be confirmed or failed", "line 3: payout_id 'x'",
      "line 4: tx_id is empty", "line 5: amount has more than 6 decimals",
      "line 6: amount must", "line 7: 2 fields"]),
    ("payout_id,tx_id,amount\n1,T,0\n", ["line 2: amount must be greater than 0"]),
])
def test_malformed_confirmations_name_every_bad_line_and_record_nothing(
    engine, fin, text, expected
):
    seeded = released(engine, fin, [("tron", USDT)])
    with pytest.raises(InvalidInput) as exc:
        confirm(engine, seeded.round_id, text, fin)
    detail = exc.value.detail
    for e in expected:
        assert e in detail, detail
    assert counts(engine) == (0, 0, 0)


def test_only_finance_imports_confirmations(engine, fin):
    seeded = released(engine, fin, [("tron", USDT)])
    with pytest.raises(Forbidden):
        confirm(engine, seeded.round_id, "payout_id,tx_id,amount\n", Actor("a", "auditor"))


def test_the_simulated_custodian_confirms_every_line_once(engine, fin):
    seeded = released(engine, fin, [("tron", USDT + i) for i in range(3)])
    text = custodian.simulated_confirmations(read_instructions(engine, seeded.round_id, fin))
    assert len(text.splitlines()) == 4 and text.startswith("payout_id,tx_id,amount,status\n")
    assert confirm(engine, seeded.round_id, text, fin)["confirmed"] == 3
    assert confirm(engine, seeded.round_id, text, fin)["already"] == 3
    with session_scope(engine, write=False) as s:
        assert s.get(DistributionRound, seeded.round_id).status == "settled"
