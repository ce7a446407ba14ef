"""Round reports and public statistics: the data, and a server-rendered SVG chart.

- :func:`round_report` — a round as staff read it: its totals (:func:`claims.rounds.round_view`),
  counts (paid, reserved, net winners, de minimis, nothing this round, whole loss recovered),
  the recovery histogram, the largest allocations and one page of per-claim lines. Claims are
  named by their reference only — never a name, IIN or address.
- Recovery of a claim = (allocated this round + paid before) / net loss, in 10 % buckets
  (``0–10 %`` … ``90–100 %``, and ``100 %`` for a loss met in full), exact integer
  arithmetic; net winners (no loss) are left out, and the reserve of an open dispute is not
  counted as recovered until the dispute is settled.
- :func:`histogram_svg` — the histogram as an inline SVG (no JavaScript, no external
  resources), with a ``<title>``/``<desc>`` for screen readers.
- :func:`statistics` — the public aggregates: claims by status, per case and in all, and
  every decided round's rate and totals (rounds still ``prepared`` or ``stale`` are internal
  and left out). Counts and sums only.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlmodel import Session

from claims import rounds
from claims.models import Allocation, Case, Claim, ClaimStatus, DistributionRound
from claims.money import format_amount, format_rate, parse_rate, percent, rate_percent

#: The histogram's buckets: 0–10 %, …, 90–100 % (upper bound excluded), then exactly 100 %.
BUCKET_LABELS = tuple(f"{10 * k}–{10 * (k + 1)}%" for k in range(10)) + ("100%",)

#: Rounds shown to the public: decided ones.
PUBLIC_ROUNDS = rounds.COUNTING

MAX_PAGE = 5000


def recovery_bucket(recovered: int, net_loss: int) -> int:
    """The bucket (0–10) of ``recovered / net_loss`` (``net_loss > 0``)."""
    if recovered >= net_loss:
        return 10
    return min(9, (10 * recovered) // net_loss)


def _recovery_pct(recovered: int, loss: int) -> str | None:
    return None if loss <= 0 else percent(recovered, loss, 2)


def round_report(session: Session, round_id: object, *, limit: int = 500, offset: int = 0,
                 top: int = 10) -> dict[str, Any]:
    """Everything the round report shows (see the module docstring); ``rows`` is one page
    (``limit``/``offset``, claim order) of the ``total_rows`` lines."""
    limit = max(0, min(int(limit), MAX_PAGE))
    offset = max(0, int(offset))
    rnd = rounds.get_round(session, round_id)
    view = rounds.view(session, rnd)
    hist = [0] * len(BUCKET_LABELS)
    counts = {"claims": 0, "paid": 0, "reserved": 0, "net_winner": 0, "de_minimis": 0,
              "nothing": 0, "fully_recovered": 0}
    for loss, paid_before, amount, reserved, excluded in session.execute(
        select(Allocation.net_loss, Allocation.paid_before, Allocation.amount,
               Allocation.reserved, Allocation.excluded)
        .where(Allocation.round_id == rnd.id)
    ):
        counts["claims"] += 1
        if excluded in ("net_winner", "de_minimis"):
            counts[excluded] += 1
        if amount > 0:
            counts["paid"] += 1
        if reserved > 0:
            counts["reserved"] += 1
        if amount == 0 and reserved == 0 and not excluded:
            counts["nothing"] += 1
        if loss > 0:
            recovered = amount + paid_before
            b = recovery_bucket(recovered, loss)
            hist[b] += 1
            if b == 10:
                counts["fully_recovered"] += 1
    line = (Claim.reference, Allocation.net_loss, Allocation.paid_before, Allocation.amount,
            Allocation.reserved, Allocation.released, Allocation.excluded)
    page = session.execute(
        select(*line).join(Claim, Claim.id == Allocation.claim_id)
        .where(Allocation.round_id == rnd.id)
        .order_by(Allocation.claim_id).limit(limit).offset(offset)
    ).all()
    largest = session.execute(
        select(*line).join(Claim, Claim.id == Allocation.claim_id)
        .where(Allocation.round_id == rnd.id, Allocation.amount + Allocation.reserved > 0)
        .order_by((Allocation.amount + Allocation.reserved).desc(), Allocation.claim_id)
        .limit(top)
    ).all()
    return {
        "round": view,
        "counts": counts,
        "histogram": [{"label": lab, "claims": n} for lab, n in zip(BUCKET_LABELS, hist)],
        "top": [_line(r) for r in largest],
        "rows": [_line(r) for r in page],
        "total_rows": counts["claims"],
        "limit": limit,
        "offset": offset,
    }


def _line(row) -> dict[str, Any]:
    ref, loss, paid_before, amount, reserved, released, excluded = row
    return {
        "claim_id": ref,
        "net_loss": format_amount(loss),
        "paid_before": format_amount(paid_before),
        "allocation": format_amount(amount),
        "reserved": format_amount(reserved),
        "released": format_amount(released),
        "excluded": excluded or "",
        "recovery_percent": _recovery_pct(amount + paid_before, loss),
    }


# ------------------------------------------------------------------ the chart


def histogram_svg(histogram: list[dict[str, Any]], *, title: str = "Recovery of net loss",
                  description: str | None = None, width: int = 660, height: int = 280) -> Markup:
    """A bar chart of ``[{"label", "claims"}]`` as inline SVG markup (safe to embed)."""
    left, right, top, bottom = 48, 12, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(histogram))
    slot = plot_w // n
    bar = max(4, slot * 3 // 4)
    peak = max([h["claims"] for h in histogram] + [1])
    total = sum(h["claims"] for h in histogram)
    desc = description or "; ".join(f"{h['label']}: {h['claims']}" for h in histogram)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-labelledby="hist-title hist-desc">',
        f'<title id="hist-title">{escape(title)}</title>',
        f'<desc id="hist-desc">{escape(desc)}</desc>',
        f'<text x="{left}" y="16" font-size="13" fill="#1f2328">{escape(title)} '
        f'({total} claims)</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="#57606a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#57606a"/>',
        f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end" '
        f'fill="#57606a">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end" '
        f'fill="#57606a">0</text>',
    ]
    for i, h in enumerate(histogram):
        x = left + i * slot + (slot - bar) // 2
        bh = (h["claims"] * plot_h) // peak
        if h["claims"] and bh == 0:
            bh = 1
        y = top + plot_h - bh
        cx = x + bar // 2
        label = escape(h["label"])
        parts.append(
            f'<rect x="{x}" y="{y}" width="{bar}" height="{bh}" fill="#0b5cad">'
            f'<title>{label}: {h["claims"]}</title></rect>'
        )
        parts.append(f'<text x="{cx}" y="{y - 4}" font-size="11" text-anchor="middle" '
                     f'fill="#1f2328">{h["claims"]}</text>')
        parts.append(f'<text x="{cx}" y="{top + plot_h + 16}" font-size="10" '
                     f'text-anchor="middle" fill="#57606a">{label}</text>')
    parts.append(f'<text x="{left + plot_w // 2}" y="{height - 6}" font-size="11" '
                 f'text-anchor="middle" fill="#57606a">allocated + paid before, of net loss'
                 f'</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# ------------------------------------------------------------------ the flow's summary


def summary_markdown(report: dict[str, Any]) -> str:
    """The round report as Markdown (the Prefect markdown artifact)."""
    v, c = report["round"], report["counts"]
    out = [
        f"# Round {v['number']} of case {v['case_id']} — {v['status']}",
        "",
        "| | |",
        "|---|---|",
        f"| round id | {v['id']} |",
        f"| method | {v['method']} |",
        f"| pool | {v['pool']} USDT |",
        f"| rate | {v['rate']} ({v['rate_percent']} %) — exact {v['rate_exact']} |",
        f"| allocated | {v['allocated']} USDT |",
        f"| reserved (open disputes) | {v['reserved']} USDT |",
        f"| released (settled disputes) | {v['released']} USDT |",
        f"| undistributed | {v['undistributed']} USDT |",
        f"| minimum payout | {v['min_payout']} USDT |",
        f"| claims | {c['claims']}: {c['paid']} paid, {c['reserved']} reserved, "
        f"{c['net_winner']} net winners, {c['de_minimis']} below the minimum, "
        f"{c['nothing']} nothing this round |",
        "",
        "## Recovery (allocated + paid before, of net loss)",
        "",
        "| recovery | claims | |",
        "|---|---:|---|",
    ]
    peak = max([h["claims"] for h in report["histogram"]] + [1])
    for h in report["histogram"]:
        bar = "█" * ((h["claims"] * 30 + peak - 1) // peak)
        out.append(f"| {h['label']} | {h['claims']} | {bar} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ public statistics


def _public_round(rnd: DistributionRound) -> dict[str, Any]:
    rate = parse_rate(rnd.rate)
    return {
        "number": rnd.number,
        "status": rnd.status,
        "method": rnd.method,
        "rate": format_rate(rate),
        "rate_percent": rate_percent(rate),
        "pool": format_amount(rnd.pool),
        "allocated": format_amount(rnd.allocated),
        "reserved": format_amount(rnd.reserved),
        "released": format_amount(rnd.released),
        "undistributed": format_amount(rnd.undistributed),
        "claims": rnd.claims_count,
        "approved_on": rnd.approved_at.date().isoformat() if rnd.approved_at else None,
    }


def statistics(session: Session) -> dict[str, Any]:
    """Public aggregates (see the module docstring): ``{"claims": {"total", "by_status"},
    "cases": [{"case_id", "name", "status", "claims": {...}, "rounds": [...]}]}``."""
    statuses = [s.value for s in ClaimStatus]

    def empty() -> dict[str, Any]:
        return {"total": 0, "by_status": {s: 0 for s in statuses}}

    overall = empty()
    per_case: dict[int, dict[str, Any]] = {}
    for case_id, status, n in session.execute(
        select(Claim.case_id, Claim.status, func.count()).group_by(Claim.case_id, Claim.status)
    ):
        for bucket in (overall, per_case.setdefault(case_id, empty())):
            bucket["total"] += n
            bucket["by_status"][status] = bucket["by_status"].get(status, 0) + n
    by_case: dict[int, list[dict[str, Any]]] = {}
    for rnd in session.execute(
        select(DistributionRound).where(DistributionRound.status.in_(PUBLIC_ROUNDS))
        .order_by(DistributionRound.case_id, DistributionRound.number)
    ).scalars():
        by_case.setdefault(rnd.case_id, []).append(_public_round(rnd))
    cases = session.execute(select(Case).order_by(Case.created_at, Case.id)).scalars().all()
    return {
        "claims": overall,
        "cases": [
            {"case_id": c.code, "name": c.name, "status": c.status,
             "claims": per_case.get(c.id, empty()), "rounds": by_case.get(c.id, [])}
            for c in cases
        ],
    }
