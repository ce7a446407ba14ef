"""Verification's own bulk statements against the generic ones they replace.

``claims.verification._apply_transition`` writes a batch's transition as one ``UPDATE … FROM
json_each`` (or ``… WHERE id IN json_each`` when every claim gets the same values) on SQLite,
where ``claims.lifecycle.apply_transition`` sends one ``UPDATE`` per claim: both must leave the
same rows, audit events and errors. The texts verification writes directly (audit ``after`` of
the match, the "approved" notification's context) must be byte for byte the generic ones. And
a claim the scheme account id matches is matched by it whatever its other identifiers find
(verification looks the identifiers up only for the other claims).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

import claims.verification as v
from claims import lifecycle, outbox
from claims.audit import Actor, canonical_text, jsonable, verify_chain
from claims.errors import IllegalTransition
from claims.models import AuditEvent, Claim
from tests.claims.test_verification import U, mk_account, mk_case, mk_claim, reload, txh

ACTOR = Actor.system("test")


def _state(session, claims):
    rows = []
    for c in claims:
        c = reload(session, c)
        rows.append((c.status, c.version, c.ledger_account_pk, c.match_rule, c.invested,
                     c.withdrawn, c.recognized_loss, c.verified_at, c.decided_at))
    return rows


def _events(session, claims):
    refs = [c.reference for c in claims]
    return [(e.action, e.subject_id, e.before, e.after) for e in session.execute(
        select(AuditEvent).where(AuditEvent.subject_id.in_(refs)).order_by(AuditEvent.id)
    ).scalars()]


@pytest.mark.parametrize("same_values", [False, True])
def test_apply_transition_equals_the_lifecycle(session, same_values):
    case = mk_case(session, "bulk-a")
    acct = mk_account(session, case, "A-1", "500", "20")
    a = [mk_claim(session, case) for _ in range(4)]
    b = [mk_claim(session, case) for _ in range(4)]
    now = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)

    def items(claims):
        out = []
        for i, c in enumerate(claims):
            vals = ((U("500"), acct.id, "scheme_account", U("480"), U("20")) if same_values
                    else (i * 7, acct.id if i % 2 else None, "iin" if i else None, None, i))
            before = v._match_text("submitted", None, None, None, None, None)
            out.append((c, vals, before, v._match_text("verifying", *vals)))
        return out

    assert v._apply_transition(session, "verifying", actor=ACTOR, action="t.bulk",
                               columns=v._MATCH_COLUMNS, items=items(a)) == 4
    assert lifecycle.apply_transition(session, "verifying", actor=ACTOR, action="t.bulk",
                                      columns=v._MATCH_COLUMNS, items=items(b)) == 4
    session.flush()
    assert _state(session, a) == _state(session, b)
    ea, eb = _events(session, a), _events(session, b)
    assert [(x, y, z) for x, _s, y, z in ea] == [(x, y, z) for x, _s, y, z in eb]

    # Times (a decision's) through both, then the chain.
    a2 = [reload(session, c) for c in a]
    b2 = [reload(session, c) for c in b]
    t = "{}"
    v._apply_transition(session, "approved", actor=ACTOR, action="t.ok",
                        columns=("decided_at", "verified_at"),
                        items=[(c, (now, now), t, t) for c in a2])
    lifecycle.apply_transition(session, "approved", actor=ACTOR, action="t.ok",
                               columns=("decided_at", "verified_at"),
                               items=[(c, (now, now), t, t) for c in b2])
    session.flush()
    sa, sb = _state(session, a), _state(session, b)
    assert sa == sb and sa[0][0] == "approved" and sa[0][-1] == now
    assert verify_chain(session).ok


def test_apply_transition_refuses_a_batch_with_a_changed_claim(session):
    case = mk_case(session, "bulk-b")
    for fn in (v._apply_transition, lifecycle.apply_transition):
        claims = [mk_claim(session, case) for _ in range(3)]
        stale = [session.execute(select(Claim.id, Claim.reference, Claim.status, Claim.case_id)
                                 .where(Claim.id == c.id)).one() for c in claims]
        session.execute(Claim.__table__.update().where(Claim.id == claims[1].id)
                        .values(status="verifying"))
        with pytest.raises(IllegalTransition,
                           match=r"^1 claim\(s\) changed meanwhile; batch refused$"):
            fn(session, "verifying", actor=ACTOR, action="t.x", columns=(),
               items=[(c, (), "{}", "{}") for c in stale])
    with pytest.raises(IllegalTransition, match="cannot go from submitted to approved"):
        v._apply_transition(session, "approved", actor=ACTOR, action="t.x", columns=(),
                            items=[(c, (), "{}", "{}") for c in stale[:1]])


@pytest.mark.parametrize("values", [
    (0, 1, "scheme_account", 0, 0), (10**15, 2**40, "wallet", 5, 10**15 - 5),
    (7, 3, "tx_hash", 0, 9), (True, 1, "iin", 1, 0), (None, None, None, None, None),
    (1, 2, "not a rule", 3, 4),
])
def test_verifying_text_is_the_match_text(values):
    expected = canonical_text(jsonable({
        "status": "verifying", "invested": values[0], "ledger_account_pk": values[1],
        "match_rule": values[2], "recognized_loss": values[3], "withdrawn": values[4]}))
    assert v._verifying_text(*values) == v._match_text("verifying", *values) == expected


@pytest.mark.parametrize("reference,loss", [
    ("KZR-AB12-CD34", 799_500_000), ("KZR-Ж-\"q\\", None), ("KZR-0000-0000", 0),
    ("KZR-🙂", 10**15 + 1),
])
def test_approved_context_is_the_outbox_text(reference, loss):
    assert v._approved_context(reference, loss) == outbox.context_text(
        reference, {"recognized_loss": v.format_amount(loss or 0)})


def test_scheme_account_match_wins_whatever_the_identifiers_find(session):
    case = mk_case(session, "bulk-c")
    by_scheme = mk_account(session, case, "S-1", "100")
    other = mk_account(session, case, "S-2", "200", tx_hash=txh(1), email="x@example.org")
    c = mk_claim(session, case, scheme_account=" S-1 ", evidence=["0x" + txh(1).upper()],
                 email="x@example.org")
    d = mk_claim(session, case, scheme_account="S-404", evidence=[txh(1)])
    matches = v.find_matches(session, session.execute(
        select(*v._MATCH_READ).where(Claim.id.in_([c.id, d.id])).order_by(Claim.id)).all())
    assert (matches[c.id].account_pk, matches[c.id].rule) == (by_scheme.id, "scheme_account")
    assert (matches[d.id].account_pk, matches[d.id].rule) == (other.id, "tx_hash")
