"""De minimis (docs/allocation.md, "De minimis"): while some claim has an exact share
``0 < share < min_payout``, the one with the smallest such share (ties: smallest claim id,
compared as strings) is removed and the pool re-solved among the rest.

Each removal re-solves incrementally: the removed claim leaves the integer sums, the rate can
only rise, so breakpoints are activated from a lazily sorted stream with one pointer that only
moves forward (O(n) activations over the whole run, O(n log n) to sort the inactive part once,
and only if needed). Finding the smallest positive share is a priority-queue problem whose
keys are lines in ``r``:

* every candidate has ``already = 0`` (first pro-rata round): the order never changes and a
  sorted list does it in O(1) per removal (:class:`StaticQueue`);
* otherwise a kinetic sorted list (:class:`KineticList`: adjacent pairs certify their order
  until the rate at which the flatter line passes under; those rates wait in a heap) gives
  O(1) per removal plus O(log c) per crossing actually passed, and crossings are rare in
  practice (shares from one earlier round are nearly parallel lines);
* crossings are O(c²) in theory, so once they outnumber removals two to one the list hands
  over to a kinetic tournament tree (:class:`KineticTournament`: each node keeps the winner at
  the current rate and the rate at which that stops being true): O(log c) per removal or
  insertion plus O(log c) per certificate failure, and a node's winner only moves along the
  lower envelope of its subtree's lines, so failures are O(c log c).

Claims whose share reaches ``min_payout`` are never candidates again (shares only grow), so c
counts the claims that ever sit below the minimum. Worst case
O(n log n + (k + c log c) log c) for k removals, versus O(n·k) for a naive re-solve.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from itertools import compress
from operator import sub

from claims.allocation.equation import Stream, rate
from claims.allocation.handles import HandleIds

#: The queue: "list" (the kinetic sorted list, handing over to the tournament once it has done
#: more than LIST_BUDGET units of work per removal plus LIST_BUDGET_BASE) or "tournament"
#: (tests force each).
QUEUE = "list"
LIST_BUDGET = 2  # swaps / insertion steps allowed per removal (plus the base) ...
LIST_BUDGET_BASE = 4096  # ... before the list hands over to the tournament
LIST_WALK = 64  # longest insertion walk before the list gives up


def de_minimis(
    hids: HandleIds,
    base: list[int],
    already: list[int],
    pool: int,
    m: int,
    active: list[int],
    stream: Stream,
    A: int,
    B: int,
) -> tuple[list[int], int, int, set[int]]:
    N, D = rate(pool, A, B)
    mD = m * D
    # share < m  ⇔  N·base − already·D < m·D  (C-level maps: this scans every active claim)
    nums = map(sub, map(N.__mul__, map(base.__getitem__, active)), map(D.__mul__, map(already.__getitem__, active)))
    cands = list(compress(active, map(mD.__gt__, nums)))
    if not cands:
        return active, A, B, set()
    ids = hids.as_list()
    pq: StaticQueue | KineticList | KineticTournament
    if stream.empty_hint() and not any(already[i] for i in cands):
        pq = StaticQueue(ids, base, cands)
    elif QUEUE == "tournament":
        pq = KineticTournament(ids, base, already, cands, N, D)
    else:
        pq = KineticList(ids, base, already, cands, N, D)
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
        N, D = rate(pool, A, B)
        pq.advance(N, D)
        added.extend(fresh)
        for i in fresh:
            if N * base[i] - already[i] * D < m * D:
                pq.insert(i)
        if isinstance(pq, KineticList) and pq.over_budget():
            pq = pq.to_tournament()
    if B == 0:
        A = 0
    active = [i for i in active if i not in removed] + [i for i in added if i not in removed]
    return active, A, B, removed


class StaticQueue:
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


class KineticList:
    """Candidates as a linked list sorted by (share at the current rate, claim id).

    Kinetic sorted order: every adjacent pair (u, v) carries the rate at which v's flatter
    line passes under u's (only when ``base_v < base_u``); those rates wait in a heap. Moving
    the rate up swaps the pairs whose rate has been reached — each swap removes one inversion
    at the new rate, so any order of processing ends sorted — and re-certifies the two new
    neighbours. The smallest share is the head and removing it is O(1), which is what makes the
    common case (few crossings: shares of one earlier round's claims are nearly parallel) fast.
    Crossings can be quadratic in theory, so once swaps and insertion steps exceed
    ``LIST_BUDGET`` per removal (plus a base), or one insertion walks too far, the caller
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
            if steps > LIST_WALK:
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
        return bool(self.pending) or self.work > LIST_BUDGET * self.deleted + LIST_BUDGET_BASE

    def to_tournament(self) -> KineticTournament:
        live = []
        x = self.head
        while x is not None:
            live.append(x)
            x = self.nxt.get(x)
        return KineticTournament(self.ids, self.b, self.a, live + self.pending, self.N, self.D)


class KineticTournament:
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
