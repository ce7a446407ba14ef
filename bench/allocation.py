"""Benchmark: the exact distribution-plan solver beside a float NumPy solve of the same equation.

    .venv/bin/python bench/allocation.py [N] [--quick] [--min-payout USDT] [--seed S]

N claims (default 1,000,000; ``--quick`` = 20,000) shaped like a seized ledger: invested
log-uniform between 10 and 100,000 USDT, 15 % net winners, the rest withdrew a uniform part of
what they put in, 1 % disputed; pool = 30 % of the net losses. For each method it prints the
exact solve as a round prepares it (``claims.allocation.allocate(..., unique_ids=True)``: the
ids are database keys; wall and CPU seconds, peak traced memory), the CPU seconds with the
duplicate-id check that other callers get (``id-checked``), then a
float64 NumPy solve of ``Σ max(0, r·base − already) = pool`` (sorted breakpoints, cumulative
sums, shares rounded to the nearest micro-USDT) in the same run (best of 3 for both): its time,
memory, the ratio of CPU times (the fairer one on a shared machine),
how far its rounded allocations miss the pool (micro-USDT) and how far single claims land from
the exact plan. A second table runs the exact solver with a de minimis threshold (the float
version has none), and a catch-up round (``paid_before`` from the first round, 5 % late claims)
which exercises the breakpoint partition and the kinetic de minimis queue.

Memory is measured with tracemalloc in a separate, untimed run (tracing slows Python down).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from claims.allocation import ClaimInput, allocate  # noqa: E402
from claims.money import format_amount as fmt  # noqa: E402
from claims.money import format_rate  # noqa: E402
from claims.money import parse_amount  # noqa: E402



def make_claims(n: int, seed: int) -> list[ClaimInput]:
    rnd = random.Random(seed)
    out = []
    for k in range(n):
        invested = int(10 ** rnd.uniform(7, 11))  # 10 … 100,000 USDT
        if rnd.random() < 0.15:
            withdrawn = int(invested * rnd.uniform(1.0, 3.0))  # net winner
        else:
            withdrawn = int(invested * rnd.random())
        out.append(ClaimInput(f"KZR-{k:04X}-{(k * 7919) % 65536:04X}", invested, withdrawn, 0, rnd.random() < 0.01))
    return out


def timed(fn, repeat: int = 1):
    """(result, best wall s, best CPU s) over ``repeat`` runs."""
    best_w = best_c = float("inf")
    for _ in range(repeat):
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        best_w = min(best_w, time.perf_counter() - w)
        best_c = min(best_c, time.process_time() - c)
    return result, best_w, best_c


def traced_peak(fn) -> float:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return peak / 2**20


# --------------------------------------------------------------------------------------------
# Float NumPy version of the same solve (no de minimis, no largest-remainder round)
# --------------------------------------------------------------------------------------------


def float_solve(claims, pool: int, method: str):
    import numpy as np

    inv = np.fromiter((c.invested for c in claims), dtype=np.float64, count=len(claims))
    wd = np.fromiter((c.withdrawn for c in claims), dtype=np.float64, count=len(claims))
    pb = np.fromiter((c.paid_before for c in claims), dtype=np.float64, count=len(claims))
    loss = np.maximum(inv - wd, 0.0)
    if method == "pro-rata":
        base, already = loss, pb
    else:
        base, already = np.where(loss > 0, inv, 0.0), wd + pb
    can = already < base
    b, a = base[can], already[can]
    t = a / b
    order = np.argsort(t, kind="stable")
    t, b, a = t[order], b[order], a[order]
    B = np.cumsum(b)
    A = np.cumsum(a)
    # f at the next breakpoint with the first k+1 active: t[k+1]·B[k] − A[k]
    t_next = np.append(t[1:], 1.0)
    f_next = t_next * B - A
    k = int(np.searchsorted(f_next, float(pool)))
    if k >= len(b):
        r = 1.0
    else:
        r = min(1.0, (pool + A[k]) / B[k])
    shares = np.maximum(r * base - already, 0.0)
    return r, np.rint(shares).astype(np.int64)


# --------------------------------------------------------------------------------------------


def calibrate() -> float:
    """CPU seconds of a fixed pure-Python loop: compare runs made under different loads."""
    c = time.process_time()
    x = 0
    for i in range(3_000_000):
        x += i * i
    return time.process_time() - c


def run(n: int, seed: int, min_payout: int) -> None:
    import numpy as np

    t0 = time.perf_counter()
    claims = make_claims(n, seed)
    loss_total = sum(max(0, c.invested - c.withdrawn) for c in claims)
    pool = loss_total * 3 // 10
    print(
        f"{n:,} claims (seed {seed}), pool {fmt(pool)} USDT = 30 % of net losses; "
        f"generated in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; calibration loop {calibrate():.3f} s CPU"
    )
    print()
    hdr = (
        f"{'method':<12} {'exact wall s':>12} {'cpu s':>7} {'id-checked':>10} {'peak MiB':>9} │ {'float wall':>10} {'cpu s':>6} "
        f"{'peak MiB':>9} {'ratio':>6} │ {'float Σ−pool µ':>15} {'max |Δ| µ':>10} {'claims off':>10}"
    )
    print(hdr)
    print("─" * len(hdr))
    first_round = {}
    for method in ("pro-rata", "rising-tide"):
        res, wall, cpu = timed(lambda: allocate(claims, pool, method, unique_ids=True), repeat=3)
        first_round[method] = res
        _, _, cpu_checked = timed(lambda: allocate(claims, pool, method), repeat=3)
        mem = traced_peak(lambda: allocate(claims, pool, method, unique_ids=True))
        (r, rounded), fwall, fcpu = timed(lambda: float_solve(claims, pool, method), repeat=3)
        fmem = traced_peak(lambda: float_solve(claims, pool, method))
        exact = np.fromiter(
            (s + q for s, q in zip(res.allocations, res.reserves)), dtype=np.int64, count=len(claims)
        )
        assert res.allocated + res.reserved + res.undistributed == pool
        imbalance = int(rounded.sum()) - (res.allocated + res.reserved)
        diff = np.abs(rounded - exact)
        print(
            f"{method:<12} {wall:>12.3f} {cpu:>7.3f} {cpu_checked:>10.3f} {mem:>9.1f} │ {fwall:>10.3f} {fcpu:>6.3f} "
            f"{fmem:>9.1f} {cpu / fcpu:>6.1f} │ {imbalance:>+15,d} {int(diff.max()):>10,d} {int((diff > 0).sum()):>10,d}"
        )
        print(
            f"{'':<12} rate exact {format_rate(res.rate, 12)}  float {r:.12f}  "
            f"(allocated {fmt(res.allocated)} + reserved {fmt(res.reserved)} "
            f"+ undistributed {fmt(res.undistributed)} = pool)"
        )

    print()
    print("exact solver only (the float version has no de minimis and no catch-up rule):")
    hdr2 = f"{'scenario':<40} {'wall s':>8} {'cpu s':>7} {'peak MiB':>9} {'excluded':>9} {'balanced':>9}"
    print(hdr2)
    print("─" * len(hdr2))
    rnd = random.Random(seed + 1)
    for method in ("pro-rata", "rising-tide"):
        label = f"{method}, min payout {fmt(min_payout)} USDT"
        res, wall, cpu = timed(lambda: allocate(claims, pool, method, min_payout, unique_ids=True))
        mem = traced_peak(lambda: allocate(claims, pool, method, min_payout, unique_ids=True))
        ok = res.allocated + res.reserved + res.undistributed == pool
        print(f"{label:<40} {wall:>8.3f} {cpu:>7.3f} {mem:>9.1f} {res.excluded_count:>9,d} {str(ok):>9}")
        # Round 2: what round 1 paid becomes paid_before; 5 % of claims arrive late (0 paid).
        r1 = first_round[method]
        round2 = [
            ClaimInput(c.claim_id, c.invested, c.withdrawn, 0 if rnd.random() < 0.05 else s + q, False)
            for c, s, q in zip(claims, r1.allocations, r1.reserves)
        ]
        pool2 = pool // 2
        label = f"{method}, round 2 catch-up, min {fmt(min_payout)}"
        res, wall, cpu = timed(lambda: allocate(round2, pool2, method, min_payout, unique_ids=True))
        mem = traced_peak(lambda: allocate(round2, pool2, method, min_payout, unique_ids=True))
        ok = res.allocated + res.reserved + res.undistributed == pool2
        print(f"{label:<40} {wall:>8.3f} {cpu:>7.3f} {mem:>9.1f} {res.excluded_count:>9,d} {str(ok):>9}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"process max RSS {rss:,.0f} MiB (includes the {n:,} input records and the traced runs)")
    print(f"load average now {os.getloadavg()[0]:.2f}; calibration loop {calibrate():.3f} s CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=1_000_000, help="number of claims")
    ap.add_argument("--quick", action="store_true", help="20,000 claims")
    ap.add_argument("--min-payout", default="10", help="de minimis in USDT (second table), e.g. 10")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    run(n, args.seed, parse_amount(args.min_payout))


if __name__ == "__main__":
    main()
