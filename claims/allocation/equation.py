"""The rate equation (docs/allocation.md, "The common rate"): the one ``r`` in [0, 1] with

    Σ max(0, r · base_i − already_i) = pool

A claim takes part once ``r`` passes its breakpoint ``t_i = already_i / base_i``; over the
*active* set (``t_i < r``) the equation is ``r · B − A = pool`` with ``A = Σ already_i`` and
``B = Σ base_i``, so ``r = min(1, (pool + A) / B)`` (:func:`rate`). Finding the active set is
a selection on the sorted-breakpoint order (:func:`select_active`): each pass brackets an
estimate of ``r`` between two sampled breakpoints, splits the undecided ones around them and
keeps only the side that can hold ``r``, deciding with the exact equation at the pivots; the
last few thousand are sorted exactly. O(n) when the pivots split well, O(n log n) at worst
(a pass that keeps more than 3/4 hands the rest to the exact sort). No per-claim Fraction is
built: every decision is an integer comparison of the sums.

Floats appear only to *sort* breakpoints: a correctly rounded quotient is monotone, and a split
"fl(t) <= v" is an exact split at the rational halfway between v and the next float
(:func:`_cut`).
"""

from __future__ import annotations

import math
from itertools import compress
from operator import truediv

#: Below this many undecided breakpoints the solve sorts them exactly instead of partitioning
#: further; tests lower it to exercise the partition on small inputs.
SORT_CUTOFF = 2048


def rate(pool: int, A: int, B: int) -> tuple[int, int]:
    """The rate ``(numerator, denominator)`` over an active set with sums ``A`` (already) and
    ``B`` (base): ``(pool + A) / B``, or ``1/1`` when that reaches 1 or nothing is active."""
    if B == 0 or pool + A >= B:
        return 1, 1
    return pool + A, B


def _cut(v: float) -> tuple[int, int]:
    """The exact rational halfway between float ``v`` and the next float up.

    Round-to-nearest makes it a clean cut: ``fl(t) <= v`` implies ``t <= cut`` and
    ``fl(t) > v`` implies ``t >= cut`` (a t exactly on the cut adds 0 to f there either way).
    """
    n1, d1 = v.as_integer_ratio()
    n2, d2 = math.nextafter(v, math.inf).as_integer_ratio()
    return n1 * d2 + n2 * d1, 2 * d1 * d2


def select_active(pb: list[int], pa: list[int], pool: int) -> tuple[list[int], Stream, int, int]:
    """Find the active set of the equation: the handles with ``t_h = pa_h / pb_h < r``.

    Returns (active handles, stream of the inactive ones in ascending t, A = Σ pa, B = Σ pb
    over the active set); then ``r = min(1, (pool + A) / B)``.

    Each pass (:func:`_narrow`) decides part of the undecided handles; the rest is sorted
    exactly (:func:`_finish`).
    """
    tk = list(map(truediv, pa, pb))  # correctly rounded, so monotone in the exact quotient
    A = B = 0
    active_chunks: list[list[int]] = []
    inactive_chunks: list[list[int]] = []  # each holds larger t than every later one
    U: list[int] | range = range(len(pb))
    while len(U) > SORT_CUTOFF:
        newU, A, B = _narrow(U, tk, pb, pa, pool, A, B, active_chunks, inactive_chunks)
        # A poor split (float ties, skewed sample) finishes with the exact sort. Every pass
        # before it kept <= 3/4, so partitioning costs O(n) in all and the sort O(n log n).
        poor = 4 * len(newU) > 3 * len(U)
        U = newU
        if poor:
            break
    U, k, A, B = _finish(U, pb, pa, pool, A, B)
    active = [i for chunk in active_chunks for i in chunk]
    active.extend(U[:k])
    chunks = [U[k:]] + inactive_chunks[::-1]
    return active, Stream(chunks, pb, pa, sorted_first=True), A, B


def _narrow(U, tk: list[float], pb: list[int], pa: list[int], pool: int, A: int, B: int,
            active_chunks: list[list[int]], inactive_chunks: list[list[int]]):
    """One pass: bracket r between two sampled breakpoints v1 <= v2, split the undecided
    handles ``U`` in one sweep of float comparisons (cut exactly between floats) and decide
    each side with the exact equation. Decided handles go to ``active_chunks`` /
    ``inactive_chunks``; returns (the still undecided handles, A, B)."""
    v1, v2 = _bracket(U, tk, pb, pa, pool, A, B)
    keys = tk if isinstance(U, range) else list(map(tk.__getitem__, U))
    lo = list(compress(U, map(v1.__ge__, keys)))  # t <= cut(v1)
    Blo = B + sum(map(pb.__getitem__, lo))
    Alo = A + sum(map(pa.__getitem__, lo))
    n1, d1 = _cut(v1)
    if n1 * Blo - Alo * d1 >= pool * d1:
        # f(cut1) >= pool: r <= cut1, everything above gets nothing.
        inactive_chunks.append(list(compress(U, map(v1.__lt__, keys))))
        return lo, A, B
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
        active_chunks.append(mid)
        return list(compress(rest, map(v2.__lt__, rkeys))), Am, Bm
    inactive_chunks.append(list(compress(rest, map(v2.__lt__, rkeys))))
    return mid, A, B


def _finish(U, pb: list[int], pa: list[int], pool: int, A: int, B: int):
    """The exact finish over the remaining undecided breakpoints: sorted exactly, then taken
    while the equation at the next breakpoint stays below the pool. Returns (U sorted, how
    many of them are active, A, B)."""
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
    return U, k, A, B


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


class Stream:
    """The inactive claims in ascending breakpoint, each chunk sorted exactly when first reached
    (de minimis activates them one by one as the rate rises)."""

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
