"""The Plan CSV (docs/formats.md, "Plan CSV"): the what-if spreadsheet ``restitution plan``
reads, and the plan lines and summary it writes (a stored round's ``plan.csv`` starts with the
same columns).

Input: header ``claim_id,invested,withdrawn`` with optional ``paid_before`` (default 0) and
``status`` (``approved`` default, or ``disputed``); other columns are ignored. An empty
``paid_before`` or ``status`` cell takes the default. :func:`read_plan_csv` names every bad line
(``line N: reason``, the header is line 1) in one :class:`PlanInputError`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import TextIO

from claims.allocation.result import AllocationResult, ClaimInput
from claims.money import AmountError, format_amount, format_rate, parse_amount

#: Output columns of plan.csv: these first (a stored round adds its own after them).
PLAN_COLUMNS = ("claim_id", "net_loss", "allocation", "reserved", "excluded")

#: Input columns: required, then optional.
REQUIRED = ("claim_id", "invested", "withdrawn")
OPTIONAL = ("paid_before", "status")
#: Accepted ``status`` values (empty: approved).
STATUSES = ("approved", "disputed")


class PlanInputError(Exception):
    """A spreadsheet that is not a Plan CSV; ``lines`` names every bad line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# ------------------------------------------------------------------ reading


def read_plan_csv(text: str) -> list[ClaimInput]:
    """Parse the input spreadsheet into :class:`ClaimInput` records (input order, claim ids
    unique) or raise :class:`PlanInputError` listing every bad line."""
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    col, width = _read_header(reader)
    claims: list[ClaimInput] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {line + 1}: malformed CSV ({exc})")
            break
        line += 1
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != width:
            problems.append(f"line {line}: expected {width} fields, found {len(row)}")
            continue
        claim, reasons = _read_line(row, col, line, first_line)
        if reasons:
            problems.append(f"line {line}: " + "; ".join(reasons))
        else:
            claims.append(claim)
    if problems:
        raise PlanInputError(problems)
    return claims


def _read_header(reader) -> tuple[dict[str, int], int]:
    """The known columns' positions and the number of fields every line must have."""
    try:
        header = next(reader)
    except StopIteration:
        raise PlanInputError(["line 1: empty file (expected a header claim_id,invested,withdrawn)"])
    except csv.Error as exc:
        raise PlanInputError([f"line 1: {exc}"])
    names = [h.strip() for h in header]
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        problems.append(f"line 1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    dups = sorted({h for h in names if h and names.count(h) > 1})
    if dups:
        problems.append(f"line 1: duplicate column{'s' if len(dups) > 1 else ''} {', '.join(dups)}")
    if problems:
        raise PlanInputError(problems)
    return {h: names.index(h) for h in (*REQUIRED, *OPTIONAL) if h in names}, len(names)


def _read_line(row: list[str], col: dict[str, int], line: int,
               first_line: dict[str, int]) -> tuple[ClaimInput | None, list[str]]:
    """One data line: its claim, or every reason it is refused (``first_line``: the line of
    each claim id seen so far, kept up to date)."""
    reasons: list[str] = []
    cid = row[col["claim_id"]]
    if not cid.strip():
        reasons.append("claim_id is empty")
    elif cid != cid.strip():
        reasons.append("claim_id must not have leading or trailing spaces")
    elif cid in first_line:
        reasons.append(f"duplicate claim_id {cid} (first on line {first_line[cid]})")
    else:
        first_line[cid] = line
    amounts: dict[str, int] = {}
    for name in ("invested", "withdrawn", "paid_before"):
        if name not in col:
            amounts[name] = 0
            continue
        cell = row[col[name]]
        if name == "paid_before" and cell == "":
            amounts[name] = 0
            continue
        try:
            amounts[name] = parse_amount(cell)
        except AmountError as exc:
            reasons.append(f"{name} {exc}")
    status = row[col["status"]].strip() if "status" in col else ""
    status = status or "approved"
    if status not in STATUSES:
        reasons.append(f"status must be approved or disputed, not {row[col['status']]!r}")
    if reasons:
        return None, reasons
    return ClaimInput(cid, amounts["invested"], amounts["withdrawn"], amounts["paid_before"],
                      status == "disputed"), reasons


# ------------------------------------------------------------------ writing


def plan_rows(result: AllocationResult) -> Iterator[dict[str, str]]:
    """The plan.csv lines in input order: ``PLAN_COLUMNS`` with decimal-string amounts.

    ``excluded`` is ``net_winner``, ``de_minimis`` or empty.
    """
    fmt = format_amount
    for cid, loss, al, rs, ex in zip(result.claim_ids, result.net_losses, result.allocations,
                                     result.reserves, result.exclusions()):
        yield {
            "claim_id": cid,
            "net_loss": fmt(loss),
            "allocation": fmt(al),
            "reserved": fmt(rs),
            "excluded": ex or "",
        }


def write_plan_csv(result: AllocationResult, stream: TextIO) -> None:
    """The plan as CSV (header ``PLAN_COLUMNS``, one line per claim) into ``stream``."""
    w = csv.DictWriter(stream, fieldnames=PLAN_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(plan_rows(result))


def plan_summary(result: AllocationResult) -> dict[str, str]:
    """``{"pool", "rate", "allocated", "reserved", "undistributed"}`` as decimal strings."""
    return {
        "pool": format_amount(result.pool),
        "rate": format_rate(result.rate),
        "allocated": format_amount(result.allocated),
        "reserved": format_amount(result.reserved),
        "undistributed": format_amount(result.undistributed),
    }
