"""The distribution plan: who gets how much of a pool, exactly (docs/allocation.md).

Every claim i has a ``base_i`` and an ``already_i`` (integers of micro-USDT, chosen by the
method: :mod:`claims.allocation.terms`); one common rate ``r`` in [0, 1] solves

    Σ max(0, r · base_i − already_i) = pool

If even ``r = 1`` leaves part of the pool unused, ``r = 1`` and the rest is ``undistributed``.
Disputed claims are solved as if approved; their share is ``reserved``. De minimis: while some
claim has an exact share ``0 < share < min_payout``, the one with the smallest such share (ties:
smallest claim id, compared as strings) is removed and the pool re-solved among the rest.
Rounding: every exact share is floored to a whole micro-USDT, then the largest fractional
remainders (ties: claim id ascending, as strings) get one more micro-USDT until the sum equals
the exact total. Arithmetic is exact throughout: integers, one ``Fraction`` for the rate.

The package, one step a module:

- :mod:`~claims.allocation.terms` — the methods' ``base`` and ``already``, a disputed claim's
  share once settled (:func:`settle_share`);
- :mod:`~claims.allocation.solver` — :func:`allocate` / :func:`allocate_columns`, the checks
  and the solve's order of steps;
- :mod:`~claims.allocation.equation` — the common rate (the active set of the equation);
- :mod:`~claims.allocation.deminimis` — the de minimis removals, re-solved incrementally;
- :mod:`~claims.allocation.rounding` — whole micro-USDT, largest remainders;
- :mod:`~claims.allocation.result` — :class:`AllocationResult` and the records;
- :mod:`~claims.allocation.plan_csv` — the Plan CSV read and written (``restitution plan``).
"""

from claims.allocation.plan_csv import (
    PLAN_COLUMNS,
    PlanInputError,
    plan_rows,
    plan_summary,
    read_plan_csv,
    write_plan_csv,
)
from claims.allocation.result import AllocationResult, ClaimInput, ClaimShare
from claims.allocation.solver import allocate, allocate_columns
from claims.allocation.terms import (
    METHODS,
    PRO_RATA,
    RISING_TIDE,
    base_and_already,
    settle_share,
)

__all__ = [
    "METHODS", "PLAN_COLUMNS", "PRO_RATA", "RISING_TIDE", "AllocationResult", "ClaimInput",
    "ClaimShare", "PlanInputError", "allocate", "allocate_columns", "base_and_already",
    "plan_rows", "plan_summary", "read_plan_csv", "settle_share", "write_plan_csv",
]
