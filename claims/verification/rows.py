"""Claims as verification reads them: plain rows of the columns each step uses, never model
objects (a batch's thousands of ORM objects would cost more than the rules), loaded by id in
chunks and locked where the database takes row locks. The rows are named tuples: every rule
and writer reads their attributes many times, and a named tuple answers that (and a
missing attribute) directly, where a result row looks each name up in its result's keys."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import String, select, type_coerce
from sqlmodel import Session

from claims.db import for_update, in_values
from claims.models import Claim

#: A claim as :func:`load_claims` gives it: a named tuple of the columns read (a result row
#: of the same columns serves too).
ClaimRow = Any

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


@lru_cache(maxsize=8)
def row_type(names: tuple[str, ...]) -> type:
    """The named tuple of a claim read as the columns ``names``."""
    return namedtuple("ClaimRow", names)


def load_claims(
    session: Session, claim_ids: Iterable[int], status: Sequence[str],
    case_id: int | None = None, columns: Sequence = DECIDE_READ,
) -> list[ClaimRow]:
    """The claims of ``claim_ids`` that are in ``status`` (and of ``case_id`` when given),
    locked for the transaction, in id order, as named tuples of ``columns`` (``row.id``,
    ``row.status``…)."""
    ids = sorted(set(claim_ids))
    t = Claim.__table__
    make = row_type(tuple(c.name for c in columns))
    out: list[ClaimRow] = []
    for chunk in chunks(ids):
        stmt = (
            select(*columns)
            .where(in_values(session, t.c.id, chunk), t.c.status.in_(status))
            .order_by(t.c.id)
        )
        if case_id is not None:
            stmt = stmt.where(t.c.case_id == case_id)
        out.extend(make(*row) for row in session.connection().execute(for_update(stmt, session)))
    return out
