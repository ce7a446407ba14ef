"""The solve: claims in, an exact plan out (docs/allocation.md).

:func:`allocate_columns` is the one implementation: claims as columns (plain lists in claim
order), checked, turned into the method's terms (:mod:`claims.allocation.terms`), solved for
the rate (:mod:`claims.allocation.equation`), thinned by de minimis
(:mod:`claims.allocation.deminimis`) and rounded (:mod:`claims.allocation.rounding`).
:func:`allocate` reads the same columns off claim records and calls it.

Arithmetic is exact throughout: integers, one ``Fraction`` for the rate. Constant factors:
columns of plain ints (no per-claim objects), C-level ``map`` passes, the cyclic garbage
collector paused for the solve (its full passes over the caller's input records would cost
more than some phases), and ``unique_ids=True`` for callers whose ids are keys already (a
round's claims) so the duplicate check's set is not built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from itertools import compress
from math import gcd
from operator import attrgetter, gt, mul, sub
from typing import Any

from claims.allocation.deminimis import de_minimis
from claims.allocation.equation import Stream, rate, select_active
from claims.allocation.handles import HandleIds, is_range
from claims.allocation.result import AllocationResult
from claims.allocation.rounding import round_shares
from claims.allocation.terms import PRO_RATA, check_method, term_columns
from claims.gc_pause import gc_paused


def allocate(
    claims: Iterable[Any],
    pool: int,
    method: str = PRO_RATA,
    min_payout: int = 0,
    *,
    unique_ids: bool = False,
) -> AllocationResult:
    """Solve the plan for ``claims`` (objects with ``claim_id, invested, withdrawn`` and
    optionally ``paid_before``, ``disputed`` — e.g. :class:`ClaimInput`): the records' columns
    given to :func:`allocate_columns`.

    Raises ``ValueError`` for an unknown method, a negative amount or a duplicate claim id,
    ``TypeError`` for an amount that is not an ``int``. ``unique_ids=True`` is the caller's
    word that the ids are distinct (database keys, a file already checked line by line): the
    duplicate check, a set of every id, is skipped.
    """
    check_method(method)
    with gc_paused():
        _check_pool(pool, min_payout)
        claims = claims if isinstance(claims, (list, tuple)) else list(claims)
        return allocate_columns(
            list(map(attrgetter("claim_id"), claims)),
            list(map(attrgetter("invested"), claims)),
            list(map(attrgetter("withdrawn"), claims)),
            _column(claims, "paid_before", 0),
            _column(claims, "disputed", False),
            pool, method, min_payout, unique_ids=unique_ids)


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
    """The plan for claims given as columns (lists in claim order: ``ids`` and the amounts;
    ``paid_before`` / ``disputed`` None for all 0 / all False), for callers that hold their
    claims that way (a round's claims read from the database): no record per claim is built.
    Same checks as :func:`allocate`. The lists become the result's (the caller must not
    change them afterwards)."""
    check_method(method)
    with gc_paused():
        _check_pool(pool, min_payout)
        n = len(ids)
        pb = [0] * n if paid_before is None else paid_before
        dis = [False] * n if disputed is None else disputed
        if not len(invested) == len(withdrawn) == len(pb) == len(dis) == n:
            raise ValueError("columns of different lengths")
        _validate(ids, invested, withdrawn, pb, unique_ids)
        loss, base, already = term_columns(method, invested, withdrawn, pb)
        share, N, D, excluded = _solve(ids, base, already, pool, min_payout)
        if any(dis):
            reserve = list(map(mul, share, map(bool, dis)))  # share · True / share · False
            alloc = list(map(sub, share, reserve))
        else:
            alloc, reserve = share, [0] * n
        return AllocationResult(
            method=method, pool=pool, min_payout=min_payout, rate=Fraction(N, D), ids=ids,
            loss=loss, base=base, already=already, disputed=dis, alloc=alloc, reserve=reserve,
            excluded=excluded,
        )


def _check_pool(pool: int, min_payout: int) -> None:
    """``TypeError`` / ``ValueError`` unless both are non-negative ints of micro-USDT."""
    for name, value in (("pool", pool), ("min_payout", min_payout)):
        if type(value) is not int:
            raise TypeError(f"{name} must be an int of micro-USDT")
        if value < 0:
            raise ValueError(f"{name} must not be negative")


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
    hids = HandleIds(ids, pot)
    if not any(pa):  # every breakpoint is 0 (first pro-rata round): all claims active
        active: list[int] | range = range(len(pot))
        stream = Stream([], pb, pa, sorted_first=True)
        A, B = 0, sum(pb)
    else:
        active, stream, A, B = select_active(pb, pa, pool)
    excluded: set[int] = set()
    if min_payout > 0:
        active, A, B, removed = de_minimis(hids, pb, pa, pool, min_payout, active, stream, A, B)
        excluded = set(map(pot.__getitem__, removed))
    out = [0] * n
    if not active:  # every claim was below the minimum
        return out, 1, 1, excluded
    N, D = rate(pool, A, B)
    if N == D:  # r = 1: everyone gets the whole remaining loss
        total = B - A
    else:
        g = gcd(N, D)
        N //= g
        D //= g
        total = pool
    shares = round_shares(hids, pb, pa, active, N, D, total)
    if len(pot) == n and len(active) == n and is_range(active):
        return shares, N, D, excluded
    for h, s in zip(active, shares):
        out[pot[h]] = s
    return out, N, D, excluded
