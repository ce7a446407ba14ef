"""Validation of a filing: the claim's fields → a :class:`Prepared` filing, or every bad field.

The API (``POST /api/v1/claims``), the claim form and the CSV import all come through here,
so one rule holds for every way a claim comes in (docs/api.md). No database except
where the case's state is asked (:func:`case_problem`, :func:`refusal`; the rule of an open case
is :func:`claims.cases.get_open_case`).

The IIN is hashed (keyed, for duplicates), encrypted (for staff) and masked here; it is never
stored in plain, never logged, never returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from claims.cases import get_open_case
from claims.crypto import encrypt, iin_hash, mask_iin
from claims.errors import InvalidInput
from claims.models import Case
from claims.validators import (
    FieldErrors,
    email_key,
    name_key,
    normalize_address_key,
    validate_claim_fields,
)

__all__ = [
    "CLAIM_FIELDS",
    "REQUIRED_FIELDS",
    "Prepared",
    "case_problem",
    "check_filing",
    "json_shape_errors",
    "open_cases",
    "prepare",
    "prepare_with_case",
    "refusal",
]

#: The API's claim fields, in the documented order (also the CSV import's header).
CLAIM_FIELDS = (
    "case_id",
    "full_name",
    "iin",
    "date_of_birth",
    "email",
    "phone",
    "language",
    "scheme_account",
    "claimed_amount",
    "evidence_tx_hashes",
    "payout_network",
    "payout_address",
    "consent",
)
REQUIRED_FIELDS = tuple(
    f for f in CLAIM_FIELDS if f not in ("date_of_birth", "scheme_account", "evidence_tx_hashes")
)
_NOT_AN_OBJECT = [{"field": "body", "message": "must be a JSON object"}]


@dataclass
class Prepared:
    """A validated filing: the claim's column values (IIN hashed, encrypted and masked)."""

    case_code: str
    values: dict[str, Any]
    warnings: list[dict[str, str]]

    @property
    def iin_hash(self) -> str:
        return self.values["iin_hash"]


def prepare(data: Mapping[str, Any]) -> Prepared:
    """Validate a filing (every bad field at once) and compute its stored values.

    No database access. Raises :class:`InvalidInput` with ``errors`` naming each bad field.
    Unknown keys are ignored (the form's buttons, future fields).
    """
    if not isinstance(data, Mapping):
        raise InvalidInput(list(_NOT_AN_OBJECT))
    try:
        clean, warnings = validate_claim_fields(data)
    except FieldErrors as exc:
        raise InvalidInput(exc.errors) from None
    iin = clean["iin"]
    network = clean["payout_network"]
    address = clean["payout_address"]
    values = {
        "full_name": clean["full_name"],
        "name_key": name_key(clean["full_name"]),
        "iin_hash": iin_hash(iin),
        "iin_encrypted": encrypt(iin),
        "iin_masked": mask_iin(iin),
        "birth_date": clean["birth_date"],
        "date_of_birth": clean["date_of_birth"],
        "email": clean["email"],
        "email_key": email_key(clean["email"]),
        "phone": clean["phone"],
        "language": clean["language"],
        "scheme_account": clean["scheme_account"],
        "claimed_amount": clean["claimed_amount"],
        "evidence_tx_hashes": clean["evidence_tx_hashes"],
        "payout_network": network,
        "payout_address": address,
        "payout_address_key": normalize_address_key(network, address),
    }
    return Prepared(case_code=clean["case_id"], values=values, warnings=warnings)


def json_shape_errors(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a JSON filing is refused for although the shared validators (which also read CSV
    cells and form fields) would accept it: the documented schema is exact."""
    errors = []
    hashes = data.get("evidence_tx_hashes")
    if hashes is not None and not isinstance(hashes, list):
        errors.append({"field": "evidence_tx_hashes",
                       "message": "must be a list of transaction hashes"})
    dob = data.get("date_of_birth")
    if isinstance(dob, str) and not dob.strip():
        errors.append({"field": "date_of_birth", "message": "must be a date in the form "
                                                           "YYYY-MM-DD (or null)"})
    return errors


def check_filing(data: Mapping[str, Any]) -> tuple[Prepared | None, list[dict[str, str]]]:
    """Validate a filing's body without the database: ``(prepared, [])`` or ``(None, errors)``
    (:func:`prepare`'s errors and :func:`json_shape_errors`, one per field)."""
    if not isinstance(data, Mapping):
        return None, list(_NOT_AN_OBJECT)
    shape = json_shape_errors(data)
    try:
        prepared = prepare(data)
        errors: list[dict[str, str]] = []
    except InvalidInput as exc:
        prepared, errors = None, list(exc.errors)
    if not shape:
        return prepared, errors
    named = {e["field"] for e in shape}
    return None, [e for e in errors if e["field"] not in named] + shape


def refusal(data: Mapping[str, Any], errors: list[dict[str, str]], *,
            engine=None) -> InvalidInput:
    """The 422 for ``errors``, with the case's problem listed too (one database read), in
    the order of :data:`CLAIM_FIELDS`."""
    from claims.db import session_scope

    errors = list(errors)
    if not any(e["field"] == "case_id" for e in errors):
        with session_scope(engine, write=False) as s:
            problem = case_problem(s, data.get("case_id"))
        if problem is not None:
            errors.insert(0, problem)
    order = {f: i for i, f in enumerate(CLAIM_FIELDS)}
    errors.sort(key=lambda e: order.get(e["field"], len(order)))
    return InvalidInput(errors)


def prepare_with_case(data: Mapping[str, Any], *, engine=None) -> Prepared:
    """:func:`check_filing`, and when it fails, the case's problem listed with the rest
    (every bad field at once): raises :class:`InvalidInput`."""
    prepared, errors = check_filing(data)
    if errors:
        raise refusal(data, errors, engine=engine)
    assert prepared is not None
    return prepared


def case_problem(session: Session, code: object) -> dict[str, str] | None:
    """The ``case_id`` error for ``code`` (unknown, closed, past its deadline), or None."""
    try:
        get_open_case(session, code)
    except InvalidInput as exc:
        return exc.errors[0]
    return None


def open_cases(session: Session) -> list[dict[str, str]]:
    """The cases a claim can be filed in now (``code``, ``name``), by name: the form's
    choices."""
    from claims.cases import is_open

    cases = session.execute(
        select(Case).where(Case.status == "open").order_by(Case.name)).scalars().all()
    return [{"code": c.code, "name": c.name} for c in cases if is_open(c)]
