"""Rounding (docs/allocation.md, "Rounding"): every exact share is floored to a whole
micro-USDT, then the largest fractional remainders (ties: claim id ascending, as strings) get
one more micro-USDT until the sum equals the exact total, which is ``pool`` when ``r < 1`` and
``Σ (base_i − already_i)`` over the claims still in the plan when ``r = 1``.

One integer floor and one remainder per paid claim, the K-th largest remainder by quickselect
(expected O(n)), ties sorted by claim id (only the ties, and a partial selection when few of
them get the extra micro-USDT).
"""

from __future__ import annotations

from heapq import nsmallest
from itertools import compress, repeat
from operator import floordiv, mod, sub

from claims.allocation.handles import HandleIds, is_range

#: Below this many remainders the K-th largest is found by sorting; tests lower it to
#: exercise the quickselect on small inputs.
SELECT_CUTOFF = 2048


def round_shares(
    hids: HandleIds, pb: list[int], pa: list[int], active: list[int], N: int, D: int, total: int
) -> list[int]:
    """Shares of the ``active`` handles (same order): every exact share
    ``(N·pb − pa·D) / D`` floored, then +1 to the largest remainders until the sum is ``total``.

    ``floor((N·b − a·D) / D) = (N·b) // D − a`` and the remainder is ``(N·b) mod D``.
    """
    full = len(active) == len(pb) and is_range(active)
    bs = pb if full else list(map(pb.__getitem__, active))
    if N == D:  # r = 1: whole remaining losses, nothing fractional
        return list(map(sub, bs, pa if full else map(pa.__getitem__, active)))
    # C-level passes (product, floor, remainder) rather than one divmod: no tuple per claim.
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


def _largest_remainders(hids: HandleIds, active, full: bool, rems: list[int], K: int) -> list[int]:
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
    while len(vals) > SELECT_CUTOFF:
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
