"""Flags and clusters: what a caseworker must look at before a claim is paid
(docs/lifecycle.md, "Verification").

========================  ==========================================================================
flag                      when
========================  ==========================================================================
``no_ledger_match``       no rule matched
``amount_differs``        matched, and ``|claimed − net loss| > max(1 USDT, 1 % of the net loss)``
                          (:func:`amount_differs`; the 1 % is of the *ledger* net loss, the figure
                          that is recognized)
``net_winner``            matched, and the account's withdrawals (incl. bonuses) ≥ deposits
``duplicate_identity``    another claim of the case has the same ``name_key`` (NFKC, case-folded,
                          spaces collapsed) and IIN birth date under another IIN
``duplicate_account``     another claim of the case matched the same ledger account
``duplicate_wallet``      another claim of the case has the same ``payout_address_key``
``duplicate_email``       another claim of the case has the same ``email_key``
``insider``               the matched account is marked insider/promoter
``blocked_address``       the payout address key is on the blocked list
``missing_evidence``      no rule matched and the claim has neither evidence tx hashes nor documents
========================  ==========================================================================

(``address_changed`` is raised by the payout-address change, not here.)

**Clusters** (the four ``duplicate_*`` flags) are found with ``GROUP BY key HAVING count(*) > 1``
over *all* claims of the case, whatever their status — so they work across batches, across
runs, and against claims already decided (a rejected claim sharing a wallet is a fraud signal
too). Every claim of a cluster is flagged:

* claims of the batch get the flag; the message names the other claims and their status;
* other members that are ``flagged`` or ``needs_info`` get the flag too (or, when they have
  it open already, its message is brought up to date) — audited as ``claim.flag_added``;
* other members that are ``approved`` go ``approved → flagged`` (``claim.flagged_by_rule``,
  rounds prepared meanwhile become stale) — but only when a claim verified for the first time
  joins their cluster: that is a new fact a caseworker must see before money goes to the same
  wallet, account or person twice. Re-verifying an existing member (back from ``needs_info``)
  brings no new fact and pulls nobody back. No e-mail either way;
* ``submitted``/``verifying`` members are handled by their own batch; ``disputed`` claims are
  already in front of a caseworker and ``rejected`` ones are final: they are named in the
  messages but not changed.

Cluster lookups go by the key's index, never by the case's (:func:`case_is`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import func, select, update
from sqlmodel import Session

from claims import audit, lifecycle
from claims.audit import Actor
from claims.db import bind_value, bulk_insert, in_values, update_rows
from claims.models import BlockedAddress, Claim, ClaimStatus, Document, Flag, LedgerAccount
from claims.money import MICRO, format_usdt, net_loss
from claims.verification.rows import ClaimRow, chunks, load_claims

S = ClaimStatus
DUPLICATE_FLAGS = ("duplicate_identity", "duplicate_account", "duplicate_wallet", "duplicate_email")
# How many other claims a duplicate flag's message names.
NAMED = 5
FLAG_COLUMNS = ("claim_id", "code", "message", "created_at")


def amount_differs(claimed: int, loss: int) -> bool:
    """Whether a claimed amount differs from the ledger's net loss: ``|claimed − loss| >
    max(1 USDT, 1 % of loss)``, exact in integers (micro-USDT)."""
    d = abs(claimed - loss)
    return d > MICRO and 100 * d > loss


# ------------------------------------------------------------------ what the rules look at


class Account(NamedTuple):
    """A matched ledger account as the flags name it."""

    account_id: str
    insider: bool
    reason: str | None


@dataclass
class Facts:
    """What the flags of a batch's claims look at besides the claims themselves."""

    accounts: dict[int, Account] = field(default_factory=dict)  # pk → the matched accounts
    blocked: dict[str, str] = field(default_factory=dict)  # address key → reason
    # the unmatched claims with evidence tx hashes or documents
    with_evidence: set[int] = field(default_factory=set)


