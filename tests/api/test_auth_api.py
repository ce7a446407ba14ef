"""POST /api/v1/auth/token and the bearer-token dependencies (api/auth.py)."""

from __future__ import annotations

import datetime as dt
import logging

import jwt
import pyotp
from sqlalchemy import select

from api.auth import CurrentStaff, StaffReader
from claims import staff
from claims.audit import Actor
from claims.db import session_scope
from claims.models import StaffUser

QUEUE = "/api/v1/review/claims"
TOKEN = "/api/v1/auth/token"


def sign_in(client, username, password, totp=None):
    data = {"username": username, "password": password}
    if totp is not None:
        data["totp"] = totp
    return client.post(TOKEN, data=data)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_password_flow_issues_a_working_bearer_token(client, make_staff):
    who = make_staff("caseworker")
    r = sign_in(client, who.username, who.password)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] >= 900
    assert client.get(QUEUE, headers=bearer(body["access_token"])).status_code == 200


def test_grant_type_other_than_password_is_refused(client, make_staff):
    who = make_staff("caseworker")
    r = client.post(TOKEN, data={"username": who.username, "password": who.password,
                                 "grant_type": "client_credentials"})
    assert_problem(r, 422)


def test_wrong_password_and_unknown_user_answer_the_same_401(client, make_staff):
    who = make_staff("caseworker")
    wrong = sign_in(client, who.username, "not the password")
    unknown = sign_in(client, "nobody", "not the password")
    for r in (wrong, unknown):
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    assert wrong.json() == unknown.json()


def test_missing_fields_are_422(client):
    body = assert_problem(client.post(TOKEN, data={"username": "x"}), 422)
    assert [e["field"] for e in body["errors"]] == ["password"]


def test_disabled_account_cannot_sign_in_and_its_tokens_stop(client, make_staff, engine):
    who = make_staff("caseworker")
    assert client.get(QUEUE, headers=who).status_code == 200
    with session_scope(engine) as s:
        staff.disable_user(s, who.username, actor=Actor.operator())
    assert_problem(sign_in(client, who.username, who.password), 401)
    assert_problem(client.get(QUEUE, headers=who), 401)


def test_totp_required_valid_invalid(client, make_staff):
    who = make_staff("caseworker", totp=True)
    body = assert_problem(sign_in(client, who.username, who.password), 401)
    assert "totp" in body["detail"]
    code = pyotp.TOTP(who.totp_secret).now()
    wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
    assert_problem(sign_in(client, who.username, who.password, totp=wrong), 401)
    r = sign_in(client, who.username, who.password, totp=code)
    assert r.status_code == 200, r.text


def test_repeated_failures_429_with_retry_after_then_lock_out_lifted_by_enable(
    client, make_staff, engine, monkeypatch
):
    who = make_staff("finance")
    now = [dt.datetime.now(dt.UTC)]
    monkeypatch.setattr(staff, "clock", lambda: now[0])
    codes = []
    for _ in range(staff.LOCK_AFTER):
        r = sign_in(client, who.username, "wrong password!!")
        codes.append(r.status_code)
        if r.status_code == 429:
            assert_problem(r, 429)
            retry = int(r.headers["retry-after"])
            assert retry > 0
            # while throttled, even the right password is answered 429
            again = sign_in(client, who.username, who.password)
            assert again.status_code == 429 and int(again.headers["retry-after"]) <= retry
            now[0] += dt.timedelta(seconds=retry)
    assert codes == [401] * (staff.THROTTLE_AFTER - 1) + [429] * (
        staff.LOCK_AFTER - staff.THROTTLE_AFTER + 1)
    # locked out: waiting does not help
    now[0] += dt.timedelta(days=7)
    r = sign_in(client, who.username, who.password)
    assert r.status_code == 429 and "administrator" in r.json()["detail"]
    assert int(r.headers["retry-after"]) == staff.LOCKOUT_RETRY_AFTER
    with session_scope(engine) as s:
        staff.enable_user(s, who.username, actor=Actor.operator())
    assert sign_in(client, who.username, who.password).status_code == 200


