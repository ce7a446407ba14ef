"""Distribution rounds through the database (claims/rounds/): docs/allocation.md's worked
examples to the micro-USDT, catch-up with a dispute settled, four eyes, snapshots going stale,
re-preparation, the money invariant on every round, the round CSV. SQLite always; PostgreSQL
when configured.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from fractions import Fraction

import pytest
from sqlalchemy import func, select, update

from claims import audit, lifecycle, review, rounds
from claims.allocation import ClaimInput, allocate, plan_rows
from claims.audit import Actor
from claims.db import session_scope
from claims.errors import Conflict, Forbidden, FourEyes, InvalidInput, NotFound, StaleRound
from claims.models import (
    Allocation,
    AuditEvent,
    Case,
    Claim,
    DistributionRound,
    Notification,
    StaffUser,
    utcnow,
)
from claims.money import format_amount, format_rate, parse_amount, parse_rate

U = parse_amount
_n = itertools.count(1)


# ------------------------------------------------------------------ a small world


class World:
    def __init__(self, engine):
        self.engine = engine

    def case(self, code: str) -> str:
        with session_scope(self.engine) as s:
            s.add(Case(code=code, name=f"Case {code}"))
        return code

    def staff(self, role: str) -> Actor:
        name = f"{role}{next(_n)}"
        now = utcnow()
        with session_scope(self.engine) as s:
            user = StaffUser(username=name, role=role, password_hash="x", created_at=now,
                             password_changed_at=now)
            s.add(user)
            s.flush()
            return Actor(name, role, user.id)

    def claim(self, code: str, invested: str, withdrawn: str = "0", *, status: str = "approved",
              recognized: str | None = None, ref: str | None = None) -> str:
        n = next(_n)
        ref = ref or f"KZR-T{n:03d}-{n:04d}"
        inv, wd = U(invested), U(withdrawn)
        rec = U(recognized) if recognized is not None else max(0, inv - wd)
        now = utcnow()
        with session_scope(self.engine) as s:
            case_id = s.execute(select(Case.id).where(Case.code == code)).scalar_one()
            s.add(Claim(
                case_id=case_id, reference=ref, status=status, full_name=f"Person {n}",
                name_key=f"person {n}", iin_hash=f"h{n}", iin_encrypted=b"x",
                iin_masked="00******0000", birth_date=dt.date(1980, 1, 1),
                email=f"p{n}@example.org", email_key=f"p{n}@example.org", phone="+77010000000",
                language="ru", claimed_amount=inv, payout_network="tron",
                payout_address=f"T{n:033d}", payout_address_key=f"t{n}", access_token_hash="t",
                invested=inv, withdrawn=wd, recognized_loss=rec, created_at=now, updated_at=now,
            ))
        return ref

    def prepare(self, code, pool, method="pro-rata", min_payout="0", *, actor) -> int:
        with session_scope(self.engine) as s:
            rnd = rounds.prepare_round(s, code, U(pool), method, U(min_payout), actor=actor)
            return rnd.id

    def approve(self, round_id, *, actor, persist_stale=False):
        with session_scope(self.engine) as s:
            return rounds.approve_round(s, round_id, actor=actor, persist_stale=persist_stale).status

    def round(self, round_id) -> DistributionRound:
        with session_scope(self.engine, write=False) as s:
            return s.get(DistributionRound, round_id)

    def allocations(self, round_id) -> dict[str, Allocation]:
        with session_scope(self.engine, write=False) as s:
            return {ref: a for a, ref in s.execute(
                select(Allocation, Claim.reference).join(Claim, Claim.id == Allocation.claim_id)
                .where(Allocation.round_id == round_id))}

    def amounts(self, round_id) -> dict[str, int]:
        return {ref: a.amount for ref, a in self.allocations(round_id).items()}

    def check_all_rounds(self) -> int:
        """The invariant on every round, and allocation rows equal to the round's totals."""
        with session_scope(self.engine, write=False) as s:
            ids = s.execute(select(DistributionRound.id)).scalars().all()
            for rid in ids:
                assert_round_balances(s, rid)
            assert audit.verify_chain(s).ok
        return len(ids)


