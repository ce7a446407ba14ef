"""A whole claim filing checked at once, and the case code it is filed under.

:func:`validate_claim_fields` runs every field's check (identity, contact, payout address,
evidence, amount, consent) on one filing — an API body or a CSV row — and reports every bad
field together (docs/api.md: a 422 lists every bad field), so a claimant fixes them in one go.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from claims.money import parse_amount
from claims.validators.addresses import (
    validate_any_address,
    validate_network,
    validate_payout_address,
)
from claims.validators.common import ErrorCollector, ValidationFailed, optional_text, required_text
from claims.validators.contact import validate_email, validate_language, validate_phone
from claims.validators.evidence import validate_evidence
from claims.validators.identity import validate_date_of_birth, validate_full_name, validate_iin

__all__ = [
    "MAX_SCHEME_ACCOUNT_LEN",
    "validate_case_code",
    "validate_claim_fields",
]

MAX_SCHEME_ACCOUNT_LEN = 100

_CASE_CODE = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")


def validate_case_code(code: object, *, field: str = "case_id") -> str:
    """A case CODE ``[a-z0-9][a-z0-9-]{1,63}`` (its existence is checked elsewhere)."""
    text = required_text(field, code)
    if not _CASE_CODE.fullmatch(text):
        raise ValidationFailed(
            field,
            "must be a case code: 2-64 characters, lower-case letters, digits and hyphens, "
            "not starting with a hyphen",
        )
    return text


def validate_claim_fields(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Check a whole claim filing (API body or CSV row); report every bad field at once.

    Returns ``(clean, warnings)``; raises :class:`FieldErrors`. ``clean`` holds normalized
    values: ``claimed_amount`` as int micro-USDT, ``date_of_birth`` as ``date`` or ``None``,
    ``birth_date`` (from the IIN), the ``iin`` itself (the caller hashes and encrypts it),
    ``evidence_tx_hashes`` as a list. Unknown extra keys are ignored. ``consent`` must be the
    boolean ``True`` (a CSV importer converts its cell first). Empty strings in optional
    fields mean "not given" (CSV cells).
    """
    errs = ErrorCollector()
    clean: dict[str, Any] = {}

    clean["case_id"] = errs.check("case_id", validate_case_code, data.get("case_id"))
    clean["full_name"] = errs.check("full_name", validate_full_name, data.get("full_name"))
    dob = errs.check("date_of_birth", validate_date_of_birth, data.get("date_of_birth"))
    clean["date_of_birth"] = dob
    # Compare with date_of_birth only when that field itself is fine.
    clean["birth_date"] = errs.check(
        "iin", validate_iin, data.get("iin"), None if errs.has("date_of_birth") else dob
    )
    clean["iin"] = data["iin"].strip() if clean["birth_date"] is not None else None
    clean["email"] = errs.check("email", validate_email, data.get("email"))
    clean["phone"] = errs.check("phone", validate_phone, data.get("phone"))
    clean["language"] = errs.check("language", validate_language, data.get("language"))
    clean["scheme_account"] = errs.check(
        "scheme_account",
        optional_text,
        "scheme_account",
        data.get("scheme_account"),
        MAX_SCHEME_ACCOUNT_LEN,
    )
    amount = data.get("claimed_amount")
    if amount is None:
        errs.add("claimed_amount", "is required")
        clean["claimed_amount"] = None
    else:
        clean["claimed_amount"] = errs.check(
            "claimed_amount", parse_amount, amount, allow_zero=False
        )

    network = errs.check("payout_network", validate_network, data.get("payout_network"))
    clean["payout_network"] = network
    address = data.get("payout_address")
    if network is not None:
        checked = errs.check("payout_address", validate_payout_address, network, address)
        if checked is not None:
            clean["payout_address"], warnings = checked
            for w in warnings:
                errs.warn("payout_address", w)
        else:
            clean["payout_address"] = None
    else:
        # No usable network: still report an address that is no address of either network.
        checked_any = errs.check(
            "payout_address", validate_any_address, address, field="payout_address"
        )
        clean["payout_address"] = checked_any[1] if checked_any else None
    clean["evidence_tx_hashes"] = errs.check(
        "evidence_tx_hashes", validate_evidence, data.get("evidence_tx_hashes"), network
    )

    consent = data.get("consent")
    if consent is not True:
        errs.add(
            "consent",
            "must be true: the claimant must consent to the processing of their personal data",
        )
    clean["consent"] = True if consent is True else None

    errs.raise_if_any()
    return clean, errs.warnings
