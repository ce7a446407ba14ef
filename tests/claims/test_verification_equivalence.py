"""The bulk verification path (plain rows, audit JSON written directly, driver-level bulk
writes) against a reference: the same rules run the generic way — model objects, the generic
``lifecycle.transition_many`` and ORM inserts — on an identical case with every flag, clusters
across batches and runs, a claim pulled back from ``approved``, a flag added to a ``needs_info``
claim and a re-verification. Both cases must end with the same claims, flags, decisions,
notifications and audit events (times aside), and the audit chain intact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

import claims.verification as v
from claims import lifecycle
from claims.audit import Actor, canonical_text, jsonable, verify_chain
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
from claims.money import format_amount, parse_amount
from claims.validators import make_eth_address, make_iin, name_key, normalize_address_key

U = parse_amount
S = v.S


# ------------------------------------------------------------------ the reference (generic path)


def _ref_match(engine):
    def match(case_id: int, lo: int, hi: int) -> dict:
        with session_scope(engine) as s:
            ids = v.pending_claim_ids(s, case_id, lo=lo, hi=hi)
            claims = s.execute(
                select(Claim).where(Claim.id.in_(ids), Claim.status.in_(v.PENDING)).order_by(Claim.id)
            ).scalars().all()
            matches = v.find_matches(s, claims)
            values = {c.id: v._match_values(matches.get(c.id)) for c in claims}
            submitted = [c for c in claims if c.status == S.submitted.value]
            lifecycle.transition_many(
                s, submitted, S.verifying, actor=v.default_actor(),
                action="claim.verification_started",
                per_claim_values={c.id: values[c.id] for c in submitted},
            )
            for c in claims:
                if c.status == S.verifying.value and c not in submitted:
                    for k, val in values[c.id].items():
                        setattr(c, k, val)
            s.flush()
            return {**v.empty_counts(), "started": len(submitted), "ids": ids}
    return match


def _ref_decide(engine):
    def decide(case_id: int, ids: list[int]) -> dict:
        with session_scope(engine) as s:
            claims = s.execute(
                select(Claim).where(Claim.id.in_(ids), Claim.status == S.verifying.value,
                                    Claim.case_id == case_id).order_by(Claim.id)
            ).scalars().all()
            if claims:
                _ref_decide_case(s, case_id, claims, v.default_actor())
            return {**v.empty_counts(), "verified": len(claims)}
    return decide


def _ref_decide_case(session, case_id, claims, actor):
    """The rules of claims.verification._decide_case, written the generic way."""
    now = utcnow()
    batch_ids = {c.id for c in claims}
    accounts = {a.id: (a.account_id, bool(a.insider), a.insider_reason)
                for a in session.execute(select(LedgerAccount)).scalars()}
    blocked = {b.address_key: b.reason for b in session.execute(select(BlockedAddress)).scalars()}
    with_documents = set(session.execute(select(Document.claim_id)).scalars())
    clusters = {}
    for code, (cols, key_of, _msg) in v._CLUSTER_SPECS.items():
        keys = {k for c in claims if (k := key_of(c)) is not None}
        clusters[code] = v._clusters(session, case_id, cols(), keys)

    def cluster_message(code, key, others):
        fields = {"others": v._label(others)}
        if code == "duplicate_identity":
            fields["birth"] = key[1].isoformat() if key[1] else "?"
        if code == "duplicate_account":
            fields["account"] = accounts[key[0]][0]
        return v._CLUSTER_SPECS[code][2].format(**fields)

    flags = {}
    for c in claims:
        f = []
        acct = accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
        if acct is None:
            f.append(("no_ledger_match", "no ledger account matches the scheme account id, "
                      "evidence transaction hashes, IIN, e-mail, phone or payout address"))
            if not c.evidence_tx_hashes and c.id not in with_documents:
                f.append(("missing_evidence", "no ledger match, and the claim has neither "
                          "evidence transaction hashes nor documents"))
        else:
            account_id, insider, reason = acct
            loss = v.net_loss(c.invested or 0, c.withdrawn or 0)
            if v.amount_differs(c.claimed_amount, loss):
                f.append(("amount_differs", f"claimed {v._usdt(c.claimed_amount)}; the ledger "
                          f"(account {account_id}) shows a net loss of {v._usdt(loss)} "
                          f"(deposits {v._usdt(c.invested or 0)}, withdrawals and bonuses "
                          f"{v._usdt(c.withdrawn or 0)})"))
            if (c.withdrawn or 0) >= (c.invested or 0):
                f.append(("net_winner", f"ledger account {account_id} took out "
                          f"{v._usdt(c.withdrawn or 0)} (withdrawals and bonuses) against "
                          f"{v._usdt(c.invested or 0)} deposited: a net winner"))
            if insider:
                f.append(("insider", f"ledger account {account_id} is marked insider/promoter"
                          + (f": {reason}" if reason else "")))
        for code, (_cols, key_of, _msg) in v._CLUSTER_SPECS.items():
            key = key_of(c)
            members = clusters[code].get(key) if key is not None else None
            others = [m for m in members or [] if m.id != c.id]
            if others:
                f.append((code, cluster_message(code, key, others)))
        if c.payout_address_key in blocked:
            f.append(("blocked_address", f"the payout address is on the blocked list: "
                      f"{blocked[c.payout_address_key]}"))
        flags[c.id] = f

    for fl in session.execute(select(Flag).where(Flag.claim_id.in_(batch_ids),
                                                 Flag.resolved_at.is_(None))).scalars():
        fl.resolved_at = now
    for cid, fl in flags.items():
        for code, msg in fl:
            session.add(Flag(claim_id=cid, code=code, message=msg, created_at=now))
    session.flush()
    first_time = {c.id for c in claims if c.verified_at is None}
    clean = [c for c in claims if not flags[c.id]]
    flagged = [c for c in claims if flags[c.id]]

    def audit_of(c):
        acct = accounts.get(c.ledger_account_pk) if c.ledger_account_pk is not None else None
        return {"match_rule": c.match_rule, "ledger_account": acct[0] if acct else None,
                "recognized_loss": c.recognized_loss}

    lifecycle.transition_many(
        session, clean, S.approved, actor=actor, action="claim.approved_by_rule",
        per_claim_values={c.id: {"verified_at": now, "decided_at": now} for c in clean},
        per_claim_audit={c.id: {"rule": v.APPROVE_RULE, **audit_of(c)} for c in clean},
        notify=None,
    )
    for c in clean:
        session.add(Decision(
            claim_id=c.id, staff_id=None, decision="rule",
            reason=f"{v.APPROVE_RULE}: matched ledger account {accounts[c.ledger_account_pk][0]} "
                   f"by {c.match_rule}; no flag",
            recognized_loss=c.recognized_loss, overridden_flags=[], created_at=now))
    session.flush()
    from claims import outbox
    outbox.enqueue_many(session, [
        (c, "approved", {"recognized_loss": format_amount(c.recognized_loss or 0)}, None)
        for c in clean
    ])
    lifecycle.transition_many(
        session, flagged, S.flagged, actor=actor, action="claim.flagged_by_rule",
        per_claim_values={c.id: {"verified_at": now} for c in flagged},
        per_claim_audit={c.id: {"flags": [code for code, _ in flags[c.id]], **audit_of(c)}
                         for c in flagged},
    )
    v._flag_other_members(session, clusters, batch_ids, first_time, cluster_message, actor, now)


# ------------------------------------------------------------------ the case


def _eth(n: int) -> str:
    return make_eth_address(hashlib.sha256(f"eq-wallet-{n}".encode()).digest()[:20])


def _tx(n: int) -> str:
    return hashlib.sha256(f"eq-tx-{n}".encode()).hexdigest()


def _build(engine, tag: str) -> dict[str, int]:
    """One case (code ``eq-<tag>``) with every flag; returns claim label → id."""
    with session_scope(engine) as s:
        case = Case(code=f"eq-{tag}", name=f"Equivalence {tag}")
        s.add(case)
        s.flush()

        def account(account_id, dep, wd="0", insider=False, reason=None, **idents):
            a = LedgerAccount(case_id=case.id, account_id=account_id, deposits=U(dep),
                              withdrawals=U(wd), insider=insider, insider_reason=reason)
            s.add(a)
            s.flush()
            for kind, value in idents.items():
                s.add(LedgerIdentifier(case_id=case.id, kind=kind, value=value, account_pk=a.id))
            return a

        account("A-CLEAN", "1000", "200.5")
        account("A-TX", "500", tx_hash=_tx(1))
        account("A-IIN", "400", iin=iin_hash(make_iin(dt.date(1970, 1, 2), "male", 11)))
        account("A-MAIL", "300", email="mail@ledger.example")
        account("A-PHONE", "250", phone="+77015550001")
        account("A-WALLET", "200", wallet=normalize_address_key("ethereum", _eth(1)))
        account("A-DIFF", "1500", "500")
        account("A-WIN", "100", "150")
        account("Счёт-7 \"q\"", "900", insider=True, reason='promoter "tier 1" — ведущий')
        account("A-SHARED", "800")
        account("A-BLOCK", "600")
        account("A-EARLY", "100")
        account("A-LATE", "200")
        for i in range(1, 8):
            account(f"A-{i}", str(100 * i))
        blocked_key = normalize_address_key("ethereum", _eth(50))
        if not s.execute(select(BlockedAddress).where(
                BlockedAddress.address_key == blocked_key)).first():  # one list for all cases
            s.add(BlockedAddress(address_key=blocked_key, network="ethereum", address=_eth(50),
                                 reason="sanctions list"))
        ids: dict[str, int] = {}
        n = 0

        def claim(label, claimed="100", *, scheme=None, evidence=None, iin=None, email=None,
                  phone=None, wallet=None, name=None, birth=None, status="submitted"):
            nonlocal n
            n += 1
            birth = birth or dt.date(1980, 1, 1) + dt.timedelta(days=n)
            iin = iin or make_iin(birth, "female", 100 + n)
            email = email or f"victim{n}@claims.example"
            wallet = wallet or _eth(1000 + n)
            name = name or f"Victim Number {n}"
            c = Claim(
                case_id=case.id, reference=f"KZR-{tag}{n:03d}-EQ", status=status,
                full_name=name, name_key=name_key(name), iin_hash=iin_hash(iin),
                iin_encrypted=encrypt(iin), iin_masked=mask_iin(iin), birth_date=birth,
                email=email, email_key=email.casefold(), phone=phone or f"+7702{n:07d}",
                language=("kk", "ru", "en")[n % 3], scheme_account=scheme,
                claimed_amount=U(claimed), evidence_tx_hashes=evidence or [],
                payout_network="ethereum", payout_address=wallet,
                payout_address_key=normalize_address_key("ethereum", wallet),
                access_token_hash=token_hash(uuid.uuid4().hex),
            )
            s.add(c)
            s.flush()
            ids[label] = c.id
            return c

        claim("clean", "799.5", scheme="A-CLEAN")
        claim("tx", "500", evidence=["0x" + _tx(1).upper()])
        claim("iin", "400", iin=make_iin(dt.date(1970, 1, 2), "male", 11))
        claim("mail", "300", email="Mail@Ledger.example")
        claim("phone", "250", phone="+77015550001")
        claim("wallet", "200", wallet=_eth(1))
        claim("differs", "1200", scheme="A-DIFF")
        claim("winner", "10", scheme="A-WIN")
        claim("insider", "900", scheme="Счёт-7 \"q\"")
        claim("bare")
        claim("evidence", evidence=[_tx(999)])
        doc = claim("document")
        s.add(Document(id=str(uuid.uuid4()), claim_id=doc.id, content_type="application/pdf",
                       size=10, sha256="0" * 64, stored_name="x.pdf"))
        claim("blocked", "600", scheme="A-BLOCK", wallet=_eth(50))
        claim("shared-1", "800", scheme="A-SHARED")
        claim("shared-2", "800", scheme="A-SHARED")
        twin = dt.date(1975, 5, 5)
        claim("twin-1", "100", scheme="A-1", name="Aigerim Twin", birth=twin,
              iin=make_iin(twin, "female", 501))
        claim("twin-2", "200", scheme="A-2", name="AIGERIM  twin", birth=twin,
              iin=make_iin(twin, "female", 502))
        for i in range(3):
            claim(f"wallet-{i}", str(100 * (3 + i)), scheme=f"A-{3 + i}", wallet=_eth(77))
        claim("email-1", "600", scheme="A-6", email="Same@claims.example")
        claim("email-2", "700", scheme="A-7", email="same@claims.example")
        claim("early", "100", scheme="A-EARLY", wallet=_eth(88))  # approved now, pulled back later
        claim("waits", "5000", wallet=_eth(89))  # flagged → needs_info; joins the cluster later
        return ids


def _second_round(engine, tag: str, ids: dict[str, int]) -> None:
    """After the first run: ``waits`` goes to needs_info and takes ``early``'s wallet; the
    ``differs`` claim is sent for information and answered (back to verifying); a new claim
    joins ``early``'s wallet cluster."""
    actor = Actor.system("test")
    with session_scope(engine) as s:
        w = s.get(Claim, ids["waits"])
        lifecycle.transition(s, w, "needs_info", actor=actor, action="t.request")
        early = s.get(Claim, ids["early"])
        s.execute(Claim.__table__.update().where(Claim.id == w.id).values(
            payout_address_key=early.payout_address_key))
        d = s.get(Claim, ids["differs"])
        lifecycle.transition(s, d, "needs_info", actor=actor, action="t.request")
        lifecycle.transition(s, d, "verifying", actor=actor, action="t.reply")
        s.execute(Claim.__table__.update().where(Claim.id == d.id).values(
            claimed_amount=U("1000")))
        birth = dt.date(1990, 9, 9)
        iin = make_iin(birth, "male", 900)
        late = Claim(
            case_id=early.case_id, reference=f"KZR-{tag}900-EQ", status="submitted",
            full_name="Late Comer", name_key=name_key("Late Comer"), iin_hash=iin_hash(iin),
            iin_encrypted=encrypt(iin), iin_masked=mask_iin(iin), birth_date=birth,
            email="late@claims.example", email_key="late@claims.example", phone="+77029999999",
            language="ru", scheme_account="A-LATE", claimed_amount=U("200"),
            evidence_tx_hashes=[], payout_network="ethereum",
            payout_address=early.payout_address, payout_address_key=early.payout_address_key,
            access_token_hash=token_hash(uuid.uuid4().hex),
        )
        s.add(late)
        s.flush()
        ids["late"] = late.id