def assert_round_balances(s, round_id) -> None:
    """The stored round balances and its allocation rows add up to its totals."""
    rnd = rounds.get_round(s, round_id)
    rounds.check_invariant(rnd)
    sums = s.execute(
        select(func.coalesce(func.sum(Allocation.amount), 0),
               func.coalesce(func.sum(Allocation.reserved), 0),
               func.coalesce(func.sum(Allocation.released), 0),
               func.count())
        .where(Allocation.round_id == rnd.id)
    ).one()
    assert tuple(map(int, sums)) == (rnd.allocated, rnd.reserved, rnd.released, rnd.claims_count)


@pytest.fixture
def w(engine):
    return World(engine)


@pytest.fixture
def cw(w):
    """Two caseworkers: one prepares, the other approves."""
    return w.staff("caseworker"), w.staff("caseworker")


# ------------------------------------------------------------------ docs/allocation.md's worked examples


def _abcd(w, code):
    return [w.claim(code, "1000", "0"), w.claim(code, "1000", "400"),
            w.claim(code, "500", "100"), w.claim(code, "300", "450")]


def test_design_pro_rata_example(w, cw):
    code = w.case("ex-pr")
    a, b, c, d = _abcd(w, code)
    rid = w.prepare(code, "500", actor=cw[0])
    rnd = w.round(rid)
    assert (rnd.status, rnd.number, rnd.rate, rnd.claims_count) == ("prepared", 1, "1/4", 4)
    assert (rnd.allocated, rnd.reserved, rnd.released, rnd.undistributed) == (U("500"), 0, 0, 0)
    al = w.allocations(rid)
    assert {r: x.amount for r, x in al.items()} == {a: U("250"), b: U("150"), c: U("100"), d: 0}
    assert al[d].excluded == "net_winner" and al[d].net_loss == 0
    # the net winner keeps the ledger's numbers (300 in, 450 out)
    assert (al[d].invested, al[d].withdrawn) == (U("300"), U("450"))
    assert all(x.excluded is None for r, x in al.items() if r != d)
    assert w.check_all_rounds() == 1


def test_design_rising_tide_example(w, cw):
    code = w.case("ex-rt")
    a, b, c, d = _abcd(w, code)
    rid = w.prepare(code, "500", "rising-tide", actor=cw[0])
    assert w.round(rid).rate == "2/5"
    assert w.amounts(rid) == {a: U("400"), b: 0, c: U("100"), d: 0}
    w.check_all_rounds()


@pytest.mark.parametrize("method,expected", [
    ("pro-rata", ("15000", "20000", "25000")),
    ("rising-tide", ("0", "15000", "45000")),
])
def test_design_huber_example(w, cw, method, expected):
    code = w.case("huber-" + method)
    refs = [w.claim(code, "150000", x) for x in ("60000", "30000", "0")]
    rid = w.prepare(code, "60000", method, actor=cw[0])
    assert w.amounts(rid) == dict(zip(refs, map(U, expected)))
    w.check_all_rounds()


def test_design_thirds_rounding_ties_by_reference(w, cw):
    code = w.case("thirds")
    # inserted in another order than the references sort: the extra micro-USDT goes by reference
    refs = [w.claim(code, "1", ref=r) for r in ("KZR-0000-000C", "KZR-0000-000A", "KZR-0000-000B")]
    rid = w.prepare(code, "1", actor=cw[0])
    assert w.amounts(rid) == {"KZR-0000-000A": 333334, "KZR-0000-000B": 333333,
                              "KZR-0000-000C": 333333}
    assert set(refs) == set(w.amounts(rid))


def test_design_de_minimis_example(w, cw):
    code = w.case("deminimis")
    a, b, c = (w.claim(code, x) for x in ("10", "9.5", "9.9"))
    rid = w.prepare(code, "10", min_payout="3.5", actor=cw[0])
    al = w.allocations(rid)
    assert {r: x.amount for r, x in al.items()} == {a: U("5.025126"), b: 0, c: U("4.974874")}
    assert al[b].excluded == "de_minimis" and al[a].excluded is None
    rnd = w.round(rid)
    assert rnd.min_payout == U("3.5") and rnd.undistributed == 0
    w.check_all_rounds()


