"""Verification rules (claims/verification/) on purpose-built ledgers.

Each flag of docs/lifecycle.md's table, each match rule in priority order, clusters (within a
batch, across batches, against claims decided earlier), rerun idempotency and re-verification
after ``needs_info``; the audit events, rows and notices a batch writes, a batch refused whole
when a claim changed meanwhile, and the batch's state changes as one statement each. Rows
are inserted through the models (the ledger once through ``claims.ledger.import_ledger`` to
prove both sides normalize alike). SQLite always, PostgreSQL when
RESTITUTION_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import uuid

import pytest
from sqlalchemy import func, select

from claims import lifecycle
from claims.audit import Actor, verify_chain
from claims.crypto import encrypt, iin_hash, mask_iin, token_hash
from claims.db import session_scope
from claims.models import (
    AuditEvent,
    BlockedAddress,
    Case,
    Claim,
    Decision,
    Document,
    Flag,
    LedgerAccount,
    LedgerIdentifier,
    Notification,
    utcnow,
)
from claims.money import parse_amount
from claims.validators import (
    email_key,
    make_eth_address,
    make_iin,
    make_tron_address,
    name_key,
    normalize_address_key,
    validate_email,
    validate_phone,
)
from claims.verification import (
    add_counts,
    amount_differs,
    decide_batch,
    id_ranges,
    match_batch,
    pending_claim_ids,
    run_verification,
)

U = parse_amount
_seq = itertools.count(1)


# ------------------------------------------------------------------ builders


def mk_case(session, code: str = "case-a") -> Case:
    case = Case(code=code, name=code.upper())
    session.add(case)
    session.flush()
    return case


def mk_account(session, case: Case, account_id: str, deposits: str, withdrawals: str = "0",
               *, insider: bool = False, reason: str | None = None, **identifiers) -> LedgerAccount:
    """A ledger account with totals and identifiers (kind=value or kind=[values]), the values
    already in the ledger's normalized form."""
    acct = LedgerAccount(case_id=case.id, account_id=account_id, deposits=U(deposits),
                         withdrawals=U(withdrawals), insider=insider, insider_reason=reason)
    session.add(acct)
    session.flush()
    for kind, values in identifiers.items():
        for v in values if isinstance(values, list) else [values]:
            session.add(LedgerIdentifier(case_id=case.id, kind=kind, value=v, account_pk=acct.id))
    session.flush()
    return acct


def eth(n: int) -> str:
    return make_eth_address(hashlib.sha256(f"wallet-{n}".encode()).digest()[:20])


def tron(n: int) -> str:
    return make_tron_address(hashlib.sha256(f"tron-{n}".encode()).digest()[:20])


def txh(n: int) -> str:
    return hashlib.sha256(f"tx-{n}".encode()).hexdigest()


def mk_claim(session, case: Case, *, claimed: str = "100", name: str | None = None,
             birth: dt.date | None = None, email: str | None = None, phone: str | None = None,
             scheme_account: str | None = None, evidence: list[str] | None = None,
             wallet: str | None = None, status: str = "submitted") -> Claim:
    n = next(_seq)
    birth = birth or dt.date(1980, 1, 1) + dt.timedelta(days=n)
    iin = make_iin(birth, "male", n % 10000)
    email = validate_email(email or f"victim{n}@example.org")
    phone = validate_phone(phone or f"+7701{n:07d}")
    name = name or f"Victim Number {n}"
    wallet = wallet or eth(10_000 + n)
    network = "ethereum" if wallet.startswith("0x") else "tron"
    c = Claim(
        case_id=case.id, reference=f"KZR-{n:04d}-{uuid.uuid4().hex[:4].upper()}", status=status,
        full_name=name, name_key=name_key(name), iin_hash=iin_hash(iin),
        iin_encrypted=encrypt(iin), iin_masked=mask_iin(iin), birth_date=birth,
        email=email, email_key=email_key(email), phone=phone, language="en",
        scheme_account=scheme_account, claimed_amount=U(claimed),
        evidence_tx_hashes=evidence or [], payout_network=network, payout_address=wallet,
        payout_address_key=normalize_address_key(network, wallet),
        access_token_hash=token_hash(uuid.uuid4().hex),
    )
    session.add(c)
    session.flush()
    return c


def reload(session, claim: Claim) -> Claim:
    session.expire_all()
    return session.get(Claim, claim.id)


def open_flags(session, claim: Claim) -> dict[str, str]:
    rows = session.execute(
        select(Flag.code, Flag.message).where(Flag.claim_id == claim.id, Flag.resolved_at.is_(None))
    ).all()
    return {code: msg for code, msg in rows}


def n_audit(session) -> int:
    return session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def verify(session, *claims: Claim) -> dict:
    """Both steps on the claims, in the test's transaction; the summed counts."""
    ids = [c.id for c in claims]
    counts = add_counts(match_batch(session, ids), decide_batch(session, ids))
    session.flush()
    session.expire_all()
    return counts


# ------------------------------------------------------------------ pure rules


