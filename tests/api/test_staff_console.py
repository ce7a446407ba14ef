"""The staff console /staff (api/pages/staff/, api/pages/staff_auth.py) through TestClient:
sign-in and the session cookie, CSRF, role separation with the API's role sets, and every
page's work (review, rounds, release, admin lists, the audit trail)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from claims.db import session_scope
from claims.models import AuditEvent, BlockedAddress, Claim, DistributionRound, Payout, StaffUser

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]*)"')


@pytest.fixture(autouse=True)
def _no_prefect_no_background(monkeypatch):
    """Rounds are prepared without the Prefect server; released payouts are not executed
    (the browser tests run the real execution)."""
    from api.routes import payouts as payouts_api
    from api.routes import rounds as rounds_api
    from claims.rounds import prepare_round_committed

    monkeypatch.setattr(rounds_api, "PREPARE", prepare_round_committed)
    monkeypatch.setattr(payouts_api, "START_EXECUTION", lambda background, rid: None)


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF field on the page"
    return m.group(1)


def sign_in(client, staff, *, next_path: str | None = None, totp: str = ""):
    client.cookies.clear()
    page = client.get("/staff/sign-in")
    data = {"username": staff.username, "password": staff.password, "totp": totp,
            "csrf_token": csrf_of(page.text)}
    if next_path:
        data["next"] = next_path
    return client.post("/staff/sign-in", data=data, follow_redirects=False)


def signed_in(client, staff):
    r = sign_in(client, staff)
    assert r.status_code == 303, r.text
    return client


def post_form(client, page_url: str, action: str, data: dict | None = None, **kw):
    """POST ``action`` with the CSRF token read from ``page_url`` (as a browser would)."""
    token = csrf_of(client.get(page_url).text)
    return client.post(action, data={**(data or {}), "csrf_token": token},
                       follow_redirects=False, **kw)


# ------------------------------------------------------------------ sign-in, session, CSRF


def test_sign_in_page_has_labelled_fields_and_phone_layout(client):
    r = client.get("/staff/sign-in")
    assert r.status_code == 200
    html = r.text
    for name in ("username", "password", "totp"):
        assert f'<label for="{name}">' in html and f'name="{name}"' in html
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html
    assert "@media (max-width:720px)" in html
    assert "<script" not in html
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_sign_in_sets_a_strict_httponly_cookie_and_goes_home(client, make_staff):
    cw = make_staff("caseworker")
    r = sign_in(client, cw)
    assert r.status_code == 303 and r.headers["location"] == "/staff/queue"
    cookie = [h for h in r.headers.get_list("set-cookie") if h.startswith("restitution_staff=")]
    assert cookie, r.headers
    low = cookie[0].lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/" in low
    assert "max-age=3600" in low
    assert "secure" not in low  # plain http here; https requests get Secure
    page = client.get("/staff/queue")
    assert page.status_code == 200 and "Review queue" in page.text
    assert cw.username in page.text


def test_wrong_password_is_refused_on_the_page(client, make_staff):
    cw = make_staff("caseworker")
    page = client.get("/staff/sign-in")
    r = client.post("/staff/sign-in", data={"username": cw.username, "password": "wrong" * 4,
                                            "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401
    assert "wrong user name, password or one-time code" in r.text
    assert "restitution_staff=" not in r.headers.get("set-cookie", "")
    assert client.get("/staff/queue", follow_redirects=False).status_code == 303


def test_totp_account_needs_its_code(client, make_staff):
    import pyotp

    cw = make_staff("caseworker", totp=True)
    assert sign_in(client, cw).status_code == 401
    r = sign_in(client, cw, totp=pyotp.TOTP(cw.totp_secret).now())
    assert r.status_code == 303


def test_sign_in_without_its_csrf_cookie_is_refused(client, make_staff):
    cw = make_staff("caseworker")
    page = client.get("/staff/sign-in")
    token = csrf_of(page.text)
    client.cookies.clear()  # a form posted from elsewhere carries no login cookie
    r = client.post("/staff/sign-in", data={"username": cw.username, "password": cw.password,
                                            "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 403
    assert "restitution_staff=" not in r.headers.get("set-cookie", "")


def test_not_signed_in_redirects_to_sign_in_and_back(client, make_staff):
    r = client.get("/staff/queue?status=flagged", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/staff/sign-in?next=%2Fstaff%2Fqueue%3Fstatus%3Dflagged"
    cw = make_staff("caseworker")
    r = sign_in(client, cw, next_path="/staff/queue?status=flagged")
    assert r.headers["location"] == "/staff/queue?status=flagged"
    # an open redirect is not followed
    r = sign_in(client, cw, next_path="//evil.example/x")
    assert r.headers["location"] == "/staff/queue"


def test_staff_home_sends_each_role_to_its_page(client, make_staff):
    assert client.get("/staff", follow_redirects=False).headers["location"] == "/staff/sign-in"
    for role, home in (("caseworker", "/staff/queue"), ("finance", "/staff/finance"),
                       ("admin", "/staff/admin/users"), ("auditor", "/staff/audit")):
        signed_in(client, make_staff(role))
        assert client.get("/staff", follow_redirects=False).headers["location"] == home


def test_bearer_header_alone_does_not_open_the_console(client, make_staff):
    cw = make_staff("caseworker")
    r = client.get("/staff/queue", headers=cw, follow_redirects=False)
    assert r.status_code == 303


def test_expired_session_asks_to_sign_in_again(client, make_staff, monkeypatch):
    import datetime as dt

    from claims import staff as staff_mod
    from claims.models import utcnow

    cw = make_staff("caseworker")
    with session_scope() as s:
        user = s.get(StaffUser, cw.id)
        old, _ = staff_mod.issue_token(user, now=utcnow() - dt.timedelta(hours=3))
    client.cookies.set("restitution_staff", old)
    r = client.get("/staff/queue", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert "Your session has expired" in client.get(r.headers["location"]).text


def test_disabled_account_loses_its_session_at_once(client, make_staff):
    cw = make_staff("caseworker")
    signed_in(client, cw)
    with session_scope() as s:
        s.get(StaffUser, cw.id).disabled = True
    assert client.get("/staff/queue", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_and_its_cookie(client, make_staff):
    cw = make_staff("caseworker")
    signed_in(client, cw)
    copied = client.cookies.get("restitution_staff")
    r = post_form(client, "/staff/queue", "/staff/sign-out")
    assert r.status_code == 303 and r.headers["location"].startswith("/staff/sign-in")
    assert 'restitution_staff=""' in r.headers["set-cookie"] or \
        "max-age=0" in r.headers["set-cookie"].lower()
    client.cookies.clear()
    client.cookies.set("restitution_staff", copied)  # a copy of the cookie is revoked too
    assert client.get("/staff/queue", follow_redirects=False).status_code == 303


def test_sign_out_is_seen_by_every_server_process(client, make_staff, db_url):
    """The revocation lives in the database: another server process (a second app with its
    own memory) refuses the signed-out session, and so does the API's bearer check; the
    member signs in again normally."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from claims.models import RevokedToken

    cw = make_staff("caseworker")
    signed_in(client, cw)
    copied = client.cookies.get("restitution_staff")
    post_form(client, "/staff/queue", "/staff/sign-out")
    with session_scope() as s:
        assert s.query(RevokedToken).count() == 1
    with TestClient(create_app()) as other:
        other.cookies.set("restitution_staff", copied)
        assert other.get("/staff/queue", follow_redirects=False).status_code == 303
        r = other.get("/api/v1/review/claims", headers={"Authorization": f"Bearer {copied}"})
        assert r.status_code == 401
        signed_in(other, cw)
        assert other.get("/staff/queue").status_code == 200