def test_design_catch_up_with_a_settled_dispute(w, cw, engine):
    code = w.case("catchup")
    a = w.claim(code, "1000")
    b = w.claim(code, "600")
    c = w.claim(code, "400", status="disputed")
    r1 = w.prepare(code, "600", actor=cw[0])
    al = w.allocations(r1)
    assert {r: (x.amount, x.reserved) for r, x in al.items()} == {
        a: (U("300"), 0), b: (U("180"), 0), c: (0, U("120"))}
    rnd = w.round(r1)
    assert (rnd.allocated, rnd.reserved, rnd.undistributed) == (U("480"), U("120"), 0)
    assert w.approve(r1, actor=cw[1]) == "approved"
    with session_scope(engine, write=False) as s:
        told = s.execute(select(Claim.reference, Notification.context)
                         .join(Claim, Claim.id == Notification.claim_id)
                         .where(Notification.kind == "allocated")).all()
    # the disputed claim's reserve is not announced
    assert {ref: ctx["amount"] for ref, ctx in told} == {a: "300", b: "180"}
    assert all(ctx["rate_percent"] == "30" and ctx["round"] == 1 for _, ctx in told)

    # C settles at 300 through the caseworker's review: 90 allocated, 30 released
    with session_scope(engine) as s:
        review.settle(s, c, amount=U("300"), reason="bank statements agree on 300",
                      actor=cw[0])
    al = w.allocations(r1)
    assert (al[c].amount, al[c].reserved, al[c].released) == (U("90"), 0, U("30"))
    rnd = w.round(r1)
    assert (rnd.status, rnd.allocated, rnd.reserved, rnd.released, rnd.undistributed) == (
        "approved", U("570"), 0, U("30"), 0)
    with session_scope(engine, write=False) as s:
        told = s.execute(select(Notification.context).join(Claim, Claim.id == Notification.claim_id)
                         .where(Notification.kind == "allocated", Claim.reference == c)).scalars().all()
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "round.dispute_settled")).scalar_one()
    assert [t["amount"] for t in told] == ["90"]
    assert ev.after["claim_allocated"] == U("90") and ev.after["claim_released"] == U("30")

    # round 2: 400 new + the 30 released; catch-up through paid_before
    r2 = w.prepare(code, "430", actor=cw[1])
    al = w.allocations(r2)
    assert {r: x.paid_before for r, x in al.items()} == {a: U("300"), b: U("180"), c: U("90")}
    assert {r: x.amount for r, x in al.items()} == {
        a: U("226.315789"), b: U("135.789474"), c: U("67.894737")}
    rnd = w.round(r2)
    assert rnd.number == 2 and rate_is(rnd, Fraction(10, 19))
    assert w.check_all_rounds() == 2


def rate_is(rnd, value: Fraction) -> bool:
    return parse_rate(rnd.rate) == value


def test_dispute_open_across_two_rounds_settles_in_both(w, cw, engine):
    code = w.case("two-reserves")
    a, b = w.claim(code, "1000"), w.claim(code, "600")
    c = w.claim(code, "400", status="disputed")
    r1 = w.prepare(code, "600", actor=cw[0])
    w.approve(r1, actor=cw[1])
    r2 = w.prepare(code, "400", actor=cw[0])  # C still disputed: paid_before 0, reserved again
    assert w.round(r2).rate == "11/25"
    al2 = w.allocations(r2)
    assert {r: (x.amount, x.reserved) for r, x in al2.items()} == {
        a: (U("140"), 0), b: (U("84"), 0), c: (0, U("176"))}
    w.approve(r2, actor=cw[1])
    with session_scope(engine) as s:
        review.settle(s, c, amount=U("300"), reason="agreed", actor=cw[1])
    # round 1: 0.3·300 = 90 (30 released); round 2: 0.44·300 − 90 = 42 (134 released)
    assert (w.allocations(r1)[c].amount, w.allocations(r1)[c].released) == (U("90"), U("30"))
    assert (w.allocations(r2)[c].amount, w.allocations(r2)[c].released) == (U("42"), U("134"))
    assert w.round(r2).released == U("134") and w.round(r2).reserved == 0
    w.check_all_rounds()