def test_amount_differs_is_max_of_one_usdt_and_one_percent_of_the_net_loss():
    # Net loss 1,000 USDT: tolerance 10 USDT (1 %).
    assert not amount_differs(U("1010"), U("1000"))
    assert amount_differs(U("1010.000001"), U("1000"))
    assert not amount_differs(U("990"), U("1000"))
    assert amount_differs(U("989.999999"), U("1000"))
    # Net loss 50 USDT: 1 % is 0.5, so the floor of 1 USDT applies.
    assert not amount_differs(U("51"), U("50"))
    assert amount_differs(U("51.000001"), U("50"))
    # A net winner (loss 0): anything over 1 USDT differs.
    assert not amount_differs(U("1"), 0)
    assert amount_differs(U("1.000001"), 0)


def test_id_ranges():
    assert id_ranges([1, 2, 5, 7, 9], 2) == [(1, 2), (5, 7), (9, 9)]
    assert id_ranges([], 3) == []
    with pytest.raises(ValueError):
        id_ranges([1], 0)


# ------------------------------------------------------------------ approval and matching


def test_clean_claim_is_approved_by_rule_with_the_ledger_net_loss(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "1000", "200.5")
    c = mk_claim(session, case, scheme_account="U-1", claimed="799.5")
    before = n_audit(session)

    counts = verify(session, c)

    c = reload(session, c)
    assert c.status == "approved"
    assert (c.match_rule, c.invested, c.withdrawn, c.recognized_loss) == (
        "scheme_account", U("1000"), U("200.5"), U("799.5"))
    assert c.verified_at is not None and c.decided_at is not None
    assert counts["approved"] == 1 and counts["flagged"] == 0 and counts["match_rules"] == {
        "scheme_account": 1}
    assert open_flags(session, c) == {}
    events = session.execute(
        select(AuditEvent).where(AuditEvent.subject_id == c.reference).order_by(AuditEvent.id)
    ).scalars().all()
    assert [e.action for e in events] == ["claim.verification_started", "claim.approved_by_rule"]
    assert n_audit(session) == before + 2
    assert events[1].after["rule"] == "ledger_match_clean"
    assert events[1].after["ledger_account"] == "U-1"
    assert events[1].after["recognized_loss"] == U("799.5")
    note = session.execute(select(Notification).where(Notification.claim_id == c.id)).scalar_one()
    assert note.kind == "approved" and note.context["recognized_loss"] == "799.5"
    d = session.execute(select(Decision).where(Decision.claim_id == c.id)).scalar_one()
    assert d.decision == "rule" and d.staff_id is None and d.recognized_loss == U("799.5")
    assert verify_chain(session).ok


def test_recognized_loss_is_the_ledger_net_loss_not_the_typed_amount(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "1000", "50")
    c = mk_claim(session, case, scheme_account="U-1", claimed="1200")
    verify(session, c)
    c = reload(session, c)
    assert c.status == "flagged" and c.recognized_loss == U("950")
    msg = open_flags(session, c)["amount_differs"]
    assert "claimed 1,200 USDT" in msg and "net loss of 950 USDT" in msg
    # Flagged claims get no e-mail (victims see "under review").
    assert session.execute(select(Notification).where(Notification.claim_id == c.id)).first() is None
    ev = session.execute(select(AuditEvent).where(AuditEvent.subject_id == c.reference,
                                                  AuditEvent.action == "claim.flagged_by_rule")).scalar_one()
    assert ev.after["flags"] == ["amount_differs"]


RULES = ["scheme_account", "tx_hash", "iin", "email", "phone", "wallet"]


@pytest.mark.parametrize("rule", RULES)
def test_match_rules_in_priority_order(session, rule):
    """The claim hits this rule and every lower-priority one, each on another account: the
    rule's account wins."""
    case = mk_case(session)
    n = next(_seq)
    email, phone, wallet, tx = f"m{n}@example.org", f"+7702{n:07d}", eth(n), txh(n)
    c = mk_claim(session, case, claimed="100", email=email, phone=phone, wallet=wallet,
                 scheme_account=f"S-{n}" if rule == "scheme_account" else None,
                 evidence=["0x" + tx.upper()] if RULES.index(rule) <= 1 else None)
    idents = {
        "tx_hash": tx, "iin": c.iin_hash, "email": email_key(email), "phone": phone,
        "wallet": normalize_address_key("ethereum", wallet),
    }
    accounts = {}
    for i, r in enumerate(RULES):
        if i < RULES.index(rule):
            continue
        kw = {} if r == "scheme_account" else {r: idents[r]}
        accounts[r] = mk_account(session, case, f"S-{n}" if r == "scheme_account" else f"A-{r}",
                                 str(100 + i), **kw)
    verify(session, c)
    c = reload(session, c)
    assert c.match_rule == rule
    assert c.ledger_account_pk == accounts[rule].id
    assert c.recognized_loss == accounts[rule].deposits


