"""Matching: which ledger account a claim is (docs/lifecycle.md, "Verification").

The rules, first hit wins:

====================  ===================================================================
``scheme_account``    ``LedgerAccount.account_id`` equals the claim's scheme account id
``tx_hash``           an evidence transaction hash appears in the account's ledger rows
``iin``               the claim's IIN (keyed hash) appears in the account's rows
``email``             the claim's e-mail (``email_key``: case-folded) appears there
``phone``             the claim's phone (E.164) appears there
``wallet``            the claim's payout address (``payout_address_key``) appears there
====================  ===================================================================

The keys on both sides are the ledger import's normalization (``claims/ledger``,
``LedgerIdentifier``): ``tx_hash`` as :func:`claims.validators.tx_hash_key` gives it; ``iin``
the keyed IIN hash; ``email`` case-folded; ``phone`` E.164; ``wallet`` the address key of
:func:`claims.validators.normalize_address_key`. When one rule finds several accounts the one
that more of the claim's identifiers point to wins, then the lowest account pk (deterministic;
the caseworker sees the account in the claim detail).

A match stores on the claim ``ledger_account_pk``, ``match_rule``, ``invested`` (= deposits),
``withdrawn`` (= withdrawals including bonuses) and ``recognized_loss`` = the account's net
loss (:func:`claims.money.net_loss`) — never the amount the victim typed.

Lookups are bulk: a few ``IN`` queries per case of a batch. The ledger identifiers are looked
up only for the claims whose scheme account id matches nothing (the first rule decides the
others).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from claims.db import in_values
from claims.models import LedgerAccount, LedgerIdentifier
from claims.money import net_loss
from claims.validators import ValidationFailed, tx_hash_key
from claims.verification.rows import ClaimRow, chunks

MATCH_RULES = ("scheme_account", "tx_hash", "iin", "email", "phone", "wallet")
IDENTIFIER_KINDS = ("tx_hash", "iin", "email", "phone", "wallet")
#: The claim columns a match sets.
MATCH_COLUMNS = ("invested", "ledger_account_pk", "match_rule", "recognized_loss", "withdrawn")


@dataclass(frozen=True)
class Match:
    """The ledger account a claim matched, by which rule, and the account's totals."""

    account_pk: int
    rule: str
    deposits: int
    withdrawals: int

    @property
    def loss(self) -> int:
        return net_loss(self.deposits, self.withdrawals)


def match_values(m: Match | None) -> dict:
    """The claim columns a match (or no match: all ``None``) sets."""
    if m is None:
        return dict.fromkeys(MATCH_COLUMNS)
    return {
        "invested": m.deposits,
        "ledger_account_pk": m.account_pk,
        "match_rule": m.rule,
        "recognized_loss": m.loss,
        "withdrawn": m.withdrawals,
    }


def evidence_keys(hashes: Sequence | str | None) -> list[str]:
    """The match keys of a claim's evidence transaction hashes (a JSON text or a list).
    Evidence is validated at filing; a malformed stored value is skipped rather than
    stopping the run."""
    if hashes.__class__ is str:
        hashes = json.loads(hashes)
    keys: set[str] = set()
    for h in hashes or ():
        try:
            keys.add(tx_hash_key(h))
        except (ValidationFailed, TypeError):
            continue
    return sorted(keys)


def claim_keys(c: ClaimRow) -> dict[str, list[str]]:
    """The claim's match keys per identifier kind (the ledger's normalization)."""
    return {
        "tx_hash": evidence_keys(c.evidence_tx_hashes),
        "iin": [c.iin_hash] if c.iin_hash else [],
        "email": [c.email_key] if c.email_key else [],
        "phone": [c.phone] if c.phone else [],
        "wallet": [c.payout_address_key] if c.payout_address_key else [],
    }


def find_matches(session: Session, claims: Sequence[ClaimRow]) -> dict[int, Match]:
    """Claim id → its ledger account match (claims without a match are absent)."""
    by_case: dict[int, list[ClaimRow]] = defaultdict(list)
    for c in claims:
        by_case[c.case_id].append(c)
    out: dict[int, Match] = {}
    for case_id, group in by_case.items():
        out.update(find_matches_in_case(session, case_id, group))
    return out