def read_facts(session: Session, claims: Sequence[ClaimRow]) -> Facts:
    """The batch's matched accounts, blocked payout addresses, and which unmatched claims
    carry evidence (transaction hashes or documents)."""
    facts = Facts()
    conn = session.connection()
    for chunk in chunks(sorted({c.ledger_account_pk for c in claims
                                if c.ledger_account_pk is not None})):
        for pk, account_id, insider, reason in conn.execute(
            select(LedgerAccount.id, LedgerAccount.account_id, LedgerAccount.insider,
                   LedgerAccount.insider_reason).where(in_values(session, LedgerAccount.id, chunk))
        ):
            facts.accounts[pk] = Account(account_id, bool(insider), reason)
    for chunk in chunks(sorted({c.payout_address_key for c in claims if c.payout_address_key})):
        facts.blocked.update(conn.execute(
            select(BlockedAddress.address_key, BlockedAddress.reason).where(
                in_values(session, BlockedAddress.address_key, chunk))
        ).all())
    t = Claim.__table__
    unmatched = [c.id for c in claims if c.ledger_account_pk not in facts.accounts]
    for chunk in chunks(unmatched):
        facts.with_evidence.update(
            cid for cid, hashes in conn.execute(
                select(t.c.id, t.c.evidence_tx_hashes).where(in_values(session, t.c.id, chunk))
            ) if hashes
        )
        facts.with_evidence.update(conn.execute(
            select(Document.claim_id).where(in_values(session, Document.claim_id, chunk)).distinct()
        ).scalars())
    return facts


# ------------------------------------------------------------------ clusters


@dataclass
class Member:
    """A claim of a cluster, as its messages name it."""

    id: int
    reference: str
    status: str
    verified_at: dt.datetime | None


Clusters = dict[str, dict[tuple, list[Member]]]  # code → key → members (id order)

# code → (the key columns, a claim's key or None, the message).
CLUSTER_SPECS: dict[str, tuple[Callable[[], Sequence], Callable[[ClaimRow], tuple | None], str]] = {
    "duplicate_identity": (
        lambda: (Claim.name_key, Claim.birth_date),
        lambda c: (c.name_key, c.birth_date) if c.name_key else None,
        "the same full name and date of birth ({birth}) under another IIN as claim(s) {others}",
    ),
    "duplicate_account": (
        lambda: (Claim.ledger_account_pk,),
        lambda c: (c.ledger_account_pk,) if c.ledger_account_pk is not None else None,
        "ledger account {account} is also matched by claim(s) {others}",
    ),
    "duplicate_wallet": (
        lambda: (Claim.payout_address_key,),
        lambda c: (c.payout_address_key,) if c.payout_address_key else None,
        "the payout address is also given by claim(s) {others}",
    ),
    "duplicate_email": (
        lambda: (Claim.email_key,),
        lambda c: (c.email_key,) if c.email_key else None,
        "the e-mail address is also given by claim(s) {others}",
    ),
}


def case_is(case_id: int):
    """``claim.case_id = :case_id`` written ``case_id + 0`` so that no planner answers a
    lookup by key (``… AND key IN (…)``) by walking the case's index: SQLite does without
    statistics (every claim of the case read, per batch, for each kind of cluster); the key's
    own index is the one that finds the few claims sharing a key."""
    return (Claim.case_id + 0) == case_id


def find_clusters(session: Session, case_id: int, claims: Sequence[ClaimRow]) -> Clusters:
    """Every cluster of the case that a claim of ``claims`` is in, per duplicate flag."""
    out: Clusters = {}
    for code, (cols, key_of, _msg) in CLUSTER_SPECS.items():
        keys = {k for c in claims if (k := key_of(c)) is not None}
        out[code] = clusters_of(session, case_id, cols(), keys)
    return out


def clusters_of(
    session: Session, case_id: int, key_cols: Sequence, keys: set
) -> dict[tuple, list[Member]]:
    """Members (id order) of every cluster of the case (``count(*) > 1`` claims sharing the key)
    whose key is in ``keys``. ``key_cols`` are Claim columns; keys are tuples of their values."""
    if not keys:
        return {}
    lead = key_cols[0]
    conn = session.connection()
    dup: set[tuple] = set()
    for chunk in chunks(sorted({k[0] for k in keys})):
        dup.update(tuple(r) for r in conn.execute(
            select(*key_cols)
            .where(case_is(case_id), in_values(session, lead, chunk))
            .group_by(*key_cols)
            .having(func.count() > 1)
        ))
    dup &= keys
    out: dict[tuple, list[Member]] = defaultdict(list)
    for chunk in chunks(sorted({k[0] for k in dup})):
        for row in conn.execute(
            select(Claim.id, Claim.reference, Claim.status, Claim.verified_at, *key_cols)
            .where(case_is(case_id), in_values(session, lead, chunk))
            .order_by(Claim.id)
        ):
            key = tuple(row[4:])
            if key in dup:
                out[key].append(Member(row[0], row[1], row[2], row[3]))
    return out