def test_several_accounts_for_one_rule_the_best_supported_wins(session):
    case = mk_case(session)
    c = mk_claim(session, case, email="x@example.org")
    mk_account(session, case, "A", "10", email="x@example.org")
    b = mk_account(session, case, "B", "20", email="x@example.org", phone=c.phone)
    verify(session, c)
    assert reload(session, c).ledger_account_pk == b.id


def test_ledger_import_and_claims_normalize_alike(engine, in_mode):
    """Raw ledger values (upper-case e-mail, spaced phone, 0x-prefixed upper-case hash,
    lower-case Ethereum wallet) match claims validated by the intake rules."""
    from claims.ledger import import_ledger

    w = eth(7001)
    tx = txh(7001)
    iin = make_iin(dt.date(1979, 10, 28), "male", 3027)
    csv_text = (
        "account_id,entry_type,amount,occurred_at,tx_hash,wallet,email,phone,iin\n"
        f"L-TX,deposit,100,2023-01-01T00:00:00Z,0x{tx.upper()},,,,\n"
        f"L-IIN,deposit,200,2023-01-01T00:00:00Z,,,,,{iin}\n"
        f"L-MAIL,deposit,300,2023-01-01T00:00:00Z,,,Someone@Example.ORG,,\n"
        f"L-PHONE,deposit,400,2023-01-01T00:00:00Z,,,,+7 (701) 555-00-11,\n"
        f"L-WALLET,deposit,500,2023-01-01T00:00:00Z,,{w.lower()},,,\n"
        f"L-WALLET,bonus,600,2023-02-01T00:00:00Z,,,,,\n"
    )
    import io

    with session_scope(engine) as s:
        mk_case(s, "imp")
    import_ledger(engine, "imp", io.StringIO(csv_text))
    with session_scope(engine) as s:
        case = s.execute(select(Case).where(Case.code == "imp")).scalar_one()
        c_tx = mk_claim(s, case, evidence=[tx])
        c_iin = mk_claim(s, case)
        c_iin.iin_hash = iin_hash(iin)
        c_mail = mk_claim(s, case, email="someone@example.org")
        c_phone = mk_claim(s, case, phone="+77015550011")
        c_wallet = mk_claim(s, case, wallet=w)
        s.flush()
        ids = {c.id: c for c in (c_tx, c_iin, c_mail, c_phone, c_wallet)}
    counts = run_verification("imp", batch_size=2, engine=engine)
    assert counts["verified"] == 5
    with session_scope(engine, write=False) as s:
        got = {cid: (cl.match_rule, s.get(LedgerAccount, cl.ledger_account_pk).account_id
                     if cl.ledger_account_pk else None, cl.recognized_loss)
               for cid, cl in ((i, s.get(Claim, i)) for i in ids)}
    assert sorted(got.values()) == sorted([
        ("tx_hash", "L-TX", U("100")), ("iin", "L-IIN", U("200")),
        ("email", "L-MAIL", U("300")), ("phone", "L-PHONE", U("400")),
        ("wallet", "L-WALLET", 0),  # 500 in, 600 bonus out: a net winner
    ])


# ------------------------------------------------------------------ each flag


def test_no_ledger_match_and_missing_evidence(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "100")
    bare = mk_claim(session, case)
    with_tx = mk_claim(session, case, evidence=[txh(999)])  # not in the ledger
    with_doc = mk_claim(session, case)
    session.add(Document(id=str(uuid.uuid4()), claim_id=with_doc.id, content_type="application/pdf",
                         size=10, sha256="0" * 64, stored_name="x.pdf"))
    session.flush()
    verify(session, bare, with_tx, with_doc)
    assert set(open_flags(session, bare)) == {"no_ledger_match", "missing_evidence"}
    assert set(open_flags(session, with_tx)) == {"no_ledger_match"}
    assert set(open_flags(session, with_doc)) == {"no_ledger_match"}
    for c in (bare, with_tx, with_doc):
        c = reload(session, c)
        assert c.status == "flagged" and c.recognized_loss is None and c.ledger_account_pk is None


def test_amount_differs_boundary_on_a_purpose_built_ledger(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "1500", "500")  # net loss 1,000: tolerance 10
    mk_account(session, case, "U-2", "1500", "500")
    inside = mk_claim(session, case, scheme_account="U-1", claimed="1010")
    outside = mk_claim(session, case, scheme_account="U-2", claimed="1010.000001")
    verify(session, inside, outside)
    assert reload(session, inside).status == "approved"
    assert set(open_flags(session, outside)) == {"amount_differs"}


def test_net_winner(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "100", "100")
    c = mk_claim(session, case, scheme_account="U-1", claimed="1")
    verify(session, c)
    c = reload(session, c)
    assert c.status == "flagged" and c.recognized_loss == 0
    assert set(open_flags(session, c)) == {"net_winner"}
    assert "a net winner" in open_flags(session, c)["net_winner"]


def test_insider(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "100", insider=True, reason="regional promoter")
    c = mk_claim(session, case, scheme_account="U-1")
    verify(session, c)
    flags = open_flags(session, c)
    assert set(flags) == {"insider"} and "regional promoter" in flags["insider"]


