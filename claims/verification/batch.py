"""The batch run: a case's pending claims verified batch by batch (docs/lifecycle.md,
"Verification"; running it: docs/operations.md).

Two steps, each on a batch of claim ids, each with bulk SQL only — a handful of ``IN (…)`` /
``GROUP BY`` queries per batch, never one query per claim, and one bulk statement per table
for the writes (the state changes through :func:`claims.lifecycle.transition_many`):

1. **Match** (:func:`match_batch`): ``submitted`` claims move to ``verifying``
   (``claim.verification_started``) and every claim of the batch — including one back from
   ``needs_info`` — gets its ledger match stored (:mod:`claims.verification.matching`).
2. **Decide** (:func:`decide_batch`): flags are computed (:mod:`claims.verification.flags`),
   open flags of a claim being re-verified are resolved and replaced, and the claim moves
   ``verifying → approved`` (clean; action ``claim.approved_by_rule``, audit ``rule:
   ledger_match_clean``, a ``rule`` decision row, the victim's "approved" e-mail with the
   recognized loss) or ``verifying → flagged`` (action ``claim.flagged_by_rule``, the flag
   codes in the audit event; no e-mail: victims see "under review").

Matching runs for *all* pending claims of a run before any is decided
(:func:`run_verification`, and the flow), so claims of the same run that share a ledger
account are all flagged rather than the first approved and then pulled back. Step 2 decides
exactly the claims step 1 matched (their ids are handed over); a claim that enters
``verifying`` in between (a victim's reply) waits for the next round, so nothing is decided on
a stale match. A run repeats rounds until no claim of the case is pending.

Rerunning changes nothing already decided: only ``submitted`` and ``verifying`` claims are
processed. The batch's claims are locked where the database takes row locks and every state
change is guarded by the claim's status, so two concurrent runs never decide a claim twice.
No cyclic garbage collection during a batch (:func:`claims.gc_pause.gc_paused`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlmodel import Session

from claims import lifecycle
from claims.audit import Actor
from claims.cases import get_case_by_code
from claims.db import bind_value, bulk_insert, get_engine, session_scope, update_rows
from claims.gc_pause import gc_paused
from claims.models import Case, Claim, ClaimStatus, Decision, utcnow
from claims.money import format_amount
from claims.verification.flags import (
    Account,
    Flags,
    claim_flags,
    find_clusters,
    flag_other_members,
    read_facts,
    replace_open_flags,
)
from claims.verification.matching import MATCH_COLUMNS, Match, find_matches, match_values
from claims.verification.rows import MATCH_READ, ClaimRow, load_claims

S = ClaimStatus
# Claims per batch step (one transaction; one Prefect task run in the flow).
BATCH_SIZE = 10_000
APPROVE_RULE = "ledger_match_clean"
DECISION_COLUMNS = ("claim_id", "staff_id", "decision", "reason", "recognized_loss",
                    "overridden_flags", "created_at")
# A rule's decision overrides no flag: the JSON column's text of an empty list.
NO_OVERRIDDEN_FLAGS = "[]"


def default_actor() -> Actor:
    return Actor.system("verification")


# ------------------------------------------------------------------ counts


def empty_counts() -> dict:
    """The counts of a batch step (and of a run, summed)."""
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


def empty_run_counts() -> dict:
    """The counts of a run that had nothing to do: :func:`empty_counts` with ``batches`` and
    ``rounds``."""
    return {**empty_counts(), "batches": 0, "rounds": 0}


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


# ------------------------------------------------------------------ selection


def pending_claim_ids(
    session: Session, case_id: int, *, lo: int | None = None, hi: int | None = None
) -> list[int]:
    """Ids of the case's claims in ``submitted`` or ``verifying`` (optionally ``lo ≤ id ≤ hi``),
    ascending."""
    stmt = select(Claim.id).where(Claim.case_id == case_id, Claim.status.in_(lifecycle.PENDING))
    if lo is not None:
        stmt = stmt.where(Claim.id >= lo)
    if hi is not None:
        stmt = stmt.where(Claim.id <= hi)
    return list(session.execute(stmt.order_by(Claim.id)).scalars())


def pending_case_codes(session: Session) -> list[str]:
    """The codes of the cases that have claims in ``submitted`` or ``verifying``, in case
    order."""
    pending = select(Claim.case_id).where(Claim.status.in_(lifecycle.PENDING)).distinct()
    return list(session.execute(
        select(Case.code).where(Case.id.in_(pending)).order_by(Case.id)).scalars())


# ------------------------------------------------------------------ step 1: match


def match_batch(session: Session, claim_ids: Iterable[int], *, actor: Actor | None = None) -> dict:
    """Step 1 on a batch: ``submitted → verifying`` and the ledger match stored on every
    pending claim of ``claim_ids`` (others are ignored). Returns counts."""
    session.flush()  # the batch reads through the connection (no autoflush): flush once
    with gc_paused():
        counts = empty_counts()
        claims = load_claims(session, claim_ids, lifecycle.PENDING, columns=MATCH_READ)
        if not claims:
            return counts
        matches = find_matches(session, claims)
        counts["started"] = start_verification(
            session, [c for c in claims if c.status == S.submitted.value], matches,
            actor or default_actor())
        refresh_matches(session, [c for c in claims if c.status == S.verifying.value], matches)
        return counts


def start_verification(session: Session, claims: Sequence[ClaimRow], matches: Mapping[int, Match],
                       actor: Actor) -> int:
    """``submitted → verifying`` with each claim's match stored (audited: the match columns
    before and after); the whole batch is refused when a claim changed meanwhile."""
    return lifecycle.transition_many(
        session, claims, S.verifying, actor=actor, action="claim.verification_started",
        per_claim_values={c.id: match_values(matches.get(c.id)) for c in claims},
    )


def refresh_matches(session: Session, claims: Sequence[ClaimRow],
                    matches: Mapping[int, Match]) -> None:
    """The match of claims already ``verifying`` (back from ``needs_info``, or a run
    interrupted between the steps) brought up to date. Not a state change: the decision's
    audit event records what was recognized."""
    rows = []
    for c in claims:
        values = match_values(matches.get(c.id))
        rows.append((c.id, S.verifying.value, *[values[k] for k in MATCH_COLUMNS]))
    update_rows(session, Claim.__table__, keys=("id", "status"), columns=MATCH_COLUMNS,
                rows=rows)


# ------------------------------------------------------------------ step 2: decide


def decide_batch(
    session: Session, claim_ids: Iterable[int], *, actor: Actor | None = None,
    case_id: int | None = None,
) -> dict:
    """Step 2 on a batch: flag and decide every ``verifying`` claim of ``claim_ids`` (of
    ``case_id`` when given) whose match step ran (see the module docstring). Returns counts."""
    session.flush()  # the batch reads through the connection (no autoflush): flush once
    actor = actor or default_actor()
    with gc_paused():
        counts = empty_counts()
        by_case: dict[int, list[ClaimRow]] = defaultdict(list)
        for c in load_claims(session, claim_ids, (S.verifying.value,), case_id):
            by_case[c.case_id].append(c)
        for cid, claims in by_case.items():
            add_counts(counts, decide_case(session, cid, claims, actor))
        return counts


def decide_case(session: Session, case_id: int, claims: Sequence[ClaimRow], actor: Actor) -> dict:
    """Step 2 on the batch's claims of one case; returns counts."""
    now = utcnow()
    facts = read_facts(session, claims)
    clusters = find_clusters(session, case_id, claims)
    flags = claim_flags(claims, facts, clusters)
    replace_open_flags(session, flags, now)
    clean = [c for c in claims if not flags[c.id]]
    flagged = [c for c in claims if flags[c.id]]
    approve_by_rule(session, clean, facts.accounts, actor, now)
    flag_by_rule(session, flagged, flags, facts.accounts, actor, now)
    # Claims verified for the first time (not back from needs_info): new cluster members.
    first_time = {c.id for c in claims if c.verified_at is None}
    others = flag_other_members(session, clusters, {c.id for c in claims}, first_time,
                                facts.accounts, actor, now)
    return add_counts(decision_counts(claims, clean, flags), others)