def test_settlement_never_exceeds_the_reserve_and_reopens_a_settled_round(w, cw, engine):
    code = w.case("settle-up")
    a = w.claim(code, "1000")
    c = w.claim(code, "1000", status="disputed")
    r1 = w.prepare(code, "500", actor=cw[0])
    w.approve(r1, actor=cw[1])
    with session_scope(engine) as s:  # finance paid everything payable: the round settled
        s.execute(update(DistributionRound).where(DistributionRound.id == r1)
                  .values(status="settled"))
    with session_scope(engine) as s:
        review.settle(s, c, amount=U("5000"), reason="more than recognized", actor=cw[0])
    al = w.allocations(r1)
    # 0.25 · 5000 = 1250, capped at the reserve of 250: nothing released
    assert (al[c].amount, al[c].reserved, al[c].released) == (U("250"), 0, 0)
    assert w.round(r1).status == "released"  # a new allocation to pay
    assert al[a].amount == U("250")
    w.check_all_rounds()


def test_settlement_at_zero_releases_everything_and_keeps_a_settled_round(w, cw, engine):
    code = w.case("settle-zero")
    w.claim(code, "1000")
    c = w.claim(code, "1000", status="disputed")
    r1 = w.prepare(code, "500", actor=cw[0])
    w.approve(r1, actor=cw[1])
    with session_scope(engine) as s:
        s.execute(update(DistributionRound).where(DistributionRound.id == r1)
                  .values(status="settled"))
    with session_scope(engine) as s:
        review.settle(s, c, amount=0, reason="nothing was lost", actor=cw[0])
    al = w.allocations(r1)[c]
    assert (al.amount, al.reserved, al.released) == (0, 0, U("250"))
    rnd = w.round(r1)
    assert rnd.status == "settled" and rnd.released == U("250")
    w.check_all_rounds()


def test_rising_tide_settlement_uses_the_rounds_method(w, cw, engine):
    code = w.case("settle-rt")
    w.claim(code, "1000", "0")
    c = w.claim(code, "1000", "200", status="disputed")
    r1 = w.prepare(code, "600", "rising-tide", actor=cw[0])
    # r·1000 + (r·1000 − 200) = 600 → r = 0.4: 400 and 200 reserved
    assert w.round(r1).rate == "2/5" and w.allocations(r1)[c].reserved == U("200")
    w.approve(r1, actor=cw[1])
    with session_scope(engine) as s:
        review.settle(s, c, amount=U("500"), reason="agreed", actor=cw[0])
    # invested 200 + 500 = 700: 0.4 · 700 − 200 = 80 allocated, 120 released
    al = w.allocations(r1)[c]
    assert (al.amount, al.released) == (U("80"), U("120"))
    w.check_all_rounds()


# ------------------------------------------------------------------ roles and four eyes


def test_only_caseworkers_prepare_and_approve_and_never_their_own(w, cw):
    code = w.case("roles")
    w.claim(code, "100")
    for role in ("finance", "admin", "auditor"):
        with pytest.raises(Forbidden):
            w.prepare(code, "10", actor=w.staff(role))
    with pytest.raises(Forbidden):
        w.prepare(code, "10", actor=Actor.operator())
    rid = w.prepare(code, "10", actor=cw[0])
    with pytest.raises(FourEyes):
        w.approve(rid, actor=cw[0])
    for role in ("finance", "admin", "auditor"):
        with pytest.raises(Forbidden):
            w.approve(rid, actor=w.staff(role))
    assert w.round(rid).status == "prepared"
    assert w.approve(rid, actor=cw[1]) == "approved"
    with pytest.raises(Conflict):
        w.approve(rid, actor=cw[1])  # only a prepared round
    rnd = w.round(rid)
    assert (rnd.prepared_by, rnd.approved_by) == (cw[0].staff_id, cw[1].staff_id)