def test_blocked_address(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "100")
    w = eth(4242)
    session.add(BlockedAddress(address_key=normalize_address_key(None, w.upper().replace("0X", "0x")),
                               address=w, reason="sanctioned"))
    session.flush()
    c = mk_claim(session, case, scheme_account="U-1", wallet=w)
    verify(session, c)
    flags = open_flags(session, c)
    assert set(flags) == {"blocked_address"} and "sanctioned" in flags["blocked_address"]


def test_duplicate_identity_same_name_and_birth_date_under_another_iin(session):
    case = mk_case(session)
    for i in range(4):
        mk_account(session, case, f"U-{i}", "100")
    born = dt.date(1975, 5, 5)
    a = mk_claim(session, case, scheme_account="U-0", name="Aigerim  Nurlanovna", birth=born)
    b = mk_claim(session, case, scheme_account="U-1", name="AIGERIM nurlanovna", birth=born)
    other_day = mk_claim(session, case, scheme_account="U-2", name="Aigerim Nurlanovna",
                         birth=born + dt.timedelta(days=1))
    assert a.iin_hash != b.iin_hash
    verify(session, a, b, other_day)
    assert set(open_flags(session, a)) == {"duplicate_identity"}
    assert b.reference in open_flags(session, a)["duplicate_identity"]
    assert set(open_flags(session, b)) == {"duplicate_identity"}
    assert reload(session, other_day).status == "approved"


def test_duplicate_account(session):
    case = mk_case(session)
    acct = mk_account(session, case, "U-1", "100", email="shared@example.org")
    a = mk_claim(session, case, scheme_account="U-1")
    b = mk_claim(session, case, email="shared@example.org")
    verify(session, a, b)
    for c, other in ((a, b), (b, a)):
        flags = open_flags(session, c)
        assert set(flags) == {"duplicate_account"}
        assert "U-1" in flags["duplicate_account"] and other.reference in flags["duplicate_account"]
    assert reload(session, b).ledger_account_pk == acct.id


def test_duplicate_wallet_cluster_of_three_all_flagged(session):
    case = mk_case(session)
    for i in range(4):
        mk_account(session, case, f"U-{i}", "100")
    w = tron(1)
    cl = [mk_claim(session, case, scheme_account=f"U-{i}", wallet=w) for i in range(3)]
    lone = mk_claim(session, case, scheme_account="U-3", wallet=tron(2))
    counts = verify(session, *cl, lone)
    for c in cl:
        msg = open_flags(session, c)["duplicate_wallet"]
        assert set(open_flags(session, c)) == {"duplicate_wallet"}
        assert all(o.reference in msg for o in cl if o.id != c.id)
    assert reload(session, lone).status == "approved"
    assert counts["flags"] == {"duplicate_wallet": 3}


def test_duplicate_email_is_case_insensitive(session):
    case = mk_case(session)
    for i in range(2):
        mk_account(session, case, f"U-{i}", "100")
    a = mk_claim(session, case, scheme_account="U-0", email="Twin@Example.org")
    b = mk_claim(session, case, scheme_account="U-1", email="twin@example.org")
    verify(session, a, b)
    assert set(open_flags(session, a)) == {"duplicate_email"}
    assert set(open_flags(session, b)) == {"duplicate_email"}


# ------------------------------------------------------------------ runs, batches, clusters over time


def _setup_five(engine):
    """Five claims: 1 & 5 share a wallet, 2 & 4 share a ledger account, 3 is clean."""
    with session_scope(engine) as s:
        case = mk_case(s, "five")
        for i in range(1, 6):
            mk_account(s, case, f"U-{i}", "100")
        mk_account(s, case, "U-SHARED", "300", email="pair@example.org")
        w = eth(555)
        c1 = mk_claim(s, case, scheme_account="U-1", wallet=w)
        c2 = mk_claim(s, case, scheme_account="U-SHARED", claimed="300")
        c3 = mk_claim(s, case, scheme_account="U-3")
        c4 = mk_claim(s, case, email="pair@example.org", claimed="300")
        c5 = mk_claim(s, case, scheme_account="U-5", wallet=w)
        return [c.id for c in (c1, c2, c3, c4, c5)]


def _statuses(engine, ids):
    with session_scope(engine, write=False) as s:
        return [s.get(Claim, i).status for i in ids]


@pytest.fixture(params=["in-list", "json-in"])
def in_mode(request, monkeypatch):
    """Both ways of sending an IN list (SQLite sends long ones as one JSON parameter)."""
    import claims.db.bulk

    if request.param == "json-in":
        monkeypatch.setattr(claims.db.bulk, "JSON_IN_MIN", 1)
    return request.param