def test_sign_out_needs_csrf(client, make_staff):
    signed_in(client, make_staff("caseworker"))
    r = client.post("/staff/sign-out", data={}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/staff/queue").status_code == 200


def _console_posts():
    from api.pages.staff import router

    return sorted({r.path for r in router.routes
                   if r.path.startswith("/staff") and "POST" in getattr(r, "methods", ())
                   and r.path != "/staff/sign-in"})


def test_every_console_form_refuses_a_missing_or_foreign_csrf_token(client, make_staff, engine):
    """Each POST route (with a role allowed to use it) answers 403 without the session's
    CSRF token and changes nothing."""
    role_of = {"/staff/claims": "caseworker", "/staff/rounds": "caseworker",
               "/staff/finance": "finance", "/staff/admin": "admin", "/staff/sign-out": "admin"}
    members = {r: make_staff(r) for r in ("caseworker", "finance", "admin")}
    other = make_staff("admin")
    signed_in(client, other)
    foreign = csrf_of(client.get("/staff/admin/users").text)  # another session's token
    paths = _console_posts()
    assert len(paths) >= 15, paths
    with session_scope(engine, write=False) as s:
        before = s.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    for path in paths:
        role = next(v for k, v in role_of.items() if path.startswith(k))
        signed_in(client, members[role])
        url = re.sub(r"\{[^}]+\}", "1", path)
        for token in (None, foreign, "x"):
            data = {} if token is None else {"csrf_token": token}
            r = client.post(url, data=data, follow_redirects=False)
            assert r.status_code == 403, (path, token, r.status_code)
            assert "CSRF" in r.text
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == before


# ------------------------------------------------------------------ role separation


PAGES = {
    "caseworker": ["/staff/queue", "/staff/rounds"],
    "finance": ["/staff/finance"],
    "admin": ["/staff/admin/users", "/staff/admin/blocked", "/staff/admin/insiders"],
    "auditor": ["/staff/audit", "/staff/audit/verify"],
}


@pytest.mark.parametrize("role", ["caseworker", "finance", "admin", "auditor"])
def test_each_role_sees_only_its_own_pages(client, make_staff, role):
    signed_in(client, make_staff(role))
    for owner, urls in PAGES.items():
        for url in urls:
            r = client.get(url, follow_redirects=False)
            allowed = owner == role or (role == "auditor")
            assert r.status_code == (200 if allowed else 403), (role, url, r.status_code)
            if not allowed:
                assert "Not allowed" in r.text and f"signed in as {role}" in r.text


def test_console_role_sets_are_the_apis(make_staff):
    from api import auth
    from api.pages import staff as pages
    from api.pages.staff_auth import roles_of

    assert roles_of(auth.Caseworker) == {"caseworker"}
    assert roles_of(auth.FinanceOrAuditor) == {"finance", "auditor"}
    for alias, api in ((pages.CaseworkerAction, auth.Caseworker),
                       (pages.CaseworkerPage, auth.CaseworkerOrAuditor),
                       (pages.FinanceAction, auth.Finance),
                       (pages.FinancePage, auth.FinanceOrAuditor),
                       (pages.AdminAction, auth.Admin), (pages.AdminPage, auth.AdminOrAuditor),
                       (pages.AuditorPage, auth.Auditor)):
        assert alias.__metadata__[0].dependency.roles == roles_of(api)


def test_auditor_reads_but_cannot_decide(client, make_staff, filed_claim, engine):
    claim = filed_claim(case="aud-case")
    aud = make_staff("auditor")
    signed_in(client, aud)
    page = client.get(f"/staff/claims/{claim.reference}")
    assert page.status_code == 200 and "Record the decision" not in page.text
    token = csrf_of(page.text)  # the auditor's own (sign-out) token
    r = client.post(f"/staff/claims/{claim.reference}/decision",
                    data={"decision": "approve", "reason": "x", "recognized_loss": "10",
                          "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 403
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, claim.id).status == "flagged"


def test_finance_cannot_decide_claims(client, make_staff, filed_claim, engine):
    claim = filed_claim(case="fin-case")
    signed_in(client, make_staff("finance"))
    token = csrf_of(client.get("/staff/finance").text)
    r = client.post(f"/staff/claims/{claim.reference}/decision",
                    data={"decision": "approve", "reason": "x", "recognized_loss": "10",
                          "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 403
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, claim.id).status == "flagged"


# ------------------------------------------------------------------ caseworker


def test_queue_filters_and_pages(client, make_staff, filed_claim, monkeypatch):
    from api.pages.staff import queue as pages

    monkeypatch.setattr(pages, "QUEUE_PAGE", 2)
    refs = [filed_claim(case="q-case").reference for _ in range(3)]
    other = filed_claim(case="q-other", flags=("insider",)).reference
    approved = filed_claim(case="q-case", status="approved", flags=()).reference
    signed_in(client, make_staff("caseworker"))
    r = client.get("/staff/queue?case_id=q-case&status=flagged")
    assert r.status_code == 200
    assert "3 claims" in r.text and "page 1 of 2" in r.text
    assert refs[0] in r.text and refs[1] in r.text and refs[2] not in r.text
    assert other not in r.text and approved not in r.text
    assert "page=2" in r.text
    r2 = client.get("/staff/queue?case_id=q-case&status=flagged&page=2")
    assert refs[2] in r2.text and refs[0] not in r2.text
    r3 = client.get("/staff/queue?flag=insider")
    assert other in r3.text and refs[0] not in r3.text
    bad = client.get("/staff/queue?case_id=no-such-case")
    assert bad.status_code == 422 and "no such case" in bad.text


def test_claim_page_masks_the_iin_and_shows_ledger_and_flags(client, make_staff, filed_claim):
    from claims.validators import make_iin
    import datetime as dt

    iin = make_iin(dt.date(1985, 5, 17), "female", 4321)
    claim = filed_claim(case="c-case", iin=iin, flags=("amount_differs",), claimed_amount="1500",
                        ledger={"account_id": "ACC-LEDGER-1", "deposits": "1000",
                                "withdrawals": "200",
                                "entries": [("deposit", "1000", "2023-01-10T10:00:00+00:00",
                                             "0xabc123"),
                                            ("withdrawal", "200", "2023-02-01T10:00:00+00:00")]})
    signed_in(client, make_staff("caseworker"))
    r = client.get(f"/staff/claims/{claim.reference}")
    assert r.status_code == 200
    assert iin not in r.text
    assert claim.iin_masked in r.text
    assert "ACC-LEDGER-1" in r.text and "0xabc123" in r.text and "800" in r.text
    assert "differ by more than" in r.text  # the flag explained
    assert '<label for="reason">' in r.text and '<label for="recognized_loss">' in r.text
    assert client.get("/staff/claims/KZR-NONE-NONE").status_code == 404


def test_caseworker_approves_a_flagged_claim(client, make_staff, filed_claim, engine):
    claim = filed_claim(case="d-case", flags=("no_ledger_match",))
    cw = make_staff("caseworker")
    signed_in(client, cw)
    url = f"/staff/claims/{claim.reference}"
    # no recognized loss without a ledger match: the error beside the field, text kept
    r = post_form(client, url, url + "/decision",
                  {"decision": "approve", "reason": "bank statements seen"})
    assert r.status_code == 422
    assert 'id="recognized_loss-error"' in r.text and "bank statements seen" in r.text
    r = post_form(client, url, url + "/decision",
                  {"decision": "approve", "reason": "bank statements seen",
                   "recognized_loss": "abc"})
    assert r.status_code == 422 and 'id="recognized_loss-error"' in r.text
    r = post_form(client, url, url + "/decision",
                  {"decision": "approve", "reason": "bank statements seen",
                   "recognized_loss": "950.5"})
    assert r.status_code == 303 and r.headers["location"] == url + "?notice=decided"
    page = client.get(r.headers["location"])
    assert "Decision recorded." in page.text and "approve" in page.text
    with session_scope(engine, write=False) as s:
        c = s.get(Claim, claim.id)
        assert c.status == "approved" and c.recognized_loss == 950_500_000
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "claim.approved")
                       ).scalars().one()
        assert ev.actor == cw.username and ev.role == "caseworker"
    # deciding again: the rule's refusal on the page, nothing written
    r = post_form(client, url, url + "/decision", {"decision": "reject", "reason": "x"})
    assert r.status_code == 409


def test_request_info_and_settle(client, make_staff, filed_claim, engine):
    claim = filed_claim(case="s-case")
    disputed = filed_claim(case="s-case", status="disputed", flags=(), recognized_loss="100")
    signed_in(client, make_staff("caseworker"))
    url = f"/staff/claims/{claim.reference}"
    r = post_form(client, url, url + "/decision",
                  {"decision": "request_info", "reason": "send your statements"})
    assert r.status_code == 303
    url = f"/staff/claims/{disputed.reference}"
    page = client.get(url)
    assert "Settle the dispute" in page.text and "Record the decision" not in page.text
    r = post_form(client, url, url + "/settle", {"amount": "", "reason": "agreed"})
    assert r.status_code == 422 and 'id="settle_amount-error"' in r.text
    r = post_form(client, url, url + "/settle", {"amount": "120", "reason": "agreed"})
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, claim.id).status == "needs_info"
        d = s.get(Claim, disputed.id)
        assert d.status == "approved" and d.recognized_loss == 120_000_000