def approve_by_rule(session: Session, claims: Sequence[ClaimRow], accounts: Mapping[int, Account],
                    actor: Actor, now: dt.datetime) -> None:
    """``verifying → approved`` for clean claims: audited with the account, rule and
    recognized loss, a ``rule`` decision each, and the victim's "approved" notice."""
    if not claims:
        return
    times = {"decided_at": now, "verified_at": now}
    lifecycle.transition_many(
        session, claims, S.approved, actor=actor, action="claim.approved_by_rule",
        per_claim_values={c.id: times for c in claims},
        per_claim_audit={c.id: {
            "ledger_account": accounts[c.ledger_account_pk].account_id,
            "match_rule": c.match_rule,
            "recognized_loss": c.recognized_loss,
            "rule": APPROVE_RULE,
        } for c in claims},
        notify="approved",
        per_claim_context={c.id: {"recognized_loss": format_amount(c.recognized_loss or 0)}
                           for c in claims},
    )
    created = bind_value(session, Decision.__table__.c.created_at, now)
    bulk_insert(session, Decision.__table__, DECISION_COLUMNS, [
        (c.id, None, "rule",
         f"{APPROVE_RULE}: matched ledger account {accounts[c.ledger_account_pk].account_id} "
         f"by {c.match_rule}; no flag",
         c.recognized_loss, NO_OVERRIDDEN_FLAGS, created)
        for c in claims
    ])


