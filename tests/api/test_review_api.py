"""The caseworker's review API: authorization matrix, queue, claim detail, decisions, settle."""

from __future__ import annotations

import sys
import types

import pytest
from sqlalchemy import event, func, select

from claims import audit, outbox
from claims.db import session_scope
from claims.models import (
    AuditEvent,
    Claim,
    ClaimMessage,
    Decision,
    Document,
    Flag,
    Notification,
    utcnow,
)

QUEUE = "/api/v1/review/claims"
BATCH = "/api/v1/review/decisions"
ROLES = ("caseworker", "finance", "admin", "auditor")


def detail_url(ref):
    return f"{QUEUE}/{ref}"


def decision_url(ref):
    return f"{QUEUE}/{ref}/decision"


def settle_url(ref):
    return f"{QUEUE}/{ref}/settle"


def counts(engine):
    """What a refused request must leave untouched."""
    with session_scope(engine, write=False) as s:
        return {
            model.__name__: s.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (AuditEvent, Decision, Notification, ClaimMessage)
        } | {"statuses": sorted(s.execute(select(Claim.reference, Claim.status)).all())}


def claim_row(engine, ref) -> Claim:
    with session_scope(engine, write=False) as s:
        return s.execute(select(Claim).where(Claim.reference == ref)).scalar_one()


# ------------------------------------------------------------------ authorization matrix