# ------------------------------------------------------------------ rounds


def test_two_caseworkers_prepare_and_approve_a_round(client, make_staff, filed_claim, engine):
    for loss in ("1000", "600"):
        filed_claim(case="r-case", status="approved", flags=(), recognized_loss=loss)
    filed_claim(case="r-case", status="disputed", flags=(), recognized_loss="400")
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    signed_in(client, cw1)
    # the preview: the solver's figures, nothing stored
    r = client.get("/staff/rounds/new?case_id=r-case&pool=600&method=pro-rata&min_payout=0")
    assert r.status_code == 200
    assert "0.3" in r.text and "30" in r.text and "480" in r.text and "120" in r.text
    assert "not stored yet" in r.text
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(DistributionRound)).scalar_one() == 0
    bad = client.get("/staff/rounds/new?case_id=r-case&pool=abc")
    assert bad.status_code == 422 and 'id="pool-error"' in bad.text
    token = csrf_of(r.text)
    r = client.post("/staff/rounds", data={"case_id": "r-case", "pool": "600",
                                           "method": "pro-rata", "min_payout": "0",
                                           "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    round_url = r.headers["location"].split("?")[0]
    page = client.get(round_url)
    assert "was prepared by you; another caseworker must approve it" in page.text
    assert "Approve this round" not in page.text
    assert f'href="{round_url}/report"' in page.text
    # the preparer cannot approve even by posting
    r = post_form(client, round_url, round_url + "/approve")
    assert r.status_code == 403 and "another caseworker" in r.text
    signed_in(client, cw2)
    page = client.get(round_url)
    assert "Approve this round" in page.text
    r = post_form(client, round_url, round_url + "/approve")
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        rnd = s.execute(select(DistributionRound)).scalars().one()
        assert (rnd.status, rnd.prepared_by, rnd.approved_by) == ("approved", cw1.id, cw2.id)
        assert rnd.allocated == 480_000_000
    # the report page (another module, bearer auth) opens with the console's session
    rep = client.get(round_url + "/report")
    assert rep.status_code == 200 and "<svg" in rep.text
    assert client.get(f"/api/v1/rounds/{rnd.id}/plan.csv").status_code == 200
    # but the session is not a bearer token for the rest of the API
    assert client.get(f"/api/v1/rounds/{rnd.id}").status_code == 401


def test_prepare_refusal_is_shown(client, make_staff, filed_claim):
    filed_claim(case="empty-case")  # flagged only: nothing payable
    signed_in(client, make_staff("caseworker"))
    r = client.get("/staff/rounds/new?case_id=empty-case&pool=100")
    assert r.status_code == 409 and "no approved or disputed claim" in r.text


# ------------------------------------------------------------------ finance


def _approved_round(filed_claim, make_staff, engine, case="f-case"):
    from claims import rounds

    for loss in ("100", "50"):
        filed_claim(case=case, status="approved", flags=(), recognized_loss=loss)
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    with session_scope(engine) as s:
        rnd = rounds.prepare_round(s, case, 150_000_000, actor=cw1.actor)
        rid = rnd.id
    with session_scope(engine) as s:
        rounds.approve_round(s, rid, actor=cw2.actor)
    return rid


def test_finance_releases_with_a_confirmation_step(client, make_staff, filed_claim, engine):
    rid = _approved_round(filed_claim, make_staff, engine)
    fin = make_staff("finance")
    signed_in(client, fin)
    lst = client.get("/staff/finance")
    assert f'href="/staff/finance/rounds/{rid}"' in lst.text
    page = client.get(f"/staff/finance/rounds/{rid}")
    assert "Release payouts" in page.text
    confirm = client.get(f"/staff/finance/rounds/{rid}/release")
    assert confirm.status_code == 200
    assert "<strong>2</strong> payouts totalling <strong>150 USDT</strong>" in confirm.text
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(Payout)).scalar_one() == 0
    token = csrf_of(confirm.text)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', confirm.text).group(1)
    data = {"csrf_token": token, "idempotency_key": key}
    r = client.post(f"/staff/finance/rounds/{rid}/release", data=data, follow_redirects=False)
    assert r.status_code == 303
    # the same form twice (a double click) releases once
    r2 = client.post(f"/staff/finance/rounds/{rid}/release", data=data, follow_redirects=False)
    assert r2.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(Payout)).scalar_one() == 2
        pid = s.execute(select(Payout.id).order_by(Payout.id)).scalars().first()
    progress = client.get(f"/staff/finance/rounds/{rid}")
    assert 'http-equiv="refresh"' in progress.text  # pending payouts: it refreshes
    assert re.search(r'data-state="pending"><td>pending</td><td class="num">2</td>', progress.text)
    # another release with a new key: nothing left → the refusal on the page
    r3 = client.post(f"/staff/finance/rounds/{rid}/release",
                     data={"csrf_token": token, "idempotency_key": "another-key-123"})
    assert r3.status_code == 409
    # hold and resume a payout
    r = post_form(client, f"/staff/finance/rounds/{rid}", f"/staff/finance/payouts/{pid}/hold",
                  {"reason": "checking"})
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.get(Payout, pid).state == "held"
    r = post_form(client, f"/staff/finance/rounds/{rid}", f"/staff/finance/payouts/{pid}/resume")
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.get(Payout, pid).state == "pending"
    r = post_form(client, f"/staff/finance/rounds/{rid}", f"/staff/finance/payouts/{pid}/retry")
    assert r.status_code == 409  # not failed