def flag_by_rule(session: Session, claims: Sequence[ClaimRow], flags: Flags,
                 accounts: Mapping[int, Account], actor: Actor, now: dt.datetime) -> None:
    """``verifying → flagged``: audited with the flag codes, the account and the match; no
    notice (victims see "under review")."""
    if not claims:
        return

    def account_id(c: ClaimRow) -> str | None:
        acct = accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
        return acct.account_id if acct else None

    time = {"verified_at": now}
    lifecycle.transition_many(
        session, claims, S.flagged, actor=actor, action="claim.flagged_by_rule",
        per_claim_values={c.id: time for c in claims},
        per_claim_audit={c.id: {
            "flags": [code for code, _ in flags[c.id]],
            "ledger_account": account_id(c),
            "match_rule": c.match_rule,
            "recognized_loss": c.recognized_loss,
        } for c in claims},
    )


def decision_counts(claims: Sequence[ClaimRow], clean: Sequence[ClaimRow], flags: Flags) -> dict:
    """The counts of a decided batch (before the clusters' other members)."""
    counts = empty_counts()
    counts["verified"] = len(claims)
    counts["approved"] = len(clean)
    counts["flagged"] = len(claims) - len(clean)
    counts["matched"] = sum(1 for c in claims if c.ledger_account_pk is not None)
    counts["unmatched"] = len(claims) - counts["matched"]
    counts["match_rules"] = dict(Counter(c.match_rule for c in claims if c.match_rule))
    counts["flags"] = dict(Counter(code for fl in flags.values() for code, _ in fl))
    return counts


# ------------------------------------------------------------------ a run


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
ProgressFn = Callable[[int, int, dict], None]  # (steps done, steps so far, counts)


def run_verification(
    case_code: str,
    *,
    batch_size: int = BATCH_SIZE,
    engine=None,
    match: MatchFn | None = None,
    decide: DecideFn | None = None,
    on_progress: ProgressFn | None = None,
    max_rounds: int = 100,
) -> dict:
    """Verify every pending claim of the case, batch by batch, until none is pending.

    Each round (:func:`run_round`) matches *all* pending claims before deciding any; claims
    filed meanwhile are taken by the next round. ``match(case_id, lo, hi)`` and
    ``decide(case_id, ids)`` run one batch and default to a transaction each here; the
    Prefect flow passes its tasks. ``on_progress(done, total, counts)`` is called after every
    batch step. Returns the summed counts plus ``batches`` and ``rounds``.
    """
    engine = engine or get_engine()
    with session_scope(engine, write=False) as s:
        case_id = get_case_by_code(s, case_code).id

    def match_in_transaction(cid: int, lo: int, hi: int) -> dict:
        with session_scope(engine) as s:
            return match_range(s, cid, lo, hi)

    def decide_in_transaction(cid: int, ids: list[int]) -> dict:
        with session_scope(engine) as s:
            return decide_ids(s, cid, ids)

    steps = StepProgress(on_progress)
    totals = empty_run_counts()
    for _ in range(max_rounds):
        with session_scope(engine, write=False) as s:
            ids = pending_claim_ids(s, case_id)
        if not ids:
            return totals
        verified_before = totals["verified"]
        run_round(case_id, id_ranges(ids, batch_size), match or match_in_transaction,
                  decide or decide_in_transaction, totals, steps)
        if totals["verified"] == verified_before:
            raise RuntimeError(
                f"verification made no progress on {len(ids)} pending claim(s) of {case_code}"
            )
    raise RuntimeError(f"claims of {case_code} still pending after {max_rounds} rounds")


class StepProgress:
    """Batch steps done out of those planned so far, passed on to ``on_progress``."""

    def __init__(self, on_progress: ProgressFn | None) -> None:
        self.on_progress = on_progress
        self.done = self.total = 0

    def plan(self, steps: int) -> None:
        self.total += steps

    def step(self, counts: dict) -> None:
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done, self.total, counts)


def run_round(case_id: int, ranges: Sequence[tuple[int, int]], match: MatchFn,
              decide: DecideFn, totals: dict, steps: StepProgress) -> None:
    """One round of a run: every range matched, then the claims each match step took
    decided; the counts added into ``totals``."""
    steps.plan(2 * len(ranges))
    totals["rounds"] += 1
    totals["batches"] += len(ranges)
    matched: list[list[int]] = []
    for lo, hi in ranges:
        counts = match(case_id, lo, hi)
        matched.append(list(counts.get("ids", [])))
        add_counts(totals, counts)
        steps.step(totals)
    for batch in matched:
        if batch:
            add_counts(totals, decide(case_id, batch))
        steps.step(totals)
