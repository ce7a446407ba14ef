"""The blocked-address list: frozen or sanctioned payout addresses.

An address of either network is accepted (TRON ``T…`` base58check, or Ethereum ``0x…`` with
its EIP-55 checksum when mixed case; all lower/upper case with a warning). It is stored under
its comparison key, :func:`claims.validators.normalize_address_key` (Ethereum lower case, TRON
as given), so a claim's payout address is blocked whatever its letter case on Ethereum.

Adding an address that is already listed is refused with ``Conflict`` (the operator learns it
was there, and since when); removing one that is not listed is ``NotFound``. Both are audited.
Verification and payouts match a payout address by ``BlockedAddress.address_key``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.errors import Conflict, InvalidInput, NotFound
from claims.models import BlockedAddress
from claims.validators import (
    ValidationFailed,
    detect_network,
    normalize_address_key,
    validate_any_address,
)

__all__ = [
    "AddResult",
    "add_blocked",
    "blocked_view",
    "list_blocked",
    "remove_blocked",
]

MAX_REASON_LEN = 2000


@dataclass
class AddResult:
    entry: BlockedAddress
    network: str
    warnings: list[str]


def blocked_view(entry: BlockedAddress) -> dict:
    return {
        "address": entry.address,
        "network": detect_network(entry.address) or "unknown",
        "reason": entry.reason,
        "created_at": entry.created_at.isoformat() if entry.created_at else None,
    }


def add_blocked(
    session: Session, address: str, reason: str, actor: Actor | None = None
) -> AddResult:
    """Block ``address``. A bad address or a missing reason → ``InvalidInput`` (fields
    ``address`` / ``reason``); an address already listed → ``Conflict``."""
    errors: list[dict] = []
    network = canonical = None
    warnings: list[str] = []
    try:
        network, canonical, warnings = validate_any_address(address, field="address")
    except ValidationFailed as exc:
        errors.append(exc.as_dict())
    clean_reason = " ".join(reason.split()) if isinstance(reason, str) else ""
    if not clean_reason:
        errors.append({"field": "reason", "message": "is required: say why it is blocked"})
    elif len(clean_reason) > MAX_REASON_LEN:
        errors.append(
            {"field": "reason", "message": f"must be at most {MAX_REASON_LEN} characters"}
        )
    if errors:
        raise InvalidInput(errors)
    key = normalize_address_key(network, canonical)
    existing = session.execute(
        select(BlockedAddress).where(BlockedAddress.address_key == key)
    ).scalar_one_or_none()
    if existing is not None:
        raise Conflict(
            f"{existing.address} is already blocked (since {existing.created_at:%Y-%m-%d}: "
            f"{existing.reason})"
        )
    entry = BlockedAddress(address_key=key, address=canonical, reason=clean_reason)
    session.add(entry)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "blocked.add", "blocked_address", key,
        after={"address": canonical, "network": network, "reason": clean_reason},
    )
    return AddResult(entry, network, warnings)


def _key_of(address: str) -> str:
    if not isinstance(address, str) or not address.strip():
        raise InvalidInput([{"field": "address", "message": "is required"}])
    return normalize_address_key(None, address.strip())


def remove_blocked(session: Session, address: str, actor: Actor | None = None) -> BlockedAddress:
    """Unblock ``address`` (any letter case on Ethereum); not listed → ``NotFound``."""
    key = _key_of(address)
    entry = session.execute(
        select(BlockedAddress).where(BlockedAddress.address_key == key)
    ).scalar_one_or_none()
    if entry is None:
        raise NotFound(f"{address.strip()} is not on the blocked list")
    before = blocked_view(entry)
    session.delete(entry)
    session.flush()
    audit.record(
        session, actor or Actor.operator(), "blocked.remove", "blocked_address", key,
        before=before,
    )
    return entry


def list_blocked(session: Session) -> list[BlockedAddress]:
    return list(
        session.execute(select(BlockedAddress).order_by(BlockedAddress.id)).scalars().all()
    )

