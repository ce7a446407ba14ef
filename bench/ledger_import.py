"""Bench: seized-ledger import (claims.ledger.import_ledger) on SQLite.

    .venv/bin/python bench/ledger_import.py [N] [--quick] [--shape full|lean] [--json]

Generates a ledger CSV of N rows (default 1,000,000; ``--quick`` 100,000), 10 rows per account,
1 in 1,000 accounts insider. ``--shape full`` (default): every column — a tx hash on each row
and the account's wallet, e-mail, phone and IIN repeated on each of its rows (a joined export);
``--shape lean``: ``account_id,entry_type,amount,occurred_at,tx_hash,wallet`` (a transactions
export). Then, each in a fresh process so peak memory is the import's own:

- ``import``    — claims.ledger.import_ledger into a fresh database (validation, staging, totals,
                  match keys, audit), rows/s and peak RSS; split into its two phases (read,
                  validate and stage the file | store: entries, accounts, totals, match keys);
- ``re-import`` — the same file again into that database (adds nothing);
- ``raw``       — ``csv.reader`` + ``sqlite3.executemany`` of the same rows (every cell as text)
                  into a plain table, in one transaction, same journal settings (WAL,
                  synchronous=NORMAL): no validation, no indexes — the floor for "load this CSV
                  into SQLite". The import writes more than this on purpose: each row into a
                  staging table and then into ``ledger_entry`` (rowid, unique row key, account)
                  and its tx hash into ``ledger_identifier`` (rowid, unique match key), so the
                  ratio is work, not only overhead;
- ``import N/4`` — the import of the first quarter of the file: peak RSS should be the same as
                  for N (memory flat in file size).

Prints a table and the ratios; ``--json`` prints one JSON object as the last line.
Goal (issue 2): ≥ 200,000 rows/s and memory flat in file size.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = ["account_id", "entry_type", "amount", "occurred_at", "tx_hash", "wallet", "email",
          "phone", "iin", "insider"]


def rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


def current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def generate(path: Path, n: int, seed: int = 7, shape: str = "full") -> None:
    from claims.validators import make_eth_address, make_iin, make_tron_address

    rnd = random.Random(seed)
    per_account = 10
    start = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    width = len(HEADER) if shape == "full" else 6
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER[:width])
        acct_info = None
        for i in range(n):
            a = i // per_account
            if i % per_account == 0:
                payload = rnd.randbytes(20)
                wallet = make_eth_address(payload) if a % 2 else make_tron_address(payload)
                birth = dt.date(1950, 1, 1) + dt.timedelta(days=rnd.randrange(20000))
                acct_info = (
                    wallet,
                    f"victim{a}@example.com",
                    f"+7701{a % 10_000_000:07d}",
                    make_iin(birth, "male" if a % 2 else "female", a % 10000),
                    "true" if a % 1000 == 999 else "false",
                )
            r = rnd.random()
            etype = "deposit" if r < 0.6 else ("withdrawal" if r < 0.9 else "bonus")
            amount = f"{rnd.randrange(1, 50_000)}.{rnd.randrange(1_000_000):06d}".rstrip("0").rstrip(".")
            when = (start + dt.timedelta(seconds=i * 17)).strftime("%Y-%m-%dT%H:%M:%SZ")
            tx = "0x" + rnd.randbytes(32).hex()
            w.writerow([f"ACC{a:08d}", etype, amount, when, tx, *acct_info][:width])


# ----------------------------------------------------------------------------- children


def child_import(db: Path, csv_path: Path, limit: int | None) -> dict:
    os.environ["RESTITUTION_DATABASE_URL"] = f"sqlite:///{db}"
    from claims import cases, ledger
    from claims.audit import Actor
    from claims.db import get_engine, session_scope
    from claims.errors import NotFound

    engine = get_engine()
    with session_scope(engine) as s:
        try:
            cases.get_case_by_code(s, "bench")
        except NotFound:  # the first run on this database
            cases.create_case(s, "bench", "Bench case", None, Actor.operator())
    src = csv_path
    if limit is not None:
        src = csv_path.with_name(f"head-{limit}.csv")
        with open(csv_path) as fin, open(src, "w") as fout:
            for i, line in enumerate(fin):
                if i > limit:
                    break
                fout.write(line)
    base = current_rss_mb()
    marks = {}

    def progress(phase: str, _rows: int, _bytes: int) -> None:
        if phase == "storing":  # reading, validating and staging are done
            marks["read"] = (time.perf_counter() - t0, time.process_time() - c0)

    t0, c0 = time.perf_counter(), time.process_time()
    result = ledger.import_ledger(engine, "bench", src, Actor.operator(), progress=progress,
                                  progress_every=10**12)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with session_scope(engine, write=False) as s:
        summary = ledger.ledger_summary(s, "bench")
    return {
        "rows": result.rows_read,
        "rows_added": result.rows_added,
        "accounts_added": result.accounts_added,
        "identifiers_added": result.identifiers_added,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows_per_s": result.rows_read / seconds,
        "read_seconds": marks["read"][0],
        "read_cpu_seconds": marks["read"][1],
        "rss_before_mb": base,
        "peak_rss_mb": rss_mb(),
        "summary": summary,
    }


def child_raw(db: Path, csv_path: Path) -> dict:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    with open(csv_path, newline="") as fh:
        columns = next(csv.reader(fh))
    conn.execute(f"CREATE TABLE raw ({', '.join(c + ' TEXT' for c in columns)})")
    base = current_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    rows = 0
    conn.execute("BEGIN IMMEDIATE")
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        buf = []
        sql = f"INSERT INTO raw VALUES ({','.join('?' * len(columns))})"
        for row in reader:
            buf.append(row)
            if len(buf) >= 10_000:
                conn.executemany(sql, buf)
                rows += len(buf)
                buf.clear()
        if buf:
            conn.executemany(sql, buf)
            rows += len(buf)
    conn.execute("COMMIT")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, "rows_per_s": rows / seconds,
            "rss_before_mb": base, "peak_rss_mb": rss_mb()}


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", nargs="?", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--shape", choices=("full", "lean"), default="full",
                    help="full: every column on every row; lean: a transactions export")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "import":
            db, path, limit = rest
            res = child_import(Path(db), Path(path), None if limit == "-" else int(limit))
        else:
            res = child_raw(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return

    n = args.n or (100_000 if args.quick else 1_000_000)
    runs, size_mb = run_all(n, args.shape)
    full, again, raw, quarter = runs
    report(n, args.shape, size_mb, runs)
    if full["rows_added"] != n or again["rows_added"] != 0:
        print("ERROR: rows added do not match", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps({
            "rows": n, "shape": args.shape, "import_rows_per_s": round(full["rows_per_s"]),
            "reimport_rows_per_s": round(again["rows_per_s"]),
            "raw_rows_per_s": round(raw["rows_per_s"]),
            "ratio": round(full["seconds"] / raw["seconds"], 2),
            "cpu_ratio": round(full["cpu_seconds"] / raw["cpu_seconds"], 2),
            "peak_rss_mb": round(full["peak_rss_mb"]),
            "peak_rss_quarter_mb": round(quarter["peak_rss_mb"]),
        }, separators=(",", ":")))


def run_all(n: int, shape: str) -> tuple[list[dict], float]:
    """The file generated, then each run in a fresh process: the import, the re-import, the
    raw floor and the import of a quarter; returns their results and the file's MiB."""
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        tmpd = Path(tmp)
        os.environ.setdefault("RESTITUTION_VAR_DIR", str(tmpd / "var"))
        csv_path = tmpd / "ledger.csv"
        t0 = time.perf_counter()
        generate(csv_path, n, shape=shape)
        gen_s = time.perf_counter() - t0
        size_mb = csv_path.stat().st_size / 2**20
        print(f"generated {n:,} rows ({size_mb:.1f} MiB) in {gen_s:.1f} s", file=sys.stderr)

        full = run_child("import", str(tmpd / "a.db"), str(csv_path), "-")
        again = run_child("import", str(tmpd / "a.db"), str(csv_path), "-")
        raw = run_child("raw", str(tmpd / "raw.db"), str(csv_path))
        quarter = run_child("import", str(tmpd / "q.db"), str(csv_path), str(n // 4))
    return [full, again, raw, quarter], size_mb


def report(n: int, shape: str, size_mb: float, runs: list[dict]) -> None:
    """The table, the ratios to the raw floor, each phase's share and the memory verdict."""
    full, again, raw, quarter = runs
    rows = [
        ("import", full),
        ("re-import (no new rows)", again),
        ("raw csv+executemany", raw),
        (f"import {n // 4:,} rows", quarter),
    ]
    print(f"\nLedger import, SQLite {sqlite3.sqlite_version}, {n:,} rows, shape {shape} "
          f"({size_mb:.1f} MiB CSV)\n")
    print(f"{'run':<26} {'rows':>11} {'wall s':>8} {'rows/s':>10} {'CPU s':>7} "
          f"{'rows/CPU-s':>11} {'RSS before':>11} {'peak RSS':>9}")
    for name, r in rows:
        print(f"{name:<26} {r['rows']:>11,} {r['seconds']:>8.2f} {r['rows_per_s']:>10,.0f} "
              f"{r['cpu_seconds']:>7.2f} {r['rows'] / r['cpu_seconds']:>11,.0f} "
              f"{r['rss_before_mb']:>9.0f}MB {r['peak_rss_mb']:>7.0f}MB")
    ratio = full["seconds"] / raw["seconds"]
    cpu_ratio = full["cpu_seconds"] / raw["cpu_seconds"]
    print(f"\nimport / raw executemany: {ratio:.2f}x wall time, {cpu_ratio:.2f}x CPU time "
          f"(import {full['rows_per_s']:,.0f} rows/s; goal ≥ 200,000)")
    for name, r in rows[:2]:
        print(f"{name}: read, validate, stage {r['read_seconds']:.2f} s "
              f"({r['read_cpu_seconds']:.2f} CPU s); store {r['seconds'] - r['read_seconds']:.2f} s "
              f"({r['cpu_seconds'] - r['read_cpu_seconds']:.2f} CPU s)")
    print_memory(n, full, quarter)
    print(f"summary: {json.dumps(full['summary'])}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          "(wall figures suffer from other load; CPU figures less so)")


def print_memory(n: int, full: dict, quarter: dict) -> None:
    """Peak memory of the whole file against a quarter of it: flat, under the fixed caps, or
    growing with the file."""
    grown_full = full["peak_rss_mb"] - full["rss_before_mb"]
    grown_quarter = quarter["peak_rss_mb"] - quarter["rss_before_mb"]
    mem_growth = grown_full - grown_quarter
    # What the import may hold whatever the file size: the connection's SQLite page cache
    # (claims.db.SQLITE_BULK_CACHE_KIB while it imports; SQLite's sorters may use as much
    # again before they spill to disk), the rules' caches of repeated values, one row at a
    # time, the read buffers.
    from claims.db import SQLITE_BULK_CACHE_KIB

    cap = 2 * SQLITE_BULK_CACHE_KIB // 1024 + 50
    if mem_growth <= max(16.0, 0.25 * grown_full):
        verdict = "flat"
    elif grown_full <= cap:
        verdict = f"under the fixed caps (≤ {cap} MB: the page cache fills on small files)"
    else:
        verdict = "GROWS with the file"
    print(f"peak RSS above start: {grown_full:.0f} MB for {n:,} rows, {grown_quarter:.0f} MB for "
          f"{n // 4:,} rows (4x the rows: {mem_growth:+.0f} MB: {verdict})")


if __name__ == "__main__":
    main()
