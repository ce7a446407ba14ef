"""What a claimant sees of their claim: :func:`status_view` (the status page and
``GET /api/v1/claims/{reference}``, docs/api.md).

Codes and amounts only — the API and the page put words in the claimant's language on them.
Never the IIN, flags or staff notes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from claims import lifecycle
from claims.models import (
    Allocation,
    AuditEvent,
    Claim,
    ClaimMessage,
    ClaimStatus,
    Decision,
    DistributionRound,
    Payout,
    RoundStatus,
)
from claims.money import format_amount, parse_rate, rate_percent

__all__ = [
    "EXPLORERS",
    "TIMELINE_ACTIONS",
    "VISIBLE_ROUNDS",
    "explorer_url",
    "round_rate_percent",
    "status_view",
    "timeline_event",
]

EXPLORERS = {
    ("tron", None): "https://tronscan.org/#/transaction/{tx}",
    ("ethereum", 1): "https://etherscan.io/tx/{tx}",
    ("ethereum", 11155111): "https://sepolia.etherscan.io/tx/{tx}",
}
#: The rounds whose allocations a claimant sees (not one still being prepared).
VISIBLE_ROUNDS = (RoundStatus.approved.value, RoundStatus.released.value,
                  RoundStatus.settled.value)
#: Audit actions a claimant sees on the timeline, as event codes (the words are the page's).
TIMELINE_ACTIONS = {
    "claim.filed": "filed",
    "claim.document_added": "document_added",
    "claim.replied": "replied",
    "claim.disputed": "disputed",
    "claim.dispute_settled": "dispute_settled",
    "claim.address_change_requested": "address_change_requested",
    "claim.address_changed": "address_changed",
    "claim.token_reset": "token_reset",
    "claim.token_reissued": "token_reset",
}


def explorer_url(network: str, chain_id: int | None, tx_id: str | None) -> str | None:
    """A public block explorer's page for a transaction, when there is one (not for the
    in-process test chain)."""
    if not tx_id:
        return None
    template = EXPLORERS.get((network, chain_id if network == "ethereum" else None))
    return template.format(tx=tx_id) if template else None


def timeline_event(action: str, before: dict | None, after: dict | None) -> str | None:
    """The timeline's event code of an audit event about the claim, or None (not shown):
    the claimant's own acts by name, status changes as ``status_<new status>``."""
    if action in TIMELINE_ACTIONS:
        return TIMELINE_ACTIONS[action]
    b = (before or {}).get("status") if isinstance(before, dict) else None
    a = (after or {}).get("status") if isinstance(after, dict) else None
    if a and a != b and a in ClaimStatus.__members__:
        if b == ClaimStatus.disputed.value and a == ClaimStatus.approved.value:
            return "dispute_settled"
        return f"status_{a}"
    return None


def round_rate_percent(rate: str) -> str:
    """A round's stored rate (``"num/den"``) as the percentage victims read
    (:func:`claims.money.rate_percent`); ``"0"`` for a rate that cannot be read."""
    try:
        return rate_percent(parse_rate(rate))
    except (ValueError, ZeroDivisionError):
        return "0"


def status_view(session: Session, claim: Claim) -> dict[str, Any]:
    """What the claimant may see of their claim (see the module docstring)."""
    allocations = _allocations(session, claim)
    shown_loss = claim.recognized_loss if claim.status in lifecycle.PAYABLE or allocations else None
    return {
        "reference": claim.reference,
        "status": claim.status,
        "language": claim.language,
        "recognized_loss": format_amount(shown_loss) if shown_loss is not None else None,
        "claimed_amount": format_amount(claim.claimed_amount),
        "payout_network": claim.payout_network,
        "payout_address": claim.payout_address,
        "rejection_reason": _rejection_reason(session, claim),
        "requests": _open_requests(session, claim),
        "allocations": allocations,
        "payouts": _payouts(session, claim),
        "timeline": _timeline(session, claim),
    }


def _open_requests(session: Session, claim: Claim) -> list[dict[str, Any]]:
    """The requests for information not answered yet."""
    return [
        {"id": str(m.id), "asked_at": m.created_at.isoformat(), "text": m.body}
        for m in session.execute(
            select(ClaimMessage)
            .where(ClaimMessage.claim_id == claim.id, ClaimMessage.kind == "request",
                   ClaimMessage.answered_at.is_(None))
            .order_by(ClaimMessage.id)
        ).scalars()
    ]


def _allocations(session: Session, claim: Claim) -> list[dict[str, Any]]:
    """The claim's allocations in rounds that are approved or later, by round."""
    return [
        {
            "round": number,
            "amount": format_amount(alloc.amount),
            "reserved": format_amount(alloc.reserved),
            "rate_percent": round_rate_percent(rate),
        }
        for alloc, number, rate in session.execute(
            select(Allocation, DistributionRound.number, DistributionRound.rate)
            .join(DistributionRound, DistributionRound.id == Allocation.round_id)
            .where(Allocation.claim_id == claim.id,
                   DistributionRound.status.in_(VISIBLE_ROUNDS))
            .order_by(DistributionRound.number)
        )
    ]


def _payouts(session: Session, claim: Claim) -> list[dict[str, Any]]:
    """The claim's payouts, by round, with a block explorer link once sent."""
    return [
        {
            "round": number,
            "state": p.state,
            "amount": format_amount(p.amount),
            "network": p.network,
            "tx_id": p.tx_id,
            "explorer_url": explorer_url(p.network, p.chain_id, p.tx_id),
            "updated_at": p.updated_at.isoformat(),
        }
        for p, number in session.execute(
            select(Payout, DistributionRound.number)
            .join(DistributionRound, DistributionRound.id == Payout.round_id)
            .where(Payout.claim_id == claim.id)
            .order_by(DistributionRound.number, Payout.id)
        )
    ]


def _timeline(session: Session, claim: Claim) -> list[dict[str, str]]:
    """The claim's audit events a claimant sees, as event codes (:func:`timeline_event`)."""
    timeline = []
    for at, action, before, after in session.execute(
        select(AuditEvent.occurred_at, AuditEvent.action, AuditEvent.before, AuditEvent.after)
        .where(AuditEvent.claim_pk == claim.id, AuditEvent.subject_type == "claim",
               AuditEvent.subject_id == claim.reference)
        .order_by(AuditEvent.id)
    ):
        event = timeline_event(action, before, after)
        if event is not None:
            timeline.append({"at": at.isoformat(), "event": event})
    return timeline


def _rejection_reason(session: Session, claim: Claim) -> str | None:
    """The reason of the latest rejection, when the claim is rejected."""
    if claim.status != ClaimStatus.rejected.value:
        return None
    return session.execute(
        select(Decision.reason).where(Decision.claim_id == claim.id,
                                      Decision.decision == "reject")
        .order_by(Decision.id.desc()).limit(1)
    ).scalar_one_or_none()