def test_custodian_instructions_and_confirmations(client, make_staff, filed_claim, engine):
    rid = _approved_round(filed_claim, make_staff, engine, case="t-case")  # TRON claims
    signed_in(client, make_staff("finance"))
    confirm = client.get(f"/staff/finance/rounds/{rid}/release")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', confirm.text).group(1)
    client.post(f"/staff/finance/rounds/{rid}/release",
                data={"csrf_token": csrf_of(confirm.text), "idempotency_key": key})
    csv_r = client.get(f"/staff/finance/rounds/{rid}/instructions.csv")
    assert csv_r.status_code == 200 and csv_r.headers["content-type"].startswith("text/csv")
    lines = csv_r.text.strip().splitlines()
    assert lines[0] == "payout_id,network,address,amount,idempotency_key" and len(lines) == 3
    body = "payout_id,tx_id,amount\n" + "\n".join(
        f"{ln.split(',')[0]},tx-{i},{ln.split(',')[3]}" for i, ln in enumerate(lines[1:]))
    r = post_form(client, f"/staff/finance/rounds/{rid}",
                  f"/staff/finance/rounds/{rid}/confirmations",
                  files={"file": ("c.csv", body.encode(), "text/csv")})
    assert r.status_code == 200 and "2 confirmed" in r.text
    with session_scope(engine, write=False) as s:
        assert set(s.execute(select(Payout.state)).scalars()) == {"confirmed"}
    bad = post_form(client, f"/staff/finance/rounds/{rid}",
                    f"/staff/finance/rounds/{rid}/confirmations",
                    files={"file": ("c.csv", b"nonsense\n1,2\n", "text/csv")})
    assert bad.status_code == 422


