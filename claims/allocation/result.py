"""A solved plan as the solver returns it, and the records it reads.

:class:`ClaimInput` is one claim as :func:`claims.allocation.allocate` reads it;
:class:`AllocationResult` holds the solve's columns (plain lists in input order, no object per
claim) and builds a :class:`ClaimShare` per claim only when ``rows`` is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction


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
    """The per-claim lines in input order, each built when read (a caller that reads the
    columns never pays for an object per claim)."""

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

    def exclusions(self) -> list[str | None]:
        """Why each claim (input order) is out of the plan: ``"net_winner"`` (no net loss),
        ``"de_minimis"`` (removed by the minimum payout) or ``None`` (in the plan)."""
        loss = self._loss
        out: list[str | None] = [None if l_ else "net_winner" for l_ in loss]
        for i in self._excluded:  # removed claims were given nothing (loss > 0)
            if loss[i]:
                out[i] = "de_minimis"
        return out

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

