"""The methods' terms: what a claim's share is measured against (docs/allocation.md, "Terms").

Every claim i has a ``base_i`` and an ``already_i`` (integers of micro-USDT, chosen by the
method); one common rate ``r`` in [0, 1] gives it ``max(0, r · base_i − already_i)``:

+-----------------+--------------------------------------+------------------------------+
| method          | base_i                               | already_i                    |
+=================+======================================+==============================+
| ``pro-rata``    | net loss L_i = max(0, inv − wd)      | paid_before_i                |
| ``rising-tide`` | invested_i (net-loss claims only)    | withdrawn_i + paid_before_i  |
+-----------------+--------------------------------------+------------------------------+

The net loss is :func:`claims.money.net_loss`. :func:`term_columns` is the table for every
claim of a plan at once (columns in claim order); :func:`base_and_already` is it for one claim.
"""

from __future__ import annotations

from fractions import Fraction
from operator import add

from claims.money import net_loss

PRO_RATA = "pro-rata"
RISING_TIDE = "rising-tide"
METHODS = (PRO_RATA, RISING_TIDE)


def check_method(method: str) -> None:
    """``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")


def term_columns(method: str, invested: list[int], withdrawn: list[int],
                 paid_before: list[int]) -> tuple[list[int], list[int], list[int]]:
    """``(net loss, base, already)`` of every claim under ``method``, as columns in claim
    order (a net winner's base is 0). The returned lists may be the ones given (pro-rata's
    ``already`` is ``paid_before``; rising-tide's is ``withdrawn`` when nothing was paid
    before)."""
    loss = list(map(net_loss, invested, withdrawn))
    if method == PRO_RATA:
        return loss, loss, paid_before
    base = [i if l_ else 0 for i, l_ in zip(invested, loss)]
    already = list(map(add, withdrawn, paid_before)) if any(paid_before) else withdrawn
    return loss, base, already


def base_and_already(method: str, invested: int, withdrawn: int, paid_before: int = 0) -> tuple[int, int]:
    """``(base, already)`` of one claim under ``method`` (0 base for a net winner)."""
    check_method(method)
    _, base, already = term_columns(method, [invested], [withdrawn], [paid_before])
    return base[0], already[0]


def settle_share(rate: Fraction, base_settled: int, already: int) -> int:
    """A disputed claim's share recomputed on the settled amount at the round's rate.

    ``floor(max(0, rate · base_settled − already))`` micro-USDT. Rounded *down*: the round's
    other lines are already fixed, so the settlement never creates money the round did not
    reserve; the caller caps the result at the claim's reserve (docs/allocation.md, "Disputed
    claims": never above its reserve) and releases the rest.
    """
    if base_settled < 0 or already < 0:
        raise ValueError("amounts must not be negative")
    rate = Fraction(rate)
    if not 0 <= rate <= 1:
        raise ValueError("rate must be in [0, 1]")
    num = rate.numerator * base_settled - already * rate.denominator
    return num // rate.denominator if num > 0 else 0
