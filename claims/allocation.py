"""The distribution plan: who gets how much of a pool, exactly (DESIGN.md, "Allocation").

Every claim i has a ``base_i`` and an ``already_i`` (integers of micro-USDT, chosen by the
method); one common rate ``r`` in [0, 1] solves

    Σ max(0, r · base_i − already_i) = pool

+-----------------+--------------------------------------+------------------------------+
| method          | base_i                               | already_i                    |
+=================+======================================+==============================+
| ``pro-rata``    | net loss L_i = max(0, inv − wd)      | paid_before_i                |
| ``rising-tide`` | invested_i (net-loss claims only)    | withdrawn_i + paid_before_i  |
+-----------------+--------------------------------------+------------------------------+

If even ``r = 1`` leaves part of the pool unused, ``r = 1`` and the rest is ``undistributed``.
Disputed claims are solved as if approved; their share is ``reserved``. De minimis: while some
claim has an exact share ``0 < share < min_payout``, the one with the smallest such share (ties:
smallest claim id, compared as strings) is removed and the pool re-solved among the rest.
Rounding: every exact share is floored to a whole micro-USDT, then the largest fractional
remainders (ties: claim id ascending, as strings) get one more micro-USDT until the sum equals
the exact total, which is ``pool`` when ``r < 1`` and ``Σ (base_i − already_i)`` over the claims
still in the plan when ``r = 1`` (an integer either way).

Arithmetic is exact throughout: integers, one ``Fraction`` for the rate. Floats appear only to
*sort* breakpoints: a correctly rounded quotient is monotone, and a split "fl(t) <= v" is an
exact split at the rational halfway between v and the next float; every decision is an integer
comparison.

Complexity, n claims:

* Solve: the breakpoints ``t_i = already_i / base_i`` are split around two sampled pivots
  that bracket an estimate of ``r`` (selection on the sorted-breakpoint order: every pass
  evaluates the exact equation at the pivots and drops the sides that cannot hold ``r``), then
  the last few thousand are sorted exactly. O(n) when the pivots split well, O(n log n) at worst (a pass that keeps more than
  3/4 hands the rest to an exact sort). No per-claim Fraction is ever built: the equation is
  evaluated with integer sums of ``base`` and ``already`` over the active set.
* De minimis: each removal re-solves incrementally — the removed claim leaves the integer sums,
  the rate can only rise, so breakpoints are activated from a lazily sorted stream with one
  pointer that only moves forward (O(n) activations over the whole run, O(n log n) to sort the
  inactive part once, and only if needed). Finding the smallest positive share is a
  priority-queue problem whose keys are lines in ``r``: when every candidate has
  ``already = 0`` (first pro-rata round) the order never changes and a sorted list does it in
  O(1) per removal. Otherwise a kinetic sorted list (adjacent pairs certify their order until
  the rate at which the flatter line passes under; those rates wait in a heap) gives O(1) per
  removal plus O(log c) per crossing actually passed, and crossings are rare in practice
  (shares from one earlier round are nearly parallel lines). Crossings are O(c²) in theory,
  so once they outnumber removals two to one it hands over to a kinetic tournament tree (each
  node keeps the winner at the current rate and the rate at which that stops being true):
  O(log c) per removal or insertion plus O(log c) per certificate failure, and a node's winner
  only moves along the lower envelope of its subtree's lines, so failures are O(c log c).
  Claims whose share reaches ``min_payout`` are never candidates again (shares only grow), so
  c counts the claims that ever sit below the minimum. Worst case
  O(n log n + (k + c log c) log c) for k removals, versus O(n·k) for a naive re-solve.
* Rounding: one integer floor and one remainder per paid claim, the K-th largest remainder by quickselect
  (expected O(n)), ties sorted by claim id (only the ties, and a partial selection when few
  of them get the extra micro-USDT).

Constant factors: columns of plain ints (no per-claim objects), C-level ``map`` passes, the
cyclic garbage collector paused for the solve (its full passes over the caller's million
input records would cost more than some phases), and ``unique_ids=True`` for callers whose
ids are keys already (a round's claims) so the duplicate check's set is not built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
import math
from math import gcd
from heapq import heapify, heappop, heappush, nsmallest
from itertools import compress, repeat
from operator import add, attrgetter, eq, floordiv, gt, mod, mul, sub, truediv
from typing import Any

from claims.gc_pause import gc_paused
from claims.money import format_amount, format_rate

PRO_RATA = "pro-rata"
RISING_TIDE = "rising-tide"
METHODS = (PRO_RATA, RISING_TIDE)

# Columns of plan.csv (CONTRACT.md "Plan CSV": these four first, then extras).
PLAN_COLUMNS = ("claim_id", "net_loss", "allocation", "reserved", "excluded")

# Below this many undecided breakpoints the solve sorts them exactly instead of partitioning
# further; tests lower it to exercise the partition on small inputs.
_SORT_CUTOFF = 2048
# Same for the K-th largest remainder.
_SELECT_CUTOFF = 2048
# De minimis queue: "list" (kinetic sorted list, falling back to the tournament after
# _LIST_BUDGET units of work per candidate) or "tournament" (tests force each).
_QUEUE = "list"
_LIST_BUDGET = 2  # swaps / insertion steps allowed per removal (plus the base) ...
_LIST_BUDGET_BASE = 4096  # ... before the list hands over to the tournament
_LIST_WALK = 64  # longest insertion walk before the list gives up


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimInput:
    """One claim as the solver sees it; every amount an int of micro-USDT."""

    claim_id: str
    invested: int
    withdrawn: int
    paid_before: int = 0
    disputed: bool = False


@dataclass(frozen=True, slots=True)
class ClaimShare:
    """One claim's line of the plan.

    ``allocation`` is paid (approved claims), ``reserved`` is held (disputed claims); at most
    one of them is non-zero. ``base`` and ``already`` are the method's terms, so the exact share
    is ``max(0, rate · base − already)`` for a claim that is not excluded.
    """

    claim_id: str
    net_loss: int
    base: int
    already: int
    allocation: int
    reserved: int
    excluded_de_minimis: bool
    net_winner: bool
    disputed: bool

    @property
    def share(self) -> int:
        return self.allocation + self.reserved


class _Rows(Sequence):
    """The per-claim lines in input order, built on access (1M objects cost more than a solve)."""

    __slots__ = ("_r",)

    def __init__(self, result: AllocationResult) -> None:
        self._r = result

    def __len__(self) -> int:
        return len(self._r._ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        r = self._r
        if i < 0:
            i += len(r._ids)
        loss = r._loss[i]
        return ClaimShare(
            claim_id=r._ids[i],
            net_loss=loss,
            base=r._base[i],
            already=r._already[i],
            allocation=r._alloc[i],
            reserved=r._reserve[i],
            excluded_de_minimis=i in r._excluded,
            net_winner=loss == 0,
            disputed=bool(r._disputed[i]),
        )

    def __iter__(self) -> Iterator[ClaimShare]:
        for i in range(len(self)):
            yield self[i]


class AllocationResult:
    """A solved plan: the exact rate, per-claim lines (``rows``, input order) and totals.

    ``allocated + reserved + undistributed == pool`` always. ``exact_total`` is what the rate
    hands out (``allocated + reserved``).
    """

    def __init__(
        self,
        *,
        method: str,
        pool: int,
        min_payout: int,
        rate: Fraction,
        ids: list[str],
        loss: list[int],
        base: list[int],
        already: list[int],
        disputed: list[bool],
        alloc: list[int],
        reserve: list[int],
        excluded: set[int],
    ) -> None:
        self.method = method
        self.pool = pool
        self.min_payout = min_payout
        self.rate = rate
        self._ids, self._loss, self._base, self._already = ids, loss, base, already
        self._disputed, self._alloc, self._reserve, self._excluded = disputed, alloc, reserve, excluded
        self.allocated = sum(alloc)
        self.reserved = sum(reserve)
        self.undistributed = pool - self.allocated - self.reserved
        self.rows: Sequence[ClaimShare] = _Rows(self)

    @property
    def exact_total(self) -> int:
        return self.allocated + self.reserved

    @property
    def excluded_count(self) -> int:
        return len(self._excluded)

    @property
    def net_winner_count(self) -> int:
        return self._loss.count(0)

    @property
    def claim_ids(self) -> list[str]:
        return self._ids

    @property
    def net_losses(self) -> list[int]:
        """Each claim's net loss ``max(0, invested − withdrawn)`` in input order (0: a net
        winner)."""
        return self._loss

    @property
    def excluded_indices(self) -> set[int]:
        """Input positions of the claims removed by the de minimis rule."""
        return self._excluded

    @property
    def allocations(self) -> list[int]:
        """Paid amounts in input order (0 for disputed claims)."""
        return self._alloc

    @property
    def reserves(self) -> list[int]:
        """Reserved amounts in input order (0 for approved claims)."""
        return self._reserve

    def __repr__(self) -> str:
        return (
            f"AllocationResult(method={self.method!r}, pool={self.pool}, rate={self.rate}, "
            f"allocated={self.allocated}, reserved={self.reserved}, "
            f"undistributed={self.undistributed}, claims={len(self._ids)})"
        )


# --------------------------------------------------------------------------------------------
# The method's terms
# --------------------------------------------------------------------------------------------


def net_loss(invested: int, withdrawn: int) -> int:
    return invested - withdrawn if invested > withdrawn else 0


def base_and_already(method: str, invested: int, withdrawn: int, paid_before: int = 0) -> tuple[int, int]:
    """``(base, already)`` of one claim under ``method`` (0 base for a net winner)."""
    _check_method(method)
    loss = net_loss(invested, withdrawn)
    if method == PRO_RATA:
        return loss, paid_before
    return (invested if loss else 0), withdrawn + paid_before


def settle_share(rate: Fraction, base_settled: int, already: int) -> int:
    """A disputed claim's share recomputed on the settled amount at the round's rate.

    ``floor(max(0, rate · base_settled − already))`` micro-USDT. Rounded *down*: the round's
    other lines are already fixed, so the settlement never creates money the round did not
    reserve; the caller caps the result at the claim's reserve (DESIGN: "never above its
    reserve") and releases the rest.
    """
    if base_settled < 0 or already < 0:
        raise ValueError("amounts must not be negative")
    rate = Fraction(rate)
    if not 0 <= rate <= 1:
        raise ValueError("rate must be in [0, 1]")
    num = rate.numerator * base_settled - already * rate.denominator
    return num // rate.denominator if num > 0 else 0


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")


# --------------------------------------------------------------------------------------------
# The solve
# --------------------------------------------------------------------------------------------


def allocate(
    claims: Iterable[Any],
    pool: int,
    method: str = PRO_RATA,
    min_payout: int = 0,
    *,
    unique_ids: bool = False,
) -> AllocationResult:
    """Solve the plan for ``claims`` (objects with ``claim_id, invested, withdrawn`` and
    optionally ``paid_before``, ``disputed`` — e.g. :class:`ClaimInput`).

    Raises ``ValueError`` for an unknown method, a negative amount or a duplicate claim id,
    ``TypeError`` for an amount that is not an ``int``. ``unique_ids=True`` is the caller's
    word that the ids are distinct (database keys, a file already checked line by line): the
    duplicate check — a set of every id, a sixth of a 1M-claim solve — is skipped.
    """
    _check_method(method)
    with gc_paused():
        return _allocate(claims, pool, method, min_payout, unique_ids)


def allocate_columns(
    ids: list[str],
    invested: list[int],
    withdrawn: list[int],
    paid_before: list[int] | None,
    disputed: list[bool] | None,
    pool: int,
    method: str = PRO_RATA,
    min_payout: int = 0,
    *,
    unique_ids: bool = False,
) -> AllocationResult:
    """:func:`allocate` for claims given as columns (lists in claim order: ``ids`` and the
    amounts; ``paid_before`` / ``disputed`` None for all 0 / all False), for callers that
    hold their claims that way (a round's claims read from the database): no record per
    claim is built. Same rules, checks and result as :func:`allocate` on the same claims.
    The lists become the result's (the caller must not change them afterwards)."""
    _check_method(method)
    with gc_paused():
        _check_pool(pool, min_payout)
        n = len(ids)
        pb = [0] * n if paid_before is None else paid_before
        dis = [False] * n if disputed is None else disputed
        if not len(invested) == len(withdrawn) == len(pb) == len(dis) == n:
            raise ValueError("columns of different lengths")
        return _allocate_columns(ids, invested, withdrawn, pb, dis, pool, method, min_payout,
                                 unique_ids)


def _check_pool(pool: int, min_payout: int) -> None:
    for name, value in (("pool", pool), ("min_payout", min_payout)):
        if type(value) is not int:
            raise TypeError(f"{name} must be an int of micro-USDT")
        if value < 0:
            raise ValueError(f"{name} must not be negative")


def _allocate(claims: Iterable[Any], pool: int, method: str, min_payout: int, unique_ids: bool) -> AllocationResult:
    _check_pool(pool, min_payout)
    claims = claims if isinstance(claims, (list, tuple)) else list(claims)
    ids = list(map(attrgetter("claim_id"), claims))
    inv = list(map(attrgetter("invested"), claims))
    wd = list(map(attrgetter("withdrawn"), claims))
    pb = _column(claims, "paid_before", 0)
    disputed = _column(claims, "disputed", False)
    return _allocate_columns(ids, inv, wd, pb, disputed, pool, method, min_payout, unique_ids)


def _allocate_columns(ids: list[str], inv: list[int], wd: list[int], pb: list[int],
                      disputed: list, pool: int, method: str, min_payout: int,
                      unique_ids: bool) -> AllocationResult:
    n = len(ids)
    _validate(ids, inv, wd, pb, unique_ids)

    loss = [i - w if i > w else 0 for i, w in zip(inv, wd)]
    if method == PRO_RATA:
        base, already = loss, pb
    else:
        base = [i if l_ else 0 for i, l_ in zip(inv, loss)]
        already = list(map(add, wd, pb)) if any(pb) else wd

    share, N, D, excluded = _solve(ids, base, already, pool, min_payout)
    if any(disputed):
        reserve = list(map(mul, share, map(bool, disputed)))  # share · True / share · False
        alloc = list(map(sub, share, reserve))
    else:
        alloc, reserve = share, [0] * n
    return AllocationResult(
        method=method,
        pool=pool,
        min_payout=min_payout,
        rate=Fraction(N, D),
        ids=ids,
        loss=loss,
        base=base,
        already=already,
        disputed=disputed,
        alloc=alloc,
        reserve=reserve,
        excluded=excluded,
    )


def _column(claims: Sequence[Any], attr: str, default: Any) -> list:
    """One attribute of every record (``default`` where a record lacks it)."""
    try:
        return list(map(attrgetter(attr), claims))
    except AttributeError:
        return [getattr(c, attr, default) for c in claims]


def _validate(ids: list, inv: list[int], wd: list[int], pb: list[int], unique_ids: bool = False) -> None:
    for name, col in (("invested", inv), ("withdrawn", wd), ("paid_before", pb)):
        if not set(map(type, col)) <= {int}:
            raise TypeError(f"{name} must be ints of micro-USDT")
        if col and min(col) < 0:
            raise ValueError(f"{name} must not be negative")
    if not set(map(type, ids)) <= {str}:
        raise TypeError("claim_id must be a string")
    if not unique_ids and len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(x for x in ids if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate claim_id {dup!r}")


def _solve(
    ids: list[str], base: list[int], already: list[int], pool: int, min_payout: int
) -> tuple[list[int], int, int, set[int]]:
    """Return (rounded share per claim in input order, rate numerator, denominator, excluded
    input indices)."""
    n = len(base)
    if pool == 0:
        return [0] * n, 0, 1, set()
    # The claims that can ever receive something (already < base, so base > 0). From here on
    # a claim is a handle h, its position in ``pot``; pb / pa are its base / already.
    pot = list(compress(range(n), map(gt, base, already)))
    if not pot:
        return [0] * n, 1, 1, set()
    if len(pot) == n:
        pb, pa = base, already
    else:
        pb = list(map(base.__getitem__, pot))
        pa = list(map(already.__getitem__, pot))
    hids = _HandleIds(ids, pot)
    if not any(pa):  # every breakpoint is 0 (first pro-rata round): all claims active
        active: list[int] | range = range(len(pot))
        stream = _Stream([], pb, pa, sorted_first=True)
        A, B = 0, sum(pb)
    else:
        active, stream, A, B = _select(pb, pa, pool)
    excluded: set[int] = set()
    if min_payout > 0:
        active, A, B, removed = _de_minimis(hids, pb, pa, pool, min_payout, active, stream, A, B)
        excluded = set(map(pot.__getitem__, removed))
    out = [0] * n
    if not active:  # every claim was below the minimum
        return out, 1, 1, excluded
    if pool + A >= B:  # r = 1: everyone gets the whole remaining loss
        N = D = 1
        total = B - A
    else:
        N, D = pool + A, B
        g = gcd(N, D)
        N //= g
        D //= g
        total = pool
    shares = _round(hids, pb, pa, active, N, D, total)
    if len(pot) == n and len(active) == n and _is_range(active):
        return shares, N, D, excluded
    for h, s in zip(active, shares):
        out[pot[h]] = s
    return out, N, D, excluded


def _is_range(xs: list[int] | range) -> bool:
    """``xs == range(len(xs))`` (O(1) for a range: the first pro-rata round's active set)."""
    if isinstance(xs, range):
        return xs.start == 0 and xs.step == 1
    return all(map(eq, xs, range(len(xs))))


class _HandleIds:
    """Claim ids by handle, built on first use (only de minimis and rounding ties need them)."""

    __slots__ = ("_ids", "_pot", "_list")

    def __init__(self, ids: list[str], pot: list[int]) -> None:
        self._ids, self._pot, self._list = ids, pot, None

    def __getitem__(self, h: int) -> str:
        return self._ids[self._pot[h]]

    def as_list(self) -> list[str]:
        if self._list is None:
            self._list = (
                self._ids if len(self._pot) == len(self._ids) else list(map(self._ids.__getitem__, self._pot))
            )
        return self._list


def _cut(v: float) -> tuple[int, int]:
    """The exact rational halfway between float ``v`` and the next float up.

    Round-to-nearest makes it a clean cut: ``fl(t) <= v`` implies ``t <= cut`` and
    ``fl(t) > v`` implies ``t >= cut`` (a t exactly on the cut adds 0 to f there either way).
    """
    n1, d1 = v.as_integer_ratio()
    n2, d2 = math.nextafter(v, math.inf).as_integer_ratio()
    return n1 * d2 + n2 * d1, 2 * d1 * d2


def _select(pb: list[int], pa: list[int], pool: int) -> tuple[list[int], _Stream, int, int]:
    """Find the active set of the equation: the handles with ``t_h = pa_h / pb_h < r``.

    Returns (active handles, stream of the inactive ones in ascending t, A = Σ pa, B = Σ pb
    over the active set); then ``r = min(1, (pool + A) / B)``.

    Each pass estimates r from an evenly spaced sample, brackets it between two sampled
    breakpoints v1 <= v2, splits the undecided handles in one sweep of float comparisons (cut
    exactly between floats, see ``_cut``) and decides each side with the exact equation.
    """
    tk = list(map(truediv, pa, pb))  # correctly rounded, so monotone in the exact quotient
    A = B = 0
    active_chunks: list[list[int]] = []
    inactive_chunks: list[list[int]] = []  # each holds larger t than every later one
    U: list[int] | range = range(len(pb))
    while len(U) > _SORT_CUTOFF:
        v1, v2 = _bracket(U, tk, pb, pa, pool, A, B)
        keys = tk if isinstance(U, range) else list(map(tk.__getitem__, U))
        lo = list(compress(U, map(v1.__ge__, keys)))  # t <= cut(v1)
        Blo = B + sum(map(pb.__getitem__, lo))
        Alo = A + sum(map(pa.__getitem__, lo))
        n1, d1 = _cut(v1)
        if n1 * Blo - Alo * d1 >= pool * d1:
            # f(cut1) >= pool: r <= cut1, everything above gets nothing.
            inactive_chunks.append(list(compress(U, map(v1.__lt__, keys))))
            newU = lo
        else:
            A, B = Alo, Blo
            active_chunks.append(lo)
            rest = list(compress(U, map(v1.__lt__, keys)))
            rkeys = list(map(tk.__getitem__, rest))
            mid = list(compress(rest, map(v2.__ge__, rkeys)))  # cut1 <= t <= cut2
            Bm = B + sum(map(pb.__getitem__, mid))
            Am = A + sum(map(pa.__getitem__, mid))
            n2, d2 = _cut(v2)
            if n2 * Bm - Am * d2 < pool * d2:
                # f(cut2) < pool: r > cut2, the middle is active too.
                A, B = Am, Bm
                active_chunks.append(mid)
                newU = list(compress(rest, map(v2.__lt__, rkeys)))
            else:
                inactive_chunks.append(list(compress(rest, map(v2.__lt__, rkeys))))
                newU = mid
        if 4 * len(newU) > 3 * len(U):
            # A poor split (float ties, skewed sample): finish with the exact sort. Every pass
            # before this kept <= 3/4, so partitioning costs O(n) in all and the sort O(n log n).
            U = newU
            break
        U = newU
    # Exact finish over the remaining undecided breakpoints.
    U = sorted(U, key=_exact_key(pb, pa, U))
    k = 0
    for i in U:
        b, a = pb[i], pa[i]
        # Add the next breakpoint while f(t_next) < pool, i.e. a·B − A·b < pool·b.
        if a * B - A * b < pool * b:
            A += a
            B += b
            k += 1
        else:
            break
    active = [i for chunk in active_chunks for i in chunk]
    active.extend(U[:k])
    chunks = [U[k:]] + inactive_chunks[::-1]
    return active, _Stream(chunks, pb, pa, sorted_first=True), A, B



def _bracket(U, tk: list[float], pb: list[int], pa: list[int], pool: int, A: int, B: int) -> tuple[float, float]:
    """Two sampled breakpoints around an estimate of r (floats: only a guess, never a decision)."""
    step = max(1, len(U) // 4096)
    sample = sorted((tk[i], pb[i], pa[i]) for i in U[::step])
    scale = len(U) / len(sample)
    Bs, As = float(B), float(A)
    j = len(sample)
    for k, (t, b, a) in enumerate(sample):
        if t * Bs - As >= pool:  # f at this breakpoint already reaches the pool
            j = k
            break
        Bs += scale * b
        As += scale * a
    g = 2 * int(len(sample) ** 0.5) + 1
    lo = sample[max(0, j - g)][0]
    hi = sample[min(len(sample) - 1, j + g)][0]
    return lo, hi


def _exact_key(base: list[int], already: list[int], items: list[int]):
    """An integer sort key equal in order to ``already/base``, ties exactly on equal fractions."""
    if not items:
        return None
    maxb = max(map(base.__getitem__, items))
    shift = 2 * maxb.bit_length() + 2  # distinct fractions differ by ≥ 1/maxb² > 2^-shift
    return lambda i: (already[i] << shift) // base[i]


class _Stream:
    """The inactive claims in ascending breakpoint, each chunk sorted exactly when first reached."""

    def __init__(self, chunks: list[list[int]], base: list[int], already: list[int], sorted_first: bool) -> None:
        self._chunks = [c for c in chunks if c]
        self._sorted_first = sorted_first and bool(chunks and chunks[0])
        self._base, self._already = base, already
        self._cur: list[int] = []
        self._pos = 0
        self._next = 0

    def empty_hint(self) -> bool:
        return self._pos >= len(self._cur) and self._next >= len(self._chunks)

    def peek(self) -> int | None:
        while self._pos >= len(self._cur):
            if self._next >= len(self._chunks):
                return None
            chunk = self._chunks[self._next]
            if not (self._next == 0 and self._sorted_first):
                chunk = sorted(chunk, key=_exact_key(self._base, self._already, chunk))
            self._cur, self._pos = chunk, 0
            self._next += 1
        return self._cur[self._pos]

    def pop(self) -> None:
        self._pos += 1


# --------------------------------------------------------------------------------------------
# De minimis
# --------------------------------------------------------------------------------------------


def _de_minimis(
    hids: _HandleIds,
    base: list[int],
    already: list[int],
    pool: int,
    m: int,
    active: list[int],
    stream: _Stream,
    A: int,
    B: int,
) -> tuple[list[int], int, int, set[int]]:
    def rate() -> tuple[int, int]:
        if B == 0 or pool + A >= B:
            return 1, 1
        return pool + A, B

    N, D = rate()
    mD = m * D
    # share < m  ⇔  N·base − already·D < m·D  (C-level maps: this scans every active claim)
    nums = map(sub, map(N.__mul__, map(base.__getitem__, active)), map(D.__mul__, map(already.__getitem__, active)))
    cands = list(compress(active, map(mD.__gt__, nums)))
    if not cands:
        return active, A, B, set()
    ids = hids.as_list()
    pq: _StaticQueue | _KineticList | _KineticTournament
    if stream.empty_hint() and not any(already[i] for i in cands):
        pq = _StaticQueue(ids, base, cands)
    elif _QUEUE == "tournament":
        pq = _KineticTournament(ids, base, already, cands, N, D)
    else:
        pq = _KineticList(ids, base, already, cands, N, D)
    removed: set[int] = set()
    added: list[int] = []
    while True:
        j = pq.best()
        if j is None or N * base[j] - already[j] * D >= m * D:
            break
        removed.add(j)
        pq.delete(j)
        A -= already[j]
        B -= base[j]
        fresh = []
        while True:
            i = stream.peek()
            if i is None:
                break
            a, b = already[i], base[i]
            if a * B - A * b < pool * b:
                A += a
                B += b
                fresh.append(i)
                stream.pop()
            else:
                break
        N, D = rate()
        pq.advance(N, D)
        added.extend(fresh)
        for i in fresh:
            if N * base[i] - already[i] * D < m * D:
                pq.insert(i)
        if isinstance(pq, _KineticList) and pq.over_budget():
            pq = pq.to_tournament()
    if B == 0:
        A = 0
    active = [i for i in active if i not in removed] + [i for i in added if i not in removed]
    return active, A, B, removed


class _StaticQueue:
    """Candidates whose order by share never changes (already = 0: share = r·base)."""

    def __init__(self, ids: list[str], base: list[int], cands: list[int]) -> None:
        self._items = sorted(cands, key=lambda i: (base[i], ids[i]))
        self._pos = 0

    def best(self) -> int | None:
        return self._items[self._pos] if self._pos < len(self._items) else None

    def delete(self, i: int) -> None:
        assert self._items[self._pos] == i
        self._pos += 1

    def advance(self, N: int, D: int) -> None:
        pass

    def insert(self, i: int) -> None:  # pragma: no cover - no activations when static
        raise AssertionError("static queue takes no insertions")


class _KineticList:
    """Candidates as a linked list sorted by (share at the current rate, claim id).

    Kinetic sorted order: every adjacent pair (u, v) carries the rate at which v's flatter
    line passes under u's (only when ``base_v < base_u``); those rates wait in a heap. Moving
    the rate up swaps the pairs whose rate has been reached — each swap removes one inversion
    at the new rate, so any order of processing ends sorted — and re-certifies the two new
    neighbours. The smallest share is the head and removing it is O(1), which is what makes the
    common case (few crossings: shares of one earlier round's claims are nearly parallel) fast.
    Crossings can be quadratic in theory, so once swaps and insertion steps exceed
    ``_LIST_BUDGET`` per removal (plus a base), or one insertion walks too far, the caller
    switches to the tournament tree.

    Heap entries are ``(float rate, seq, num, den, incl, u, v)``; the float only orders the
    heap (fl is monotone, so every entry whose exact rate is reached has fl ≤ fl(r)); the
    decision is exact. An entry is stale once v is no longer right after u.
    """

    def __init__(self, ids, base, already, cands: list[int], N: int, D: int) -> None:
        self.ids, self.b, self.a = ids, base, already
        self.N, self.D = N, D
        keys = map(sub, map(N.__mul__, map(base.__getitem__, cands)), map(D.__mul__, map(already.__getitem__, cands)))
        order = [i for _, _, i in sorted(zip(keys, map(ids.__getitem__, cands), cands))]
        self.head: int | None = order[0] if order else None
        self.nxt: dict[int, int] = dict(zip(order, order[1:]))
        self.prv: dict[int, int] = dict(zip(order[1:], order))
        self.heap: list = []
        self.seq = 0
        for u, v in zip(order, order[1:]):
            self._cert(u, v, push=False)
        heapify(self.heap)
        self.work = 0
        self.deleted = 0
        self.pending: list[int] = []  # inserted after giving up: go to the tournament

    def _cert(self, u: int, v: int, push: bool = True) -> None:
        b = self.b
        bu, bv = b[u], b[v]
        if bv < bu:
            num, den = self.a[u] - self.a[v], bu - bv
            self.seq += 1
            entry = (num / den, self.seq, num, den, self.ids[v] < self.ids[u], u, v)
            if push:
                heappush(self.heap, entry)
            else:
                self.heap.append(entry)

    def best(self) -> int | None:
        return self.head

    def delete(self, i: int) -> None:
        assert i == self.head
        w = self.nxt.pop(i, None)
        self.head = w
        if w is not None:
            del self.prv[w]
        self.deleted += 1

    def advance(self, N: int, D: int) -> None:
        self.N, self.D = N, D
        heap, nxt = self.heap, self.nxt
        rf = N / D
        later = []
        while heap and heap[0][0] <= rf:
            e = heappop(heap)
            _, _, num, den, incl, u, v = e
            if nxt.get(u) != v:
                continue  # stale
            x, y = num * D, N * den
            if x < y or (x == y and incl):
                self._swap(u, v)
            else:
                later.append(e)  # same float, exact rate still ahead
        for e in later:
            heappush(heap, e)

    def _swap(self, u: int, v: int) -> None:
        nxt, prv = self.nxt, self.prv
        p = prv.get(u)
        w = nxt.get(v)
        if p is None:
            self.head = v
            prv.pop(v, None)
        else:
            nxt[p] = v
            prv[v] = p
        nxt[v] = u
        prv[u] = v
        if w is None:
            nxt.pop(u, None)
        else:
            nxt[u] = w
            prv[w] = u
        self.work += 1
        if p is not None:
            self._cert(p, v)
        if w is not None:
            self._cert(u, w)
        # (v, u) needs none: v is the flatter line, u never passes under it again.

    def insert(self, i: int) -> None:
        """Place a newly active candidate by walking from the head (a fresh line's share is
        usually among the smallest); a long walk hands everything over to the tournament."""
        if self.pending:
            self.pending.append(i)
            return
        N, D, b, a, ids, nxt = self.N, self.D, self.b, self.a, self.ids, self.nxt
        si = N * b[i] - a[i] * D
        prev, x = None, self.head
        steps = 0
        while x is not None:
            sx = N * b[x] - a[x] * D
            if si < sx or (si == sx and ids[i] < ids[x]):
                break
            prev, x = x, nxt.get(x)
            steps += 1
            if steps > _LIST_WALK:
                self.pending.append(i)
                return
        self.work += steps
        if prev is None:
            self.head = i
        else:
            nxt[prev] = i
            self.prv[i] = prev
            self._cert(prev, i)
        if x is not None:
            nxt[i] = x
            self.prv[x] = i
            self._cert(i, x)

    def over_budget(self) -> bool:
        # Worth it while crossings stay rare next to removals; otherwise the tournament's
        # O(log c) per removal is cheaper. Keeps the list's own work O(k + base).
        return bool(self.pending) or self.work > _LIST_BUDGET * self.deleted + _LIST_BUDGET_BASE

    def to_tournament(self) -> _KineticTournament:
        live = []
        x = self.head
        while x is not None:
            live.append(x)
            x = self.nxt.get(x)
        return _KineticTournament(self.ids, self.b, self.a, live + self.pending, self.N, self.D)


class _KineticTournament:
    """Minimum of lines ``share_i(r) = r·base_i − already_i`` as ``r`` only grows.

    A tournament tree over candidate slots: each node keeps the winner of its subtree at the
    current rate (smallest share, ties smallest claim id) and ``melt``: the smallest rate at
    which some certificate in the subtree fails. Advancing the rate re-plays only the nodes
    whose melt has been reached. Rates and melts are exact rationals (integer pairs).
    """

    def __init__(self, ids, base, already, cands: list[int], N: int, D: int) -> None:
        self.ids, self.b, self.a = ids, base, already
        self.N, self.D = N, D
        self.slot: dict[int, int] = {}
        self.n = 0
        cap = 1
        while cap < len(cands):
            cap *= 2
        self._alloc(cap)
        for i in cands:
            self.slot[i] = self.n
            self.win[cap + self.n] = i
            self.n += 1
        for v in range(cap - 1, 0, -1):
            self._pull(v)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.win = [-1] * (2 * cap)
        self.melt: list[tuple[int, int, bool] | None] = [None] * (2 * cap)

    # -- exact helpers (inlined: this is the hot loop of de minimis) -----------------------
    @staticmethod
    def _earlier(x, y) -> bool:
        """Melt x strictly before melt y (None = never; at the same rate an inclusive one first)."""
        if x is None:
            return False
        if y is None:
            return True
        l_, r_ = x[0] * y[1], y[0] * x[1]
        if l_ != r_:
            return l_ < r_
        return x[2] and not y[2]

    def _reached(self, m) -> bool:
        if m is None:
            return False
        l_, r_ = m[0] * self.D, self.N * m[1]
        return l_ < r_ or (l_ == r_ and m[2])

    def _pull(self, v: int) -> None:
        win, melt = self.win, self.melt
        c = 2 * v
        lw, rw = win[c], win[c + 1]
        lm, rm = melt[c], melt[c + 1]
        # m = the earlier of the children's melts
        if lm is None:
            m = rm
        elif rm is None:
            m = lm
        else:
            x, y = lm[0] * rm[1], rm[0] * lm[1]
            m = rm if (y < x or (x == y and rm[2] and not lm[2])) else lm
        if lw < 0 or rw < 0:
            win[v] = rw if lw < 0 else lw
            melt[v] = m
            return
        b, a, N, D = self.b, self.a, self.N, self.D
        bl, br, al, ar = b[lw], b[rw], a[lw], a[rw]
        sl = N * bl - al * D
        sr = N * br - ar * D
        if sl < sr or (sl == sr and self.ids[lw] < self.ids[rw]):
            w, lo, bw, blo, aw, alo = lw, rw, bl, br, al, ar
        else:
            w, lo, bw, blo, aw, alo = rw, lw, br, bl, ar, al
        if blo < bw:
            # The loser's line is flatter: it passes under the winner at r = Δa / Δb
            # (at that very rate already if its id is the smaller one).
            xn, xd = aw - alo, bw - blo
            incl = self.ids[lo] < self.ids[w]
            if m is None:
                m = (xn, xd, incl)
            else:
                x, y = xn * m[1], m[0] * xd
                if x < y or (x == y and incl and not m[2]):
                    m = (xn, xd, incl)
        win[v] = w
        melt[v] = m

    def _fix(self, v: int) -> None:
        if v >= self.cap or not self._reached(self.melt[v]):
            return
        self._fix(2 * v)
        self._fix(2 * v + 1)
        self._pull(v)

    # -- interface ------------------------------------------------------------------------
    def best(self) -> int | None:
        w = self.win[1]
        return None if w < 0 else w

    def advance(self, N: int, D: int) -> None:
        self.N, self.D = N, D
        self._fix(1)

    def _update(self, v: int) -> None:
        v //= 2
        while v:
            self._pull(v)
            v //= 2

    def delete(self, i: int) -> None:
        v = self.cap + self.slot.pop(i)
        win, melt = self.win, self.melt
        win[v] = -1
        v //= 2
        pull = self._pull
        while v:
            # Above an emptied sibling pair the node simply empties too (no comparison).
            if win[2 * v] < 0 and win[2 * v + 1] < 0:
                win[v] = -1
                melt[v] = None
            else:
                pull(v)
            v //= 2

    def insert(self, i: int) -> None:
        if self.n == self.cap:
            old = [w for w in self.win[self.cap : self.cap + self.n]]
            self._alloc(self.cap * 2)
            self.slot = {}
            self.n = 0
            for w in old:
                if w >= 0:
                    self.slot[w] = self.n
                    self.win[self.cap + self.n] = w
                    self.n += 1
            for v in range(self.cap - 1, 0, -1):
                self._pull(v)
        self.slot[i] = self.n
        v = self.cap + self.n
        self.n += 1
        self.win[v] = i
        self._update(v)


# --------------------------------------------------------------------------------------------
# Rounding
# --------------------------------------------------------------------------------------------


def _round(
    hids: _HandleIds, pb: list[int], pa: list[int], active: list[int], N: int, D: int, total: int
) -> list[int]:
    """Shares of the ``active`` handles (same order): every exact share
    ``(N·pb − pa·D) / D`` floored, then +1 to the largest remainders until the sum is ``total``.

    ``floor((N·b − a·D) / D) = (N·b) // D − a`` and the remainder is ``(N·b) mod D``.
    """
    full = len(active) == len(pb) and _is_range(active)
    bs = pb if full else list(map(pb.__getitem__, active))
    if N == D:  # r = 1: whole remaining losses, nothing fractional
        return list(map(sub, bs, pa if full else map(pa.__getitem__, active)))
    # C-level passes (product, floor, remainder) rather than one divmod: no million tuples.
    prods = list(map(N.__mul__, bs))
    floors = list(map(floordiv, prods, repeat(D)))
    if any(pa):
        floors = list(map(sub, floors, pa if full else map(pa.__getitem__, active)))
    K = total - sum(floors)
    if K:
        rems = list(map(mod, prods, repeat(D)))
        del prods
        for j in _largest_remainders(hids, active, full, rems, K):
            floors[j] += 1
    return floors


def _largest_remainders(hids: _HandleIds, active, full: bool, rems: list[int], K: int) -> list[int]:
    """Positions (in ``active``) of the K largest remainders, ties by claim id ascending (as
    strings)."""
    theta = _kth_largest(rems, K)
    positions = range(len(rems))
    plus = list(compress(positions, map(theta.__lt__, rems)))
    ties = list(compress(positions, map(theta.__eq__, rems)))
    need = K - len(plus)
    if need < len(ties):
        ids = hids.as_list()
        keys = list(map(ids.__getitem__, ties if full else map(active.__getitem__, ties)))
        if need * 8 < len(ties):
            ties = [j for _, j in nsmallest(need, zip(keys, ties))]
        else:
            ties = [j for _, j in sorted(zip(keys, ties))]
    return plus + ties[:need]


def _kth_largest(values: list[int], K: int) -> int:
    """The K-th largest value (1-based), by sampled-pivot quickselect."""
    vals = values
    while len(vals) > _SELECT_CUTOFF:
        step = max(1, len(vals) // 63)
        sample = sorted(vals[::step])
        p = sample[len(sample) // 2]
        above = list(compress(vals, map(p.__lt__, vals)))
        if len(above) >= K:
            vals = above
            continue
        ties = vals.count(p)
        if len(above) + ties >= K:
            return p
        K -= len(above) + ties
        vals = list(compress(vals, map(p.__gt__, vals)))
    return sorted(vals, reverse=True)[K - 1]


# --------------------------------------------------------------------------------------------
# Plan CSV / summary (shared by `restitution plan` and the round endpoints)
# --------------------------------------------------------------------------------------------


def plan_rows(result: AllocationResult) -> Iterator[dict[str, str]]:
    """The plan.csv lines in input order: ``PLAN_COLUMNS`` with decimal-string amounts.

    ``excluded`` is ``net_winner``, ``de_minimis`` or empty.
    """
    fmt = format_amount
    ex = result._excluded
    for i, (cid, loss, al, rs) in enumerate(zip(result._ids, result._loss, result._alloc, result._reserve)):
        yield {
            "claim_id": cid,
            "net_loss": fmt(loss),
            "allocation": fmt(al),
            "reserved": fmt(rs),
            "excluded": "net_winner" if loss == 0 else ("de_minimis" if i in ex else ""),
        }


def plan_summary(result: AllocationResult) -> dict[str, str]:
    """``{"pool", "rate", "allocated", "reserved", "undistributed"}`` as decimal strings."""
    return {
        "pool": format_amount(result.pool),
        "rate": format_rate(result.rate),
        "allocated": format_amount(result.allocated),
        "reserved": format_amount(result.reserved),
        "undistributed": format_amount(result.undistributed),
    }