def test_batch_boundaries_clusters_across_batches(engine, in_mode):
    ids = _setup_five(engine)
    counts = run_verification("five", batch_size=2, engine=engine)
    assert counts["batches"] == 3 and counts["rounds"] == 1
    assert counts["verified"] == 5 and counts["approved"] == 1 and counts["flagged"] == 4
    assert counts["reflagged"] == 0  # nobody approved first and pulled back later
    assert _statuses(engine, ids) == ["flagged", "flagged", "approved", "flagged", "flagged"]
    with session_scope(engine, write=False) as s:
        codes = {i: set(open_flags(s, s.get(Claim, i))) for i in ids}
        assert verify_chain(s).ok
    assert codes[ids[0]] == codes[ids[4]] == {"duplicate_wallet"}
    assert codes[ids[1]] == codes[ids[3]] == {"duplicate_account"}


def test_direct_run_and_single_batch_agree(engine):
    ids = _setup_five(engine)
    run_verification("five", batch_size=10_000, engine=engine)
    assert _statuses(engine, ids) == ["flagged", "flagged", "approved", "flagged", "flagged"]


def test_rerun_changes_nothing(engine):
    _setup_five(engine)
    first = run_verification("five", batch_size=2, engine=engine)
    assert first["verified"] == 5
    with session_scope(engine, write=False) as s:
        audit_before = n_audit(s)
        flags_before = s.execute(select(func.count()).select_from(Flag)).scalar_one()
        notes_before = s.execute(select(func.count()).select_from(Notification)).scalar_one()
    second = run_verification("five", batch_size=2, engine=engine)
    assert second["verified"] == 0 and second["batches"] == 0
    with session_scope(engine, write=False) as s:
        assert n_audit(s) == audit_before
        assert s.execute(select(func.count()).select_from(Flag)).scalar_one() == flags_before
        assert s.execute(select(func.count()).select_from(Notification)).scalar_one() == notes_before


def test_new_cluster_member_pulls_back_an_approved_claim_and_flags_undecided_ones(engine, in_mode):
    with session_scope(engine) as s:
        case = mk_case(s, "late")
        for i in range(4):
            mk_account(s, case, f"U-{i}", "100")
        w = eth(777)
        early = mk_claim(s, case, scheme_account="U-0", wallet=w).id
        other = mk_claim(s, case, scheme_account="U-1", claimed="5000", wallet=eth(778)).id
    run_verification("late", engine=engine)
    assert _statuses(engine, [early, other]) == ["approved", "flagged"]
    with session_scope(engine) as s:
        case = s.get(Case, s.get(Claim, early).case_id)
        # A claim in needs_info shares the wallet too (its flags stay open during the request).
        o = s.get(Claim, other)
        lifecycle.transition(s, o, "needs_info", actor=Actor.system("test"), action="t")
        s.execute(Claim.__table__.update().where(Claim.id == other).values(
            payout_address_key=normalize_address_key("ethereum", w)))
        late = mk_claim(s, case, scheme_account="U-2", wallet=w).id
        audit_before = n_audit(s)
        notes_before = s.execute(select(func.count()).select_from(Notification)).scalar_one()
    counts = run_verification("late", engine=engine)
    assert counts["verified"] == 1 and counts["reflagged"] == 1 and counts["flags_added"] == 1
    assert _statuses(engine, [early, other, late]) == ["flagged", "needs_info", "flagged"]
    with session_scope(engine, write=False) as s:
        late_ref = s.get(Claim, late).reference
        for cid in (early, other, late):
            assert "duplicate_wallet" in open_flags(s, s.get(Claim, cid))
        assert late_ref in open_flags(s, s.get(Claim, early))["duplicate_wallet"]
        ev = s.execute(select(AuditEvent).where(
            AuditEvent.subject_id == s.get(Claim, early).reference,
            AuditEvent.action == "claim.flagged_by_rule")).scalar_one()
        assert ev.before["status"] == "approved" and ev.after["because"] == [late_ref]
        assert s.execute(select(AuditEvent).where(
            AuditEvent.subject_id == s.get(Claim, other).reference,
            AuditEvent.action == "claim.flag_added")).scalar_one().after["flags"] == ["duplicate_wallet"]
        # late: verifying + flagged; early: flagged_by_rule; other: flag_added. No e-mail.
        assert n_audit(s) == audit_before + 4
        assert s.execute(select(func.count()).select_from(Notification)).scalar_one() == notes_before
        assert verify_chain(s).ok