def members_label(members: Sequence[Member]) -> str:
    """The first few members as ``REF (status)``, and how many more."""
    shown = ", ".join(f"{m.reference} ({m.status})" for m in members[:NAMED])
    more = len(members) - NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def cluster_message(code: str, key: tuple, others: Sequence[Member],
                    accounts: Mapping[int, Account]) -> str:
    """The message of a duplicate flag: the shared fact and the other members."""
    fields = {"others": members_label(others)}
    if code == "duplicate_identity":
        fields["birth"] = key[1].isoformat() if key[1] else "?"
    if code == "duplicate_account":
        fields["account"] = accounts[key[0]].account_id
    return CLUSTER_SPECS[code][2].format(**fields)


# ------------------------------------------------------------------ the batch's flags


Flags = dict[int, list[tuple[str, str]]]  # claim id → [(code, message)], codes in table order


def claim_flags(claims: Sequence[ClaimRow], facts: Facts, clusters: Clusters) -> Flags:
    """The flags of each claim of the batch (an empty list: clean)."""
    batch_ids = {c.id for c in claims}
    in_clusters: Flags = defaultdict(list)
    for code, by_key in clusters.items():
        for key, members in by_key.items():
            for m in members:
                if m.id in batch_ids:
                    others = [o for o in members if o.id != m.id]
                    in_clusters[m.id].append(
                        (code, cluster_message(code, key, others, facts.accounts)))
    flags: Flags = {}
    for c in claims:
        f = rule_flags(c, facts)
        if c.id in in_clusters:
            f.extend(in_clusters[c.id])
        if c.payout_address_key in facts.blocked:
            f.append(("blocked_address", f"the payout address is on the blocked list: "
                      f"{facts.blocked[c.payout_address_key]}"))
        flags[c.id] = f
    return flags


def rule_flags(c: ClaimRow, facts: Facts) -> list[tuple[str, str]]:
    """The flags of one claim that its match decides (no cluster, no blocked address)."""
    acct = facts.accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
    if acct is None:
        f = [("no_ledger_match", "no ledger account matches the scheme account id, "
              "evidence transaction hashes, IIN, e-mail, phone or payout address")]
        if c.id not in facts.with_evidence:
            f.append(("missing_evidence", "no ledger match, and the claim has neither "
                      "evidence transaction hashes nor documents"))
        return f
    f = []
    invested, withdrawn = c.invested or 0, c.withdrawn or 0
    loss = net_loss(invested, withdrawn)
    if amount_differs(c.claimed_amount, loss):
        f.append(("amount_differs", f"claimed {format_usdt(c.claimed_amount)}; the ledger "
                  f"(account {acct.account_id}) shows a net loss of {format_usdt(loss)} "
                  f"(deposits {format_usdt(invested)}, withdrawals and bonuses "
                  f"{format_usdt(withdrawn)})"))
    if withdrawn >= invested:
        f.append(("net_winner", f"ledger account {acct.account_id} took out "
                  f"{format_usdt(withdrawn)} (withdrawals and bonuses) against "
                  f"{format_usdt(invested)} deposited: a net winner"))
    if acct.insider:
        f.append(("insider", f"ledger account {acct.account_id} is marked insider/promoter"
                  + (f": {acct.reason}" if acct.reason else "")))
    return f


def replace_open_flags(session: Session, flags: Flags, now: dt.datetime) -> None:
    """The claims' open flags resolved (a re-verification replaces them) and ``flags`` stored."""
    for chunk in chunks(list(flags)):
        session.execute(
            update(Flag)
            .where(in_values(session, Flag.claim_id, chunk), Flag.resolved_at.is_(None))
            .values(resolved_at=now)
            .execution_options(synchronize_session=False)
        )
    created = bind_value(session, Flag.__table__.c.created_at, now)
    bulk_insert(session, Flag.__table__, FLAG_COLUMNS, [
        (cid, code, msg, created) for cid, fl in flags.items() for code, msg in fl
    ])


# ------------------------------------------------------------------ the clusters' other members


@dataclass
class MemberChanges:
    """What a batch's clusters change for their members outside the batch."""

    add: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    pull_back: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    because: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    references: dict[int, str] = field(default_factory=dict)


