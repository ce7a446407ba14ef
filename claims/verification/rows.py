"""Claims as verification reads them: plain rows of the columns each step uses, never model
objects (a batch's thousands of ORM objects would cost more than the rules), loaded by id in
chunks and locked where the database takes row locks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from sqlalchemy import Row, String, select, type_coerce
from sqlmodel import Session

from claims.db import for_update, in_values
from claims.models import Claim

# Most values per IN list (within both databases' bound-parameter limits; a default batch's
# ids in one list).
CHUNK = 10_000


def chunks(seq: Sequence, n: int = CHUNK) -> Iterator[Sequence]:
    """``seq`` in slices of at most ``n`` (the values of one ``IN`` list)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def claim_columns(*names: str) -> tuple:
    """The ``claim`` table's columns of these names."""
    return tuple(Claim.__table__.c[name] for name in names)


#: What the match step reads of a claim (with what the lifecycle reads: id, reference, status,
#: case_id). ``evidence_tx_hashes`` comes as text and is decoded only for the claims whose
#: scheme account id matches nothing (the other rules need it only for them).
MATCH_READ = (
    *claim_columns("id", "case_id", "reference", "status", "scheme_account"),
    type_coerce(Claim.__table__.c.evidence_tx_hashes, String).label("evidence_tx_hashes"),
    *claim_columns("iin_hash", "email_key", "phone", "payout_address_key", "ledger_account_pk",
                   "match_rule", "invested", "withdrawn", "recognized_loss"),
)
#: What the decision step reads of a claim (language and email: the "approved" notice).
DECIDE_READ = claim_columns(
    "id", "case_id", "reference", "status", "language", "email", "email_key", "name_key",
    "birth_date", "claimed_amount", "payout_address_key", "ledger_account_pk", "match_rule",
    "invested", "withdrawn", "recognized_loss", "verified_at", "decided_at",
)


def load_claims(
    session: Session, claim_ids: Iterable[int], status: Sequence[str],
    case_id: int | None = None, columns: Sequence = DECIDE_READ,
) -> list[Row]:
    """The claims of ``claim_ids`` that are in ``status`` (and of ``case_id`` when given),
    locked for the transaction, in id order, as rows (``row.id``, ``row.status``…)."""
    ids = sorted(set(claim_ids))
    t = Claim.__table__
    out: list[Row] = []
    for chunk in chunks(ids):
        stmt = (
            select(*columns)
            .where(in_values(session, t.c.id, chunk), t.c.status.in_(status))
            .order_by(t.c.id)
        )
        if case_id is not None:
            stmt = stmt.where(t.c.case_id == case_id)
        out.extend(session.connection().execute(for_update(stmt, session)).all())
    return out
