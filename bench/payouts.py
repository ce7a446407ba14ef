"""Benchmark: payouts through the database-backed EVM executor on the in-process chain,
batched (Disperse, 200 a transaction) beside one by one (a ``transfer`` each), same run.

    .venv/bin/python bench/payouts.py [N] [--quick] [--single M] [--batch-size B]
                                      [--database-url URL]

N EVM payouts (default 10,000; ``--quick`` = 1,000) are seeded as an approved round in a
fresh database (a temporary SQLite file unless ``--database-url`` is given — it must be an
empty database), released, and run by :func:`claims.payouts.execute_round` with batches of
``B`` (default 200): select → sign → commit → broadcast → receipt → verify the Transfer events
→ mark, exactly what production does, audit events, attempt rows and ``paid`` notices
included. Then a second round of M payouts (default ``min(N, 500)``: one by one costs a block
each) runs with batch size 1. Printed per mode: payouts/s (wall time of the run, seeding and
release excluded), payouts per CPU second of this process (comparable on a shared, loaded
machine), gas per payout (the receipts' gas, measured), and the ratios; first of all, the
same batches sent straight through the rail without the database (up to 2,000 payouts): the
in-process chain's own ceiling on this machine, so the executor's overhead shows as a share.
Goals: ≥ 150 payouts/s batched; gas per payout batched ≤ 60 % of single transfers. Every run
checks that each recipient got exactly its amount and the chain total equals the database's
confirmed total; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the seeding helper shared with the tests

USDT = 1_000_000


def run_mode(engine, rail, n: int, batch_size: int, label: str) -> dict:
    from sqlalchemy import func, select

    from claims import payouts
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.models import ChainTx, Payout
    from payouts_seed import seed_round

    seeded = seed_round(engine, [("ethereum", USDT + (i * 7919) % 10_000_000)
                                 for i in range(n)])
    with session_scope(engine) as s:
        payouts.release_round(s, seeded.round_id, actor=Actor("bench", "finance"))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5:
            last[0] = now
            print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    out = payouts.execute_round(engine, seeded.round_id, progress, rail=rail,
                                batch_size=batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with session_scope(engine, write=False) as s:
        gas = s.execute(select(func.sum(ChainTx.gas_used)).where(
            ChainTx.round_id == seeded.round_id)).scalar_one()
        txs = s.execute(select(func.count()).select_from(ChainTx).where(
            ChainTx.round_id == seeded.round_id)).scalar_one()
        confirmed = s.execute(select(func.count(), func.sum(Payout.amount)).where(
            Payout.round_id == seeded.round_id, Payout.state == "confirmed")).one()
    assert out["confirmed"] == n and confirmed[0] == n, out
    chain_total = sum(rail.token_balance(c.address) for c in seeded.claims)
    assert chain_total == confirmed[1] == sum(c.amount for c in seeded.claims)
    return {"label": label, "n": n, "wall": wall, "rate": n / wall, "cpu": cpu,
            "cpu_rate": n / cpu, "gas": gas / n, "txs": txs}


def chain_only(rail, n: int, batch_size: int) -> dict:
    """The same batches straight through the rail, no database: the chain's own ceiling."""
    from claims.validators import make_eth_address

    recipients = [make_eth_address(os.urandom(20)) for _ in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    gas = txs = 0
    for i in range(0, n, batch_size):
        chunk = recipients[i : i + batch_size]
        if len(chunk) == 1:
            signed = rail.sign_transfer(chunk[0], USDT, rail.next_nonce())
        else:
            signed = rail.sign_batch(chunk, [USDT] * len(chunk), rail.next_nonce())
        receipt = rail.send_and_wait(signed)
        assert receipt.ok
        gas += receipt.gas_used
        txs += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"label": f"chain only ({batch_size}/tx)", "n": n, "wall": wall, "rate": n / wall,
            "cpu": cpu, "cpu_rate": n / cpu, "gas": gas / n, "txs": txs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="1,000 payouts")
    ap.add_argument("--single", type=int, default=None, help="payouts paid one by one")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    n = args.n or (1_000 if args.quick else 10_000)
    single = args.single if args.single is not None else min(n, 500)

    tmp = tempfile.mkdtemp(prefix="bench-payouts-")
    os.environ.setdefault("RESTITUTION_VAR_DIR", str(Path(tmp) / "var"))
    url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
    os.environ["RESTITUTION_DATABASE_URL"] = url

    from claims.db import get_engine
    from claims.payouts.rails.evm import EvmRail

    engine = get_engine(url)
    rail = EvmRail()
    rail.bootstrap((n + single) * 11 * USDT)
    backend = "SQLite" if url.startswith("sqlite") else url.split(":")[0]
    print(f"payouts on the in-process chain (eth-tester/py-evm), database {backend}, "
          f"{os.cpu_count()} CPU(s)")
    ceiling = chain_only(rail, min(n, 2000), args.batch_size)  # first: the same fresh chain
    batched = run_mode(engine, rail, n, args.batch_size, f"batched ({args.batch_size}/tx)")
    rows = [batched]
    if single:
        rows.append(run_mode(engine, rail, single, 1, "one by one"))
    print(f"{'mode':<20} {'payouts':>8} {'txs':>6} {'wall s':>8} {'payouts/s':>10} "
          f"{'CPU s':>8} {'per CPU s':>10} {'gas/payout':>11}")
    for r in rows + [ceiling]:
        print(f"{r['label']:<20} {r['n']:>8} {r['txs']:>6} {r['wall']:>8.1f} {r['rate']:>10.1f} "
              f"{r['cpu']:>8.1f} {r['cpu_rate']:>10.1f} {r['gas']:>11.0f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(load average {load:.1f} on {os.cpu_count()} CPU(s) at the end: on a shared "
          "machine the CPU-time rates are the comparable ones)")
    if single:
        s = rows[1]
        print(f"batched vs one by one: {batched['rate'] / s['rate']:.1f}x payouts/s, "
              f"gas per payout {batched['gas'] / s['gas']:.1%} of a single transfer")
    print(f"the executor runs at {batched['cpu_rate'] / ceiling['cpu_rate']:.0%} of the chain "
          "alone, per CPU second (same batches without the database: the in-process chain's "
          "ceiling)")
    goal_rate = batched["rate"] >= 150
    print(f"goal ≥ 150 payouts/s batched: {'met' if goal_rate else 'NOT met'} "
          f"({batched['rate']:.1f}/s)")
    if single:
        goal_gas = batched["gas"] <= 0.6 * rows[1]["gas"]
        print(f"goal gas per payout ≤ 60 % of single: {'met' if goal_gas else 'NOT met'}")


if __name__ == "__main__":
    main()
