"""Victim intake: filing a claim and everything a claimant does with it afterwards.

Pure domain (no HTTP): the API (``api/routes/victims.py``), the web pages
(``api/pages/public.py``) and ``restitution claims import`` all call these functions, so one
rule holds for every way a claim comes in (docs/api.md; docs/lifecycle.md).

- :mod:`claims.intake.validation` — a filing's fields → a :class:`Prepared` filing, or
  :class:`~claims.errors.InvalidInput` naming every bad field;
- :mod:`claims.intake.references` — claim references (``KZR-XXXX-XXXX``);
- :mod:`claims.intake.filing` — storing prepared claims, one or a batch, in bulk;
- :mod:`claims.intake.group_commit` — web filings sharing a transaction, and a request's
  filing with its ``Idempotency-Key``;
- :mod:`claims.intake.bulk_import` — the CSV import;
- :mod:`claims.intake.actions` — what a claimant does afterwards (reply, dispute, payout
  address change with a mailed code, token reset);
- :mod:`claims.intake.status` — what a claimant sees of the claim.
"""

from claims.intake.actions import (
    ADDRESS_CHANGES_PER_DAY,
    ADDRESS_CODE_ATTEMPTS,
    ADDRESS_CODE_TTL,
    MAX_MESSAGE_LEN,
    AddressConfirmation,
    confirm_address_change,
    dispute,
    find_claim,
    message_text,
    reply,
    request_address_change,
    reset_token,
)
from claims.intake.bulk_import import ImportOutcome, csv_row_to_data, header_problems, import_rows
from claims.intake.filing import (
    Filed,
    file_claim,
    file_claim_tx,
    file_many,
    insert_claims,
    insert_claims_returning,
    reissue_token,
)
from claims.intake.group_commit import IDEMPOTENCY_SCOPE, GroupCommit, file_request, group_commit
from claims.intake.references import (
    CROCKFORD,
    REFERENCE_RE,
    new_reference,
    new_references,
    normalize_reference,
)
from claims.intake.status import (
    EXPLORERS,
    TIMELINE_ACTIONS,
    VISIBLE_ROUNDS,
    explorer_url,
    round_rate_percent,
    status_view,
    timeline_event,
)
from claims.intake.validation import (
    CLAIM_FIELDS,
    REQUIRED_FIELDS,
    Prepared,
    case_problem,
    check_filing,
    json_shape_errors,
    open_cases,
    prepare,
    prepare_with_case,
    refusal,
)

__all__ = [
    "ADDRESS_CHANGES_PER_DAY", "ADDRESS_CODE_ATTEMPTS", "ADDRESS_CODE_TTL", "CLAIM_FIELDS",
    "CROCKFORD", "EXPLORERS", "IDEMPOTENCY_SCOPE", "MAX_MESSAGE_LEN", "REFERENCE_RE",
    "REQUIRED_FIELDS", "TIMELINE_ACTIONS", "VISIBLE_ROUNDS",
    "AddressConfirmation", "Filed", "GroupCommit", "ImportOutcome", "Prepared",
    "case_problem", "check_filing", "confirm_address_change", "csv_row_to_data", "dispute",
    "explorer_url", "file_claim", "file_claim_tx", "file_many", "file_request", "find_claim",
    "group_commit", "header_problems", "import_rows", "insert_claims",
    "insert_claims_returning", "json_shape_errors", "message_text", "new_reference",
    "new_references", "normalize_reference", "open_cases",
    "prepare", "prepare_with_case", "refusal", "reissue_token", "reply",
    "request_address_change", "reset_token", "round_rate_percent", "status_view",
    "timeline_event",
]