# ------------------------------------------------------------------ admin, auditor


def test_admin_manages_users_blocked_and_insiders(client, make_staff, filed_claim, engine):
    from claims.validators import make_tron_address

    admin = make_staff("admin")
    signed_in(client, admin)
    r = post_form(client, "/staff/admin/users", "/staff/admin/users",
                  {"username": "newbie", "role": "finance", "password": "short"})
    assert r.status_code == 422 and 'id="new-password-error"' in r.text
    r = post_form(client, "/staff/admin/users", "/staff/admin/users",
                  {"username": "newbie", "role": "finance", "password": "a long password 1",
                   "totp": "1"})
    assert r.status_code == 200 and "newbie" in r.text and "otpauth://" in r.text
    r = post_form(client, "/staff/admin/users", "/staff/admin/users/newbie/disable")
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.execute(select(StaffUser.disabled).where(StaffUser.username == "newbie")
                         ).scalar_one() is True
    r = post_form(client, "/staff/admin/users", "/staff/admin/users/newbie/enable")
    assert r.status_code == 303
    r = post_form(client, "/staff/admin/users", f"/staff/admin/users/{admin.username}/disable")
    assert r.status_code == 403

    address = make_tron_address(b"\x07" * 20)
    r = post_form(client, "/staff/admin/blocked", "/staff/admin/blocked",
                  {"address": "not-an-address", "reason": "fraud"})
    assert r.status_code == 422 and 'id="address-error"' in r.text
    r = post_form(client, "/staff/admin/blocked", "/staff/admin/blocked",
                  {"address": address, "reason": "sanctioned"})
    assert r.status_code == 303
    assert address in client.get("/staff/admin/blocked").text
    r = post_form(client, "/staff/admin/blocked", "/staff/admin/blocked/remove",
                  {"address": address})
    assert r.status_code == 303
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(BlockedAddress)).scalar_one() == 0

    filed_claim(case="i-case", ledger={"account_id": "PROMO-1"})
    r = post_form(client, "/staff/admin/insiders", "/staff/admin/insiders",
                  {"case_id": "i-case", "account_id": "NOPE", "reason": "promoter"})
    assert r.status_code == 404
    r = post_form(client, "/staff/admin/insiders", "/staff/admin/insiders",
                  {"case_id": "i-case", "account_id": "PROMO-1", "reason": "promoter"})
    assert r.status_code == 303
    page = client.get("/staff/admin/insiders")
    assert "PROMO-1" in page.text and "promoter" in page.text