def test_failed_sign_ins_are_logged_without_secrets(client, make_staff, caplog):
    who = make_staff("caseworker")
    caplog.set_level(logging.WARNING, logger="restitution.security")
    sign_in(client, who.username, "Sup3r-secret-guess")
    client.get(QUEUE, headers=bearer("eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXRva2Vu"))
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "restitution.security")
    assert f"user={who.username} reason=wrong_password" in text
    assert "bad bearer token on GET /api/v1/review/claims" in text
    assert "Sup3r-secret-guess" not in text and "c2VjcmV0LXRva2Vu" not in text


# ------------------------------------------------------------------ tokens on a protected route


def _claims(headers):
    return jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})


def test_bad_tokens_are_401(client, make_staff, engine):
    who = make_staff("caseworker")
    c = _claims(who)
    key = staff._signing_key()
    with session_scope(engine, write=False) as s:
        user = s.get(StaffUser, who.id)
    expired, _ = staff.issue_token(user, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    tokens = {
        "expired": expired,
        "wrong aud": jwt.encode({**c, "aud": "restitution-victims"}, key, algorithm="HS256"),
        "alg none": jwt.encode(c, None, algorithm="none"),
        "HS512": jwt.encode(c, key * 2, algorithm="HS512"),
        "wrong key": jwt.encode(c, b"x" * 32, algorithm="HS256"),
        "unknown user": jwt.encode({**c, "sub": "999999"}, key, algorithm="HS256"),
        "garbage": "abc",
    }
    for name, token in tokens.items():
        r = client.get(QUEUE, headers=bearer(token))
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"] == "Bearer", name
    assert client.get(QUEUE, headers=who).status_code == 200
    assert_problem(client.get(QUEUE), 401)
    assert_problem(client.get(QUEUE, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)


def test_token_issued_before_a_password_reset_is_refused(client, make_staff, engine):
    who = make_staff("auditor")
    assert client.get(QUEUE, headers=who).status_code == 200
    with session_scope(engine) as s:
        staff.reset_password(s, who.username, "a fresh passphrase!", actor=Actor.operator())
    assert_problem(client.get(QUEUE, headers=who), 401)
    r = sign_in(client, who.username, "a fresh passphrase!")
    assert client.get(QUEUE, headers=bearer(r.json()["access_token"])).status_code == 200


def test_role_comes_from_the_account_not_the_token(client, make_staff, engine):
    """A token minted with another role claim (same key) still acts as the account's role."""
    who = make_staff("finance")
    forged = jwt.encode({**_claims(who), "role": "caseworker"}, staff._signing_key(),
                        algorithm="HS256")
    assert_problem(client.get(QUEUE, headers=bearer(forged)), 403)


# ------------------------------------------------------------------ deny by default


def test_staff_router_route_without_roles_is_closed(db_url, make_staff):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api import problems
    from api.auth import staff_router

    router = staff_router()

    @router.get("/forgot-roles")
    def forgot(staff_member: CurrentStaff):
        return {"ok": True}

    @router.get("/open-to-staff")
    def fine(staff_member: StaffReader):
        return {"user": staff_member.username}

    app = FastAPI()
    problems.install(app)
    app.include_router(router)
    with TestClient(app) as c:
        for role in ("caseworker", "finance", "admin", "auditor"):
            h = make_staff(role)
            assert c.get("/forgot-roles", headers=h).status_code == 403
            assert c.get("/open-to-staff", headers=h).json() == {"user": h.username}
        assert c.get("/forgot-roles").status_code == 401


def test_openapi_documents_the_password_flow(client):
    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["StaffPassword"]
    assert scheme["flows"]["password"]["tokenUrl"] == TOKEN
    op = spec["paths"]["/api/v1/review/claims"]["get"]
    assert {"StaffPassword": []} in op["security"]
    assert {"401", "403", "422"} <= set(op["responses"])


def test_locked_row_state_visible_in_the_database(client, make_staff, engine):
    who = make_staff("admin")
    for _ in range(3):
        sign_in(client, who.username, "wrong password!!")
    with session_scope(engine, write=False) as s:
        row = s.execute(select(StaffUser).where(StaffUser.username == who.username)).scalar_one()
    assert row.failed_logins == 3 and row.last_failed_at is not None and row.locked_until is None


def test_hostile_user_names_are_just_unknown(client):
    for name in ("a\x00b", "x" * 200, "Robert'); DROP TABLE staff_user;--"):
        r = sign_in(client, name, "whatever password")
        assert r.status_code == 401, (name, r.text)