# endpoint → (method, url builder, body, the claim status it needs, caseworker's status code)
ENDPOINTS = {
    "queue": ("GET", lambda ref: QUEUE, None, "flagged", 200),
    "detail": ("GET", detail_url, None, "flagged", 200),
    "decision": ("POST", decision_url, {"decision": "reject", "reason": "forged receipts"},
                 "flagged", 200),
    "settle": ("POST", settle_url, {"amount": "500", "reason": "agreed on the phone"},
               "disputed", 200),
    "batch": ("POST", lambda ref: BATCH, lambda ref: {"decisions": [
        {"reference": ref, "decision": "reject", "reason": "forged receipts"}]}, "flagged", 200),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_authorization_matrix(endpoint, client, make_staff, filed_claim, engine):
    method, url, make_body, status, ok = ENDPOINTS[endpoint]
    body = make_body
    reading = method == "GET"
    expected = {"caseworker": ok, "auditor": 200 if reading else 403,
                "finance": 403, "admin": 403}
    headers = {role: make_staff(role) for role in ROLES}
    ledger = {"deposits": "1000", "withdrawals": "200"}
    # refused callers first, on one claim: nothing may change
    target = filed_claim(status=status, ledger=ledger)
    if callable(make_body):
        body = make_body(target.reference)
    before = counts(engine)
    for who, h in [("no token", {}), ("bad token", {"Authorization": "Bearer not-a-jwt"}),
                   ("empty bearer", {"Authorization": "Bearer "})]:
        r = client.request(method, url(target.reference), json=body, headers=h)
        assert r.status_code == 401, (who, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"] == "Bearer"
    for role in ROLES:
        if expected[role] == 403:
            r = client.request(method, url(target.reference), json=body, headers=headers[role])
            assert r.status_code == 403, (role, r.text)
            assert r.json()["status"] == 403
    assert counts(engine) == before
    # allowed callers (a fresh claim each, as a write changes it)
    for role in ROLES:
        if expected[role] != 403:
            ref = filed_claim(status=status, ledger=ledger).reference if not reading else target.reference
            if callable(make_body):
                body = make_body(ref)
            r = client.request(method, url(ref), json=body, headers=headers[role])
            assert r.status_code == expected[role], (role, r.text)


# ------------------------------------------------------------------ the queue


def test_queue_shape_is_exactly_the_contract(client, make_staff, filed_claim):
    cw = make_staff("caseworker")
    matched = filed_claim(ledger={"account_id": "ACC-77", "deposits": "1000.5",
                                  "withdrawals": "200"},
                          flags=[("amount_differs", "claimed 1000, ledger net loss 800.5")],
                          claimed_amount="1000")
    unmatched = filed_claim(flags=["no_ledger_match", "missing_evidence"], claimed_amount="12.5")
    r = client.get(QUEUE, headers=cw)
    assert r.status_code == 200
    assert r.json() == {
        "items": [
            {"reference": matched.reference, "status": "flagged",
             "flags": [{"code": "amount_differs", "message": "claimed 1000, ledger net loss 800.5"}],
             "claimed_amount": "1000", "recognized_loss": "800.5", "ledger_account": "ACC-77"},
            {"reference": unmatched.reference, "status": "flagged",
             "flags": [{"code": "no_ledger_match", "message": "test flag no_ledger_match"},
                       {"code": "missing_evidence", "message": "test flag missing_evidence"}],
             "claimed_amount": "12.5", "recognized_loss": None, "ledger_account": None},
        ],
        "total": 2,
    }


def test_queue_filters_and_pagination(client, make_staff, filed_claim, engine):
    cw = make_staff("auditor")
    a = [filed_claim(case="case-a", flags=["no_ledger_match"]) for _ in range(5)]
    b_flagged = filed_claim(case="case-b", flags=["insider"])
    b_approved = filed_claim(case="case-b", status="approved", flags=[])
    resolved = filed_claim(case="case-b", flags=["duplicate_email"])
    with session_scope(engine) as s:
        s.execute(Flag.__table__.update().where(Flag.claim_id == resolved.id)
                  .values(resolved_at=utcnow()))

    def refs(**params):
        r = client.get(QUEUE, params=params, headers=cw)
        assert r.status_code == 200, r.text
        body = r.json()
        return [i["reference"] for i in body["items"]], body["total"]

    assert refs(case_id="case-a") == ([c.reference for c in a], 5)
    assert refs(case_id="case-b", status="approved") == ([b_approved.reference], 1)
    assert refs(flag="insider") == ([b_flagged.reference], 1)
    assert refs(flag="duplicate_email") == ([], 0)  # only open flags count
    assert refs(case_id="case-a", flag="insider") == ([], 0)
    assert refs(limit=2) == ([c.reference for c in a[:2]], 8)
    assert refs(limit=2, offset=4) == ([a[4].reference, b_flagged.reference], 8)
    assert refs(offset=100) == ([], 8)
    assert refs(limit=500)[1] == 8
    # the resolved claim shows no flags
    items = client.get(QUEUE, params={"case_id": "case-b"}, headers=cw).json()["items"]
    assert {i["reference"]: i["flags"] for i in items}[resolved.reference] == []


@pytest.mark.parametrize("params, field", [
    ({"limit": "501"}, "limit"), ({"limit": "0"}, "limit"), ({"offset": "-1"}, "offset"),
    ({"status": "paid"}, "status"), ({"flag": "suspicious"}, "flag"),
    ({"case_id": "no-such-case"}, "case_id"),
])
def test_queue_bad_filters_are_422_naming_the_field(params, field, client, make_staff):
    r = client.get(QUEUE, params=params, headers=make_staff("caseworker"))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_queue_query_count_does_not_grow_with_the_page(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    statements = []

    def count(*args, **kwargs):
        statements.append(1)

    def run(n_claims):
        for _ in range(n_claims):
            filed_claim(ledger={"deposits": "10"}, flags=["amount_differs", "insider"])
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            r = client.get(QUEUE, params={"limit": 500}, headers=cw)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert r.status_code == 200
        return len(statements), len(r.json()["items"])

    small = run(2)
    large = run(40)
    assert small[1] == 2 and large[1] == 42
    assert large[0] == small[0]


# ------------------------------------------------------------------ one claim


def test_claim_detail_with_ledger_beside_it(client, make_staff, filed_claim, engine):
    from claims.validators import make_iin
    import datetime as dt

    iin = make_iin(dt.date(1979, 10, 28), "male", 2728)
    fc = filed_claim(
        iin=iin, full_name="Aigerim Nurlanovna", email="aigerim@example.kz",
        claimed_amount="1500",
        ledger={"account_id": "ACC-9", "deposits": "1200", "withdrawals": "300", "bonuses": "100",
                "entries": [("deposit", "1000", "2023-01-02T09:00:00+00:00", "0xabc"),
                            ("deposit", "200", "2023-02-02T09:00:00+00:00"),
                            ("bonus", "100", "2023-03-02T09:00:00+00:00"),
                            ("withdrawal", "200", "2023-04-02T09:00:00+00:00")]},
        flags=[("amount_differs", "claimed 1500, ledger net loss 900")],
    )
    with session_scope(engine) as s:
        s.add(Document(id="doc-1", claim_id=fc.id, content_type="application/pdf", size=1234,
                       sha256="ab" * 32, stored_name="x.pdf"))
        s.add(ClaimMessage(claim_id=fc.id, kind="dispute", body="the ledger misses a deposit",
                           amount=1_000_000))
    r = client.get(detail_url(fc.reference), headers=make_staff("auditor"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert iin not in r.text  # never the plain IIN
    assert body["iin_masked"] == iin[:2] + "******" + iin[-4:]
    assert body["full_name"] == "Aigerim Nurlanovna" and body["email"] == "aigerim@example.kz"
    assert body["phone"] == "+77011234567" and body["case_id"] == "test-case"
    assert (body["claimed_amount"], body["recognized_loss"], body["ledger_net_loss"],
            body["difference"]) == ("1500", "900", "900", "600")
    assert body["flags"][0]["code"] == "amount_differs" and body["flags"][0]["open"] is True
    assert body["flags"][0]["message"] == "claimed 1500, ledger net loss 900"
    ledger = body["ledger"]
    assert (ledger["account_id"], ledger["deposits"], ledger["withdrawals"], ledger["bonuses"],
            ledger["net_loss"], ledger["net_winner"], ledger["entries_count"]) == (
        "ACC-9", "1200", "300", "100", "900", False, 4)
    assert [(e["entry_type"], e["amount"], e["tx_hash"]) for e in ledger["entries"]] == [
        ("deposit", "1000", "0xabc"), ("deposit", "200", None), ("bonus", "100", None),
        ("withdrawal", "200", None)]
    assert body["documents"] == [{"id": "doc-1", "content_type": "application/pdf", "size": 1234,
                                  "sha256": "ab" * 32, "created_at": body["documents"][0]["created_at"]}]
    assert [(m["kind"], m["amount"]) for m in body["messages"]] == [("dispute", "1")]
    assert body["decisions"] == []


def test_claim_detail_unknown_and_unmatched(client, make_staff, filed_claim):
    cw = make_staff("caseworker")
    assert client.get(detail_url("KZR-0000-0000"), headers=cw).status_code == 404
    body = client.get(detail_url(filed_claim().reference), headers=cw).json()
    assert body["ledger"] is None and body["recognized_loss"] is None
    assert body["difference"] is None


# ------------------------------------------------------------------ decisions


def decide(client, headers, ref, **body):
    return client.post(decision_url(ref), json=body, headers=headers)


@pytest.mark.parametrize("body, field", [
    ({"decision": "approve", "recognized_loss": "10"}, "reason"),
    ({"decision": "reject", "reason": ""}, "reason"),
    ({"decision": "reject", "reason": "   "}, "reason"),
    ({"decision": "maybe", "reason": "x"}, "decision"),
    ({"decision": "approve", "reason": "ok", "recognized_loss": 10}, "recognized_loss"),
    ({"decision": "approve", "reason": "ok", "recognized_loss": "10.1234567"}, "recognized_loss"),
    ({"decision": "approve", "reason": "ok", "recognized_loss": "-5"}, "recognized_loss"),
])
def test_decision_input_errors_are_422_and_change_nothing(body, field, client, make_staff,
                                                          filed_claim, engine):
    cw = make_staff("caseworker")
    fc = filed_claim()
    before = counts(engine)
    r = decide(client, cw, fc.reference, **body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    assert counts(engine) == before


def test_approve_without_ledger_match_needs_recognized_loss(client, make_staff, filed_claim,
                                                            engine):
    cw = make_staff("caseworker")
    fc = filed_claim(flags=["no_ledger_match", "missing_evidence"], claimed_amount="700")
    before = counts(engine)
    r = decide(client, cw, fc.reference, decision="approve", reason="paper receipts checked")
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "recognized_loss", "message":
                                   "is required to approve a claim without a ledger match"}]
    assert counts(engine) == before
    r = decide(client, cw, fc.reference, decision="approve", reason="paper receipts checked",
               recognized_loss="650.25")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "approved"
    assert out["decision"]["overridden_flags"] == ["missing_evidence", "no_ledger_match"]
    row = claim_row(engine, fc.reference)
    assert (row.status, row.recognized_loss, row.invested, row.withdrawn) == (
        "approved", 650_250_000, 650_250_000, 0)
    assert row.decided_at is not None and row.version == fc.version + 1
    with session_scope(engine, write=False) as s:
        flags = s.execute(select(Flag).where(Flag.claim_id == fc.id)).scalars().all()
        d = s.execute(select(Decision).where(Decision.claim_id == fc.id)).scalar_one()
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "claim.approved")).scalar_one()
        note = s.execute(select(Notification).where(Notification.claim_id == fc.id)).scalar_one()
        assert audit.verify_chain(s).ok
    assert all(f.resolved_at is not None and f.decision_id == d.id for f in flags)
    assert (d.decision, d.reason, d.recognized_loss, d.staff_id) == (
        "approve", "paper receipts checked", 650_250_000, cw.id)
    assert d.overridden_flags == ["missing_evidence", "no_ledger_match"]
    assert ev.actor == cw.username and ev.role == "caseworker" and ev.subject_id == fc.reference
    assert ev.before["status"] == "flagged" and ev.after["status"] == "approved"
    assert ev.after["overridden_flags"] == ["missing_evidence", "no_ledger_match"]
    assert ev.after["reason"] == "paper receipts checked" and ev.after["recognized_loss"] == 650_250_000
    assert (note.kind, note.context["recognized_loss"], note.to_email) == (
        "approved", "650.25", fc.email)


def test_approve_matched_claim_keeps_or_overrides_the_ledger_amount(client, make_staff,
                                                                     filed_claim, engine):
    cw = make_staff("caseworker")
    ledger = {"deposits": "1000", "withdrawals": "400"}
    keep = filed_claim(ledger=ledger, flags=["amount_differs"])
    r = decide(client, cw, keep.reference, decision="approve", reason="ledger is right")
    assert r.status_code == 200, r.text
    row = claim_row(engine, keep.reference)
    assert (row.recognized_loss, row.invested, row.withdrawn) == (600_000_000, 1000_000_000,
                                                                  400_000_000)
    over = filed_claim(ledger=ledger, flags=["amount_differs"])
    r = decide(client, cw, over.reference, decision="approve", reason="bank statement shows more",
               recognized_loss="750")
    assert r.status_code == 200, r.text
    row = claim_row(engine, over.reference)
    # invested = withdrawn + recognized_loss: both methods see the same claim
    assert (row.recognized_loss, row.invested, row.withdrawn) == (750_000_000, 1150_000_000,
                                                                  400_000_000)


def test_reject_tells_the_victim_why(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    fc = filed_claim(flags=["insider"], ledger={"deposits": "50", "insider": True})
    r = decide(client, cw, fc.reference, decision="reject", reason="a promoter of the scheme")
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    with session_scope(engine, write=False) as s:
        note = s.execute(select(Notification).where(Notification.claim_id == fc.id)).scalar_one()
        flag = s.execute(select(Flag).where(Flag.claim_id == fc.id)).scalar_one()
        d = s.execute(select(Decision)).scalar_one()
    assert note.kind == "rejected" and note.context["reason"] == "a promoter of the scheme"
    assert flag.resolved_at is None and d.overridden_flags == []  # a rejection overrides nothing
    assert claim_row(engine, fc.reference).status == "rejected"


def test_request_info_asks_the_victim(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    fc = filed_claim()
    r = decide(client, cw, fc.reference, decision="request_info",
               reason="Please upload the bank transfer receipt.")
    assert r.status_code == 200 and r.json()["status"] == "needs_info"
    with session_scope(engine, write=False) as s:
        msg = s.execute(select(ClaimMessage)).scalar_one()
        note = s.execute(select(Notification)).scalar_one()
        ev = s.execute(select(AuditEvent).where(AuditEvent.subject_id == fc.reference)).scalar_one()
    assert (msg.kind, msg.body, msg.claim_id) == ("request", "Please upload the bank transfer receipt.",
                                                   fc.id)
    assert note.kind == "needs_info" and note.context["request"] == msg.body
    assert ev.action == "claim.info_requested" and ev.after["status"] == "needs_info"
    body = client.get(detail_url(fc.reference), headers=cw).json()
    assert [m["kind"] for m in body["messages"]] == ["request"]
    assert [d["decision"] for d in body["decisions"]] == ["request_info"]
    assert body["decisions"][0]["staff"] == cw.username


@pytest.mark.parametrize("status", ["submitted", "verifying", "needs_info", "approved",
                                    "disputed", "rejected"])
def test_decisions_only_on_flagged_claims(status, client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    fc = filed_claim(status=status, ledger={"deposits": "100"})
    before = counts(engine)
    for body in ({"decision": "approve", "reason": "x"}, {"decision": "reject", "reason": "x"},
                 {"decision": "request_info", "reason": "x"}):
        r = decide(client, cw, fc.reference, **body)
        assert r.status_code == 409, r.text
        assert r.json()["title"] == "Illegal state transition"
    assert counts(engine) == before


def test_recognized_loss_only_with_approve(client, make_staff, filed_claim):
    r = decide(client, make_staff("caseworker"), filed_claim().reference, decision="reject",
               reason="no", recognized_loss="5")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "recognized_loss"


def test_unknown_claim_is_404(client, make_staff):
    r = decide(client, make_staff("caseworker"), "KZR-0000-0000", decision="reject", reason="x")
    assert r.status_code == 404


def test_decision_is_one_transaction(client, make_staff, filed_claim, engine, monkeypatch):
    """If the notification cannot be queued, the status, decision, flags and audit event are
    not written either."""
    cw = make_staff("caseworker")
    fc = filed_claim(ledger={"deposits": "100"}, flags=["amount_differs"])
    before = counts(engine)

    def broken(*a, **k):
        raise RuntimeError("outbox down")

    monkeypatch.setattr(outbox, "enqueue", broken)
    monkeypatch.setattr(outbox, "enqueue_batch", broken)
    with pytest.raises(RuntimeError, match="outbox down"):
        decide(client, cw, fc.reference, decision="approve", reason="fine")
    assert counts(engine) == before
    with session_scope(engine, write=False) as s:
        assert s.execute(select(Flag.resolved_at).where(Flag.claim_id == fc.id)).scalar() is None


def test_decision_is_committed_before_the_answer(client, make_staff, filed_claim, engine,
                                                 monkeypatch):
    """The caseworker is told 200 only once the decision is committed: when the commit
    fails, the answer is an error and nothing is written (FastAPI would otherwise end the
    request's session after the response has gone — the demo then saw its own decision
    missing from the next queue read)."""
    from sqlmodel import Session

    cw = make_staff("caseworker")
    fc = filed_claim(ledger={"deposits": "100"}, flags=["amount_differs"])
    before = counts(engine)
    real_commit = Session.commit

    def failing_commit(self):
        if self.info.get("failing"):
            raise RuntimeError("disk full")
        return real_commit(self)

    def mark_failing(self, *a, **k):
        self.info["failing"] = True
        return real_decide(self, *a, **k)

    from claims import review

    real_decide = review.decide
    monkeypatch.setattr(Session, "commit", failing_commit)
    monkeypatch.setattr(review, "decide", lambda session, *a, **k: mark_failing(session, *a, **k))
    from fastapi.testclient import TestClient

    with TestClient(client.app, raise_server_exceptions=False) as c:
        r = c.post(f"/api/v1/review/claims/{fc.reference}/decision", headers=cw,
                   json={"decision": "approve", "reason": "fine"})
    assert r.status_code == 500
    assert counts(engine) == before


# ------------------------------------------------------------------ bulk decisions


def test_batch_decisions_act_like_single_ones(client, make_staff, filed_claim, engine):
    """A caseworker's bulk action: each claim ends exactly as its single decision would
    leave it (status, amounts, flags, decision row, audit event, the victim's notice)."""
    cw = make_staff("caseworker")
    ledger = {"deposits": "1000", "withdrawals": "400"}
    keep = filed_claim(ledger=ledger, flags=["amount_differs", "duplicate_email"])
    paper = filed_claim(flags=["no_ledger_match"], claimed_amount="700")
    insider = filed_claim(flags=["insider"], ledger={"deposits": "50", "insider": True})
    ask = filed_claim(flags=["missing_evidence"], ledger=ledger)
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": keep.reference, "decision": "approve", "reason": "ledger is right"},
        {"reference": paper.reference, "decision": "approve", "reason": "paper receipts",
         "recognized_loss": "650.25"},
        {"reference": insider.reference, "decision": "reject", "reason": "a promoter"},
        {"reference": ask.reference, "decision": "request_info", "reason": "send a receipt"},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["reference"], x["status"]) for x in results] == [
        (keep.reference, "approved"), (paper.reference, "approved"),
        (insider.reference, "rejected"), (ask.reference, "needs_info")]
    assert results[0]["decision"]["overridden_flags"] == ["amount_differs", "duplicate_email"]
    assert results[1]["decision"]["recognized_loss"] == "650.25"
    rows = {ref: claim_row(engine, ref) for ref in (keep.reference, paper.reference)}
    assert (rows[keep.reference].recognized_loss, rows[keep.reference].invested) == (
        600_000_000, 1000_000_000)
    assert (rows[paper.reference].recognized_loss, rows[paper.reference].invested,
            rows[paper.reference].withdrawn) == (650_250_000, 650_250_000, 0)
    with session_scope(engine, write=False) as s:
        notes = {n.claim_id: (n.kind, n.context) for n in s.execute(select(Notification)).scalars()}
        decisions = {d.claim_id: d for d in s.execute(select(Decision)).scalars()}
        flags = s.execute(select(Flag.claim_id, Flag.resolved_at, Flag.decision_id)).all()
        events = {e.subject_id: e for e in s.execute(
            select(AuditEvent).where(AuditEvent.subject_type == "claim")).scalars()}
        request = s.execute(select(ClaimMessage).where(ClaimMessage.claim_id == ask.id)).scalar_one()
        assert audit.verify_chain(s).ok
    assert notes[keep.id] == ("approved", {"reference": keep.reference, "recognized_loss": "600"})
    assert notes[paper.id][1]["recognized_loss"] == "650.25"
    assert notes[insider.id] == ("rejected", {"reference": insider.reference, "reason": "a promoter"})
    assert notes[ask.id] == ("needs_info", {"reference": ask.reference, "request": "send a receipt"})
    for claim_id, resolved_at, decision_id in flags:
        approved = claim_id in (keep.id, paper.id)
        assert (resolved_at is not None) is approved
        assert decision_id == (decisions[claim_id].id if approved else None)
    assert request.kind == "request" and request.body == "send a receipt"
    ev = events[keep.reference]
    assert ev.action == "claim.approved" and ev.actor == cw.username
    assert ev.after["overridden_flags"] == ["amount_differs", "duplicate_email"]
    assert ev.after["decision_id"] == decisions[keep.id].id
    assert events[ask.reference].action == "claim.info_requested"


def test_batch_decisions_are_all_or_nothing(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    good = filed_claim(flags=["amount_differs"], ledger={"deposits": "100"})
    done = filed_claim(status="approved", ledger={"deposits": "100"})
    paper = filed_claim(flags=["no_ledger_match"])
    before = counts(engine)
    # one claim is not flagged: 409 and nothing is written
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": good.reference, "decision": "approve", "reason": "fine"},
        {"reference": done.reference, "decision": "reject", "reason": "no"}]})
    assert r.status_code == 409, r.text
    assert done.reference in r.json()["detail"]
    # a rule that needs the claim (an amount to approve without a ledger match) names the item
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": good.reference, "decision": "approve", "reason": "fine"},
        {"reference": paper.reference, "decision": "approve", "reason": "ok"}]})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["decisions[1].recognized_loss"]
    # input errors name every bad item; an unknown claim is 404; a claim twice is refused
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": good.reference, "decision": "approve", "reason": " "},
        {"reference": paper.reference, "decision": "maybe", "reason": "x"}]})
    assert r.status_code == 422
    fields = [e["field"] for e in r.json()["errors"]]
    assert any("decisions" in f and "reason" in f for f in fields), fields
    assert any("decisions" in f and "decision" in f for f in fields), fields
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": good.reference, "decision": "reject", "reason": "x"},
        {"reference": "KZR-0000-0000", "decision": "reject", "reason": "x"}]})
    assert r.status_code == 404
    r = client.post(BATCH, headers=cw, json={"decisions": [
        {"reference": good.reference, "decision": "reject", "reason": "x"},
        {"reference": good.reference, "decision": "approve", "reason": "x"}]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "decisions[1].reference"
    r = client.post(BATCH, headers=cw, json={"decisions": []})
    assert r.status_code == 422
    assert counts(engine) == before


# ------------------------------------------------------------------ settle


def test_settle_a_dispute(client, make_staff, filed_claim, engine, monkeypatch):
    calls = []
    fake = types.ModuleType("claims.rounds")
    fake.on_dispute_settled = lambda session, claim, amount, actor: calls.append(
        (claim.reference, claim.status, amount, actor.name))
    monkeypatch.setitem(sys.modules, "claims.rounds", fake)
    cw = make_staff("caseworker")
    fc = filed_claim(status="disputed", ledger={"deposits": "1000", "withdrawals": "400"},
                     flags=[])
    with session_scope(engine) as s:
        s.add(ClaimMessage(claim_id=fc.id, kind="dispute", body="I lost more", amount=900_000_000))
    r = client.post(settle_url(fc.reference), json={"amount": "700", "reason": "receipts agreed"},
                    headers=cw)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["decision"]["decision"] == "settle"
    row = claim_row(engine, fc.reference)
    assert (row.status, row.recognized_loss, row.invested, row.withdrawn) == (
        "approved", 700_000_000, 1100_000_000, 400_000_000)
    assert calls == [(fc.reference, "approved", 700_000_000, cw.username)]
    with session_scope(engine, write=False) as s:
        note = s.execute(select(Notification)).scalar_one()
        msgs = s.execute(select(ClaimMessage).order_by(ClaimMessage.id)).scalars().all()
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "claim.dispute_settled")).scalar_one()
    assert note.kind == "dispute_settled" and note.context["amount"] == "700"
    assert [(m.kind, m.answered_at is not None) for m in msgs] == [("dispute", True),
                                                                    ("settlement", False)]
    assert ev.before["status"] == "disputed" and ev.after["reason"] == "receipts agreed"


