"""Validation of a claimant's identity, contact details, payout address and evidence.

docs/formats.md describes these formats for the people who type them; this package is the only
place that implements them. Every check raises :class:`ValidationFailed` naming the field the
API and the CSV import report (docs/api.md: a 422 lists every bad field), and
:func:`validate_claim_fields` checks a whole claim at once, raising :class:`FieldErrors` with
*every* bad field.

Input conventions (the same for every text field): surrounding whitespace is ignored and the
cleaned values have none; messages never contain the value that was checked (IINs, e-mail
addresses and phones are personal data and 422 bodies may end up in logs).

The modules, each one kind of field:

* :mod:`~claims.validators.common` — the errors, :class:`ErrorCollector`, the text helpers and
  the control-character check every validator uses;
* :mod:`~claims.validators.identity` — IIN (check digit, birth date, sex), full name and its
  comparison key, date of birth;
* :mod:`~claims.validators.contact` — e-mail and its comparison key, phone, language;
* :mod:`~claims.validators.addresses` — TRON and Ethereum payout addresses, networks, the
  address comparison key;
* :mod:`~claims.validators.evidence` — transaction hashes and their comparison key;
* :mod:`~claims.validators.claim` — case codes and the whole-claim check.

Importing the package loads only the standard library, ``base58`` and ``claims.money``;
``eth_hash`` (keccak) and ``email_validator`` are imported on first use.
"""

from __future__ import annotations

from claims.validators.addresses import (
    NETWORKS,
    detect_network,
    make_eth_address,
    make_tron_address,
    normalize_address_key,
    to_checksum_address,
    validate_any_address,
    validate_eth_address,
    validate_network,
    validate_payout_address,
    validate_tron_address,
)
from claims.validators.claim import validate_case_code, validate_claim_fields
from claims.validators.common import ErrorCollector, FieldErrors, ValidationFailed
from claims.validators.contact import (
    LANGUAGES,
    email_key,
    validate_email,
    validate_language,
    validate_phone,
)
from claims.validators.evidence import tx_hash_key, validate_tx_hash
from claims.validators.identity import (
    iin_sex,
    make_iin,
    name_key,
    validate_date_of_birth,
    validate_full_name,
    validate_iin,
)

__all__ = [
    "ValidationFailed",
    "FieldErrors",
    "ErrorCollector",
    "NETWORKS",
    "LANGUAGES",
    "validate_iin",
    "iin_sex",
    "make_iin",
    "validate_tron_address",
    "validate_eth_address",
    "to_checksum_address",
    "validate_payout_address",
    "validate_any_address",
    "validate_network",
    "detect_network",
    "normalize_address_key",
    "make_tron_address",
    "make_eth_address",
    "validate_phone",
    "validate_email",
    "email_key",
    "validate_full_name",
    "name_key",
    "validate_language",
    "tx_hash_key",
    "validate_tx_hash",
    "validate_date_of_birth",
    "validate_case_code",
    "validate_claim_fields",
]
