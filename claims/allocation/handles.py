"""How the solver's steps name claims: a *handle* is a claim's position among the claims that
can receive something (``already < base``), so every step works on plain lists of ints."""

from __future__ import annotations

from operator import eq


class HandleIds:
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


def is_range(xs: list[int] | range) -> bool:
    """``xs == range(len(xs))`` (O(1) for a range: the first pro-rata round's active set)."""
    if isinstance(xs, range):
        return xs.start == 0 and xs.step == 1
    return all(map(eq, xs, range(len(xs))))