def plan_member_changes(clusters: Clusters, batch_ids: set[int], first_time: set[int],
                        accounts: Mapping[int, Account]) -> MemberChanges:
    """Which members outside the batch get a flag (``flagged``, ``needs_info``) and which
    are pulled back from ``approved`` (only for a member verified for the first time), with
    each duplicate flag's message and the batch's claims that caused it."""
    plan = MemberChanges()
    for code, by_key in clusters.items():
        for key, members in by_key.items():
            in_batch = [m for m in members if m.id in batch_ids]
            if not in_batch:
                continue
            newcomers = [m for m in in_batch if m.id in first_time]
            for m in members:
                if m.id in batch_ids:
                    continue
                others = [o for o in members if o.id != m.id]
                if m.status in (S.flagged.value, S.needs_info.value):
                    plan.add[m.id][code] = cluster_message(code, key, others, accounts)
                    plan.because[m.id].update(o.reference for o in in_batch)
                elif m.status == S.approved.value and newcomers:
                    plan.pull_back[m.id][code] = cluster_message(code, key, others, accounts)
                    plan.because[m.id].update(o.reference for o in newcomers)
                else:
                    continue
                plan.references[m.id] = m.reference
    return plan


def flag_other_members(session: Session, clusters: Clusters, batch_ids: set[int],
                       first_time: set[int], accounts: Mapping[int, Account], actor: Actor,
                       now: dt.datetime) -> dict:
    """The batch's clusters' members outside the batch flagged or pulled back (see the
    module docstring); returns the counts ``reflagged`` and ``flags_added``."""
    plan = plan_member_changes(clusters, batch_ids, first_time, accounts)
    counts = {"reflagged": 0, "flags_added": 0}
    if not plan.add and not plan.pull_back:
        return counts
    counts["flags_added"] = add_member_flags(session, plan, actor, now)
    counts["reflagged"] = pull_back_approved(session, plan, actor)
    return counts


def add_member_flags(session: Session, plan: MemberChanges, actor: Actor,
                     now: dt.datetime) -> int:
    """The planned flags stored: an open duplicate flag of the same code gets the new
    message, the others are inserted (those of undecided members audited as
    ``claim.flag_added``); returns how many flags undecided members gained."""
    open_flags: dict[tuple[int, str], int] = {}
    conn = session.connection()
    for chunk in chunks(sorted(plan.add)):
        for fid, cid, code in conn.execute(
            select(Flag.id, Flag.claim_id, Flag.code).where(
                in_values(session, Flag.claim_id, chunk), Flag.resolved_at.is_(None),
                Flag.code.in_(DUPLICATE_FLAGS),
            )
        ):
            open_flags[(cid, code)] = fid
    created = bind_value(session, Flag.__table__.c.created_at, now)
    updates, inserts, new_codes = [], [], defaultdict(list)
    for cid, by_code in plan.add.items():
        for code, msg in by_code.items():
            fid = open_flags.get((cid, code))
            if fid is None:
                inserts.append((cid, code, msg, created))
                new_codes[cid].append(code)
            else:
                updates.append((fid, msg))
    update_rows(session, Flag.__table__, keys=("id",), columns=("message",), rows=updates)
    inserts.extend((cid, code, msg, created)
                   for cid, codes in plan.pull_back.items() for code, msg in codes.items())
    bulk_insert(session, Flag.__table__, FLAG_COLUMNS, inserts)
    audit.record_batch(session, [
        audit.Event(actor, "claim.flag_added", "claim", plan.references[cid], None,
                    {"flags": sorted(codes), "because": sorted(plan.because[cid])}, cid)
        for cid, codes in sorted(new_codes.items())
    ])
    return sum(len(v) for v in new_codes.values())


def pull_back_approved(session: Session, plan: MemberChanges, actor: Actor) -> int:
    """The planned members still ``approved`` go ``approved → flagged``; returns how many."""
    if not plan.pull_back:
        return 0
    approved = load_claims(session, plan.pull_back, (S.approved.value,))
    lifecycle.transition_many(
        session, approved, S.flagged, actor=actor, action="claim.flagged_by_rule",
        per_claim_audit={
            c.id: {"flags": sorted(plan.pull_back[c.id]), "because": sorted(plan.because[c.id])}
            for c in approved
        },
    )
    return len(approved)