def test_bad_requests_name_their_fields(w, cw):
    code = w.case("bad")
    w.claim(code, "100")
    with pytest.raises(InvalidInput) as e:
        with session_scope(w.engine) as s:
            rounds.prepare_round(s, code, 0, "equal", -1, actor=cw[0])
    assert [x["field"] for x in e.value.errors] == ["pool", "method", "min_payout"]
    with pytest.raises(NotFound):
        w.prepare("no-such-case", "10", actor=cw[0])
    empty = w.case("empty")
    w.claim(empty, "100", status="flagged")
    with pytest.raises(Conflict):
        w.prepare(empty, "10", actor=cw[0])
    with pytest.raises(NotFound):
        w.approve("abc", actor=cw[1])
    with pytest.raises(NotFound):
        w.approve(999_999, actor=cw[1])
    with session_scope(w.engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(DistributionRound)).scalar_one() == 0


# ------------------------------------------------------------------ snapshots


def _claim_obj(s, ref) -> Claim:
    return s.execute(select(Claim).where(Claim.reference == ref)).scalar_one()


def test_a_change_to_an_included_claim_makes_the_round_stale(w, cw, engine):
    code = w.case("stale-touch")
    a = w.claim(code, "100")
    w.claim(code, "100")
    rid = w.prepare(code, "50", actor=cw[0])
    with session_scope(engine) as s:
        lifecycle.touch(s, _claim_obj(s, a), actor=cw[0], action="claim.amount_changed",
                        values={"recognized_loss": U("80"), "invested": U("80")})
    assert w.round(rid).status == "stale"
    with pytest.raises(StaleRound):
        w.approve(rid, actor=cw[1])
    # preparing again takes the new amount and the same number
    rid2 = w.prepare(code, "50", actor=cw[0])
    assert w.round(rid2).number == 1 and w.allocations(rid2)[a].net_loss == U("80")
    assert w.approve(rid2, actor=cw[1]) == "approved"
    w.check_all_rounds()


def test_a_newly_approved_claim_makes_the_round_stale(w, cw, engine):
    code = w.case("stale-new")
    w.claim(code, "100")
    late = w.claim(code, "100", status="flagged")
    rid = w.prepare(code, "50", actor=cw[0])
    with session_scope(engine) as s:
        review.decide(s, late, decision="approve", reason="documents agree",
                      recognized_loss=U("100"), actor=cw[1])
    assert w.round(rid).status == "stale"
    with pytest.raises(StaleRound):
        w.approve(rid, actor=cw[1])


def test_approval_rechecks_the_snapshot_and_persists_the_stale_mark(w, cw, engine):
    code = w.case("stale-check")
    a = w.claim(code, "100")
    rid = w.prepare(code, "50", actor=cw[0])
    # a change that bypassed the lifecycle (or raced the preparation)
    with session_scope(engine) as s:
        s.execute(update(Claim).where(Claim.reference == a).values(version=Claim.version + 1))
    with pytest.raises(StaleRound, match=a):
        w.approve(rid, actor=cw[1], persist_stale=True)
    assert w.round(rid).status == "stale"
    rid2 = w.prepare(code, "50", actor=cw[0])
    # a payable claim that the round does not include
    w.claim(code, "100")
    with pytest.raises(StaleRound, match="not in the round"):
        w.approve(rid2, actor=cw[1])  # without persist_stale the mark rolls back with the error
    assert w.round(rid2).status == "prepared"
    with pytest.raises(StaleRound, match="not in the round"):
        w.approve(rid2, actor=cw[1], persist_stale=True)
    assert w.round(rid2).status == "stale"
    with session_scope(engine, write=False) as s:
        stale_events = s.execute(select(AuditEvent).where(AuditEvent.action == "round.stale",
                                                          AuditEvent.subject_id == str(rid))).all()
    assert len(stale_events) == 1


