"""What a claimant does with a filed claim (docs/api.md; docs/lifecycle.md).

Each needs the claim's access token, checked by :func:`find_claim`: :func:`reply` to a
request for information, :func:`dispute` the recognized loss, :func:`request_address_change`
/ :func:`confirm_address_change` of the payout address (a code mailed to the e-mail on file),
and :func:`reset_token` (by reference and e-mail, answered the same whether or not they
match). Documents are :mod:`claims.documents`'s; the status view is
:func:`claims.intake.status_view`.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlmodel import Session

from claims import audit, lifecycle, outbox
from claims.audit import Actor
from claims.crypto import new_code, new_token, pii_hash, token_hash, token_matches
from claims.db import for_update
from claims.errors import Conflict, InvalidInput, NotFound, TooManyAttempts
from claims.intake.references import normalize_reference
from claims.models import (
    AddressChange,
    Claim,
    ClaimMessage,
    ClaimStatus,
    Flag,
    Payout,
    PayoutState,
    utcnow,
)
from claims.money import AmountError, format_amount, parse_amount
from claims.validators import (
    ValidationFailed,
    email_key,
    normalize_address_key,
    validate_payout_address,
)

__all__ = [
    "ADDRESS_CHANGES_PER_DAY",
    "ADDRESS_CODE_ATTEMPTS",
    "ADDRESS_CODE_TTL",
    "MAX_MESSAGE_LEN",
    "AddressConfirmation",
    "confirm_address_change",
    "dispute",
    "find_claim",
    "message_text",
    "reply",
    "request_address_change",
    "reset_token",
]

MAX_MESSAGE_LEN = 5000
#: An address-change code is valid this long, may be tried this often, requested this often.
ADDRESS_CODE_TTL = dt.timedelta(minutes=30)
ADDRESS_CODE_ATTEMPTS = 5
ADDRESS_CHANGES_PER_DAY = 5

_NOT_FOUND = "no claim with this reference and access token"


def find_claim(session: Session, reference: object, token: object, *, lock: bool = False) -> Claim:
    """The claim when ``token`` is its access token (``lock``: its row locked for the
    transaction). An unknown reference, a missing or a wrong token all raise the same
    :class:`NotFound` (and cost the same comparison)."""
    ref = normalize_reference(reference)
    claim = None
    if ref is not None:
        stmt = select(Claim).where(Claim.reference == ref)
        if lock:
            stmt = for_update(stmt, session)
        claim = session.execute(stmt).scalar_one_or_none()
    tok = token if isinstance(token, str) and len(token) <= 256 else None
    if not token_matches(tok, claim.access_token_hash if claim is not None else None):
        raise NotFound(_NOT_FOUND)
    assert claim is not None
    return claim


# ----------------------------------------------------------------------------- messages


def message_text(value: object, field_name: str, *, required: bool = True) -> str | None:
    """A claimant's message (a reply, a dispute's reason): text, stripped, at most
    :data:`MAX_MESSAGE_LEN` characters; blank → "is required" (or None when optional)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValidationFailed(field_name, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field_name, "must be text (a string)")
    text = value.strip()
    if len(text) > MAX_MESSAGE_LEN:
        raise ValidationFailed(field_name, f"must be at most {MAX_MESSAGE_LEN} characters")
    if "\x00" in text:
        raise ValidationFailed(field_name, "must not contain NUL characters")
    return text


def reply(session: Session, claim: Claim, message: object) -> ClaimMessage:
    """Answer the open request(s) for information; the claim goes back to ``verifying``."""
    try:
        text = message_text(message, "message")
    except ValidationFailed as exc:
        raise InvalidInput([exc.as_dict()]) from None
    if claim.status != ClaimStatus.needs_info.value:
        raise Conflict("a reply is only possible while information is requested")
    now = utcnow()
    msg = ClaimMessage(claim_id=claim.id, kind="reply", body=text, created_at=now)
    session.add(msg)
    session.flush()
    lifecycle.answer_messages(session, claim.id, "request", now)
    lifecycle.transition(
        session, claim, ClaimStatus.verifying, actor=Actor.claimant(claim.reference),
        action="claim.replied", audit_extra={"message_id": msg.id},
    )
    return msg