def find_matches_in_case(session: Session, case_id: int,
                         claims: Sequence[ClaimRow]) -> dict[int, Match]:
    """:func:`find_matches` for the claims of one case."""
    # The first rule, ``scheme_account``, finds one account at most (account ids are unique in
    # a case), so a claim it matches is decided by it whatever its other identifiers find: the
    # identifiers are looked up only for the claims it leaves.
    by_account_id = scheme_accounts(session, case_id, claims)
    chosen: dict[int, tuple[int, str]] = {}
    rest: list[ClaimRow] = []
    for c in claims:
        pk = by_account_id.get((c.scheme_account or "").strip())
        if pk is not None:
            chosen[c.id] = (pk, "scheme_account")
        else:
            rest.append(c)
    keys = {c.id: claim_keys(c) for c in rest}
    found = identifier_accounts(session, case_id, keys.values())
    for c in rest:
        hit = choose_account(keys[c.id], found)
        if hit is not None:
            chosen[c.id] = hit
    totals = account_totals(session, {pk for pk, _ in chosen.values()})
    return {cid: Match(pk, rule, *totals[pk]) for cid, (pk, rule) in chosen.items()}


def scheme_accounts(session: Session, case_id: int, claims: Sequence[ClaimRow]) -> dict[str, int]:
    """The case's ledger accounts the claims' scheme account ids name: account id → pk."""
    wanted = sorted({s for c in claims if c.scheme_account and (s := c.scheme_account.strip())})
    out: dict[str, int] = {}
    conn = session.connection()
    for chunk in chunks(wanted):
        for pk, account_id in conn.execute(
            select(LedgerAccount.id, LedgerAccount.account_id).where(
                LedgerAccount.case_id == case_id,
                in_values(session, LedgerAccount.account_id, chunk),
            )
        ):
            out[account_id] = pk
    return out


def identifier_accounts(
    session: Session, case_id: int, keys: Iterable[Mapping[str, list[str]]]
) -> dict[tuple[str, str], set[int]]:
    """``(kind, value)`` → the pks of the case's ledger accounts with that identifier, for
    every value of ``keys`` (claims' :func:`claim_keys`)."""
    wanted: dict[str, set[str]] = {k: set() for k in IDENTIFIER_KINDS}
    for claim in keys:
        for kind, values in claim.items():
            wanted[kind].update(values)
    found: dict[tuple[str, str], set[int]] = defaultdict(set)
    conn = session.connection()
    for kind in IDENTIFIER_KINDS:
        for chunk in chunks(sorted(wanted[kind])):
            for value, pk in conn.execute(
                select(LedgerIdentifier.value, LedgerIdentifier.account_pk).where(
                    LedgerIdentifier.case_id == case_id,
                    LedgerIdentifier.kind == kind,
                    in_values(session, LedgerIdentifier.value, chunk),
                )
            ):
                found[(kind, value)].add(pk)
    return found


_EMPTY: frozenset[int] = frozenset()


def choose_account(
    keys: Mapping[str, list[str]], found: Mapping[tuple[str, str], set[int]]
) -> tuple[int, str] | None:
    """``(account pk, rule)`` of a claim whose scheme account id matched nothing, by the
    identifier rules in order; ``None`` when none hits."""
    get = found.get
    # The accounts each rule finds, in MATCH_RULES order (the scheme account found none).
    hits: list[set[int] | frozenset[int]] = [_EMPTY]
    for kind in IDENTIFIER_KINDS:
        values = keys[kind]
        if not values:
            hits.append(_EMPTY)
        elif len(values) == 1:
            hits.append(get((kind, values[0]), _EMPTY))
        else:
            hits.append(set().union(*(get((kind, v), _EMPTY) for v in values)))
    for rule, pks in zip(MATCH_RULES, hits):
        if not pks:
            continue
        if len(pks) == 1:
            return next(iter(pks)), rule
        # Several accounts for one rule: the one most of the claim's identifiers point to,
        # then the lowest pk.
        score = Counter(pk for h in hits for pk in h)
        return min(pks, key=lambda pk: (-score[pk], pk)), rule
    return None


def account_totals(session: Session, pks: set[int]) -> dict[int, tuple[int, int]]:
    """Account pk → ``(deposits, withdrawals)``."""
    out: dict[int, tuple[int, int]] = {}
    conn = session.connection()
    for chunk in chunks(sorted(pks)):
        for pk, dep, wd in conn.execute(
            select(LedgerAccount.id, LedgerAccount.deposits, LedgerAccount.withdrawals).where(
                in_values(session, LedgerAccount.id, chunk)
            )
        ):
            out[pk] = (dep, wd)
    return out