def test_preparing_again_supersedes_the_prepared_round(w, cw, engine):
    code = w.case("supersede")
    w.claim(code, "100")
    r1 = w.prepare(code, "50", actor=cw[0])
    r2 = w.prepare(code, "60", actor=cw[1])
    assert (w.round(r1).status, w.round(r2).status) == ("stale", "prepared")
    assert w.round(r1).number == w.round(r2).number == 1
    with session_scope(engine, write=False) as s:
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "round.stale")).scalar_one()
        listed = rounds.list_rounds(s, code)
    assert ev.subject_id == str(r1) and ev.after["because"] == f"superseded by round {r2}"
    assert [(x["id"], x["status"]) for x in listed] == [(str(r1), "stale"), (str(r2), "prepared")]
    with pytest.raises(StaleRound):
        w.approve(r1, actor=cw[1])
    w.approve(r2, actor=cw[0])
    # the next round is number 2; the approved one is not superseded
    r3 = w.prepare(code, "10", actor=cw[0])
    assert w.round(r3).number == 2 and w.round(r2).status == "approved"
    # the latest rounds of every case, newest first, as view shows them
    with session_scope(engine, write=False) as s:
        everyone = rounds.recent_rounds(s)
        views = [rounds.get_round_view(s, r) for r in (r3, r2, r1)]
        approved = rounds.recent_rounds(s, ["approved"], limit=1)
    assert everyone[:3] == views
    assert [int(x["id"]) for x in everyone] == sorted((int(x["id"]) for x in everyone),
                                                       reverse=True)
    assert approved == [views[1]]


# ------------------------------------------------------------------ read models, CSV


def test_round_view_and_csv_match_the_solver(w, cw, engine):
    code = w.case("views")
    spec = [("1000", "0", "approved"), ("1000", "400", "approved"), ("500", "100", "disputed"),
            ("300", "450", "approved"), ("3", "0", "approved")]
    refs = [w.claim(code, i, wd, status=st) for i, wd, st in spec]
    rid = w.prepare(code, "500", min_payout="1", actor=cw[0])
    with session_scope(engine, write=False) as s:
        v = rounds.get_round_view(s, str(rid))
        rows = list(rounds.plan_csv_rows(s, rid, chunk=2))
        text = rounds.plan_csv_text(s, rid)
    assert set(v) >= {"id", "status", "pool", "rate", "allocated", "reserved", "released",
                      "undistributed", "claims"}
    assert v["id"] == str(rid) and v["claims"] == 5 and v["case_id"] == code
    assert v["prepared_by"] == cw[0].name and v["approved_by"] is None
    solved = allocate([ClaimInput(r, U(i), U(wd), 0, st == "disputed")
                       for r, (i, wd, st) in zip(refs, spec)], U("500"), "pro-rata", U("1"))
    assert v["rate"] == format_rate(solved.rate) == "0.25"
    assert (v["allocated"], v["reserved"], v["undistributed"]) == (
        format_amount(solved.allocated), format_amount(solved.reserved),
        format_amount(solved.undistributed))
    expected = list(plan_rows(solved))
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    assert [r["paid_before"] for r in rows] == ["0"] * 5 and rows[4]["excluded"] == "de_minimis"
    assert text.splitlines()[0] == ",".join(rounds.ROUND_CSV_COLUMNS)
    assert len(text.splitlines()) == 6