def test_needs_info_reply_is_reverified_and_old_flags_replaced(engine):
    actor = Actor.system("test")
    with session_scope(engine) as s:
        case = mk_case(s, "reply")
        mk_account(s, case, "U-1", "700", "200")
        w = eth(888)
        first = mk_claim(s, case, wallet=w, claimed="500").id  # no match at first
        partner = mk_claim(s, case, scheme_account="U-9", wallet=w).id  # shares the wallet
    run_verification("reply", engine=engine)
    with session_scope(engine) as s:
        c = s.get(Claim, first)
        assert set(open_flags(s, c)) == {"no_ledger_match", "missing_evidence", "duplicate_wallet"}
        lifecycle.transition(s, c, "needs_info", actor=actor, action="claim.info_requested")
        p = s.get(Claim, partner)
        lifecycle.transition(s, p, "needs_info", actor=actor, action="claim.info_requested")
    with session_scope(engine) as s:
        # The victim answers: the scheme account id, and a new payout address.
        s.execute(Claim.__table__.update().where(Claim.id == first).values(
            scheme_account="U-1", payout_address=eth(889),
            payout_address_key=normalize_address_key("ethereum", eth(889))))
        c = s.get(Claim, first)
        lifecycle.transition(s, c, "verifying", actor=actor, action="claim.reply_received")
        old = {f.id for f in s.execute(select(Flag).where(Flag.claim_id == first)).scalars()}
    counts = run_verification("reply", engine=engine)
    assert counts["verified"] == 1 and counts["approved"] == 1 and counts["reflagged"] == 0
    with session_scope(engine, write=False) as s:
        c = s.get(Claim, first)
        assert c.status == "approved" and c.recognized_loss == U("500") and c.match_rule == "scheme_account"
        assert open_flags(s, c) == {}
        resolved = s.execute(select(Flag).where(Flag.id.in_(old))).scalars().all()
        assert all(f.resolved_at is not None for f in resolved)
        note = s.execute(select(Notification).where(Notification.claim_id == first,
                                                    Notification.kind == "approved")).scalar_one()
        assert note.context["recognized_loss"] == "500"
        assert verify_chain(s).ok


def test_reverified_member_does_not_pull_back_approved_claims(engine):
    actor = Actor.system("test")
    with session_scope(engine) as s:
        case = mk_case(s, "noreflag")
        mk_account(s, case, "U-1", "100")
        mk_account(s, case, "U-2", "100")
        w = eth(999)
        a = mk_claim(s, case, scheme_account="U-1", wallet=w).id
        b = mk_claim(s, case, scheme_account="U-2", wallet=w).id
    run_verification("noreflag", engine=engine)
    with session_scope(engine) as s:
        # A caseworker approves a (overriding duplicate_wallet) and asks b for information.
        ca, cb = s.get(Claim, a), s.get(Claim, b)
        lifecycle.transition(s, ca, "approved", actor=actor, action="claim.approved")
        s.execute(Flag.__table__.update().where(Flag.claim_id == a).values(resolved_at=utcnow()))
        lifecycle.transition(s, cb, "needs_info", actor=actor, action="claim.info_requested")
    with session_scope(engine) as s:
        lifecycle.transition(s, s.get(Claim, b), "verifying", actor=actor, action="claim.reply_received")
    counts = run_verification("noreflag", engine=engine)
    assert counts["reflagged"] == 0 and counts["flagged"] == 1
    assert _statuses(engine, [a, b]) == ["approved", "flagged"]


def test_pending_claim_ids_selects_submitted_and_verifying_in_id_order(session):
    case = mk_case(session)
    other = mk_case(session, "case-b")
    ids = [mk_claim(session, case, status=st).id
           for st in ("submitted", "flagged", "verifying", "approved", "needs_info", "submitted")]
    mk_claim(session, other)
    assert pending_claim_ids(session, case.id) == [ids[0], ids[2], ids[5]]
    assert pending_claim_ids(session, case.id, lo=ids[1], hi=ids[4]) == [ids[2]]


def test_unknown_case_is_not_found(engine):
    from claims.errors import NotFound

    with pytest.raises(NotFound):
        run_verification("nope", engine=engine)


def test_request_info_reply_and_reverification_through_review_and_intake(engine):
    """The real path: flagged (no match) → caseworker asks (review.decide request_info) →
    victim replies (intake.reply) → verifying → the next run re-verifies against the ledger,
    which meanwhile was extended with the account."""
    import io

    from claims.cases import create_case
    from claims.intake import file_claim, prepare, reply
    from claims.ledger import import_ledger
    from claims.review import decide

    caseworker = Actor("cw", "caseworker")
    with session_scope(engine) as s:
        create_case(s, "ri", "Request info")
        filed = file_claim(s, prepare({
            "case_id": "ri", "full_name": "Dana Sultan", "iin": make_iin(dt.date(1990, 3, 3), "female", 7),
            "email": "dana@example.org", "phone": "+77015550101", "language": "en",
            "claimed_amount": "300", "payout_network": "tron", "payout_address": tron(31337),
            "consent": True,
        }))
        ref = filed.reference
    run_verification("ri", engine=engine)
    with session_scope(engine) as s:
        c = s.execute(select(Claim).where(Claim.reference == ref)).scalar_one()
        assert c.status == "flagged" and set(open_flags(s, c)) == {"no_ledger_match", "missing_evidence"}
        decide(s, ref, decision="request_info", reason="Which account did you use?", actor=caseworker)
    import_ledger(engine, "ri", io.StringIO(
        "account_id,entry_type,amount,occurred_at,email\n"
        "R-1,deposit,300,2023-05-01T00:00:00Z,DANA@example.org\n"))
    with session_scope(engine) as s:
        c = s.execute(select(Claim).where(Claim.reference == ref)).scalar_one()
        reply(s, c, "My account was R-1, registered with this e-mail.")
        assert c.status == "verifying"
    counts = run_verification("ri", engine=engine)
    assert counts["verified"] == 1 and counts["approved"] == 1
    with session_scope(engine, write=False) as s:
        c = s.execute(select(Claim).where(Claim.reference == ref)).scalar_one()
        assert (c.status, c.match_rule, c.recognized_loss) == ("approved", "email", U("300"))
        assert open_flags(s, c) == {}
        actions = s.execute(select(AuditEvent.action).where(AuditEvent.subject_id == ref)
                            .order_by(AuditEvent.id)).scalars().all()
        assert actions == ["claim.filed", "claim.verification_started", "claim.flagged_by_rule",
                           "claim.info_requested", "claim.replied", "claim.approved_by_rule"]
        kinds = s.execute(select(Notification.kind).where(Notification.claim_id == c.id)
                          .order_by(Notification.id)).scalars().all()
        assert kinds == ["received", "needs_info", "approved"]
        assert verify_chain(s).ok


