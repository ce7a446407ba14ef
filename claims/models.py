"""The data model (SQLModel tables). Money columns are BigInteger micro-USDT.

Conventions: ids are integers inside and strings at the edges; every time is UTC and
timezone-aware (stored naive-UTC by :class:`UTCDateTime` so SQLite and PostgreSQL agree);
personal data is never stored in plain where a hash or ciphertext will do (IIN).

Import time matters (every CLI command imports this module): annotations are evaluated as the
classes are built (no ``from __future__ import annotations``, which made pydantic evaluate each
one from a string), and the tables' pydantic validators are built on first use
(``defer_build``), not at import — table models are constructed without validation anyway.
"""

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelConfig

# An auto-incrementing big integer key (INTEGER on SQLite so it is the rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class _Table(SQLModel):
    """Base of every table: the same config as SQLModel's, with the pydantic build deferred."""

    model_config = SQLModelConfig(defer_build=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


def _money(nullable: bool = False, default: int | None = 0) -> Any:
    return Field(default=default, sa_type=BigInteger, nullable=nullable)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


# ------------------------------------------------------------------ enumerations


class ClaimStatus(str, enum.Enum):
    submitted = "submitted"
    verifying = "verifying"
    flagged = "flagged"
    needs_info = "needs_info"
    approved = "approved"
    disputed = "disputed"
    rejected = "rejected"


class RoundStatus(str, enum.Enum):
    prepared = "prepared"
    stale = "stale"
    approved = "approved"
    released = "released"
    settled = "settled"
    stopped = "stopped"


class PayoutState(str, enum.Enum):
    pending = "pending"
    held = "held"
    signed = "signed"
    broadcast = "broadcast"
    exported = "exported"
    confirmed = "confirmed"
    failed = "failed"


class Role(str, enum.Enum):
    caseworker = "caseworker"
    finance = "finance"
    admin = "admin"
    auditor = "auditor"


FLAG_CODES = (
    "no_ledger_match",
    "amount_differs",
    "net_winner",
    "duplicate_identity",
    "duplicate_account",
    "duplicate_wallet",
    "duplicate_email",
    "insider",
    "blocked_address",
    "address_changed",
    "missing_evidence",
)


# ------------------------------------------------------------------ cases and the ledger


class Case(_Table, table=True):
    __tablename__ = "case"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    name: str = Field(sa_type=String(300))
    status: str = Field(default="open", sa_type=String(16))  # open | closed
    deadline: dt.date | None = None
    created_at: dt.datetime = _ts(nullable=False)
    closed_at: dt.datetime | None = _ts()


class LedgerAccount(_Table, table=True):
    """One account of the scheme's own records, with its totals kept current on import."""

    __tablename__ = "ledger_account"
    __table_args__ = (UniqueConstraint("case_id", "account_id"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    account_id: str = Field(sa_type=String(128))
    deposits: int = _money()
    withdrawals: int = _money()  # withdrawals + bonuses (fictitious profits paid out)
    bonuses: int = _money()
    insider: bool = False
    insider_reason: str | None = Field(default=None, sa_type=Text)


class LedgerEntry(_Table, table=True):
    __tablename__ = "ledger_entry"
    __table_args__ = (UniqueConstraint("case_id", "row_key"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    case_id: int = Field(foreign_key="case.id")
    account_pk: int = Field(sa_type=BigInteger, foreign_key="ledger_account.id", index=True)
    row_key: str = Field(sa_type=String(64))
    entry_type: str = Field(sa_type=String(16))  # deposit | withdrawal | bonus
    amount: int = _money()
    occurred_at: dt.datetime = Field(sa_type=UTCDateTime)
    tx_hash: str | None = Field(default=None, sa_type=String(128))
    wallet: str | None = Field(default=None, sa_type=String(128))
    email: str | None = Field(default=None, sa_type=String(320))
    phone: str | None = Field(default=None, sa_type=String(32))
    iin_hash: str | None = Field(default=None, sa_type=String(64))


class LedgerIdentifier(_Table, table=True):
    """What links a claim to a ledger account: tx hashes, IIN hashes, emails, phones, wallets
    found in the ledger rows, normalized (the match keys of verification)."""

    __tablename__ = "ledger_identifier"
    # The unique constraint's index serves verification's lookups by (case_id, kind, value).
    __table_args__ = (UniqueConstraint("case_id", "kind", "value", "account_pk"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    case_id: int = Field(foreign_key="case.id")
    kind: str = Field(sa_type=String(16))  # tx_hash | iin | email | phone | wallet
    value: str = Field(sa_type=String(320))
    account_pk: int = Field(sa_type=BigInteger, foreign_key="ledger_account.id")


# ------------------------------------------------------------------ claims


class Claim(_Table, table=True):
    __tablename__ = "claim"
    __table_args__ = (
        UniqueConstraint("case_id", "iin_hash"),
        Index("ix_claim_case_status", "case_id", "status"),
    )
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    case_id: int = Field(foreign_key="case.id")
    reference: str = Field(sa_column=Column(String(16), unique=True, nullable=False))
    status: str = Field(default=ClaimStatus.submitted.value, sa_type=String(16))
    # Claimant (personal data)
    full_name: str = Field(sa_type=String(300))
    name_key: str = Field(sa_type=String(300), index=True)  # casefolded, for duplicate_identity
    iin_hash: str = Field(sa_type=String(64))  # keyed HMAC (claims.crypto)
    iin_encrypted: bytes = Field(sa_type=LargeBinary)  # Fernet ciphertext
    iin_masked: str = Field(sa_type=String(16))  # e.g. 79******2728 for staff lists
    birth_date: dt.date  # from the IIN
    date_of_birth: dt.date | None = None  # as given by the claimant
    email: str = Field(sa_type=String(320))
    email_key: str = Field(sa_type=String(320), index=True)
    phone: str = Field(sa_type=String(32))
    language: str = Field(sa_type=String(2))
    scheme_account: str | None = Field(default=None, sa_type=String(128))
    claimed_amount: int = _money()
    evidence_tx_hashes: list[str] = Field(default_factory=list, sa_type=JSON)
    payout_network: str = Field(sa_type=String(16))
    payout_address: str = Field(sa_type=String(128))
    payout_address_key: str = Field(sa_type=String(128), index=True)
    access_token_hash: str = Field(sa_type=String(64))
    consent_at: dt.datetime = _ts(nullable=False)
    source: str = Field(default="web", sa_type=String(16))  # web | import
    # Verification outcome
    ledger_account_pk: int | None = Field(
        default=None, sa_type=BigInteger, foreign_key="ledger_account.id", index=True
    )
    match_rule: str | None = Field(default=None, sa_type=String(32))
    invested: int | None = _money(nullable=True, default=None)
    withdrawn: int | None = _money(nullable=True, default=None)
    recognized_loss: int | None = _money(nullable=True, default=None)
    # Bumped on every change that matters to a prepared round (status, amounts, address).
    version: int = 1
    created_at: dt.datetime = _ts(nullable=False)
    updated_at: dt.datetime = _ts(nullable=False)
    verified_at: dt.datetime | None = _ts()
    decided_at: dt.datetime | None = _ts()


class Flag(_Table, table=True):
    __tablename__ = "flag"
    __table_args__ = (Index("ix_flag_claim_open", "claim_id", "resolved_at"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id")
    code: str = Field(sa_type=String(32), index=True)
    message: str = Field(sa_type=Text)  # staff-facing explanation
    created_at: dt.datetime = _ts(nullable=False)
    resolved_at: dt.datetime | None = _ts()
    decision_id: int | None = Field(default=None, sa_type=BigInteger)


class Decision(_Table, table=True):
    __tablename__ = "decision"
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    staff_id: int | None = Field(default=None, foreign_key="staff_user.id")
    decision: str = Field(sa_type=String(16))  # approve | reject | request_info | settle | rule
    reason: str = Field(sa_type=Text)
    recognized_loss: int | None = _money(nullable=True, default=None)
    overridden_flags: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: dt.datetime = _ts(nullable=False)


class ClaimMessage(_Table, table=True):
    """Requests for information (staff → victim), replies and disputes (victim → staff)."""

    __tablename__ = "claim_message"
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    kind: str = Field(sa_type=String(16))  # request | reply | dispute | settlement
    body: str = Field(sa_type=Text)
    amount: int | None = _money(nullable=True, default=None)
    created_at: dt.datetime = _ts(nullable=False)
    answered_at: dt.datetime | None = _ts()


class Document(_Table, table=True):
    __tablename__ = "document"
    id: str = Field(sa_type=String(36), primary_key=True)
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    content_type: str = Field(sa_type=String(64))
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(sa_type=String(64))
    stored_name: str = Field(sa_type=String(128))
    created_at: dt.datetime = _ts(nullable=False)


class AddressChange(_Table, table=True):
    __tablename__ = "address_change"
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    payout_network: str = Field(sa_type=String(16))
    payout_address: str = Field(sa_type=String(128))
    code_hash: str = Field(sa_type=String(64))
    attempts: int = 0
    created_at: dt.datetime = _ts(nullable=False)
    expires_at: dt.datetime = Field(sa_type=UTCDateTime)
    applied_at: dt.datetime | None = _ts()


class BlockedAddress(_Table, table=True):
    __tablename__ = "blocked_address"
    id: int | None = Field(default=None, primary_key=True)
    address_key: str = Field(sa_column=Column(String(128), unique=True, nullable=False))
    address: str = Field(sa_type=String(128))
    reason: str = Field(sa_type=Text)
    created_at: dt.datetime = _ts(nullable=False)


# ------------------------------------------------------------------ staff


class StaffUser(_Table, table=True):
    __tablename__ = "staff_user"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    role: str = Field(sa_type=String(16))
    password_hash: str = Field(sa_type=String(255))
    totp_secret_encrypted: bytes | None = Field(default=None, sa_type=LargeBinary)
    totp_last_step: int | None = Field(default=None, sa_type=BigInteger)  # no code used twice
    disabled: bool = False
    failed_logins: int = 0  # consecutive failed sign-ins (claims.staff)
    last_failed_at: dt.datetime | None = _ts()
    locked_until: dt.datetime | None = _ts()
    created_at: dt.datetime = _ts(nullable=False)
    password_changed_at: dt.datetime = _ts(nullable=False)


class RevokedToken(_Table, table=True):
    """A staff token ended before its expiry (console sign-out): refused by every server
    process until it would have expired anyway (then the row may go)."""

    __tablename__ = "revoked_token"
    jti: str = Field(sa_column=Column(String(64), primary_key=True))
    expires_at: dt.datetime = _ts(nullable=False, index=True)


# ------------------------------------------------------------------ rounds


class DistributionRound(_Table, table=True):
    __tablename__ = "distribution_round"
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="case.id", index=True)
    number: int  # 1, 2, … within the case
    status: str = Field(default=RoundStatus.prepared.value, sa_type=String(16))
    method: str = Field(sa_type=String(16))
    pool: int = _money()
    min_payout: int = _money()
    rate: str = Field(sa_type=Text)  # exact Fraction "num/den"
    allocated: int = _money()
    reserved: int = _money()
    released: int = _money()
    undistributed: int = _money()
    claims_count: int = 0
    prepared_by: int | None = Field(default=None, foreign_key="staff_user.id")
    approved_by: int | None = Field(default=None, foreign_key="staff_user.id")
    prepared_at: dt.datetime = _ts(nullable=False)
    approved_at: dt.datetime | None = _ts()
    released_at: dt.datetime | None = _ts()
    stopped_reason: str | None = Field(default=None, sa_type=Text)
    # A running release holds this (unique per round while set): concurrent releases → one wins.
    release_token: str | None = Field(default=None, sa_type=String(64))


class Allocation(_Table, table=True):
    __tablename__ = "allocation"
    __table_args__ = (UniqueConstraint("round_id", "claim_id"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    # no index of its own on round_id: the unique (round_id, claim_id) index serves it
    round_id: int = Field(foreign_key="distribution_round.id")
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    claim_version: int
    invested: int = _money()
    withdrawn: int = _money()
    net_loss: int = _money()
    paid_before: int = _money()
    amount: int = _money()  # allocated (payable)
    reserved: int = _money()  # held for an open dispute
    released: int = _money()  # given back when the dispute settled
    excluded: str | None = Field(default=None, sa_type=String(32))  # de_minimis | net_winner


# ------------------------------------------------------------------ payouts


class Payout(_Table, table=True):
    __tablename__ = "payout"
    __table_args__ = (
        UniqueConstraint("round_id", "claim_id"),
        Index("ix_payout_round_state", "round_id", "state"),
    )
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    round_id: int = Field(foreign_key="distribution_round.id")
    claim_id: int = Field(sa_type=BigInteger, foreign_key="claim.id", index=True)
    allocation_id: int = Field(sa_type=BigInteger, foreign_key="allocation.id")
    idempotency_key: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    amount: int = _money()
    rail: str = Field(sa_type=String(16))  # evm | custodian
    network: str = Field(sa_type=String(16))
    address: str | None = Field(default=None, sa_type=String(128))  # read when signed/exported
    state: str = Field(default=PayoutState.pending.value, sa_type=String(16))
    attempt: int = 1
    tx_id: str | None = Field(default=None, sa_type=String(128))
    chain_tx_id: int | None = Field(
        default=None, sa_type=BigInteger, foreign_key="chain_tx.id", index=True
    )
    chain_id: int | None = Field(default=None, sa_type=BigInteger)  # eth-tester's > 2**31
    genesis_hash: str | None = Field(default=None, sa_type=String(80))
    gas_used: int | None = Field(default=None, sa_type=BigInteger)
    fee_wei: int | None = Field(default=None, sa_type=BigInteger)
    failure_reason: str | None = Field(default=None, sa_type=Text)
    release_id: str | None = Field(default=None, sa_type=String(64))
    created_at: dt.datetime = _ts(nullable=False)
    updated_at: dt.datetime = _ts(nullable=False)
    confirmed_at: dt.datetime | None = _ts()
    reconciled_at: dt.datetime | None = _ts()


class ChainTx(_Table, table=True):
    """A signed transaction (one transfer or one disperse batch), committed before broadcast."""

    __tablename__ = "chain_tx"
    # The genesis hash too: two in-process test chains share a chain id (and the test key).
    __table_args__ = (UniqueConstraint("chain_id", "genesis_hash", "sender", "nonce"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    round_id: int = Field(foreign_key="distribution_round.id", index=True)
    chain_id: int = Field(sa_type=BigInteger)
    genesis_hash: str = Field(sa_type=String(80))
    sender: str = Field(sa_type=String(64))
    nonce: int = Field(sa_type=BigInteger)
    tx_hash: str = Field(sa_column=Column(String(80), unique=True, nullable=False))
    raw_tx: str = Field(sa_type=Text)
    kind: str = Field(sa_type=String(16))  # transfer | batch
    state: str = Field(default="signed", sa_type=String(16))  # signed|broadcast|mined|reverted|expired
    gas_used: int | None = Field(default=None, sa_type=BigInteger)
    fee_wei: int | None = Field(default=None, sa_type=BigInteger)
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    created_at: dt.datetime = _ts(nullable=False)
    updated_at: dt.datetime = _ts(nullable=False)


class PayoutAttempt(_Table, table=True):
    __tablename__ = "payout_attempt"
    __table_args__ = (UniqueConstraint("payout_id", "attempt"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    payout_id: int = Field(sa_type=BigInteger, foreign_key="payout.id", index=True)
    attempt: int
    chain_tx_id: int | None = Field(default=None, sa_type=BigInteger, foreign_key="chain_tx.id")
    address: str | None = Field(default=None, sa_type=String(128))
    outcome: str | None = Field(default=None, sa_type=String(16))  # confirmed | failed
    reason: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = _ts(nullable=False)


class CustodianConfirmation(_Table, table=True):
    __tablename__ = "custodian_confirmation"
    __table_args__ = (UniqueConstraint("payout_id", "tx_id", "status"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    round_id: int = Field(foreign_key="distribution_round.id", index=True)
    payout_id: int = Field(sa_type=BigInteger, foreign_key="payout.id")
    tx_id: str = Field(sa_type=String(128))
    amount: int = _money()
    status: str = Field(sa_type=String(16))
    created_at: dt.datetime = _ts(nullable=False)


class Mismatch(_Table, table=True):
    """A reconciliation mismatch: it stops further transfers of its round until resolved."""

    __tablename__ = "mismatch"
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    round_id: int = Field(foreign_key="distribution_round.id", index=True)
    payout_id: int | None = Field(default=None, sa_type=BigInteger)
    source: str = Field(sa_type=String(32))  # custodian | chain
    reason: str = Field(sa_type=Text)
    detail: dict = Field(default_factory=dict, sa_type=JSON)
    created_at: dt.datetime = _ts(nullable=False)
    resolved_at: dt.datetime | None = _ts()
    resolved_by: int | None = Field(default=None, foreign_key="staff_user.id")


# ------------------------------------------------------------------ outbox, audit, idempotency


class Notification(_Table, table=True):
    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_due", "state", "next_attempt_at"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    claim_id: int | None = Field(default=None, sa_type=BigInteger, foreign_key="claim.id", index=True)
    kind: str = Field(sa_type=String(32))
    language: str = Field(sa_type=String(2))
    to_email: str = Field(sa_type=String(320))
    context: dict = Field(default_factory=dict, sa_type=JSON)
    state: str = Field(default="pending", sa_type=String(16))  # pending|sending|sent|failed
    attempts: int = 0
    next_attempt_at: dt.datetime = _ts(nullable=False)
    claimed_at: dt.datetime | None = _ts()
    claimed_by: str | None = Field(default=None, sa_type=String(64))
    sent_at: dt.datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = _ts(nullable=False)


class AuditEvent(_Table, table=True):
    __tablename__ = "audit_event"
    # A claim's own events (the victim's status timeline) without scanning the whole trail:
    # by the claim's id, not its reference. References are random, so an index on them takes
    # each new event at a random leaf page, and every commit rewrites a page per claim event
    # (the largest write of a verification batch at 1M claims); ids rise as claims are filed,
    # verified and decided, so a batch's events share a few pages.
    __table_args__ = (Index("ix_audit_event_claim_pk", "claim_pk"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    occurred_at: dt.datetime = _ts(nullable=False)
    actor: str = Field(sa_type=String(128))
    role: str = Field(sa_type=String(32))
    action: str = Field(sa_type=String(64), index=True)
    subject_type: str = Field(sa_type=String(32))
    subject_id: str = Field(sa_type=String(64))
    before: dict | None = Field(default=None, sa_type=JSON)
    after: dict | None = Field(default=None, sa_type=JSON)
    prev_hash: str = Field(sa_type=String(64))
    hash: str = Field(sa_type=String(64))
    # The claim an event of subject "claim" is about (its id; the event names it by reference).
    # Derived when the event is written, outside the hashed content: an index, not evidence.
    claim_pk: int | None = Field(default=None, sa_type=BigInteger)


class AuditHead(_Table, table=True):
    """The chain head (one row), locked by every writer so concurrent writers never fork it."""

    __tablename__ = "audit_head"
    id: int = Field(default=1, primary_key=True)
    last_id: int = Field(default=0, sa_type=BigInteger)
    last_hash: str = Field(default="0" * 64, sa_type=String(64))
    count: int = Field(default=0, sa_type=BigInteger)


class IdempotencyKey(_Table, table=True):
    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("scope", "key"),)
    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    scope: str = Field(sa_type=String(64))
    key: str = Field(sa_type=String(255))
    request_hash: str = Field(sa_type=String(64))
    state: str = Field(default="in_flight", sa_type=String(16))  # in_flight | done
    status_code: int | None = None
    response: dict | None = Field(default=None, sa_type=JSON)
    created_at: dt.datetime = _ts(nullable=False)
