"""The payout hot paths write their rows, audit events and notices in bulk (SQL written
directly, work in chunks of ``INSERT_CHUNK``): what they store must be exactly the events and
notices one would write one by one, in the same order, whatever the chunk size. SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from payouts_seed import USDT, make_staff_actor, seed_round
from sqlalchemy import select, text, update

from claims import audit, outbox, payouts
from claims.db import session_scope
from claims.errors import InvalidInput
from claims.models import (
    AuditEvent,
    BlockedAddress,
    Claim,
    CustodianConfirmation,
    Flag,
    Payout,
    PayoutAttempt,
    utcnow,
)
from claims.money import format_amount
from claims.payouts import common
from claims.payouts.rails import custodian

# Names and transaction ids that JSON escapes differently with and without ensure_ascii.
NAMES = ['Әлия "Q" Нұрланқызы', "Back\\slash / ñ", "Plain Name", "Ёлка\ttab", "Zoë 😀",
         "Иван", "Last"]
TX_IDS = ['тх"1\\/ü', "T-2", "ṪẊ-3", 'a"b', "😀-5", "x" * 128]


@pytest.fixture
def fin(engine):
    return make_staff_actor(engine, "finance")


@pytest.fixture(params=[2, 5000], ids=["chunk2", "chunk5000"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(common, "INSERT_CHUNK", request.param)
    return request.param


def contexts(s, kind=None):
    """(claim_id, kind, language, to_email, context as stored) of every notification."""
    sql = "SELECT claim_id, kind, language, to_email, CAST(context AS TEXT) FROM notification"
    if kind:
        sql += f" WHERE kind = '{kind}'"
    return [tuple(r) for r in s.execute(text(sql + " ORDER BY id")).all()]


def events(s, *actions):
    return s.execute(select(AuditEvent).where(AuditEvent.action.in_(actions))
                     .order_by(AuditEvent.id)).scalars().all()


def generic_context(claim: Claim, context: dict) -> str:
    """The context text one notice of ``context`` about ``claim`` stores."""
    return json.dumps({"reference": claim.reference, **context})


STATUSES = ["confirmed", "failed", "confirmed", "failed", "confirmed"]


def test_export_and_import_store_what_the_generic_helpers_would(engine, fin, chunk):
    seeded = seed_round(engine, [("tron", 3 * USDT + i) for i in range(7)])
    c = seeded.tron
    with session_scope(engine) as s:
        for claim, name in zip(c, NAMES, strict=True):
            s.execute(update(Claim).where(Claim.id == claim.id).values(full_name=name))
        s.add(Flag(claim_id=c[5].id, code="address_changed", message="m", created_at=utcnow()))
        s.add(BlockedAddress(address_key=c[6].address, address=c[6].address, reason="r",
                             created_at=utcnow()))
        payouts.release_round(s, seeded.round_id, actor=fin)
    with session_scope(engine, write=False) as s:
        pid = dict(s.execute(select(Payout.claim_id, Payout.id)).all())
        rows = s.execute(select(Payout).order_by(Payout.id)).scalars().all()
    # release: one payout per allocation, in claim order, keyed per (round, claim)
    assert [(p.claim_id, p.amount, p.idempotency_key, p.state, p.attempt) for p in rows] == [
        (x.id, x.amount, payouts.payout_key(seeded.round_id, x.id), "pending", 1) for x in c]

    out = payouts.execute_round(engine, seeded.round_id)
    assert (out["exported"], out["held"]) == (5, 2)
    check_export_stored(engine, c, pid, chunk)

    # confirmed and failed rows interleaved; one repeated (counted as already)
    text = confirmations_file(c, pid)
    with session_scope(engine) as s:
        res = custodian.import_confirmations(s, seeded.round_id, text, actor=fin)
    assert res == {"confirmed": 3, "failed": 2, "already": 1, "mismatches": []}
    check_import_stored(engine, fin, c, pid)
    # the same file again records nothing
    with session_scope(engine) as s:
        again = custodian.import_confirmations(s, seeded.round_id, text, actor=fin)
    assert (again["confirmed"], again["failed"], again["already"]) == (0, 0, 6)


def check_export_stored(engine, c, pid, chunk):
    """The held payouts' events, the export's events (one per chunk) and attempt rows."""
    with session_scope(engine, write=False) as s:
        held = events(s, "payout.held")
        assert [(e.subject_id, e.before, e.after) for e in held] == [
            (str(pid[c[5].id]), {"state": "pending"},
             {"state": "held", "reason": "the claim has an open flag (address_changed)"}),
            (str(pid[c[6].id]), {"state": "pending"},
             {"state": "held", "reason": "the payout address is on the blocked list"}),
        ]
        exported = events(s, "payouts.exported")
        assert len(exported) == -(-5 // min(chunk, 5))
        assert [p for e in exported for p in e.after["payouts"]] == [pid[x.id] for x in c[:5]]
        assert all(e.after == {"rail": "custodian", "payouts": e.after["payouts"],
                               "amount": sum(x.amount for x in c if pid[x.id] in
                                             e.after["payouts"])} for e in exported)
        attempts = s.execute(select(PayoutAttempt.payout_id, PayoutAttempt.attempt,
                                    PayoutAttempt.address).order_by(PayoutAttempt.id)).all()
        assert attempts == [(pid[x.id], 1, x.address) for x in c[:5]]


def confirmations_file(c, pid) -> str:
    """The first five payouts confirmed or failed (:data:`STATUSES`), the first one twice."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["payout_id", "tx_id", "amount", "status"])
    for x, tx, st in zip(c[:5], TX_IDS, STATUSES, strict=False):
        w.writerow([pid[x.id], tx, format_amount(x.amount), st])
    w.writerow([pid[c[0].id], TX_IDS[0], format_amount(c[0].amount), "confirmed"])
    return buf.getvalue()