def test_id_runs_round_trip():
    from claims.verification import id_runs, ids_in_runs

    assert id_runs([5, 1, 2, 3, 7, 8, 3]) == [(1, 3), (5, 5), (7, 8)]
    assert id_runs([]) == [] and ids_in_runs([]) == []
    ids = [1, 2, 3, 10, 12, 13, 14, 100]
    assert ids_in_runs(id_runs(ids)) == ids
    assert id_runs(range(1, 5001)) == [(1, 5000)]


# ------------------------------------------------------------------ what a batch writes


def _events_of(session, claim: Claim) -> list[tuple[str, dict | None, dict | None]]:
    return [(e.action, e.before, e.after) for e in session.execute(
        select(AuditEvent).where(AuditEvent.subject_id == claim.reference).order_by(AuditEvent.id)
    ).scalars()]


def test_audit_events_carry_the_match_and_the_decision(session):
    case = mk_case(session)
    mk_account(session, case, "U-1", "1000", "200.5")
    mk_account(session, case, "U-2", "100", "20")
    clean = mk_claim(session, case, scheme_account="U-1", claimed="799.5")
    differs = mk_claim(session, case, scheme_account="U-2", claimed="500")
    bare = mk_claim(session, case)
    verify(session, clean, differs, bare)
    clean, differs, bare = (reload(session, c) for c in (clean, differs, bare))
    acct = clean.ledger_account_pk
    no_match = {"invested": None, "ledger_account_pk": None, "match_rule": None,
                "recognized_loss": None, "withdrawn": None}
    at = clean.verified_at.isoformat()
    assert clean.decided_at == clean.verified_at
    assert _events_of(session, clean) == [
        ("claim.verification_started", {"status": "submitted", **no_match},
         {"status": "verifying", "invested": U("1000"), "ledger_account_pk": acct,
          "match_rule": "scheme_account", "recognized_loss": U("799.5"), "withdrawn": U("200.5")}),
        ("claim.approved_by_rule", {"status": "verifying", "decided_at": None, "verified_at": None},
         {"status": "approved", "decided_at": at, "verified_at": at, "ledger_account": "U-1",
          "match_rule": "scheme_account", "recognized_loss": U("799.5"),
          "rule": "ledger_match_clean"}),
    ]
    assert _events_of(session, differs)[1] == (
        "claim.flagged_by_rule", {"status": "verifying", "verified_at": None},
        {"status": "flagged", "verified_at": differs.verified_at.isoformat(),
         "flags": ["amount_differs"], "ledger_account": "U-2", "match_rule": "scheme_account",
         "recognized_loss": U("80")})
    assert _events_of(session, bare) == [
        ("claim.verification_started", {"status": "submitted", **no_match},
         {"status": "verifying", **no_match}),
        ("claim.flagged_by_rule", {"status": "verifying", "verified_at": None},
         {"status": "flagged", "verified_at": bare.verified_at.isoformat(),
          "flags": ["no_ledger_match", "missing_evidence"], "ledger_account": None,
          "match_rule": None, "recognized_loss": None}),
    ]
    note = session.execute(select(Notification).where(Notification.claim_id == clean.id)).scalar_one()
    assert note.context == {"reference": clean.reference, "recognized_loss": "799.5"}
    assert note.language == "en" and note.to_email == clean.email
    assert [(c.version, c.status) for c in (clean, differs, bare)] == [
        (3, "approved"), (3, "flagged"), (3, "flagged")]
    assert verify_chain(session).ok


def test_a_batch_is_refused_whole_when_a_claim_changed_meanwhile(engine):
    from claims.errors import IllegalTransition
    from claims.verification.batch import start_verification
    from claims.verification.rows import MATCH_READ

    with session_scope(engine) as s:
        case = mk_case(s, "meanwhile")
        ids = [mk_claim(s, case).id for _ in range(3)]
    with pytest.raises(IllegalTransition, match=r"^1 claim\(s\) changed meanwhile; batch refused$"):
        with session_scope(engine) as s:
            rows = s.execute(select(*MATCH_READ).where(Claim.id.in_(ids)).order_by(Claim.id)).all()
            audit_before = n_audit(s)
            # Another writer moved one claim on after the batch read it.
            s.execute(Claim.__table__.update().where(Claim.id == ids[1]).values(status="verifying"))
            start_verification(s, rows, {}, Actor.system("test"))
    with session_scope(engine, write=False) as s:  # rolled back: nothing of the batch stays
        assert _statuses(engine, ids) == ["submitted"] * 3
        assert n_audit(s) == audit_before