def dispute(session: Session, claim: Claim, reason: object, amount: object = None) -> ClaimMessage:
    """Contest the recognized loss of an approved claim (``amount``: what the claimant says
    it should be, optional). Both fields are checked at once (:class:`InvalidInput`)."""
    errors = []
    text = value = None
    try:
        text = message_text(reason, "reason")
    except ValidationFailed as exc:
        errors.append(exc.as_dict())
    if amount is not None and amount != "":
        try:
            value = parse_amount(amount, allow_zero=False)
        except AmountError as exc:
            errors.append({"field": "amount", "message": str(exc)})
    if errors:
        raise InvalidInput(errors)
    if claim.status != ClaimStatus.approved.value:
        raise Conflict("only an approved claim can be disputed")
    msg = ClaimMessage(claim_id=claim.id, kind="dispute", body=text, amount=value,
                       created_at=utcnow())
    session.add(msg)
    session.flush()
    context = {"name": claim.full_name}
    if value is not None:
        context["amount"] = format_amount(value)
    lifecycle.transition(
        session, claim, ClaimStatus.disputed, actor=Actor.claimant(claim.reference),
        action="claim.disputed", notify="dispute_received", notify_context=context,
        audit_extra={"message_id": msg.id, "amount": value},
    )
    return msg


# ----------------------------------------------------------------------------- payout address


def _code_hash(claim_id: int, code: str) -> str:
    # Keyed: a six-digit code's plain SHA-256 would be reversed at once.
    return pii_hash(f"{claim_id}:{code}", kind="address-code")