@pytest.mark.parametrize("method", ["pro-rata", "rising-tide"])
def test_stored_rows_are_the_solve_of_the_claims_as_records(w, cw, engine, method):
    """Every allocation row is what allocate() gives for the case's payable claims taken one
    record each (claim_amounts, paid_before of the counting rounds, disputed reserved): net
    winners, de minimis removals, overridden and unmatched amounts, a later round's catch-up.
    """
    code = w.case(f"records-{method}")
    w.claim(code, "1000", "0")
    w.claim(code, "1000", "400")
    w.claim(code, "300", "450")  # net winner
    w.claim(code, "800", "200", recognized="500")  # overridden: invested = 200 + 500
    w.claim(code, "2", "0")  # de minimis
    w.claim(code, "500", "100", status="disputed")
    w.claim(code, "700", "0", status="rejected")  # not payable
    with session_scope(engine) as s:  # approved without a ledger match (no invested/withdrawn)
        s.execute(update(Claim).where(Claim.reference == w.claim(code, "650", "0"))
                  .values(invested=None, withdrawn=None))
    first = w.prepare(code, "400", method, "1", actor=cw[0])
    w.approve(first, actor=cw[1])
    late = w.claim(code, "900", "0")  # a late claim catches up in the next round
    second = w.prepare(code, "600", method, "3", actor=cw[0])
    with session_scope(engine, write=False) as s:
        claims = s.execute(select(Claim).where(Claim.status.in_(("approved", "disputed")))
                           .order_by(Claim.id)).scalars().all()
        stored = {a.claim_id: a for a in s.execute(
            select(Allocation).where(Allocation.round_id == second)).scalars()}
        before = {a.claim_id: a.amount for a in s.execute(
            select(Allocation).where(Allocation.round_id == first)).scalars()}
    records = []
    for c in claims:
        inv, wd = rounds.claim_amounts(c.invested, c.withdrawn, c.recognized_loss)
        records.append(ClaimInput(c.reference, inv, wd, before.get(c.id, 0),
                                  c.status == "disputed"))
    solved = allocate(records, U("600"), method, U("3"))
    assert [c.id for c in claims] == sorted(stored) and late in {c.reference for c in claims}
    for c, rec, row in zip(claims, records, solved.rows):
        a = stored[c.id]
        assert (a.claim_version, a.invested, a.withdrawn, a.net_loss, a.paid_before, a.amount,
                a.reserved, a.released) == (c.version, rec.invested, rec.withdrawn,
                                            row.net_loss, rec.paid_before, row.allocation,
                                            row.reserved, 0)
        assert a.excluded == ("net_winner" if row.net_winner else
                              "de_minimis" if row.excluded_de_minimis else None)
    assert {a.excluded for a in stored.values()} == {"net_winner", "de_minimis", None}
    rnd = w.round(second)
    assert (rnd.allocated, rnd.reserved, rnd.undistributed, rnd.claims_count) == (
        solved.allocated, solved.reserved, solved.undistributed, len(claims))
    assert rnd.rate == f"{solved.rate.numerator}/{solved.rate.denominator}"
    w.check_all_rounds()


def test_many_claims_in_batches(w, cw, engine):
    """A few thousand claims written in small insert batches; one grouped paid_before."""
    code = w.case("many")
    rng = random.Random(5)
    now = utcnow()
    with session_scope(engine) as s:
        case_id = s.execute(select(Case.id).where(Case.code == code)).scalar_one()
        rows = []
        for n in range(3000):
            inv = rng.randrange(1, 10**10)
            rows.append(dict(
                case_id=case_id, reference=f"KZR-M{n:04d}-0000", status="approved",
                full_name="x", name_key="x", iin_hash=f"m{n}", iin_encrypted=b"x",
                iin_masked="x", birth_date=dt.date(1980, 1, 1), email="m@example.org",
                email_key="m@example.org", phone="+77010000000", language="kk",
                claimed_amount=inv, evidence_tx_hashes=[], payout_network="tron",
                payout_address="T", payout_address_key="t", access_token_hash="t",
                consent_at=now, source="import", invested=inv, withdrawn=0,
                recognized_loss=inv, version=1, created_at=now, updated_at=now))
        s.execute(Claim.__table__.insert(), rows)
    with session_scope(engine) as s:
        rnd = rounds.prepare_round(s, code, U("1000000"), actor=cw[0], batch_size=700)
        rid = rnd.id
    with session_scope(engine) as s:
        rounds.approve_round(s, rid, actor=cw[1])
    with session_scope(engine, write=False) as s:
        assert_round_balances(s, rid)
        sent = s.execute(select(func.count()).select_from(Notification)
                         .where(Notification.kind == "allocated")).scalar_one()
        positive = s.execute(select(func.count()).select_from(Allocation)
                             .where(Allocation.round_id == rid, Allocation.amount > 0)).scalar_one()
    assert w.round(rid).claims_count == 3000 and sent == positive > 2900