def _snapshot(engine, tag: str, ids: dict[str, int]) -> dict:
    """Everything verification wrote for the case, comparable across the two cases."""
    def norm(value):
        if isinstance(value, str):
            return value.replace(f"KZR-{tag}", "KZR-#")
        if isinstance(value, dict):
            return {k: ("<time>" if k in ("verified_at", "decided_at") and x is not None
                        else norm(x)) for k, x in value.items()}
        if isinstance(value, list):
            return [norm(x) for x in value]
        return value

    out = {}
    with session_scope(engine, write=False) as s:
        pk_to_account = dict(s.execute(select(LedgerAccount.id, LedgerAccount.account_id)).all())
        for label, cid in sorted(ids.items()):
            c = s.get(Claim, cid)
            flags = s.execute(select(Flag).where(Flag.claim_id == cid).order_by(Flag.id)).scalars()
            events = s.execute(select(AuditEvent).where(AuditEvent.subject_id == c.reference)
                               .order_by(AuditEvent.id)).scalars().all()

            def ev(e):
                d = {"action": e.action, "actor": e.actor, "role": e.role,
                     "before": e.before, "after": e.after}
                for side in ("before", "after"):
                    if isinstance(d[side], dict) and d[side].get("ledger_account_pk") is not None:
                        d[side] = {**d[side], "ledger_account_pk":
                                   pk_to_account[d[side]["ledger_account_pk"]]}
                return norm(d)

            out[label] = {
                "claim": (c.status, pk_to_account.get(c.ledger_account_pk), c.match_rule,
                          c.invested, c.withdrawn, c.recognized_loss, c.version,
                          c.verified_at is None, c.decided_at is None),
                "flags": [(f.code, norm(f.message), f.resolved_at is None) for f in flags],
                "decisions": [(d.decision, d.staff_id, d.reason, d.recognized_loss,
                               d.overridden_flags) for d in s.execute(
                    select(Decision).where(Decision.claim_id == cid).order_by(Decision.id)).scalars()],
                "notifications": [(n.kind, n.language, n.to_email, norm(n.context), n.state,
                                   n.attempts) for n in s.execute(
                    select(Notification).where(Notification.claim_id == cid)
                    .order_by(Notification.id)).scalars()],
                "events": [ev(e) for e in events],
            }
        assert verify_chain(s).ok
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 5000])
def test_bulk_path_equals_the_generic_path(engine, batch_size):
    bulk = _build(engine, "A")
    ref = _build(engine, "B")
    counts = v.run_verification("eq-A", batch_size=batch_size, engine=engine)
    v.run_verification("eq-B", batch_size=batch_size, engine=engine,
                       match=_ref_match(engine), decide=_ref_decide(engine))
    _second_round(engine, "A", bulk)
    _second_round(engine, "B", ref)
    counts2 = v.run_verification("eq-A", batch_size=batch_size, engine=engine)
    v.run_verification("eq-B", batch_size=batch_size, engine=engine,
                       match=_ref_match(engine), decide=_ref_decide(engine))

    a, b = _snapshot(engine, "A", bulk), _snapshot(engine, "B", ref)
    assert a.keys() == b.keys()
    for label in a:
        assert a[label] == b[label], label

    # The case exercises every flag verification raises, and both kinds of cluster follow-up.
    codes = Counter(code for snap in a.values() for code, _m, is_open in snap["flags"] if is_open)
    assert set(codes) == {
        "no_ledger_match", "missing_evidence", "amount_differs", "net_winner", "insider",
        "blocked_address", "duplicate_identity", "duplicate_account", "duplicate_wallet",
        "duplicate_email",
    }
    assert counts["approved"] > 0 and counts2["reflagged"] == 1 and counts2["flags_added"] == 1
    assert a["early"]["claim"][0] == "flagged" and a["waits"]["claim"][0] == "needs_info"
    assert a["differs"]["claim"][0] == "approved"  # answered, re-verified, now within 1 %
    assert a["clean"]["notifications"][0][3] == {"reference": "KZR-#001-EQ",
                                                   "recognized_loss": "799.5"}


@pytest.mark.parametrize("value", [
    None, 0, 7, -3, 10**20, "", "plain", 'quote " and \\ backslash', "Счёт — ведущий", "tab\tnl\n",
    "\u2028", "emoji 🙂",
])
def test_direct_json_texts_are_canonical(value):
    """The texts the bulk path writes are byte for byte canonical_text(jsonable(...))."""
    assert v._j(value) == canonical_text(jsonable(value))
    t = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert v._j_time(t) == canonical_text(jsonable(t)) and v._j_time(None) == "null"
    assert v._match_text("submitted", value, value, value, value, value) == canonical_text(
        {"status": "submitted", "ledger_account_pk": value, "match_rule": value,
         "invested": value, "withdrawn": value, "recognized_loss": value})
