"""Verification: every pending claim checked against the scheme's seized ledger.

DESIGN.md, "Claim lifecycle", is the rule book; this module is the only place that implements
it. Pure domain: no Prefect, no HTTP (``flows/verify.py`` orchestrates it, ``restitution
verify`` starts it).

Two steps, each on a batch of claim ids (1k–10k), each with bulk SQL only — a handful of
``IN (…)`` / ``GROUP BY`` queries per batch, never one query per claim:

1. **Match** (:func:`match_batch`): ``submitted`` claims move to ``verifying`` (audited, through
   :func:`claims.lifecycle.transition_many`) and every claim of the batch — including one back
   from ``needs_info`` — is matched to a ledger account. The rules, first hit wins:

   ====================  ===================================================================
   ``scheme_account``    ``LedgerAccount.account_id`` equals the claim's scheme account id
   ``tx_hash``           an evidence transaction hash appears in the account's ledger rows
   ``iin``               the claim's IIN (keyed hash) appears in the account's rows
   ``email``             the claim's e-mail (``email_key``: case-folded) appears there
   ``phone``             the claim's phone (E.164) appears there
   ``wallet``            the claim's payout address (``payout_address_key``) appears there
   ====================  ===================================================================

   The keys on both sides are the ledger import's normalization (``claims/ledger.py``,
   ``LedgerIdentifier``): ``tx_hash`` 64 lower-case hex digits without ``0x``; ``iin`` the
   keyed IIN hash; ``email`` case-folded; ``phone`` E.164; ``wallet`` the address key of
   :func:`claims.validators.normalize_address_key`. When one rule finds several accounts the
   one that more of the claim's identifiers point to wins, then the lowest account pk
   (deterministic; the caseworker sees the account in the claim detail).

   The claim stores ``ledger_account_pk``, ``match_rule``, ``invested`` (= deposits),
   ``withdrawn`` (= withdrawals including bonuses) and ``recognized_loss`` = the account's net
   loss ``max(0, deposits − withdrawals)`` — never the amount the victim typed.

2. **Decide** (:func:`decide_batch`): flags are computed (table below), open flags of a claim
   being re-verified are resolved and replaced, and the claim moves ``verifying → approved``
   (clean; action ``claim.approved_by_rule``, audit ``rule: ledger_match_clean``, a ``rule``
   decision row, the victim's "approved" e-mail with the recognized loss) or ``verifying →
   flagged`` (action ``claim.flagged_by_rule``, the flag codes in the audit event; no e-mail:
   victims see "under review").

========================  ==========================================================================
flag                      when
========================  ==========================================================================
``no_ledger_match``       no rule matched
``amount_differs``        matched, and ``|claimed − net loss| > max(1 USDT, 1 % of the net loss)``,
                          exactly: ``d > 1_000_000 and 100·d > net_loss`` (d in micro-USDT; the
                          1 % is of the *ledger* net loss, the figure that is recognized)
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

Matching runs for *all* pending claims of a run before any is decided
(:func:`run_verification`, and the flow), so claims of the same run that share a ledger
account are all flagged rather than the first approved and then pulled back. Step 2 decides
exactly the claims step 1 matched (their ids are handed over); a claim that enters
``verifying`` in between (a victim's reply) waits for the next round, so nothing is decided on
a stale match. A run repeats rounds until no claim of the case is pending.

Cost: a handful of queries per batch (``IN`` lists of the batch's keys; on SQLite a long list
is one JSON parameter), claims read as plain rows (only the columns each step uses, no model
objects), and the writes in one bulk statement per table: the state changes through
:func:`_apply_transition` (:func:`claims.lifecycle.apply_transition`'s rows, events and errors;
on SQLite one ``UPDATE`` for the batch, not one per claim — see there), their audit events with
the canonical JSON written directly from the values (:func:`claims.audit.record_texts`; the
same bytes, and so the same chain, as the generic path), decisions, flags and notifications
through :func:`claims.audit.bulk_insert`. The ledger identifiers are looked up only for the
claims whose scheme account id matches nothing (the first rule decides the others). Cluster
lookups go by the key's index, never by the case's (:func:`_case_is`). No cyclic garbage
collection during a batch. ``bench/verify.py`` measures it;
``tests/claims/test_verification_equivalence.py`` proves the bulk path writes what the generic
one (model objects, ``transition_many``) writes, ``test_verification_bulk_sql.py`` the SQLite
statements against the lifecycle's.

Rerunning changes nothing already decided: only ``submitted`` and ``verifying`` claims are
processed. On PostgreSQL the batch's claims are locked (``FOR UPDATE``, id order) and re-checked,
so two concurrent runs never decide a claim twice; on SQLite the write transaction is exclusive.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import String, bindparam, func, literal_column, select, type_coerce, update
from sqlmodel import Session

from claims import audit, lifecycle, outbox
from claims.audit import Actor, canonical_text
from claims.audit import json_str as _json_str
from claims.gc_pause import gc_paused
from claims.models import (
    BlockedAddress,
    Claim,
    ClaimStatus,
    Decision,
    Document,
    Flag,
    LedgerAccount,
    LedgerIdentifier,
    utcnow,
)
from claims.money import MICRO, format_amount

__all__ = [
    "APPROVE_RULE",
    "BATCH_SIZE",
    "MATCH_RULES",
    "PENDING",
    "amount_differs",
    "decide_batch",
    "empty_counts",
    "add_counts",
    "match_batch",
    "decide_ids",
    "id_ranges",
    "id_runs",
    "ids_in_runs",
    "match_range",
    "pending_claim_ids",
    "run_verification",
    "verify_batch",
]

S = ClaimStatus
PENDING = (S.submitted.value, S.verifying.value)
MATCH_RULES = ("scheme_account", "tx_hash", "iin", "email", "phone", "wallet")
IDENTIFIER_KINDS = ("tx_hash", "iin", "email", "phone", "wallet")
APPROVE_RULE = "ledger_match_clean"
DUPLICATE_FLAGS = ("duplicate_identity", "duplicate_account", "duplicate_wallet", "duplicate_email")
# Claims per batch step (one transaction; one Prefect task run in the flow): a batch's
# queries and writes stay bulk, and a run of 100k claims is 10 task runs per step.
BATCH_SIZE = 10_000
# Max bound parameters per IN list (SQLite allows 32,766; PostgreSQL 65,535): a whole batch.
CHUNK = BATCH_SIZE
# How many other claims a duplicate flag's message names.
NAMED = 5
# From this many values on, an IN list goes to SQLite as one JSON parameter (see _in).
JSON_IN_MIN = 64


def default_actor() -> Actor:
    return Actor.system("verification")


# ------------------------------------------------------------------ small helpers


def _chunks(seq: Sequence, n: int = CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _usdt(micro: int) -> str:
    """Staff-facing amount: ``1,200.5 USDT`` (grouped whole part; exact decimals)."""
    text = format_amount(micro)
    whole, dot, frac = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    whole = whole.lstrip("-")
    return f"{sign}{int(whole):,}{dot}{frac} USDT"


def tx_key(value: str) -> str:
    """Match key of a transaction hash: without ``0x``, lower case (``tx_hash_key``'s form)."""
    value = value.strip()
    if value[:2] in ("0x", "0X"):
        value = value[2:]
    return value.lower()


def amount_differs(claimed: int, net_loss: int) -> bool:
    """``|claimed − net_loss| > max(1 USDT, 1 % of net_loss)``, exact in integers."""
    d = abs(claimed - net_loss)
    return d > MICRO and 100 * d > net_loss


def net_loss(deposits: int, withdrawals: int) -> int:
    return max(0, deposits - withdrawals)


def empty_counts() -> dict:
    return {
        "started": 0,  # submitted → verifying
        "verified": 0,  # claims decided (approved + flagged)
        "approved": 0,
        "flagged": 0,
        "matched": 0,
        "unmatched": 0,
        "match_rules": {},
        "flags": {},
        "reflagged": 0,  # earlier approved claims pulled back into review by a new cluster member
        "flags_added": 0,  # flags added to other undecided members of a cluster
    }


def add_counts(total: dict, part: dict) -> dict:
    """Add ``part`` into ``total`` (ints add, dicts of ints add key-wise); returns ``total``."""
    for k, v in part.items():
        if isinstance(v, dict):
            dst = total.setdefault(k, {})
            for kk, vv in v.items():
                dst[kk] = dst.get(kk, 0) + vv
        elif isinstance(v, int):
            total[k] = total.get(k, 0) + v
    return total


def _in(session: Session, column, values: Sequence):
    """``column IN (values)``. On SQLite a long list goes as one JSON parameter
    (``IN (SELECT value FROM json_each(?))``): SQLAlchemy's per-value expansion of a
    5,000-item list costs more than the query."""
    if len(values) >= JSON_IN_MIN and session.get_bind().dialect.name == "sqlite":
        sub = select(literal_column("value")).select_from(
            func.json_each(bindparam(None, json.dumps(list(values)), type_=String))
        )
        return column.in_(sub)
    return column.in_(values)


def _insert(session: Session, model, rows: list[dict]) -> None:
    """Bulk INSERT through Core (executemany), skipping the ORM's bulk-insert bookkeeping."""
    if rows:
        session.connection().execute(model.__table__.insert(), rows)


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _sqlite_update_from() -> bool:
    """``UPDATE … FROM`` is SQLite 3.33+."""
    import sqlite3

    return sqlite3.sqlite_version_info >= (3, 33, 0)


def _apply_transition(
    session: Session, to: str, *, actor: Actor, action: str, columns: Sequence[str],
    items: Sequence[tuple],
) -> int:
    """:func:`claims.lifecycle.apply_transition` (same rows, audit events, stale rounds and
    errors), on SQLite as *one* ``UPDATE … FROM json_each(?)`` per source status instead of
    one ``UPDATE`` per claim.

    Why: with foreign keys on, an ``UPDATE`` of a foreign-key column (the match step's
    ``ledger_account_pk``) runs in a statement savepoint that first copies every page it
    changes into the statement journal — per claim, as one statement each, the same 3–5 pages
    copied again, and once the journal has spilled to a temporary file (``/var/tmp``),
    written: 50–200 MB per 10k-claim batch, ~0.1 ms of CPU per claim. One statement for the
    batch copies each page once. The decision's transitions set the same values on every
    claim: one ``UPDATE … WHERE id IN (json_each)``, ``OR ROLLBACK`` so that it needs no
    statement journal at all (its NOT NULL columns get a literal, ``version + 1`` and a bound
    time; any error rolls back the caller's transaction anyway). PostgreSQL takes the
    lifecycle's ``executemany``."""
    if not items or not _is_sqlite(session) or not _sqlite_update_from():
        return lifecycle.apply_transition(session, to, actor=actor, action=action,
                                          columns=columns, items=items)
    to = ClaimStatus(to).value
    by_src: dict[str, list[tuple]] = defaultdict(list)
    for item in items:
        by_src[item[0].status].append(item)
    for src in by_src:
        lifecycle.check(src, to)
    now = utcnow()
    table = Claim.__table__
    procs = [audit.bind_processor(session, table.c[k]) for k in columns]
    procs = [audit.bind_repeats(p) if p is not None else None for p in procs]
    cols = "".join(f", json_extract(value, '$[{i + 1}]') AS v{i}" for i in range(len(columns)))
    sets = "".join(f", {k} = u.v{i}" for i, k in enumerate(columns))
    sql = (f"UPDATE OR ROLLBACK {table.name} SET status = ?, version = version + 1, "
           f"updated_at = ?{sets} "
           f"FROM (SELECT json_extract(value, '$[0]') AS k{cols} FROM json_each(?)) AS u "
           f"WHERE {table.name}.id = u.k AND {table.name}.status = ?")
    now_db = audit.bind_value(session, table.c.updated_at, now)
    conn = session.connection()
    changed = 0
    for src, group in by_src.items():
        first = group[0][1]
        if all(vals == first for _c, vals, _b, _a in group):
            # The same values for every claim (a decision's times): bound once, the ids as
            # one JSON list.
            same = "".join(f", {k} = ?" for k in columns)
            res = conn.exec_driver_sql(
                f"UPDATE OR ROLLBACK {table.name} SET status = ?, version = version + 1, "
                f"updated_at = ?{same} WHERE id IN (SELECT value FROM json_each(?)) "
                "AND status = ?",
                (to, now_db, *[p(v) if p else v for p, v in zip(procs, first)],
                 json.dumps([c.id for c, *_ in group]), src))
        else:
            rows = [[c.id, *[p(v) if p else v for p, v in zip(procs, vals)]]
                    for c, vals, _b, _a in group]
            res = conn.exec_driver_sql(
                sql, (to, now_db, json.dumps(rows, separators=(",", ":")), src))
        changed += res.rowcount
    if changed != len(items):
        raise lifecycle.IllegalTransition(
            f"{len(items) - changed} claim(s) changed meanwhile; batch refused"
        )
    audit.record_texts(session, actor, action, "claim",
                       [(c.reference, b, a) for c, _v, b, a in items],
                       [c.id for c, *_ in items])
    if to in lifecycle.PAYABLE or set(by_src) & lifecycle.PAYABLE:
        for case_id in sorted({c.case_id for c, *_ in items}):
            lifecycle.mark_rounds_stale(session, case_id, actor=actor,
                                        because=f"{len(items)} claims")
    return changed


# ------------------------------------------------------------------ selection


def pending_claim_ids(
    session: Session, case_id: int, *, lo: int | None = None, hi: int | None = None
) -> list[int]:
    """Ids of the case's claims in ``submitted`` or ``verifying`` (optionally ``lo ≤ id ≤ hi``),
    ascending."""
    stmt = select(Claim.id).where(Claim.case_id == case_id, Claim.status.in_(PENDING))
    if lo is not None:
        stmt = stmt.where(Claim.id >= lo)
    if hi is not None:
        stmt = stmt.where(Claim.id <= hi)
    return list(session.execute(stmt.order_by(Claim.id)).scalars())


# The columns verification and the lifecycle read (the rest — name, ciphertext, address text,
# token hash… — is never read here). Claims are loaded as plain rows, not model objects: a
# batch's thousands of ORM objects cost more than the rules.
def _columns(*names: str) -> tuple:
    return tuple(Claim.__table__.c[name] for name in names)


# What each step reads of a claim (and the lifecycle: id, reference, status, case_id).
# evidence_tx_hashes is read as text (JSON) and decoded only for the claims whose scheme
# account matches nothing (_claim_keys); on PostgreSQL the driver decodes it anyway.
_MATCH_READ = (
    *_columns("id", "case_id", "reference", "status", "scheme_account"),
    type_coerce(Claim.__table__.c.evidence_tx_hashes, String).label("evidence_tx_hashes"),
    *_columns("iin_hash", "email_key", "phone", "payout_address_key", "ledger_account_pk",
              "match_rule", "invested", "withdrawn", "recognized_loss"),
)
_DECIDE_READ = _columns(
    "id", "case_id", "reference", "status", "language", "email", "email_key", "name_key",
    "birth_date", "claimed_amount", "payout_address_key", "ledger_account_pk", "match_rule",
    "invested", "withdrawn", "recognized_loss", "verified_at", "decided_at",
)


def _load_claims(
    session: Session, claim_ids: Iterable[int], status: Sequence[str], case_id: int | None = None,
    columns: Sequence = _DECIDE_READ,
) -> list:
    """The claims of ``claim_ids`` that are in ``status`` (locked on PostgreSQL), id order, as
    rows (attribute access: ``row.id``, ``row.status``…)."""
    ids = sorted(set(claim_ids))
    lock = session.get_bind().dialect.name != "sqlite"
    t = Claim.__table__
    out: list = []
    for chunk in _chunks(ids):
        stmt = (
            select(*columns)
            .where(_in(session, t.c.id, chunk), t.c.status.in_(status))
            .order_by(t.c.id)
        )
        if case_id is not None:
            stmt = stmt.where(t.c.case_id == case_id)
        if lock:
            stmt = stmt.with_for_update()
        out.extend(session.connection().execute(stmt).all())
    return out


# ------------------------------------------------------------------ step 1: match


@dataclass(frozen=True)
class Match:
    account_pk: int
    rule: str
    deposits: int
    withdrawals: int

    @property
    def loss(self) -> int:
        return net_loss(self.deposits, self.withdrawals)


def _claim_keys(c: Claim) -> dict[str, list[str]]:
    """The claim's match keys per identifier kind (same normalization as the ledger's)."""
    hashes = c.evidence_tx_hashes
    if hashes.__class__ is str:  # read as text (_MATCH_READ): decoded only here
        hashes = json.loads(hashes)
    keys: dict[str, list[str]] = {
        "tx_hash": sorted({tx_key(h) for h in hashes if h and h.strip()}) if hashes else [],
        "iin": [c.iin_hash] if c.iin_hash else [],
        "email": [c.email_key] if c.email_key else [],
        "phone": [c.phone] if c.phone else [],
        "wallet": [c.payout_address_key] if c.payout_address_key else [],
    }
    return keys


def find_matches(session: Session, claims: Sequence[Claim]) -> dict[int, Match]:
    """Claim id → its ledger account match (claims without a match are absent)."""
    out: dict[int, Match] = {}
    by_case: dict[int, list[Claim]] = defaultdict(list)
    for c in claims:
        by_case[c.case_id].append(c)
    for case_id, group in by_case.items():
        out.update(_find_matches_in_case(session, case_id, group))
    return out


def _find_matches_in_case(session: Session, case_id: int, claims: Sequence[Claim]) -> dict[int, Match]:
    conn = session.connection()  # Core: plain tuples, no ORM result processing
    # Scheme account ids → account pks.
    scheme = sorted({c.scheme_account.strip() for c in claims if c.scheme_account and c.scheme_account.strip()})
    by_account_id: dict[str, int] = {}
    for chunk in _chunks(scheme):
        for pk, account_id in conn.execute(
            select(LedgerAccount.id, LedgerAccount.account_id).where(
                LedgerAccount.case_id == case_id, _in(session, LedgerAccount.account_id, chunk)
            )
        ).all():
            by_account_id[account_id] = pk

    # The first rule, ``scheme_account``, finds one account at most (account ids are unique in
    # a case), so a claim it matches is decided by it whatever its other identifiers find: the
    # identifiers are looked up only for the claims it leaves (most claims carry their scheme
    # account id).
    chosen: dict[int, tuple[int, str]] = {}
    rest: list[Claim] = []
    for c in claims:
        pk = by_account_id.get((c.scheme_account or "").strip())
        if pk is not None:
            chosen[c.id] = (pk, "scheme_account")
        else:
            rest.append(c)

    # Identifier values per kind → account pks.
    claim_keys = {c.id: _claim_keys(c) for c in rest}
    wanted: dict[str, set[str]] = {k: set() for k in IDENTIFIER_KINDS}
    for keys in claim_keys.values():
        for kind, values in keys.items():
            wanted[kind].update(values)
    found: dict[tuple[str, str], set[int]] = defaultdict(set)
    for kind in IDENTIFIER_KINDS:
        for chunk in _chunks(sorted(wanted[kind])):
            for value, pk in conn.execute(
                select(LedgerIdentifier.value, LedgerIdentifier.account_pk).where(
                    LedgerIdentifier.case_id == case_id,
                    LedgerIdentifier.kind == kind,
                    _in(session, LedgerIdentifier.value, chunk),
                )
            ).all():
                found[(kind, value)].add(pk)

    empty: frozenset[int] = frozenset()
    get = found.get
    for c in rest:
        keys = claim_keys[c.id]
        # The accounts each rule finds, in MATCH_RULES order (the sets of ``found``, shared:
        # never changed here); the scheme account found none.
        hits: list[set[int] | frozenset[int]] = [empty]
        for kind in IDENTIFIER_KINDS:
            values = keys[kind]
            if not values:
                hits.append(empty)
            elif len(values) == 1:
                hits.append(get((kind, values[0]), empty))
            else:
                hits.append(set().union(*(get((kind, v), empty) for v in values)))
        for rule, pks in zip(MATCH_RULES, hits):
            if not pks:
                continue
            if len(pks) == 1:
                chosen[c.id] = (next(iter(pks)), rule)
            else:
                # Several accounts for one rule: the one most of the claim's identifiers point
                # to, then the lowest pk.
                score = Counter(pk for h in hits for pk in h)
                chosen[c.id] = (min(pks, key=lambda pk: (-score[pk], pk)), rule)
            break

    totals: dict[int, tuple[int, int]] = {}
    for chunk in _chunks(sorted({pk for pk, _ in chosen.values()})):
        for pk, dep, wd in conn.execute(
            select(LedgerAccount.id, LedgerAccount.deposits, LedgerAccount.withdrawals).where(
                _in(session, LedgerAccount.id, chunk)
            )
        ).all():
            totals[pk] = (dep, wd)
    return {
        cid: Match(pk, rule, totals[pk][0], totals[pk][1]) for cid, (pk, rule) in chosen.items()
    }


def _match_values(m: Match | None) -> dict:
    if m is None:
        return {
            "ledger_account_pk": None,
            "match_rule": None,
            "invested": None,
            "withdrawn": None,
            "recognized_loss": None,
        }
    return {
        "ledger_account_pk": m.account_pk,
        "match_rule": m.rule,
        "invested": m.deposits,
        "withdrawn": m.withdrawals,
        "recognized_loss": m.loss,
    }


def match_batch(session: Session, claim_ids: Iterable[int], *, actor: Actor | None = None) -> dict:
    """Step 1 on a batch: ``submitted → verifying`` and the ledger match stored on every
    pending claim of ``claim_ids`` (others are ignored). Returns counts."""
    session.flush()  # the batch reads through the connection (no autoflush): flush once
    with gc_paused():
        return _match_batch(session, claim_ids, actor or default_actor())


def _match_batch(session: Session, claim_ids: Iterable[int], actor: Actor) -> dict:
    claims = _load_claims(session, claim_ids, PENDING, columns=_MATCH_READ)
    counts = empty_counts()
    if not claims:
        return counts
    matches = find_matches(session, claims)
    submitted = [c for c in claims if c.status == S.submitted.value]
    verifying = [c for c in claims if c.status == S.verifying.value]
    if submitted:
        # submitted → verifying with the match stored (lifecycle.transition_many's event:
        # before = the status and the match columns as they were, after = the new ones).
        items = []
        befores: dict[tuple, str] = {}  # mostly one: submitted, nothing matched before
        unmatched_after = _match_text(S.verifying.value, *_NO_MATCH)
        for c in submitted:
            old = (c.status, c.invested, c.ledger_account_pk, c.match_rule, c.recognized_loss,
                   c.withdrawn)
            before = befores.get(old)
            if before is None:
                before = befores[old] = _match_text(*old)
            m = matches.get(c.id)
            if m is None:
                items.append((c, _NO_MATCH, before, unmatched_after))
                continue
            new = (m.deposits, m.account_pk, m.rule, m.loss, m.withdrawals)
            items.append((c, new, before, _verifying_text(*new)))
        _apply_transition(
            session, S.verifying.value, actor=actor, action="claim.verification_started",
            columns=_MATCH_COLUMNS, items=items,
        )
    if verifying:
        # Back from needs_info (or a run interrupted between the steps): refresh the match.
        # Not a state change; the decision's audit event records what was recognized.
        t = Claim.__table__
        cols = list(_match_values(None))
        session.connection().execute(
            update(t)
            .where(t.c.id == bindparam("b_id"), t.c.status == S.verifying.value)
            .values({k: bindparam(f"v_{k}") for k in cols}),
            [{"b_id": c.id, **{f"v_{k}": v for k, v in _match_values(matches.get(c.id)).items()}}
             for c in verifying],
        )
    counts["started"] = len(submitted)
    return counts


# The match columns in sorted order (the audit's canonical JSON sorts keys).
_MATCH_COLUMNS = ("invested", "ledger_account_pk", "match_rule", "recognized_loss", "withdrawn")
_NO_MATCH = (None, None, None, None, None)


_RULE_TEXT = {rule: _json_str(rule) for rule in MATCH_RULES}


def _verifying_text(invested, account_pk, rule, loss, withdrawn) -> str:
    """``_match_text("verifying", …)`` of a match (ints and a rule name), without the per-value
    dispatch of :func:`_j`."""
    if (invested.__class__ is int and account_pk.__class__ is int and loss.__class__ is int
            and withdrawn.__class__ is int and rule in _RULE_TEXT):
        return (f'{{"invested":{invested},"ledger_account_pk":{account_pk},'
                f'"match_rule":{_RULE_TEXT[rule]},"recognized_loss":{loss},'
                f'"status":"verifying","withdrawn":{withdrawn}}}')
    return _match_text(S.verifying.value, invested, account_pk, rule, loss, withdrawn)


def _match_text(status, invested, account_pk, rule, loss, withdrawn) -> str:
    """``canonical_text({"status": status, <the match columns>})`` of a transition's event."""
    return (f'{{"invested":{_j(invested)},"ledger_account_pk":{_j(account_pk)},'
            f'"match_rule":{_j(rule)},"recognized_loss":{_j(loss)},"status":{_j(status)},'
            f'"withdrawn":{_j(withdrawn)}}}')


# ------------------------------------------------------------------ step 2: decide


@dataclass
class _Member:
    id: int
    reference: str
    status: str
    verified_at: dt.datetime | None


def _label(members: Sequence[_Member]) -> str:
    shown = ", ".join(f"{m.reference} ({m.status})" for m in members[:NAMED])
    more = len(members) - NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _case_is(case_id: int):
    """``claim.case_id = :case_id`` written ``case_id + 0`` so that no planner answers a
    lookup by key (``… AND key IN (…)``) by walking the case's index: SQLite does without
    statistics (every claim of the case read, per batch, for each kind of cluster); the key's
    own index is the one that finds the few claims sharing a key."""
    return (Claim.case_id + 0) == case_id


def _clusters(
    session: Session, case_id: int, key_cols: Sequence, keys: set
) -> dict[tuple, list[_Member]]:
    """Members (id order) of every cluster of the case (``count(*) > 1`` claims sharing the key)
    whose key is in ``keys``. ``key_cols`` are Claim columns; keys are tuples of their values."""
    if not keys:
        return {}
    lead = key_cols[0]
    lead_values = sorted({k[0] for k in keys})
    dup: set[tuple] = set()
    for chunk in _chunks(lead_values):
        stmt = (
            select(*key_cols)
            .where(_case_is(case_id), _in(session, lead, chunk))
            .group_by(*key_cols)
            .having(func.count() > 1)
        )
        dup.update(tuple(r) for r in session.connection().execute(stmt).all())
    dup &= keys
    if not dup:
        return {}
    out: dict[tuple, list[_Member]] = defaultdict(list)
    dup_lead = sorted({k[0] for k in dup})
    for chunk in _chunks(dup_lead):
        stmt = (
            select(Claim.id, Claim.reference, Claim.status, Claim.verified_at, *key_cols)
            .where(_case_is(case_id), _in(session, lead, chunk))
            .order_by(Claim.id)
        )
        for row in session.connection().execute(stmt).all():
            key = tuple(row[4:])
            if key in dup:
                out[key].append(_Member(row[0], row[1], row[2], row[3]))
    return out


_CLUSTER_SPECS: dict[str, tuple[Callable[[], Sequence], Callable[[Claim], tuple | None], str]] = {
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


def decide_batch(
    session: Session, claim_ids: Iterable[int], *, actor: Actor | None = None,
    case_id: int | None = None,
) -> dict:
    """Step 2 on a batch: flag and decide every ``verifying`` claim of ``claim_ids`` (of
    ``case_id`` when given) whose match step ran (see the module docstring). Returns counts."""
    session.flush()  # the batch reads through the connection (no autoflush): flush once
    with gc_paused():
        return _decide_batch(session, claim_ids, actor or default_actor(), case_id)


def _decide_batch(
    session: Session, claim_ids: Iterable[int], actor: Actor, case_id: int | None
) -> dict:
    claims = _load_claims(session, claim_ids, (S.verifying.value,), case_id)
    counts = empty_counts()
    if not claims:
        return counts
    by_case: dict[int, list[Claim]] = defaultdict(list)
    for c in claims:
        by_case[c.case_id].append(c)
    for case_id, group in by_case.items():
        add_counts(counts, _decide_case(session, case_id, group, actor))
    return counts


def _decide_case(session: Session, case_id: int, claims: list[Claim], actor: Actor) -> dict:
    now = utcnow()
    counts = empty_counts()
    ids = [c.id for c in claims]
    batch_ids = set(ids)

    # Ledger accounts of the matches.
    accounts: dict[int, tuple[str, bool, str | None]] = {}
    for chunk in _chunks(sorted({c.ledger_account_pk for c in claims if c.ledger_account_pk is not None})):
        for pk, account_id, insider, reason in session.connection().execute(
            select(
                LedgerAccount.id, LedgerAccount.account_id, LedgerAccount.insider,
                LedgerAccount.insider_reason,
            ).where(_in(session, LedgerAccount.id, chunk))
        ).all():
            accounts[pk] = (account_id, bool(insider), reason)

    # The blocked list and documents.
    blocked: dict[str, str] = {}
    for chunk in _chunks(sorted({c.payout_address_key for c in claims if c.payout_address_key})):
        for key, reason in session.connection().execute(
            select(BlockedAddress.address_key, BlockedAddress.reason).where(
                _in(session, BlockedAddress.address_key, chunk)
            )
        ).all():
            blocked[key] = reason
    # missing_evidence: the unmatched claims' evidence hashes and documents.
    unmatched = [c.id for c in claims if c.ledger_account_pk not in accounts]
    with_evidence: set[int] = set()
    with_documents: set[int] = set()
    t = Claim.__table__
    for chunk in _chunks(unmatched):
        with_evidence.update(
            cid for cid, hashes in session.connection().execute(
                select(t.c.id, t.c.evidence_tx_hashes).where(_in(session, t.c.id, chunk))
            ) if hashes
        )
        with_documents.update(
            session.connection().execute(
                select(Document.claim_id).where(_in(session, Document.claim_id, chunk)).distinct()
            ).scalars()
        )

    # Clusters over every claim of the case.
    clusters: dict[str, dict[tuple, list[_Member]]] = {}
    for code, (cols, key_of, _msg) in _CLUSTER_SPECS.items():
        keys = {k for c in claims if (k := key_of(c)) is not None}
        clusters[code] = _clusters(session, case_id, cols(), keys)

    def cluster_message(code: str, key: tuple, others: Sequence[_Member]) -> str:
        template = _CLUSTER_SPECS[code][2]
        fields = {"others": _label(others)}
        if code == "duplicate_identity":
            fields["birth"] = key[1].isoformat() if key[1] else "?"
        if code == "duplicate_account":
            fields["account"] = accounts[key[0]][0]
        return template.format(**fields)

    # The batch's claims in clusters: claim id → [(code, message)], codes in table order.
    in_clusters: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for code, by_key in clusters.items():
        for key, members in by_key.items():
            for m in members:
                if m.id in batch_ids:
                    others = [o for o in members if o.id != m.id]
                    in_clusters[m.id].append((code, cluster_message(code, key, others)))

    # Flags of the batch's claims.
    flags: dict[int, list[tuple[str, str]]] = {}
    for c in claims:
        f: list[tuple[str, str]] = []
        acct = accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
        if acct is None:
            f.append(("no_ledger_match", "no ledger account matches the scheme account id, "
                      "evidence transaction hashes, IIN, e-mail, phone or payout address"))
            if c.id not in with_evidence and c.id not in with_documents:
                f.append(("missing_evidence", "no ledger match, and the claim has neither "
                          "evidence transaction hashes nor documents"))
        else:
            account_id, insider, reason = acct
            loss = net_loss(c.invested or 0, c.withdrawn or 0)
            if amount_differs(c.claimed_amount, loss):
                f.append(("amount_differs", f"claimed {_usdt(c.claimed_amount)}; the ledger "
                          f"(account {account_id}) shows a net loss of {_usdt(loss)} "
                          f"(deposits {_usdt(c.invested or 0)}, withdrawals and bonuses "
                          f"{_usdt(c.withdrawn or 0)})"))
            if (c.withdrawn or 0) >= (c.invested or 0):
                f.append(("net_winner", f"ledger account {account_id} took out "
                          f"{_usdt(c.withdrawn or 0)} (withdrawals and bonuses) against "
                          f"{_usdt(c.invested or 0)} deposited: a net winner"))
            if insider:
                f.append(("insider", f"ledger account {account_id} is marked insider/promoter"
                          + (f": {reason}" if reason else "")))
        if c.id in in_clusters:
            f.extend(in_clusters[c.id])
        if c.payout_address_key in blocked:
            f.append(("blocked_address", f"the payout address is on the blocked list: "
                      f"{blocked[c.payout_address_key]}"))
        flags[c.id] = f

    # Re-verification replaces the claim's open flags.
    for chunk in _chunks(ids):
        session.execute(
            update(Flag)
            .where(_in(session, Flag.claim_id, chunk), Flag.resolved_at.is_(None))
            .values(resolved_at=now)
            .execution_options(synchronize_session=False)
        )
    now_db = audit.bind_value(session, Flag.__table__.c.created_at, now)
    audit.bulk_insert(session, Flag.__table__, _FLAG_COLUMNS, [
        (cid, code, msg, now_db) for cid, fl in flags.items() for code, msg in fl
    ])

    # Claims verified for the first time (not back from needs_info): new cluster members.
    first_time = {c.id for c in claims if c.verified_at is None}
    clean = [c for c in claims if not flags[c.id]]
    flagged = [c for c in claims if flags[c.id]]

    # The transitions: lifecycle.transition_many's events (before = the status and the
    # columns set, as they were; after = the new ones plus what the rule found), their
    # canonical JSON written directly.
    now_text = _json_str(now.isoformat())

    def account_of(c) -> str | None:
        acct = accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
        return acct[0] if acct else None

    def before_text(c) -> str:
        return (f'{{"decided_at":{_j_time(c.decided_at)},"status":{_j(c.status)},'
                f'"verified_at":{_j_time(c.verified_at)}}}')

    if clean:
        tail = f',"rule":{_json_str(APPROVE_RULE)},"status":"approved","verified_at":{now_text}}}'
        # A claim verified for the first time: the same "before" for all.
        first_before = f'{{"decided_at":null,"status":{_j(S.verifying.value)},"verified_at":null}}'
        new_times = (now, now)
        verifying = S.verifying.value
        # A clean claim has matched an account: its id as JSON, once per account.
        account_texts = {pk: _json_str(acct[0]) for pk, acct in accounts.items()}
        _apply_transition(
            session, S.approved.value, actor=actor, action="claim.approved_by_rule",
            columns=("decided_at", "verified_at"), items=[
                (c, new_times,
                 first_before if (c.decided_at is None and c.verified_at is None
                                  and c.status == verifying) else before_text(c),
                 f'{{"decided_at":{now_text},'
                 f'"ledger_account":{account_texts[c.ledger_account_pk]},'
                 f'"match_rule":{_RULE_TEXT.get(c.match_rule) or _j(c.match_rule)},'
                 f'"recognized_loss":{_j(c.recognized_loss)}{tail}')
                for c in clean
            ],
        )
        now_db = audit.bind_value(session, Decision.__table__.c.created_at, now)
        audit.bulk_insert(session, Decision.__table__, _DECISION_COLUMNS, [
            (c.id, None, "rule",
             f"{APPROVE_RULE}: matched ledger account {accounts[c.ledger_account_pk][0]} by "
             f"{c.match_rule}; no flag",
             c.recognized_loss, "[]", now_db)
            for c in clean
        ])
        outbox.enqueue_texts(session, [
            (c, "approved", _approved_context(c.reference, c.recognized_loss), None)
            for c in clean
        ])
    if flagged:
        tail = f',"status":"flagged","verified_at":{now_text}}}'
        new_time = (now,)
        _apply_transition(
            session, S.flagged.value, actor=actor, action="claim.flagged_by_rule",
            columns=("verified_at",), items=[
                (c, new_time,
                 f'{{"status":{_j(c.status)},"verified_at":{_j_time(c.verified_at)}}}',
                 f'{{"flags":[{",".join(_json_str(code) for code, _ in flags[c.id])}],'
                 f'"ledger_account":{_j(account_of(c))},"match_rule":{_j(c.match_rule)},'
                 f'"recognized_loss":{_j(c.recognized_loss)}{tail}')
                for c in flagged
            ],
        )

    # Other members of the batch's clusters (see the module docstring).
    counts_others = _flag_other_members(
        session, clusters, batch_ids, first_time, cluster_message, actor, now
    )

    counts["verified"] = len(claims)
    counts["approved"] = len(clean)
    counts["flagged"] = len(flagged)
    counts["matched"] = sum(1 for c in claims if c.ledger_account_pk is not None)
    counts["unmatched"] = len(claims) - counts["matched"]
    counts["match_rules"] = dict(Counter(c.match_rule for c in claims if c.match_rule))
    counts["flags"] = dict(Counter(code for fl in flags.values() for code, _ in fl))
    add_counts(counts, counts_others)
    return counts




_ascii = json.encoder.encode_basestring_ascii


def _approved_context(reference: str, recognized_loss: int | None) -> str:
    """``outbox.context_text(reference, {"recognized_loss": format_amount(loss or 0)})``,
    byte for byte (``json.dumps``' default form), written directly."""
    return (f'{{"reference": {_ascii(reference)}, '
            f'"recognized_loss": {_ascii(format_amount(recognized_loss or 0))}}}')


def _j(value: str | int | None) -> str:
    """``canonical_text(value)`` of a str, int or None, fast (audit events of a batch)."""
    if value is None:
        return "null"
    if value.__class__ is int:
        return str(value)
    if value.__class__ is str:
        return _json_str(value)
    return canonical_text(value)


def _j_time(value: dt.datetime | None) -> str:
    """``canonical_text(jsonable(value))`` of a time or None."""
    return "null" if value is None else _json_str(value.isoformat())


_DECISION_COLUMNS = ("claim_id", "staff_id", "decision", "reason", "recognized_loss",
                     "overridden_flags", "created_at")
_FLAG_COLUMNS = ("claim_id", "code", "message", "created_at")


def _flag_other_members(
    session: Session,
    clusters: dict[str, dict[tuple, list[_Member]]],
    batch_ids: set[int],
    first_time: set[int],
    cluster_message: Callable[[str, tuple, Sequence[_Member]], str],
    actor: Actor,
    now: dt.datetime,
) -> dict:
    # (member id) → {code: message}; and which members must be pulled back from approved.
    add: dict[int, dict[str, str]] = defaultdict(dict)
    pull_back: dict[int, dict[str, str]] = defaultdict(dict)
    because: dict[int, set[str]] = defaultdict(set)
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
                msg = cluster_message(code, key, others)
                if m.status in (S.flagged.value, S.needs_info.value):
                    add[m.id][code] = msg
                    because[m.id].update(o.reference for o in in_batch)
                elif m.status == S.approved.value and newcomers:
                    pull_back[m.id][code] = msg
                    because[m.id].update(o.reference for o in newcomers)
    counts = {"reflagged": 0, "flags_added": 0}
    if not add and not pull_back:
        return counts

    # Open flags the undecided members have already: update their message, insert the rest.
    open_flags: dict[tuple[int, str], int] = {}
    for chunk in _chunks(sorted(add)):
        for fid, cid, code in session.connection().execute(
            select(Flag.id, Flag.claim_id, Flag.code).where(
                _in(session, Flag.claim_id, chunk), Flag.resolved_at.is_(None),
                Flag.code.in_(DUPLICATE_FLAGS),
            )
        ):
            open_flags[(cid, code)] = fid
    updates, inserts, new_codes = [], [], defaultdict(list)
    for cid, by_code in add.items():
        for code, msg in by_code.items():
            fid = open_flags.get((cid, code))
            if fid is None:
                inserts.append({"claim_id": cid, "code": code, "message": msg, "created_at": now})
                new_codes[cid].append(code)
            else:
                updates.append({"b_id": fid, "b_msg": msg})
    if updates:
        t = Flag.__table__
        session.connection().execute(
            update(t).where(t.c.id == bindparam("b_id")).values(message=bindparam("b_msg")), updates
        )
    for cid, codes in pull_back.items():
        for code, msg in codes.items():
            inserts.append({"claim_id": cid, "code": code, "message": msg, "created_at": now})
    _insert(session, Flag, inserts)
    if new_codes:
        refs = dict(session.connection().execute(
            select(Claim.id, Claim.reference).where(Claim.id.in_(sorted(new_codes)))
        ).all())
        audit.record_many(session, actor, [
            ("claim.flag_added", "claim", refs[cid], None,
             {"flags": sorted(codes), "because": sorted(because[cid])})
            for cid, codes in sorted(new_codes.items())
        ])
        counts["flags_added"] = sum(len(v) for v in new_codes.values())
    if pull_back:
        approved = _load_claims(session, pull_back, (S.approved.value,))
        if approved:
            lifecycle.transition_many(
                session, approved, S.flagged, actor=actor, action="claim.flagged_by_rule",
                per_claim_audit={
                    c.id: {"flags": sorted(pull_back[c.id]), "because": sorted(because[c.id])}
                    for c in approved
                },
            )
        counts["reflagged"] = len(approved)
    return counts


# ------------------------------------------------------------------ a batch, a run


def verify_batch(session: Session, claim_ids: Iterable[int], *, actor: Actor | None = None) -> dict:
    """Both steps on one batch in the caller's transaction; returns counts."""
    ids = list(claim_ids)
    counts = match_batch(session, ids, actor=actor)
    return add_counts(counts, decide_batch(session, ids, actor=actor))


def id_ranges(ids: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Ascending ``ids`` cut into ``(first, last)`` ranges of at most ``size`` ids each."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [(ids[i], ids[min(i + size, len(ids)) - 1]) for i in range(0, len(ids), size)]


def id_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Ids as ``(first, last)`` runs of consecutive ids, ascending: the compact form of a
    batch's ids (a batch of one case's pending claims is usually one run)."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(lo, hi) for lo, hi in runs]


def ids_in_runs(runs: Iterable[Sequence[int]]) -> list[int]:
    """The ids of :func:`id_runs`' runs, ascending."""
    return [i for lo, hi in runs for i in range(lo, hi + 1)]


def match_range(session: Session, case_id: int, lo: int, hi: int, *, actor: Actor | None = None) -> dict:
    """Step 1 on the case's pending claims with ``lo ≤ id ≤ hi``; the counts carry ``ids``,
    the claims matched, which step 2 decides (a claim that enters ``verifying`` between the
    steps waits for the next round, so nothing is decided on a stale match)."""
    ids = pending_claim_ids(session, case_id, lo=lo, hi=hi)
    counts = match_batch(session, ids, actor=actor)
    counts["ids"] = ids
    return counts


def decide_ids(session: Session, case_id: int, ids: Sequence[int], *, actor: Actor | None = None) -> dict:
    """Step 2 on the given claims (those of ``case_id`` still ``verifying``)."""
    return decide_batch(session, ids, actor=actor, case_id=case_id)


MatchFn = Callable[[int, int, int], dict]  # (case_id, lo, hi) → counts with "ids"
DecideFn = Callable[[int, list[int]], dict]  # (case_id, ids) → counts


def run_verification(
    case_code: str,
    *,
    batch_size: int = BATCH_SIZE,
    engine=None,
    match: MatchFn | None = None,
    decide: DecideFn | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    max_rounds: int = 100,
) -> dict:
    """Verify every pending claim of the case, batch by batch, until none is pending.

    Each round matches *all* pending claims (one transaction per batch of ids ``lo..hi``)
    before deciding any, then decides the matched claims batch by batch; claims filed
    meanwhile are taken by the next round. ``match(case_id, lo, hi)`` and
    ``decide(case_id, ids)`` run one batch and default to a transaction each here; the
    Prefect flow passes its tasks. ``on_progress(done, total, counts)`` is
    called after every batch step. Returns the summed counts plus ``batches`` and ``rounds``.
    """
    from claims.cases import get_case_by_code
    from claims.db import get_engine, session_scope

    engine = engine or get_engine()
    with session_scope(engine, write=False) as s:
        case_id = get_case_by_code(s, case_code).id

    def _match(cid: int, lo: int, hi: int) -> dict:
        with session_scope(engine) as s:
            return match_range(s, cid, lo, hi)

    def _decide(cid: int, ids: list[int]) -> dict:
        with session_scope(engine) as s:
            return decide_ids(s, cid, ids)

    match = match or _match
    decide = decide or _decide
    totals = {**empty_counts(), "batches": 0, "rounds": 0}
    done = total = 0
    for _ in range(max_rounds):
        with session_scope(engine, write=False) as s:
            ids = pending_claim_ids(s, case_id)
        if not ids:
            return totals
        ranges = id_ranges(ids, batch_size)
        total += 2 * len(ranges)
        totals["rounds"] += 1
        totals["batches"] += len(ranges)
        verified_before = totals["verified"]
        matched: list[list[int]] = []
        for lo, hi in ranges:
            counts = match(case_id, lo, hi)
            matched.append(list(counts.get("ids", [])))
            add_counts(totals, counts)
            done += 1
            if on_progress:
                on_progress(done, total, totals)
        for batch in matched:
            if batch:
                add_counts(totals, decide(case_id, batch))
            done += 1
            if on_progress:
                on_progress(done, total, totals)
        if totals["verified"] == verified_before:
            raise RuntimeError(
                f"verification made no progress on {len(ids)} pending claim(s) of {case_code}"
            )
    raise RuntimeError(f"claims of {case_code} still pending after {max_rounds} rounds")
