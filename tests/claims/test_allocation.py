"""The distribution-plan solver: docs/allocation.md to the micro-USDT.

The property tests compare the fast solver with a brute-force reference written straight from
docs/allocation.md's words (every candidate active set tried with Fractions, de minimis
re-solved from scratch after each removal, rounding by a full sort) and check the invariants
the issue names.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from claims import allocation
from claims.allocation import deminimis, equation, rounding
from claims.allocation import (
    PLAN_COLUMNS,
    ClaimInput,
    allocate,
    base_and_already,
    plan_rows,
    plan_summary,
    settle_share,
)

U = 1_000_000  # micro-USDT per USDT


def C(cid, invested, withdrawn, paid_before=0, disputed=False):
    return ClaimInput(cid, invested, withdrawn, paid_before, disputed)


def by_id(result):
    return {r.claim_id: r for r in result.rows}


def shares(result):
    return {r.claim_id: r.allocation + r.reserved for r in result.rows}


def exact_share(result, row) -> Fraction:
    if row.excluded_de_minimis:
        return Fraction(0)
    return max(Fraction(0), result.rate * row.base - row.already)


def assert_balanced(result):
    assert result.allocated + result.reserved + result.undistributed == result.pool
    assert result.allocated == sum(r.allocation for r in result.rows)
    assert result.reserved == sum(r.reserved for r in result.rows)
    assert result.undistributed >= 0


@contextmanager
def small_cutoffs():
    """Force the partition and quickselect paths on tiny inputs."""
    saved = equation.SORT_CUTOFF, rounding.SELECT_CUTOFF
    equation.SORT_CUTOFF, rounding.SELECT_CUTOFF = 1, 1
    try:
        yield
    finally:
        equation.SORT_CUTOFF, rounding.SELECT_CUTOFF = saved


@contextmanager
def queue(mode: str):
    """De minimis queue: the kinetic list, the list that gives up at once, or the tournament."""
    saved = deminimis.QUEUE, deminimis.LIST_BUDGET, deminimis.LIST_BUDGET_BASE
    deminimis.QUEUE = "tournament" if mode == "tournament" else "list"
    if mode == "list-fallback":
        deminimis.LIST_BUDGET = deminimis.LIST_BUDGET_BASE = 0
    try:
        yield
    finally:
        deminimis.QUEUE, deminimis.LIST_BUDGET, deminimis.LIST_BUDGET_BASE = saved


QUEUES = ["list", "list-fallback", "tournament"]


# --------------------------------------------------------------------------------------------
# docs/allocation.md's worked examples
# --------------------------------------------------------------------------------------------

FOUR = [C("A", 1000 * U, 0), C("B", 1000 * U, 400 * U), C("C", 500 * U, 100 * U), C("D", 300 * U, 450 * U)]


def test_pro_rata_pool_500():
    res = allocate(FOUR, 500 * U, "pro-rata")
    assert shares(res) == {"A": 250 * U, "B": 150 * U, "C": 100 * U, "D": 0}
    assert res.rate == Fraction(1, 4)
    rows = by_id(res)
    assert rows["D"].net_winner and rows["D"].net_loss == 0
    assert not any(rows[x].net_winner for x in "ABC")
    assert (res.allocated, res.reserved, res.undistributed) == (500 * U, 0, 0)


def test_rising_tide_pool_500():
    res = allocate(FOUR, 500 * U, "rising-tide")
    assert res.rate == Fraction(2, 5)
    assert shares(res) == {"A": 400 * U, "B": 0, "C": 100 * U, "D": 0}
    assert by_id(res)["D"].net_winner
    assert_balanced(res)


HUBER = [C("1", 150_000 * U, 60_000 * U), C("2", 150_000 * U, 30_000 * U), C("3", 150_000 * U, 0)]


def test_sec_v_huber_pro_rata():
    res = allocate(HUBER, 60_000 * U, "pro-rata")
    assert shares(res) == {"1": 15_000 * U, "2": 20_000 * U, "3": 25_000 * U}


def test_sec_v_huber_rising_tide():
    res = allocate(HUBER, 60_000 * U, "rising-tide")
    assert shares(res) == {"1": 0, "2": 15_000 * U, "3": 45_000 * U}
    assert res.rate == Fraction(3, 10)


def test_three_claims_of_one_pool_one():
    res = allocate([C("a", U, 0), C("b", U, 0), C("c", U, 0)], U)
    assert [r.allocation for r in res.rows] == [333_334, 333_333, 333_333]
    # Same ids, other input order: the extra micro still goes to the smallest id.
    res = allocate([C("c", U, 0), C("a", U, 0), C("b", U, 0)], U)
    assert shares(res) == {"a": 333_334, "b": 333_333, "c": 333_333}


def test_rounding_ties_compare_ids_as_strings():
    # "10" < "9" as strings: "10" gets the extra micro-USDT.
    res = allocate([C("9", 1, 0), C("10", 1, 0)], 1)
    assert shares(res) == {"10": 1, "9": 0}


def test_de_minimis_example():
    res = allocate([C("A", 10 * U, 0), C("B", 9_500_000, 0), C("C", 9_900_000, 0)], 10 * U, min_payout=3_500_000)
    rows = by_id(res)
    assert rows["B"].excluded_de_minimis and rows["B"].allocation == 0
    assert (rows["A"].allocation, rows["C"].allocation) == (5_025_126, 4_974_874)
    assert not rows["A"].excluded_de_minimis and not rows["C"].excluded_de_minimis
    assert res.rate == Fraction(100, 199)  # 10 / (10 + 9.9)
    assert_balanced(res)


def test_catch_up_two_rounds_with_dispute():
    r1 = allocate([C("A", 1000 * U, 0), C("B", 600 * U, 0), C("C", 400 * U, 0, disputed=True)], 600 * U)
    rows = by_id(r1)
    assert (rows["A"].allocation, rows["B"].allocation) == (300 * U, 180 * U)
    assert (rows["C"].allocation, rows["C"].reserved) == (0, 120 * U)
    assert (r1.allocated, r1.reserved, r1.undistributed) == (480 * U, 120 * U, 0)

    # C settles at a net loss of 300: its share at the round's rate moves to allocated.
    base, already = base_and_already("pro-rata", 300 * U, 0, 0)
    settled = min(settle_share(r1.rate, base, already), rows["C"].reserved)
    released = rows["C"].reserved - settled
    assert (settled, released) == (90 * U, 30 * U)

    r2 = allocate(
        [C("A", 1000 * U, 0, 300 * U), C("B", 600 * U, 0, 180 * U), C("C", 300 * U, 0, 90 * U)],
        400 * U + released,
    )
    assert shares(r2) == {"A": 226_315_789, "B": 135_789_474, "C": 67_894_737}
    assert r2.allocated == 430 * U and r2.undistributed == 0


# --------------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------------


def test_pool_zero_gives_everyone_zero():
    res = allocate(FOUR, 0, "pro-rata")
    assert shares(res) == {"A": 0, "B": 0, "C": 0, "D": 0}
    assert res.rate == 0 and res.undistributed == 0


def test_pool_larger_than_losses_rate_one_rest_undistributed():
    # At r = 1 both methods pay every remaining net loss (rising-tide: invested − withdrawn).
    for method in ("pro-rata", "rising-tide"):
        res = allocate(FOUR, 5000 * U, method)
        assert res.rate == 1
        assert shares(res) == {"A": 1000 * U, "B": 600 * U, "C": 400 * U, "D": 0}
        assert res.undistributed == 3000 * U
        assert_balanced(res)


def test_pool_exactly_all_losses_is_rate_one():
    res = allocate(FOUR, 2000 * U)
    assert res.rate == 1 and res.undistributed == 0
    res = allocate(FOUR, 2000 * U - 1)
    assert res.rate < 1 and res.undistributed == 0


def test_no_claims_or_only_net_winners():
    res = allocate([], 7)
    assert res.rate == 1 and res.undistributed == 7 and list(res.rows) == []
    res = allocate([C("W", 5, 9)], 7)
    assert res.undistributed == 7 and res.rows[0].net_winner


def test_paid_before_above_target_gets_nothing_not_clawed_back():
    res = allocate([C("A", 100, 0, paid_before=90), C("B", 100, 0)], 20)
    # r = 0.2: A is already above 20 of 100, B gets the whole pool.
    assert shares(res) == {"A": 0, "B": 20}
    assert res.rate == Fraction(1, 5)


def test_de_minimis_at_rate_one_goes_to_undistributed():
    res = allocate([C("A", 10, 0), C("B", 2, 0)], 100, min_payout=5)
    assert shares(res) == {"A": 10, "B": 0} and by_id(res)["B"].excluded_de_minimis
    assert res.undistributed == 90


def test_de_minimis_excluding_everyone():
    res = allocate([C("A", 10, 0), C("B", 10, 0)], 4, min_payout=3)
    # 2 each < 3 → A removed (id), then B alone gets 4.
    assert shares(res) == {"A": 0, "B": 4}
    res = allocate([C("A", 2, 0), C("B", 2, 0)], 4, min_payout=3)
    assert shares(res) == {"A": 0, "B": 0} and res.undistributed == 4
    assert all(r.excluded_de_minimis for r in res.rows)


def test_disputed_is_reserved_and_de_minimis_applies():
    res = allocate([C("A", 100, 0, disputed=True), C("B", 300, 0)], 200)
    rows = by_id(res)
    assert (rows["A"].allocation, rows["A"].reserved, rows["B"].allocation) == (0, 50, 150)
    assert (res.allocated, res.reserved) == (150, 50)


def test_input_errors():
    with pytest.raises(ValueError, match="duplicate claim_id 'A'"):
        allocate([C("A", 1, 0), C("A", 2, 0)], 1)
    with pytest.raises(ValueError, match="withdrawn must not be negative"):
        allocate([C("A", 1, -1)], 1)
    with pytest.raises(TypeError):
        allocate([C("A", 1.5, 0)], 1)
    with pytest.raises(ValueError, match="unknown method"):
        allocate([C("A", 1, 0)], 1, "equal")
    with pytest.raises(ValueError, match="pool"):
        allocate([C("A", 1, 0)], -1)
    with pytest.raises(TypeError):
        allocate([C("A", 1, 0)], 1.0)


def test_records_without_optional_fields():
    from types import SimpleNamespace

    res = allocate([SimpleNamespace(claim_id="x", invested=10, withdrawn=0)], 5)
    assert res.rows[0].allocation == 5


def test_settle_share_floors_and_never_negative():
    assert settle_share(Fraction(1, 3), 10, 0) == 3  # 3.33… floored
    assert settle_share(Fraction(1, 3), 10, 4) == 0  # already above: nothing, no claw-back
    assert settle_share(Fraction(1), 10, 4) == 6
    with pytest.raises(ValueError):
        settle_share(Fraction(3, 2), 10, 0)


def test_plan_rows_and_summary():
    res = allocate(
        [C("A", 10 * U, 0), C("B", 9_500_000, 0), C("C", 9_900_000, 0, disputed=True), C("D", 1, 5)],
        10 * U,
        min_payout=3_500_000,
    )
    rows = list(plan_rows(res))
    assert tuple(rows[0]) == PLAN_COLUMNS
    assert rows == [
        {"claim_id": "A", "net_loss": "10", "allocation": "5.025126", "reserved": "0", "excluded": ""},
        {"claim_id": "B", "net_loss": "9.5", "allocation": "0", "reserved": "0", "excluded": "de_minimis"},
        {"claim_id": "C", "net_loss": "9.9", "allocation": "0", "reserved": "4.974874", "excluded": ""},
        {"claim_id": "D", "net_loss": "0", "allocation": "0", "reserved": "0", "excluded": "net_winner"},
    ]
    assert plan_summary(res) == {
        "pool": "10",
        "rate": "0.502512563",
        "allocated": "5.025126",
        "reserved": "4.974874",
        "undistributed": "0",
    }


def test_monotone_in_pool_breaks_by_one_micro_after_rounding():
    """Exact shares are monotone in the pool; rounded ones only up to one micro-USDT.

    Losses 1 / 3 / 3 micro-USDT. Pool 3: exact 3/7, 9/7, 9/7 → floors 0, 1, 1 and the extra
    micro goes to A (remainder 3/7) → 1, 1, 1. Pool 4: 4/7, 12/7, 12/7 → floors 0, 1, 1 and the
    two extra micros go to B and C (5/7 > 4/7) → 0, 2, 2: A loses its micro-USDT.
    """
    claims = [C("A", 1, 0), C("B", 3, 0), C("C", 3, 0)]
    p3, p4 = allocate(claims, 3), allocate(claims, 4)
    assert shares(p3) == {"A": 1, "B": 1, "C": 1}
    assert shares(p4) == {"A": 0, "B": 2, "C": 2}
    assert exact_share(p4, p4.rows[0]) > exact_share(p3, p3.rows[0])


# --------------------------------------------------------------------------------------------
# Reference implementation (brute force, straight from docs/allocation.md)
# --------------------------------------------------------------------------------------------


def ref_rate(items, pool):
    """items: [(base, already)]. The r in [0, 1] of Σ max(0, r·b − a) = pool."""
    if pool == 0:
        return Fraction(0)

    def f(r):
        return sum(max(Fraction(0), r * b - a) for b, a in items)

    if f(Fraction(1)) <= pool:
        return Fraction(1)
    for tau in sorted({Fraction(a, b) for b, a in items if b > 0 and a < b}):
        act = [(b, a) for b, a in items if b > 0 and Fraction(a, b) <= tau]
        r = Fraction(pool + sum(a for _, a in act), sum(b for b, _ in act))
        if r > tau and f(r) == pool:
            return r
    raise AssertionError("no rate found")


def ref_allocate(claims, pool, method, min_payout):
    terms = {c.claim_id: base_and_already(method, c.invested, c.withdrawn, c.paid_before) for c in claims}
    ids = sorted(terms)
    excluded = set()
    while True:
        live = [i for i in ids if i not in excluded]
        r = ref_rate([terms[i] for i in live], pool)
        exact = {i: max(Fraction(0), r * terms[i][0] - terms[i][1]) for i in live}
        small = [i for i in live if 0 < exact[i] < min_payout]
        if not small:
            break
        excluded.add(min(small, key=lambda i: (exact[i], i)))
    total = sum(exact.values())
    assert total.denominator == 1
    floors = {i: int(s) for i, s in exact.items()}
    k = int(total) - sum(floors.values())
    order = sorted(exact, key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:k]:
        floors[i] += 1
    out = {i: floors.get(i, 0) for i in ids}
    return r, out, excluded


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

ids_st = st.lists(
    st.one_of(st.integers(0, 40).map(str), st.sampled_from(["a", "B", "b", "KZR-0001", "KZR-01", "z9"])),
    unique=True,
    min_size=0,
    max_size=9,
)


@st.composite
def claim_sets(draw, max_amount=30, disputes=True):
    cids = draw(ids_st)
    out = []
    for cid in cids:
        inv = draw(st.integers(0, max_amount))
        wd = draw(st.integers(0, max_amount))
        pb = draw(st.one_of(st.just(0), st.integers(0, max_amount // 2)))
        d = draw(st.booleans()) if disputes else False
        out.append(C(cid, inv, wd, pb, d))
    return out


methods = st.sampled_from(["pro-rata", "rising-tide"])
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def remaining(claim, method):
    b, a = base_and_already(method, claim.invested, claim.withdrawn, claim.paid_before)
    return max(0, b - a)


@THOROUGH
@given(claim_sets(), st.integers(0, 200), methods, st.integers(0, 12), st.booleans(), st.sampled_from(QUEUES))
@example([C("A", 10, 0), C("B", 9, 0), C("C", 9, 1), C("D", 20, 11)], 10, "rising-tide", 4, True, "list")
def test_matches_reference(claims, pool, method, min_payout, partition, mode):
    with queue(mode):
        if partition:
            with small_cutoffs():
                res = allocate(claims, pool, method, min_payout)
        else:
            res = allocate(claims, pool, method, min_payout)
    r, expected, excluded = ref_allocate(claims, pool, method, min_payout)
    assert shares(res) == expected
    assert {x.claim_id for x in res.rows if x.excluded_de_minimis} == excluded
    # The rate is the reference's whenever it is determined (some claim is paid at it).
    if res.exact_total and res.rate < 1:
        assert res.rate == r
    assert_balanced(res)


@FAST
@given(claim_sets(), st.integers(0, 300), methods)
def test_sum_is_min_of_pool_and_remaining(claims, pool, method):
    res = allocate(claims, pool, method)
    assert res.exact_total == min(pool, sum(remaining(c, method) for c in claims))
    assert_balanced(res)


@FAST
@given(claim_sets(), st.integers(0, 300), methods, st.integers(0, 10))
def test_between_zero_and_remaining_loss(claims, pool, method, min_payout):
    res = allocate(claims, pool, method, min_payout)
    for c, row in zip(claims, res.rows):
        assert row.claim_id == c.claim_id  # input order
        assert 0 <= row.allocation and 0 <= row.reserved
        assert row.allocation + row.reserved <= remaining(c, method)
        assert row.reserved == 0 or c.disputed
        assert row.allocation == 0 or not c.disputed
        if row.net_winner:
            assert row.allocation + row.reserved == 0
    assert_balanced(res)


@FAST
@given(claim_sets(), st.integers(0, 300), methods, st.integers(0, 10), st.randoms(use_true_random=False))
def test_order_independent(claims, pool, method, min_payout, rnd):
    a = allocate(claims, pool, method, min_payout)
    perm = list(claims)
    rnd.shuffle(perm)
    with small_cutoffs():
        b = allocate(perm, pool, method, min_payout)
    assert by_id(a) == by_id(b)
    assert a.rate == b.rate or a.exact_total == 0


@FAST
@given(claim_sets(), st.integers(0, 200), st.integers(1, 100), methods)
def test_monotone_in_pool(claims, pool, extra, method):
    small = allocate(claims, pool, method)
    large = allocate(claims, pool + extra, method)
    assert large.rate >= small.rate
    for rs, rl in zip(small.rows, large.rows):
        # Exact shares never decrease as the pool grows ...
        assert exact_share(large, rl) >= exact_share(small, rs)
        # ... rounded ones may lose the extra micro-USDT of the remainder round, never more.
        assert rl.share >= rs.share - 1


@FAST
@given(claim_sets(disputes=False), st.integers(1, 200), st.integers(0, 200), methods, st.integers(0, 6))
def test_catch_up_never_claws_back(claims, pool1, pool2, method, min_payout):
    r1 = allocate(claims, pool1, method, min_payout)
    again = [C(c.claim_id, c.invested, c.withdrawn, c.paid_before + row.allocation) for c, row in zip(claims, r1.rows)]
    r2 = allocate(again, pool2, method, min_payout)
    for c, row in zip(again, r2.rows):
        assert row.allocation >= 0
        b, a = base_and_already(method, c.invested, c.withdrawn, c.paid_before)
        # A claim already at or above the new common target gets nothing more.
        if a >= r2.rate * b:
            assert row.allocation == 0
    assert_balanced(r2)


@FAST
@given(claim_sets(), st.integers(0, 300), methods, st.integers(1, 15))
def test_no_positive_share_below_minimum(claims, pool, method, min_payout):
    res = allocate(claims, pool, method, min_payout)
    for row in res.rows:
        s = exact_share(res, row)
        assert s == 0 or s >= min_payout
        assert row.share == 0 or row.share >= min_payout
        if row.excluded_de_minimis:
            assert row.share == 0
    assert_balanced(res)


# --------------------------------------------------------------------------------------------
# Larger randomized comparison (partition, kinetic tree, lazily sorted stream)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_larger_random_against_reference(seed):
    rnd = random.Random(seed)
    n = rnd.randint(20, 60)
    claims = []
    for k in range(n):
        inv = rnd.randint(1, 10**rnd.randint(1, 7))
        wd = rnd.randint(0, inv * 2) if rnd.random() < 0.8 else 0
        pb = rnd.randint(0, inv // 2) if rnd.random() < 0.4 else 0
        claims.append(C(f"c{rnd.randint(0, 10**6)}-{k}", inv, wd, pb, rnd.random() < 0.1))
    method = rnd.choice(["pro-rata", "rising-tide"])
    total = sum(remaining(c, method) for c in claims)
    pool = rnd.randint(0, max(1, total * 11 // 10))
    min_payout = rnd.choice([0, 1, 10, 1000, max(1, total // (2 * n))])
    with small_cutoffs():
        res = allocate(claims, pool, method, min_payout)
    r, expected, excluded = ref_allocate(claims, pool, method, min_payout)
    assert shares(res) == expected
    assert {x.claim_id for x in res.rows if x.excluded_de_minimis} == excluded
    assert_balanced(res)


def test_float_key_ties_are_settled_exactly():
    # Breakpoints 1/(2^53+1) and 1/(2^53+2) … round to the same float; the solve must still
    # order them exactly. Huge bases keep them apart only in exact arithmetic.
    big = 2**53
    claims = [C(f"k{j}", big + j, 0, paid_before=1) for j in range(1, 8)]
    claims += [C(f"z{j}", 3 * big + j, 0, paid_before=3 + j % 2) for j in range(8)]
    for pool in (1, 5, 17, 40, 10**6):
        with small_cutoffs():
            res = allocate(claims, pool, "pro-rata", min_payout=2)
        r, expected, excluded = ref_allocate(claims, pool, "pro-rata", 2)
        assert shares(res) == expected
        assert_balanced(res)


def test_many_equal_claims_de_minimis_is_not_quadratic():
    # 20 000 equal claims, pool 1000, minimum 1: 19 000 removals, ties by id.
    claims = [C(f"{k:05d}", 100, 0) for k in range(20_000)]
    res = allocate(claims, 1000, "pro-rata", 1)
    paid = [r.claim_id for r in res.rows if r.allocation]
    assert paid == [f"{k:05d}" for k in range(19_000, 20_000)]
    assert all(r.allocation == 1 for r in res.rows if r.allocation)
    assert res.excluded_count == 19_000


@pytest.mark.parametrize("mode", QUEUES)
def test_kinetic_many_removals_with_crossing_lines(mode):
    # Rising-tide with varied withdrawals: the smallest share changes owner as the rate rises.
    rnd = random.Random(7)
    claims = [C(f"c{k:04d}", rnd.randint(50, 150), rnd.randint(0, 120)) for k in range(200)]
    with small_cutoffs(), queue(mode):
        res = allocate(claims, 600, "rising-tide", 5)
    r, expected, excluded = ref_allocate(claims, 600, "rising-tide", 5)
    assert len(excluded) > 10
    assert shares(res) == expected
    assert {x.claim_id for x in res.rows if x.excluded_de_minimis} == excluded


@pytest.mark.parametrize("mode", QUEUES)
def test_kinetic_crossing_changes_the_next_removal(mode):
    # Catch-up round, minimum 26: as removals lift the rate the shares' lines cross, so the
    # claim to remove next is not the one that was smallest before. Found by searching against
    # the reference with the tournament's crossing certificates switched off.
    claims = [
        C("c0", 62, 0, 48), C("c1", 81, 0, 28), C("c2", 40, 0, 1),
        C("c3", 9, 0, 2), C("c4", 64, 0, 14), C("c5", 47, 0, 16),
    ]
    with queue(mode):
        res = allocate(claims, 80, "pro-rata", 26)
    assert shares(res) == {"c0": 0, "c1": 40, "c2": 0, "c3": 0, "c4": 40, "c5": 0}
    assert shares(res) == ref_allocate(claims, 80, "pro-rata", 26)[1]


@pytest.mark.parametrize("mode", QUEUES)
def test_kinetic_crossing_exactly_at_the_new_rate_uses_the_id_tie_break(mode):
    # Two shares become equal exactly at a rate the solve lands on; the smaller id must win
    # there (found with the "melt reached at equality" rule switched off).
    claims = [
        C("c0", 3, 0, 1), C("c1", 12, 0, 5), C("c2", 5, 0, 4), C("c3", 10, 0, 4),
        C("c4", 10, 0, 0), C("c5", 5, 0, 1), C("c6", 12, 0, 1), C("c7", 1, 0, 1),
    ]
    with queue(mode):
        res = allocate(claims, 10, "pro-rata", 6)
    expected = {f"c{k}": 0 for k in range(8)} | {"c6": 10}
    assert shares(res) == expected == ref_allocate(claims, 10, "pro-rata", 6)[1]


@pytest.mark.parametrize("mode", QUEUES)
def test_kinetic_equal_melt_times_keep_the_inclusive_one(mode):
    # Two certificates fail at the same rate, one at equality (its loser has the smaller id):
    # the node must remember that one (found with that preference switched off).
    claims = [
        C("j0", 8, 0, 1), C("c1", 1, 0, 0), C("g2", 6, 0, 0), C("i3", 1, 0, 0),
        C("i4", 2, 0, 0), C("i5", 11, 0, 8), C("i6", 6, 0, 1), C("j7", 6, 0, 0),
    ]
    with queue(mode):
        res = allocate(claims, 9, "pro-rata", 6)
    expected = {c.claim_id: 0 for c in claims} | {"j0": 7}
    assert shares(res) == expected == ref_allocate(claims, 9, "pro-rata", 6)[1]


@pytest.mark.parametrize("mode", QUEUES)
def test_de_minimis_activates_breakpoints_in_exact_order_across_chunks(mode):
    # Removals lift the rate past breakpoints that the first solve had set aside, unsorted, in
    # several partition chunks; they must be reached in ascending order (found with the lazy
    # per-chunk sort switched off). Pool 6, minimum 9: in the end nobody reaches 9.
    claims = [
        C("c00", 1, 17), C("c01", 18, 19), C("c02", 26, 19), C("c03", 11, 14), C("c04", 20, 0),
        C("c05", 26, 7), C("c06", 21, 5), C("c07", 18, 18), C("c08", 6, 27),
    ]
    with small_cutoffs(), queue(mode):
        res = allocate(claims, 6, "rising-tide", 9)
    assert shares(res) == {c.claim_id: 0 for c in claims}
    assert res.undistributed == 6
    assert shares(res) == ref_allocate(claims, 6, "rising-tide", 9)[1]


@pytest.mark.parametrize("mode", QUEUES)
def test_de_minimis_equal_shares_remove_the_smaller_id_first(mode):
    # Catch-up round: "b" and "a" both stand at 100 (< 105); "a" goes first although it comes
    # second in the input, and then "b" is lifted to 109 and stays.
    claims = [C("X", 100_000, 0), C("b", 10_000, 0, 100), C("a", 10_000, 0, 100)]
    with queue(mode):
        res = allocate(claims, 2200, "pro-rata", 105)
    assert shares(res) == {"X": 2091, "b": 109, "a": 0}
    assert [r.claim_id for r in res.rows if r.excluded_de_minimis] == ["a"]


def test_kinetic_list_insert_breaks_share_ties_by_id():
    # White-box: a claim activated mid-way whose share equals the current smallest one must be
    # placed by claim id (the end-to-end tie is too rare for random search to reach).
    ids, base, already = ["m", "k", "z"], [10, 20, 10], [0, 10, 0]
    q = deminimis.KineticList(ids, base, already, [0, 2], 1, 1)  # rate 1: shares 10, 10
    assert q.best() == 0  # "m" < "z"
    q.insert(1)  # "k": 20·1 − 10 = 10, ties, smallest id
    assert q.best() == 1
    q.delete(1)
    assert q.best() == 0


def test_breakpoints_in_one_float_are_split_exactly():
    # Ten breakpoints 1/2 + d/2^61 (d in -3..3) all round to the float 0.5; with the pool
    # between 400 and 410 the rate falls among them. The partition must cut between floats and
    # decide with integers: a cut at 0.5 itself counts the claims just above 1/2 as active.
    big = 2**60
    claims = []
    for j, d in enumerate([-3, 2, -1, 3, 0, 1, -2, 2, -3, 1]):
        b = big + 2 * j + (d % 2)
        claims.append(C(f"h{j}", b, 0, (b + d) // 2))  # already/base = 1/2 + d/(2b)
    claims += [C("n1", 1000, 0, 100), C("n2", 1000, 0, 900)]
    for pool in range(395, 411):
        with small_cutoffs():
            res = allocate(claims, pool, "pro-rata")
        assert shares(res) == ref_allocate(claims, pool, "pro-rata", 0)[1]
        assert_balanced(res)


# --------------------------------------------------------------------------------------------
# Fast paths: ids known unique, no garbage collection during a solve, remainder ties
# --------------------------------------------------------------------------------------------


@FAST
@given(claim_sets(), st.integers(0, 200), methods, st.integers(0, 12))
def test_unique_ids_skips_only_the_duplicate_check(claims, pool, method, min_payout):
    a = allocate(claims, pool, method, min_payout)
    b = allocate(claims, pool, method, min_payout, unique_ids=True)
    assert list(b.rows) == list(a.rows) and b.rate == a.rate


def test_unique_ids_keeps_the_other_checks():
    with pytest.raises(TypeError):
        allocate([C("A", 1.5, 0)], 1, unique_ids=True)
    with pytest.raises(ValueError):
        allocate([C("A", -1, 0)], 1, unique_ids=True)
    with pytest.raises(ValueError, match="duplicate"):
        allocate([C("A", 1, 0), C("A", 2, 0)], 1)


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collection_is_restored(enabled):
    import gc

    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        allocate(FOUR, 500 * U)
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError):
            allocate([C("A", 1, 0), C("A", 2, 0)], 1)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("n, pool", [(40, 1), (40, 3), (40, 37), (3000, 7), (3000, 2990)])
def test_remainder_ties_by_id_as_strings_few_or_many(n, pool):
    # n equal claims: every remainder ties, so the pool's last micro-USDTs go by id order
    # ("10" < "9"); few winners (a partial selection) or nearly all (a full sort).
    claims = [C(str(k), 7, 0) for k in range(n)]
    for partition in (False, True):
        if partition:
            with small_cutoffs():
                res = allocate(claims, pool, "pro-rata")
        else:
            res = allocate(claims, pool, "pro-rata")
        _, expected, _ = ref_allocate(claims, pool, "pro-rata", 0)
        assert shares(res) == expected
        assert_balanced(res)
    # ... also when only some claims are active (net winners and paid-up claims in between).
    mixed = claims + [C(f"w{k}", 1, 5) for k in range(n // 4)] + [C(f"p{k}", 7, 0, 7) for k in range(n // 4)]
    res = allocate(mixed, pool, "rising-tide")
    _, expected, _ = ref_allocate(mixed, pool, "rising-tide", 0)
    assert shares(res) == expected


# --------------------------------------------------------------------------------------------
# allocate_columns (a round's claims as columns) is allocate on the same claims
# --------------------------------------------------------------------------------------------


def _as_columns(claims, *, optional: bool = True):
    pb = [c.paid_before for c in claims]
    dis = [c.disputed for c in claims]
    return ([c.claim_id for c in claims], [c.invested for c in claims],
            [c.withdrawn for c in claims],
            None if optional and not any(pb) else pb, None if optional and not any(dis) else dis)


@FAST
@given(claim_sets(), st.integers(0, 300), methods, st.integers(0, 12), st.booleans())
def test_columns_give_the_same_plan(claims, pool, method, min_payout, optional):
    a = allocate(claims, pool, method, min_payout)
    b = allocation.allocate_columns(*_as_columns(claims, optional=optional), pool, method,
                                    min_payout, unique_ids=True)
    assert list(b.rows) == list(a.rows) and b.rate == a.rate
    assert (b.allocated, b.reserved, b.undistributed) == (a.allocated, a.reserved, a.undistributed)
    assert b.net_losses == [r.net_loss for r in a.rows]
    assert b.excluded_indices == {i for i, r in enumerate(a.rows) if r.excluded_de_minimis}


@pytest.mark.parametrize("seed", range(6))
def test_columns_give_the_same_plan_larger(seed):
    rnd = random.Random(1000 + seed)
    claims = [C(f"c{k}", inv, rnd.randint(0, inv * 2) if rnd.random() < 0.8 else 0,
                rnd.randint(0, inv // 2) if rnd.random() < 0.4 else 0, rnd.random() < 0.1)
              for k, inv in enumerate(rnd.randint(1, 10**7) for _ in range(3000))]
    for method in ("pro-rata", "rising-tide"):
        for min_payout in (0, 50_000):
            pool = rnd.randint(1, 10**9)
            a = allocate(claims, pool, method, min_payout)
            b = allocation.allocate_columns(*_as_columns(claims), pool, method, min_payout)
            assert list(b.rows) == list(a.rows) and b.rate == a.rate


def test_columns_keep_the_checks():
    with pytest.raises(TypeError):
        allocation.allocate_columns(["A"], [1.5], [0], None, None, 1)
    with pytest.raises(ValueError):
        allocation.allocate_columns(["A"], [-1], [0], None, None, 1)
    with pytest.raises(ValueError, match="duplicate"):
        allocation.allocate_columns(["A", "A"], [1, 2], [0, 0], None, None, 1)
    with pytest.raises(ValueError, match="unknown method"):
        allocation.allocate_columns(["A"], [1], [0], None, None, 1, "equal")
    with pytest.raises(TypeError, match="pool"):
        allocation.allocate_columns(["A"], [1], [0], None, None, 1.0)
    with pytest.raises(ValueError, match="lengths"):
        allocation.allocate_columns(["A", "B"], [1], [0], None, None, 1)