def request_address_change(
    session: Session, claim: Claim, payout_network: object, payout_address: object
) -> tuple[AddressChange, list[dict[str, str]]]:
    """Start a payout address change: re-validated, a code mailed to the e-mail on file (never
    answered to the caller), stored keyed-hashed with an expiry; a new request replaces a
    pending one. Returns ``(change, warnings)``."""
    try:
        address, warns = validate_payout_address(payout_network, payout_address)
    except ValidationFailed as exc:
        raise InvalidInput([exc.as_dict()]) from None
    network = str(payout_network).strip()
    if claim.status == ClaimStatus.rejected.value:
        raise Conflict("the payout address of a rejected claim cannot be changed")
    key = normalize_address_key(network, address)
    if network == claim.payout_network and key == claim.payout_address_key:
        raise InvalidInput([{"field": "payout_address", "message": "is already the payout address"}])
    now = utcnow()
    _check_change_quota(session, claim, now)
    session.execute(
        update(AddressChange)
        .where(AddressChange.claim_id == claim.id, AddressChange.applied_at.is_(None),
               AddressChange.expires_at > now)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    code = new_code()
    change = AddressChange(
        claim_id=claim.id, payout_network=network, payout_address=address,
        code_hash=_code_hash(claim.id, code), attempts=0, created_at=now,
        expires_at=now + ADDRESS_CODE_TTL,
    )
    session.add(change)
    session.flush()
    outbox.enqueue(session, claim, "address_change_requested", {
        "name": claim.full_name,
        "code": code,
        "payout_network": network,
        "payout_address": address,
        "expires_minutes": int(ADDRESS_CODE_TTL.total_seconds() // 60),
    })
    audit.record(session, Actor.claimant(claim.reference), "claim.address_change_requested",
                 "claim", claim.reference, after={"change_id": change.id, "payout_network": network},
                 claim_pk=claim.id)
    return change, [{"field": "payout_address", "message": w} for w in warns]


def _check_change_quota(session: Session, claim: Claim, now: dt.datetime) -> None:
    """At most :data:`ADDRESS_CHANGES_PER_DAY` requests in 24 hours, else
    :class:`TooManyAttempts` (retry when the oldest of them is a day old)."""
    count, oldest = session.execute(
        select(func.count(AddressChange.id), func.min(AddressChange.created_at)).where(
            AddressChange.claim_id == claim.id,
            AddressChange.created_at > now - dt.timedelta(days=1),
        )
    ).one()
    if count >= ADDRESS_CHANGES_PER_DAY:
        wait = int((oldest + dt.timedelta(days=1) - now).total_seconds()) + 1
        raise TooManyAttempts("too many address change requests today; try again later",
                              retry_after=max(1, wait))


@dataclass
class AddressConfirmation:
    applied: bool
    reason: str | None = None  # why not (wrong code)
    held_payouts: int = 0
    flagged: bool = False


def confirm_address_change(session: Session, claim: Claim, code: object) -> AddressConfirmation:
    """Apply the pending address change when ``code`` is right.

    A wrong code counts an attempt and returns ``applied=False``: the caller commits (the
    count must stick) and then refuses the request. No pending change → :class:`Conflict`;
    attempts used up → :class:`TooManyAttempts` (request a new code).

    Applying: the claim's address changes (audited, versioned; prepared rounds go stale); a
    claim that was approved is flagged ``address_changed`` (``approved → flagged``; a
    disputed claim gets the flag and stays disputed); its pending payouts are held; the
    claimant is told (``address_changed``, with the old and the new address).
    """
    now = utcnow()
    change = _pending_change(session, claim, now)
    given = code.strip() if isinstance(code, str) else ""
    if not hmac.compare_digest(_code_hash(claim.id, given), change.code_hash):
        change.attempts += 1
        session.add(change)
        session.flush()
        left = ADDRESS_CODE_ATTEMPTS - change.attempts
        return AddressConfirmation(False, f"is wrong ({left} attempt(s) left)")
    change.applied_at = now
    session.add(change)
    session.flush()
    actor = Actor.claimant(claim.reference)
    old = {"payout_network": claim.payout_network, "payout_address": claim.payout_address}
    new = {"payout_network": change.payout_network, "payout_address": change.payout_address}
    was = claim.status
    lifecycle.touch(
        session, claim, actor=actor, action="claim.address_changed",
        values={**new, "payout_address_key": normalize_address_key(change.payout_network,
                                                                     change.payout_address)},
        audit_extra={"change_id": change.id},
    )
    flagged = was in (ClaimStatus.approved.value, ClaimStatus.disputed.value)
    if flagged:
        _flag_changed_address(session, claim, was, old, new, actor, now)
    held = _hold_payouts(session, claim, actor, now)
    outbox.enqueue(session, claim, "address_changed", {
        "name": claim.full_name,
        **new,  # what the notice shows: the address now on file
        "old_payout_network": old["payout_network"],
        "old_payout_address": old["payout_address"],
    })
    return AddressConfirmation(True, held_payouts=len(held), flagged=flagged)


def _pending_change(session: Session, claim: Claim, now: dt.datetime) -> AddressChange:
    """The claim's pending address change, locked; none → :class:`Conflict`, its attempts
    used up → :class:`TooManyAttempts`."""
    stmt = (
        select(AddressChange)
        .where(AddressChange.claim_id == claim.id, AddressChange.applied_at.is_(None),
               AddressChange.expires_at > now)
        .order_by(AddressChange.id.desc()).limit(1)
    )
    change = session.execute(for_update(stmt, session)).scalar_one_or_none()
    if change is None:
        raise Conflict("no address change is waiting for confirmation (it may have expired); "
                       "request a new one")
    if change.attempts >= ADDRESS_CODE_ATTEMPTS:
        raise TooManyAttempts("too many wrong codes; request a new address change",
                              retry_after=60)
    return change


def _flag_changed_address(session: Session, claim: Claim, was: str, old: dict, new: dict,
                          actor: Actor, now: dt.datetime) -> None:
    """The ``address_changed`` flag of a claim changed after approval; an approved claim goes
    to ``flagged`` (a disputed one stays disputed)."""
    session.add(Flag(
        claim_id=claim.id, code="address_changed", created_at=now,
        message=(f"The claimant changed the payout address after approval (was "
                 f"{old['payout_network']} {old['payout_address']}, now "
                 f"{new['payout_network']} {new['payout_address']})."),
    ))
    session.flush()
    if was == ClaimStatus.approved.value:
        lifecycle.transition(
            session, claim, ClaimStatus.flagged, actor=actor, action="claim.flagged",
            audit_extra={"flags": ["address_changed"]},
        )


def _hold_payouts(session: Session, claim: Claim, actor: Actor, now: dt.datetime) -> list[int]:
    """Hold the claim's pending payouts (audited); their ids."""
    held = session.execute(
        update(Payout)
        .where(Payout.claim_id == claim.id, Payout.state == PayoutState.pending.value)
        .values(state=PayoutState.held.value, updated_at=now)
        .returning(Payout.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    audit.record_batch(session, [
        audit.Event(actor, "payout.held", "payout", pid, {"state": "pending"},
                    {"state": "held", "because": "address_changed"})
        for pid in held
    ])
    return list(held)


# ----------------------------------------------------------------------------- token


def reset_token(session: Session, reference: object, email: object) -> bool:
    """When ``reference`` and ``email`` match a claim, a new access token is stored (hashed)
    and mailed to the e-mail on file (``token_reset``); the old one stops working. Returns
    whether they matched — callers answer the same either way (202)."""
    ref = normalize_reference(reference)
    claim = None
    if ref is not None:
        claim = session.execute(select(Claim).where(Claim.reference == ref)).scalar_one_or_none()
    given = email_key(email) if isinstance(email, str) else ""
    stored = claim.email_key if claim is not None else "\x00"
    if not hmac.compare_digest(given.encode(), stored.encode()) or claim is None:
        return False
    token = new_token()
    session.execute(
        update(Claim).where(Claim.id == claim.id)
        .values(access_token_hash=token_hash(token))
        .execution_options(synchronize_session=False)
    )
    outbox.enqueue(session, claim, "token_reset", {"name": claim.full_name, "access_token": token})
    audit.record(session, Actor.claimant(claim.reference), "claim.token_reset", "claim",
                 claim.reference, after={"by": "email"}, claim_pk=claim.id)
    return True