def test_settling_a_dispute_whose_address_changed_puts_it_before_a_caseworker(
        client, make_staff, filed_claim, engine):
    """An address changed while the claim was disputed leaves its payouts held behind an open
    ``address_changed`` flag; settling the dispute sends the claim to ``flagged``, where a
    caseworker's approval clears the flag."""
    cw = make_staff("caseworker")
    fc = filed_claim(status="disputed", ledger={"deposits": "1000", "withdrawals": "400"},
                     flags=["address_changed"])
    r = client.post(settle_url(fc.reference), json={"amount": "600", "reason": "agreed"},
                    headers=cw)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "flagged"
    assert claim_row(engine, fc.reference).status == "flagged"
    r = client.post(f"/api/v1/review/claims/{fc.reference}/decision", headers=cw,
                    json={"decision": "approve", "reason": "new address confirmed by phone"})
    assert r.status_code == 200, r.text
    with session_scope(engine, write=False) as s:
        open_flags = s.execute(select(Flag).where(Flag.claim_id == fc.id,
                                                  Flag.resolved_at.is_(None))).scalars().all()
    assert claim_row(engine, fc.reference).status == "approved" and open_flags == []


def test_settle_refusals(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    flagged = filed_claim()
    disputed = filed_claim(status="disputed", ledger={"deposits": "10"}, flags=[])
    before = counts(engine)
    r = client.post(settle_url(flagged.reference), json={"amount": "5", "reason": "x"}, headers=cw)
    assert r.status_code == 409
    for body, field in (({"amount": "5"}, "reason"), ({"reason": "x"}, "amount"),
                        ({"amount": 5, "reason": "x"}, "amount"),
                        ({"amount": "5", "reason": ""}, "reason")):
        r = client.post(settle_url(disputed.reference), json=body, headers=cw)
        assert r.status_code == 422, r.text
        assert field in [e["field"] for e in r.json()["errors"]]
    assert counts(engine) == before


def test_hostile_input_is_refused_not_a_server_error(client, make_staff, filed_claim):
    """NUL bytes and oversized numbers (PostgreSQL refuses NUL in text) → 404/422, never 500."""
    cw = make_staff("caseworker")
    fc = filed_claim()
    assert client.get(QUEUE, params={"case_id": "a\x00b"}, headers=cw).status_code == 422
    assert client.get(QUEUE, params={"offset": str(10**20)}, headers=cw).status_code == 422
    assert client.get(detail_url("KZR-%00"), headers=cw).status_code == 404
    assert client.get(detail_url("x" * 300), headers=cw).status_code == 404
    r = decide(client, cw, fc.reference, decision="reject", reason="bad\x00reason")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason"