def test_random_rounds_with_disputes_keep_every_invariant(w, cw, engine):
    """Three rounds over random claims with disputes opened and settled between them: every
    round balances, nobody is clawed back, totals given never exceed a claim's net loss."""
    rng = random.Random(11)
    code = w.case("random")
    refs = []
    for _ in range(40):
        inv = rng.randrange(0, 5000)
        wd = rng.randrange(0, 3000)
        refs.append(w.claim(code, str(inv), str(wd),
                            status="disputed" if rng.random() < 0.25 else "approved"))
    given: dict[str, int] = {}
    for k in range(3):
        rid = w.prepare(code, str(rng.randrange(1, 40000)), rng.choice(["pro-rata", "rising-tide"]),
                        min_payout=str(rng.choice([0, 0, 20])), actor=cw[k % 2])
        w.approve(rid, actor=cw[(k + 1) % 2])
        with session_scope(engine) as s:
            disputed = s.execute(select(Claim.reference).where(Claim.status == "disputed")).scalars().all()
            for ref in disputed:
                if rng.random() < 0.6:
                    review.settle(s, ref, amount=U(str(rng.randrange(0, 6000))), reason="agreed",
                                  actor=cw[k % 2])
        w.check_all_rounds()
        with session_scope(engine, write=False) as s:
            totals = dict(s.execute(
                select(Claim.reference, func.sum(Allocation.amount))
                .join(Allocation, Allocation.claim_id == Claim.id).group_by(Claim.reference)).all())
            losses = dict(s.execute(select(Claim.reference, Claim.recognized_loss)).all())
        for ref, total in totals.items():
            assert total >= given.get(ref, 0)  # never clawed back
            given[ref] = total
        for ref, total in totals.items():
            with session_scope(engine, write=False) as s:
                status = s.execute(select(Claim.status).where(Claim.reference == ref)).scalar_one()
            if status == "approved":
                assert total <= losses[ref], ref


# ------------------------------------------------------------------ reports (claims/reports.py)


def test_recovery_buckets_are_exact_at_the_edges():
    from claims.reports import BUCKET_LABELS, recovery_bucket

    assert len(BUCKET_LABELS) == 11 and BUCKET_LABELS[0] == "0–10%" and BUCKET_LABELS[-1] == "100%"
    assert recovery_bucket(0, 7) == 0
    assert recovery_bucket(99_999, 1_000_000) == 0
    assert recovery_bucket(100_000, 1_000_000) == 1
    assert recovery_bucket(899_999, 1_000_000) == 8
    assert recovery_bucket(999_999, 1_000_000) == 9
    assert recovery_bucket(1_000_000, 1_000_000) == 10
    assert recovery_bucket(3, 10) == 3 and recovery_bucket(1, 3) == 3  # 33.3 %


def test_histogram_svg_is_well_formed_and_escaped():
    import xml.etree.ElementTree as ET

    from claims.reports import BUCKET_LABELS, histogram_svg

    hist = [{"label": lab, "claims": n} for lab, n in zip(BUCKET_LABELS, [5, 0, 0, 100, *[0] * 6, 1])]
    svg = histogram_svg(hist, title="Round <1> & co")
    root = ET.fromstring(str(svg))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.get("role") == "img"
    assert root.find(f"{ns}title").text == "Round <1> & co"
    bars = root.findall(f"{ns}rect")
    heights = [int(b.get("height")) for b in bars]
    assert len(bars) == 11 and heights[3] == max(heights) and heights[1] == 0
    assert heights[10] >= 1 and heights[0] < heights[3]  # a single claim still shows


def test_round_report_and_summary(w, cw, engine):
    from claims.reports import round_report, summary_markdown

    code = w.case("report")
    a, b = w.claim(code, "1000"), w.claim(code, "600")
    c = w.claim(code, "400", status="disputed")
    d = w.claim(code, "300", "450")
    rid = w.prepare(code, "600", actor=cw[0])
    with session_scope(engine, write=False) as s:
        rep = round_report(s, rid, limit=2, offset=1, top=2)
    assert rep["counts"] == {"claims": 4, "paid": 2, "reserved": 1, "net_winner": 1,
                             "de_minimis": 0, "nothing": 0, "fully_recovered": 0}
    assert [h["claims"] for h in rep["histogram"]] == [1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    assert [x["claim_id"] for x in rep["top"]] == [a, b]
    assert [x["claim_id"] for x in rep["rows"]] == [b, c] and rep["total_rows"] == 4
    assert rep["rows"][0]["recovery_percent"] == "30"
    md = summary_markdown(rep)
    assert "| rate | 0.3 (30 %) — exact 3/10 |" in md and "| 30–40% | 2 |" in md
    assert d not in md