def test_auditor_reads_the_trail_and_verifies_the_chain(client, make_staff, filed_claim,
                                                        engine, monkeypatch):
    from api.pages.staff import audit as pages

    monkeypatch.setattr(pages, "AUDIT_PAGE", 2)
    admin = make_staff("admin")
    from claims.blocked import add_blocked
    from claims.validators import make_tron_address

    with session_scope(engine) as s:
        for i in range(3):
            add_blocked(s, make_tron_address(bytes([i + 1]) * 20), f"r{i}", actor=admin.actor)
    aud = make_staff("auditor")
    signed_in(client, aud)
    r = client.get("/staff/audit")
    assert r.status_code == 200 and "3 events" in r.text and "page 1 of 2" in r.text
    assert "blocked.add" in r.text and "Sign out" in r.text
    assert "Older" in r.text and "Add" not in r.text.split("Audit trail", 2)[-1][:0]
    v = client.get("/staff/audit/verify")
    assert "The chain is intact: 3 events checked." in v.text
    # the auditor sees the admin lists without their forms
    users = client.get("/staff/admin/users")
    assert users.status_code == 200 and "Add a staff member" not in users.text
    with session_scope(engine) as s:
        s.execute(AuditEvent.__table__.update().where(AuditEvent.id == 2)
                  .values(subject_id="tampered"))
    v = client.get("/staff/audit/verify")
    assert "broken at event 2" in v.text
