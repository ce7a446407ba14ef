"""Bench: start-up of the `restitution` commands that only read or write the database.

    .venv/bin/python bench/cli_start.py [--repeat N] [--quick] [--compare DIR]
                                        [--database-url URL] [--json]

Runs each command below through the console entry point in a fresh process against one
database that is already current (migrated, with a case, a blocked address and a staff user,
before the clock starts; a new SQLite file, or ``--database-url``: an empty database, e.g.
PostgreSQL), ``N`` times (default 7; ``--quick`` 3), in rounds so that load from other
processes falls on every command alike, and keeps each command's best wall time and best CPU
time (user + system of the child). Beside them, as floors, the same interpreter running
``python -c pass`` and ``python -c "import sqlalchemy"`` (which every database command needs).

``--compare DIR`` also runs every command, in the same rounds, with ``DIR`` first on
``PYTHONPATH`` (a copy of ``cli/``, ``claims/`` and ``migrations/`` from before a change) and
prints both side by side.

Goal (issue 2, item 8): a command that neither runs a flow nor touches the chain answers in
under 0.5 s; this bench aims at ≤ 0.35 s wall for the typical database command on a quiet
machine, ``--help`` faster still. Prints a table; ``--json`` one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 0.35
LIMIT_S = 0.5

# What the console script runs (pyproject.toml: restitution = "cli.main:app").
ENTRY = "import sys; from cli.main import app; sys.argv[0] = 'restitution'; app()"

FLOORS = [("python -c pass", ["-c", "pass"]),
          ("python -c 'import sqlalchemy'", ["-c", "import sqlalchemy"])]


def commands(tag: str) -> list[tuple[str, list[str]]]:
    """(label, arguments) of every timed command; ``tag`` names what a write creates."""
    return [
        ("--help", ["--help"]),
        ("ledger summary --json", ["ledger", "summary", "bench", "--json"]),
        ("blocked list --json", ["blocked", "list", "--json"]),
        ("users list --json", ["users", "list", "--json"]),
        ("audit verify --json", ["audit", "verify", "--json"]),
        ("cases create --json", ["cases", "create", tag, "--name", "Bench", "--json"]),
    ]


def run(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one child process, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=None, help="runs per command (default 7)")
    ap.add_argument("--quick", action="store_true", help="3 runs per command")
    ap.add_argument("--compare", type=Path, default=None,
                    help="also time each command with this tree first on PYTHONPATH")
    ap.add_argument("--database-url", default=None, help="an empty database (default: SQLite)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)

    tmp = Path(tempfile.mkdtemp(prefix="restitution-bench-cli-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    env = {
        **os.environ,
        "RESTITUTION_VAR_DIR": str(tmp / "var"),
        "RESTITUTION_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789abcdef",
        "RESTITUTION_PII_KEY": "bench-pii-key-0123456789abcdef0123456789abcdef0123",
        "RESTITUTION_DATABASE_URL": url,
        "RESTITUTION_PASSWORD": "bench-password-0123456789",
        "PYTHONPATH": str(ROOT),
    }
    trees = {"now": env}
    if args.compare:
        trees = {"before": {**env, "PYTHONPATH": str(args.compare.resolve())}, "now": env}
    try:
        best = measure(trees, env, tmp, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = report(best, list(trees), url, repeat, compare=bool(args.compare))
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def measure(trees: dict[str, dict], env: dict, tmp: Path,
            repeat: int) -> dict[tuple[str, str], tuple[float, float]]:
    """The database set up once, then every floor and command ``repeat`` times in rounds;
    returns the best (wall, CPU) seconds of each (label, tree)."""
    py = sys.executable
    best: dict[tuple[str, str], tuple[float, float]] = {}

    def keep(key: tuple[str, str], wall: float, cpu: float) -> None:
        w0, c0 = best.get(key, (wall, cpu))
        best[key] = (min(w0, wall), min(c0, cpu))

    for setup in (["cases", "create", "bench", "--name", "Bench"],
                  ["blocked", "add", "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf", "--reason", "b"],
                  ["users", "add", "bench", "--role", "admin"]):
        run([py, "-c", ENTRY, *setup], env, tmp)
    for r in range(repeat):
        for label, argv in FLOORS:
            keep((label, ""), *run([py, *argv], env, tmp))
        for tree, tree_env in trees.items():
            for label, argv in commands(f"{tree}-{r}"):
                keep((label, tree), *run([py, "-c", ENTRY, *argv], tree_env, tmp))
    return best


def report(best: dict[tuple[str, str], tuple[float, float]], trees: list[str], url: str,
           repeat: int, *, compare: bool) -> dict:
    """Print the table and the verdict; returns them as the JSON result."""
    backend = url.split(":", 1)[0].split("+")[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CLI start-up: best of {repeat} runs per command, a fresh process each, {backend} "
          f"(schema current); load average {load}")
    print(f"{'command':32}" + "".join(f"{t + ' wall s':>14}{t + ' CPU s':>13}" for t in trees))
    result: dict = {"backend": backend, "repeat": repeat, "goal_wall_s": GOAL_S,
                    "floors": {}, "commands": {}}
    for label, _ in FLOORS:
        wall, cpu = best[(label, "")]
        print(f"{label:32}{wall:14.3f}{cpu:13.3f}")
        result["floors"][label] = {"wall_s": wall, "cpu_s": cpu}
    for label, _ in commands(""):
        row = f"{label:32}"
        for tree in trees:
            wall, cpu = best[(label, tree)]
            row += f"{wall:14.3f}{cpu:13.3f}"
            result["commands"].setdefault(label, {})[tree] = {"wall_s": wall, "cpu_s": cpu}
        print(row)
    db_walls = sorted(best[(label, "now")][0] for label, _ in commands("")[1:])
    median = db_walls[len(db_walls) // 2]
    sa_cpu = best[("python -c 'import sqlalchemy'", "")][1]
    print(f"database commands: median wall {median:.3f} s, slowest {db_walls[-1]:.3f} s "
          f"(goal ≤ {GOAL_S} s typical on a quiet machine, limit {LIMIT_S} s); "
          f"--help {best[('--help', 'now')][0]:.3f} s; import sqlalchemy alone {sa_cpu:.3f} CPU s")
    if compare:
        for label, _ in commands(""):
            (bw, bc), (nw, nc) = best[(label, "before")], best[(label, "now")]
            print(f"  {label:30} CPU {bc:.3f} → {nc:.3f} s ({nc / bc:.2f}x), "
                  f"wall {bw:.3f} → {nw:.3f} s")
    result["median_db_wall_s"] = median
    return result


if __name__ == "__main__":
    raise SystemExit(main())