def test_a_decision_makes_prepared_rounds_stale(session):
    from claims.models import DistributionRound

    case = mk_case(session)
    mk_account(session, case, "U-1", "100")
    rnd = DistributionRound(case_id=case.id, number=1, method="pro_rata", pool=U("10"),
                            min_payout=0, rate="1/10", allocated=0, reserved=0, released=0,
                            undistributed=0, prepared_at=utcnow())
    session.add(rnd)
    session.flush()
    c = mk_claim(session, case, scheme_account="U-1")
    verify(session, c)
    session.refresh(rnd)
    assert rnd.status == "stale"
    ev = session.execute(select(AuditEvent).where(AuditEvent.action == "round.stale")).scalar_one()
    assert (ev.subject_id, ev.before, ev.after) == (
        str(rnd.id), {"status": "prepared"}, {"status": "stale", "because": c.reference})


def test_scheme_account_match_wins_whatever_the_identifiers_find(session):
    from claims.verification import find_matches
    from claims.verification.rows import MATCH_READ

    case = mk_case(session, "bulk-c")
    by_scheme = mk_account(session, case, "S-1", "100")
    other = mk_account(session, case, "S-2", "200", tx_hash=txh(1), email="x@example.org")
    c = mk_claim(session, case, scheme_account=" S-1 ", evidence=["0x" + txh(1).upper()],
                 email="x@example.org")
    d = mk_claim(session, case, scheme_account="S-404", evidence=[txh(1)])
    matches = find_matches(session, session.execute(
        select(*MATCH_READ).where(Claim.id.in_([c.id, d.id])).order_by(Claim.id)).all())
    assert (matches[c.id].account_pk, matches[c.id].rule) == (by_scheme.id, "scheme_account")
    assert (matches[d.id].account_pk, matches[d.id].rule) == (other.id, "tx_hash")


def test_a_malformed_stored_evidence_hash_is_skipped(session):
    case = mk_case(session)
    acct = mk_account(session, case, "T-1", "100", tx_hash=txh(5))
    c = mk_claim(session, case)
    # Stored without the intake's validation (an old row, a manual fix): not a hash.
    session.execute(Claim.__table__.update().where(Claim.id == c.id).values(
        evidence_tx_hashes=["not-a-hash", "", "0x" + txh(5)]))
    verify(session, c)
    c = reload(session, c)
    assert (c.ledger_account_pk, c.match_rule) == (acct.id, "tx_hash")


@pytest.fixture
def statements(session):
    """The SQL statements the session's engine sends, as they go."""
    from sqlalchemy import event

    seen: list[str] = []
    engine = session.get_bind()

    def listen(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", listen)
    yield seen
    event.remove(engine, "before_cursor_execute", listen)


def test_a_batch_changes_its_claims_with_one_statement_per_step(session, statements):
    """The match step's transition, the refresh of claims already verifying and each decision
    are bulk: one UPDATE of the claim table each on SQLite, one executemany elsewhere."""
    case = mk_case(session)
    for i in range(9):
        mk_account(session, case, f"U-{i}", str(100 + i), email=f"u{i}@ledger.example")
    fresh = [mk_claim(session, case, scheme_account=f"U-{i}", claimed=str(100 + i))
             for i in range(4)]
    fresh.append(mk_claim(session, case, claimed="1"))  # no match: flagged
    # Claims already verifying (an interrupted run) with an outdated match (enough of them
    # that SQLite takes their new values as one JSON list, not a statement per value).
    back = [mk_claim(session, case, email=f"u{i}@ledger.example", claimed=str(100 + i),
                     status="verifying") for i in range(4, 9)]
    session.execute(Claim.__table__.update().where(Claim.id.in_([c.id for c in back])).values(
        match_rule="wallet", invested=1, withdrawn=0, recognized_loss=1))
    ids = [c.id for c in fresh + back]

    def claim_updates() -> int:
        n = sum(1 for st in statements if st.lstrip().upper().startswith("UPDATE")
                and " claim " in f" {st.split('SET')[0]} ".replace("OR ROLLBACK", ""))
        statements.clear()
        return n

    session.flush()
    statements.clear()
    counts = match_batch(session, ids)
    assert counts["started"] == 5
    assert claim_updates() == 2  # submitted → verifying; the verifying claims' matches
    counts = decide_batch(session, ids)
    assert counts["approved"] == 9 and counts["flagged"] == 1
    assert claim_updates() == 2  # → approved; → flagged
    session.expire_all()
    for c in back:
        c = session.get(Claim, c.id)
        assert (c.status, c.match_rule, c.invested, c.recognized_loss) == (
            "approved", "email", c.claimed_amount, c.claimed_amount)
