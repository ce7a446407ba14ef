"""``make bench``: every bench script at a quick size, one after another; their output is
collected into ``bench/RESULTS.md`` with the machine it ran on.

    .venv/bin/python bench/run_all.py [--full] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["allocation", "ledger_import", "intake", "verify", "payouts", "notify", "pipeline",
           "cli_start"]


def machine() -> str:
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except Exception:  # noqa: BLE001
        mem = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
            f"{mem}; load average at start {', '.join(f'{x:.1f}' for x in load)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the scripts' default (large) sizes")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    names = [b for b in BENCHES if (HERE / f"{b}.py").exists() and (not args.only or b in args.only)]
    sections = [f"# Benchmark results\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — {machine()}\n",
                "Sizes: " + ("the scripts' defaults" if args.full else "`--quick`") +
                ". Each script measures its goal side by side with a baseline in the same run.\n"]
    failed = 0
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + ([] if args.full else ["--quick"])
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        took = time.monotonic() - t0
        out = (proc.stdout + ("\n" + proc.stderr if proc.returncode else "")).strip()
        print(out, flush=True)
        failed += proc.returncode != 0
        sections.append(f"## {name} ({took:.0f} s{', FAILED' if proc.returncode else ''})\n\n"
                        f"```\n{out[-6000:]}\n```\n")
    (HERE / "RESULTS.md").write_text("\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