def check_import_stored(engine, fin, c, pid):
    """The import's audit events, notices, confirmations, payouts and attempts."""
    ok = [(i, x) for i, x in enumerate(c[:5]) if STATUSES[i] == "confirmed"]
    bad = [(i, x) for i, x in enumerate(c[:5]) if STATUSES[i] == "failed"]
    with session_scope(engine, write=False) as s:
        assert audit.verify_chain(s).ok
        got = [(e.actor, e.role, e.subject_type, e.subject_id, e.before, e.after)
               for e in events(s, "payout.confirmed", "payout.failed")]
        assert got == [
            (fin.name, fin.role, "payout", str(pid[x.id]), {"state": "exported"},
             {"state": "confirmed", "tx_id": TX_IDS[i], "amount": x.amount,
              "source": "custodian", "line": i + 2}) for i, x in ok
        ] + [
            (fin.name, fin.role, "payout", str(pid[x.id]), {"state": "exported"},
             {"state": "failed", "tx_id": TX_IDS[i], "source": "custodian", "line": i + 2})
            for i, x in bad
        ]
        claims = {x.id: x for x in s.execute(select(Claim)).scalars()}
        assert contexts(s) == [
            (x.id, "paid", "en", claims[x.id].email, generic_context(claims[x.id], payouts.
             paid_context(x.amount, TX_IDS[i], "tron", None, claims[x.id].full_name)))
            for i, x in ok
        ] + [
            (x.id, "failed", "en", claims[x.id].email, generic_context(
                claims[x.id], {"amount": x.amount, "name": claims[x.id].full_name}))
            for i, x in bad
        ]
        assert s.execute(select(CustodianConfirmation.payout_id, CustodianConfirmation.tx_id,
                                CustodianConfirmation.amount, CustodianConfirmation.status)
                         .order_by(CustodianConfirmation.id)).all() == [
            (pid[x.id], TX_IDS[i], x.amount, STATUSES[i]) for i, x in ok + bad]
        by_id = {p.id: p for p in s.execute(select(Payout)).scalars()}
        for i, x in ok:
            p = by_id[pid[x.id]]
            assert (p.state, p.tx_id, p.failure_reason) == ("confirmed", TX_IDS[i], None)
            assert p.confirmed_at is not None and p.reconciled_at is not None
        for i, x in bad:
            p = by_id[pid[x.id]]
            assert (p.state, p.tx_id, p.failure_reason) == (
                "failed", TX_IDS[i], f"the custodian reported it failed (tx {TX_IDS[i]})")
            assert p.confirmed_at is None and p.reconciled_at is None
        outcomes = dict(((a, n), (o, r)) for a, n, o, r in s.execute(
            select(PayoutAttempt.payout_id, PayoutAttempt.attempt, PayoutAttempt.outcome,
                   PayoutAttempt.reason)))
        assert outcomes == {
            **{(pid[x.id], 1): ("confirmed", None) for _, x in ok},
            **{(pid[x.id], 1): ("failed", f"the custodian reported it failed (tx {TX_IDS[i]})")
               for i, x in bad},
        }


@pytest.mark.parametrize("network, chain_id", [("tron", None), ("ethereum", 1),
                                               ("ethereum", 1337)])
def test_notify_outcomes_stores_what_one_notice_at_a_time_would(engine, network, chain_id):
    seeded = seed_round(engine, [(network, USDT + i) for i in range(4)])
    c = seeded.claims
    with session_scope(engine) as s:
        for claim, name in zip(c, NAMES, strict=False):
            s.execute(update(Claim).where(Claim.id == claim.id).values(full_name=name))
    paid = [(x.id, x.amount, tx, network, chain_id) for x, tx in zip(c[:3], TX_IDS, strict=False)]
    failed = [(c[3].id, c[3].amount), (c[0].id, 7)]
    with session_scope(engine) as s:
        payouts.notify_outcomes(s, paid, failed)
    with session_scope(engine) as s:
        refs = {x.id: x for x in s.execute(select(Claim).where(
            Claim.id.in_([x.id for x in c]))).scalars()}
        for cid, amount, tx, net, chain in paid:
            outbox.enqueue(s, refs[cid], "paid",
                           payouts.paid_context(amount, tx, net, chain, refs[cid].full_name))
        for cid, amount in failed:
            outbox.enqueue(s, refs[cid], "failed", {"amount": amount, "name": refs[cid].full_name})
    with session_scope(engine, write=False) as s:
        stored = contexts(s)
    assert len(stored) == 10
    assert stored[:5] == stored[5:]
    assert [json.loads(r[4]).get("payout_network") for r in stored[:3]] == (
        [network] * 3 if chain_id in (None, 1) else [None] * 3)


def test_parse_confirmations_skips_blank_rows_and_takes_a_left_out_status():
    rows = custodian.parse_confirmations(
        "\ufeffPayout_ID , TX_ID ,Amount,Status\n\n , ,\n7,T1,1.5\n8,T2,2,FAILED\r\n,,,\n")
    assert [(r.line, r.payout_id, r.tx_id, r.amount, r.status) for r in rows] == [
        (4, 7, "T1", 1_500_000, "confirmed"), (5, 8, "T2", 2_000_000, "failed")]
    with pytest.raises(InvalidInput) as exc:
        custodian.parse_confirmations("status,payout_id,tx_id,amount\nconfirmed,1,T,1\n"
                                      + "x" * 200_000)  # longer than csv's field limit
    assert "line 3: not CSV" in exc.value.detail
