"""Staff accounts, sign-in policy and tokens (claims/staff.py)."""

from __future__ import annotations

import datetime as dt
import logging

import jwt
import pyotp
import pytest
from sqlalchemy import select

from claims import staff
from claims.audit import Actor
from claims.db import is_sqlite, session_scope
from claims.errors import AuthFailed, Conflict, InvalidInput, NotFound, TooManyAttempts
from claims.models import AuditEvent, StaffUser

PASSWORD = "a long enough passphrase"
OP = Actor.operator()


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Cheap argon2 parameters: the policy under test is ours, not argon2's cost."""
    from argon2 import PasswordHasher

    from claims import crypto

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    staff._unknown.clear()
    yield
    staff._unknown.clear()


@pytest.fixture
def clock(monkeypatch):
    """A movable clock for the sign-in policy."""

    class Clock:
        now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)

        def advance(self, **kw):
            self.now += dt.timedelta(**kw)

    c = Clock()
    monkeypatch.setattr(staff, "clock", lambda: c.now)
    return c


def add(engine, name="alice", role="caseworker", password=PASSWORD, totp=False):
    with session_scope(engine) as s:
        return staff.create_user(s, name, role, password, totp, actor=OP)


def sign_in(engine, name="alice", password=PASSWORD, totp=None):
    """Like cli.common.sign_in_as: inside session_scope, which rolls back on an exception."""
    with session_scope(engine) as s:
        return staff.authenticate(s, name, password, totp=totp)


def user_row(engine, name="alice") -> StaffUser:
    with session_scope(engine, write=False) as s:
        return s.execute(select(StaffUser).where(StaffUser.username == name)).scalar_one()


# ------------------------------------------------------------------ accounts


def test_create_user_hashes_password_and_audits(engine):
    new = add(engine)
    assert new.totp_secret is None and new.totp_uri is None
    row = user_row(engine)
    assert row.role == "caseworker" and PASSWORD not in row.password_hash
    assert row.password_hash.startswith("$argon2id$")
    with session_scope(engine, write=False) as s:
        ev = s.execute(select(AuditEvent).where(AuditEvent.action == "staff.created")).scalar_one()
    assert ev.subject_id == "alice" and ev.after == {"username": "alice", "role": "caseworker",
                                                     "totp": False}
    assert ev.role == "operator"
    assert PASSWORD not in str(ev.after)


def test_create_user_validation_names_every_field(engine):
    with session_scope(engine) as s, pytest.raises(InvalidInput) as exc:
        staff.create_user(s, "Bad Name", "boss", "short", False, actor=OP)
    assert [e["field"] for e in exc.value.errors] == ["username", "role", "password"]
    with session_scope(engine) as s, pytest.raises(InvalidInput) as exc:
        staff.create_user(s, "bob", "finance", "x" * 11, False, actor=OP)
    assert exc.value.errors[0]["field"] == "password"
    add(engine, "bob", "finance", "x" * 12)  # exactly 12 is enough
    with session_scope(engine) as s, pytest.raises(Conflict):
        staff.create_user(s, "bob", "admin", PASSWORD, False, actor=OP)


def test_create_user_with_totp_returns_enrolment_and_stores_it_encrypted(engine):
    new = add(engine, totp=True)
    assert new.totp_secret and new.totp_uri.startswith("otpauth://totp/")
    assert "alice" in new.totp_uri and "Restitution" in new.totp_uri
    row = user_row(engine)
    assert row.totp_secret_encrypted and new.totp_secret.encode() not in row.totp_secret_encrypted


def test_disable_enable_reset_unknown_user(engine):
    with session_scope(engine) as s:
        for fn in (staff.disable_user, staff.enable_user):
            with pytest.raises(NotFound):
                fn(s, "nobody", actor=OP)
        with pytest.raises(NotFound):
            staff.reset_password(s, "nobody", PASSWORD, actor=OP)


def test_list_users(engine):
    add(engine, "alice")
    add(engine, "zed", "auditor", totp=True)
    with session_scope(engine) as s:
        staff.disable_user(s, "alice", actor=OP)
        rows = staff.list_users(s)
    assert [(r["username"], r["role"], r["disabled"], r["totp"]) for r in rows] == [
        ("alice", "caseworker", True, False), ("zed", "auditor", False, True)]


# ------------------------------------------------------------------ sign-in


def test_good_sign_in_returns_the_user(engine):
    add(engine)
    user = sign_in(engine)
    assert user.username == "alice" and user.role == "caseworker"


def test_wrong_password_and_unknown_user_get_the_same_answer(engine, caplog):
    add(engine)
    with pytest.raises(AuthFailed) as wrong:
        sign_in(engine, password="not the password!")
    with pytest.raises(AuthFailed) as unknown:
        sign_in(engine, name="mallory", password="not the password!")
    assert type(wrong.value) is type(unknown.value)
    assert wrong.value.detail == unknown.value.detail == staff.BAD_CREDENTIALS


def test_disabled_user_cannot_sign_in(engine):
    add(engine)
    with session_scope(engine) as s:
        staff.disable_user(s, "alice", actor=OP)
    with pytest.raises(AuthFailed, match="disabled"):
        sign_in(engine)
    with session_scope(engine) as s:
        staff.enable_user(s, "alice", actor=OP)
    assert sign_in(engine).username == "alice"


def test_totp_required_valid_invalid(engine, clock):
    secret = add(engine, totp=True).totp_secret
    totp = pyotp.TOTP(secret)
    with pytest.raises(AuthFailed, match="one-time code"):
        sign_in(engine)
    good = totp.at(clock.now)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    with pytest.raises(AuthFailed) as exc:
        sign_in(engine, totp=wrong)
    assert exc.value.detail == staff.BAD_CREDENTIALS
    with pytest.raises(AuthFailed):  # two steps of drift are too many
        sign_in(engine, totp=totp.at(clock.now - dt.timedelta(seconds=60)))
    # one 30 s step of drift is accepted
    assert sign_in(engine, totp=totp.at(clock.now - dt.timedelta(seconds=30))).username == "alice"
    # a good code with a wrong password is still refused
    with pytest.raises(AuthFailed):
        sign_in(engine, password="wrong password!!", totp=good)
    assert sign_in(engine, totp=good).username == "alice"
    assert user_row(engine).failed_logins == 0


def test_a_totp_code_works_once(engine, clock):
    secret = add(engine, totp=True).totp_secret
    code = pyotp.TOTP(secret).at(clock.now)
    assert sign_in(engine, totp=code)
    with pytest.raises(AuthFailed):
        sign_in(engine, totp=code)  # replayed within its validity
    with pytest.raises(AuthFailed):  # nor an older step once a newer one was used
        sign_in(engine, totp=pyotp.TOTP(secret).at(clock.now - dt.timedelta(seconds=30)))
    assert user_row(engine).failed_logins == 2
    clock.advance(seconds=30)
    assert sign_in(engine, totp=pyotp.TOTP(secret).at(clock.now)).username == "alice"
    assert user_row(engine).failed_logins == 0


def test_failures_are_counted_durably_though_the_caller_rolls_back(engine, clock):
    add(engine)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            sign_in(engine, password="wrong password!!")
    row = user_row(engine)
    assert row.failed_logins == 3 and row.last_failed_at == clock.now
    sign_in(engine)  # success resets the count
    assert user_row(engine).failed_logins == 0


def test_throttle_after_five_failures_with_retry_after(engine, clock):
    add(engine)
    for _ in range(staff.THROTTLE_AFTER - 1):
        with pytest.raises(AuthFailed):
            sign_in(engine, password="wrong password!!")
    with pytest.raises(TooManyAttempts) as exc:
        sign_in(engine, password="wrong password!!")
    assert exc.value.retry_after == 30
    # while throttled even the right password is answered 429, and not counted
    clock.advance(seconds=10)
    with pytest.raises(TooManyAttempts) as exc:
        sign_in(engine)
    assert exc.value.retry_after == 20
    assert user_row(engine).failed_logins == staff.THROTTLE_AFTER
    clock.advance(seconds=21)
    assert sign_in(engine).username == "alice"
    assert user_row(engine).failed_logins == 0


def test_throttle_grows_then_locks_out_until_enable(engine, clock):
    add(engine)
    waits = []
    for i in range(staff.LOCK_AFTER):
        with pytest.raises((AuthFailed, TooManyAttempts)) as exc:
            sign_in(engine, password="wrong password!!")
        if isinstance(exc.value, TooManyAttempts):
            waits.append(exc.value.retry_after)
            clock.advance(seconds=exc.value.retry_after)
    assert waits[:5] == [30, 60, 120, 240, 480]
    assert len(waits) == staff.LOCK_AFTER - staff.THROTTLE_AFTER + 1
    # locked out: time does not lift it, nor the right password
    clock.advance(days=30)
    with pytest.raises(TooManyAttempts, match="administrator") as exc:
        sign_in(engine)
    assert exc.value.retry_after == staff.LOCKOUT_RETRY_AFTER
    with session_scope(engine, write=False) as s:
        assert [r["locked"] for r in staff.list_users(s)] == [True]
        locked = s.execute(select(AuditEvent).where(AuditEvent.action == "staff.locked_out")).scalars().all()
    assert len(locked) == 1
    with session_scope(engine) as s:
        staff.enable_user(s, "alice", actor=OP)
    assert sign_in(engine).username == "alice"


def test_reset_password_lifts_lock_out(engine, clock):
    add(engine)
    with session_scope(engine) as s:
        user = s.execute(select(StaffUser)).scalar_one()
        user.failed_logins, user.locked_until = staff.LOCK_AFTER, staff.LOCKED_OUT
    with pytest.raises(TooManyAttempts):
        sign_in(engine)
    with session_scope(engine) as s:
        staff.reset_password(s, "alice", "a brand new passphrase", actor=OP)
    with pytest.raises(AuthFailed):
        sign_in(engine)  # the old password
    assert sign_in(engine, password="a brand new passphrase")


def test_failures_outside_the_window_start_the_count_again(engine, clock):
    add(engine)
    for _ in range(staff.THROTTLE_AFTER - 1):
        with pytest.raises(AuthFailed):
            sign_in(engine, password="wrong password!!")
    clock.advance(minutes=16)
    with pytest.raises(AuthFailed):  # counts as the first, not the fifth
        sign_in(engine, password="wrong password!!")
    assert user_row(engine).failed_logins == 1


def test_unknown_names_are_throttled_like_accounts(engine, clock):
    for _ in range(staff.THROTTLE_AFTER - 1):
        with pytest.raises(AuthFailed):
            sign_in(engine, name="ghost", password="wrong password!!")
    with pytest.raises(TooManyAttempts) as exc:
        sign_in(engine, name="ghost", password="wrong password!!")
    assert exc.value.retry_after == 30


def test_failures_are_logged_without_secrets(engine, clock, caplog):
    add(engine, totp=True)
    caplog.set_level(logging.WARNING, logger="restitution.security")
    with pytest.raises(AuthFailed):
        sign_in(engine, password="hunter2-wrong-pass", totp="123456")
    with pytest.raises(AuthFailed):
        sign_in(engine, name="my-password-typed-here", password="hunter2-wrong-pass")
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "restitution.security")
    assert "user=alice reason=wrong_password" in text
    assert "unknown user fingerprint=" in text
    for secret in ("hunter2-wrong-pass", "123456", "my-password-typed-here"):
        assert secret not in text


def test_authenticate_in_a_session_already_writing(engine):
    """SQLite has one writer, so the bookkeeping transaction could not start: refused at
    once rather than waiting for the busy timeout. PostgreSQL takes it."""
    add(engine)
    with session_scope(engine) as s:
        s.execute(select(StaffUser.id)).all()
        if is_sqlite(engine):
            with pytest.raises(RuntimeError, match="before its session starts"):
                staff.authenticate(s, "alice", PASSWORD)
        else:
            assert staff.authenticate(s, "alice", PASSWORD).username == "alice"


# ------------------------------------------------------------------ tokens


def _claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def test_token_round_trip_and_claims(engine):
    add(engine)
    user = sign_in(engine)
    token, expires_in = staff.issue_token(user)
    assert expires_in >= 15 * 60
    c = _claims(token)
    assert c["sub"] == str(user.id) and c["role"] == "caseworker"
    assert c["aud"] == "restitution-staff" and c["iss"] == "restitution"
    assert c["exp"] - c["iat"] == expires_in and c["jti"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    with session_scope(engine, write=False) as s:
        assert staff.staff_for_token(s, token).username == "alice"


def test_token_ttl_never_below_15_minutes(monkeypatch):
    from claims.settings import reset_settings

    monkeypatch.setenv("RESTITUTION_TOKEN_TTL_SECONDS", "60")
    reset_settings()
    try:
        assert staff.token_ttl() == 900
    finally:
        monkeypatch.delenv("RESTITUTION_TOKEN_TTL_SECONDS")
        reset_settings()


def _forge(claims, key, alg="HS256"):
    return jwt.encode(claims, key, algorithm=alg)


def test_tokens_refused(engine):
    add(engine)
    user = sign_in(engine)
    good, _ = staff.issue_token(user)
    c = _claims(good)
    key = staff._signing_key()
    expired, _ = staff.issue_token(user, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    unsigned_none = jwt.encode(c, None, algorithm="none")
    bad = {
        "expired": expired,
        "wrong aud": _forge({**c, "aud": "someone-else"}, key),
        "no aud": _forge({k: v for k, v in c.items() if k != "aud"}, key),
        "no exp": _forge({k: v for k, v in c.items() if k != "exp"}, key),
        "wrong iss": _forge({**c, "iss": "elsewhere"}, key),
        "alg none": unsigned_none,
        "HS512": _forge(c, key + b"\x00" * 32, "HS512"),
        "other key": _forge(c, b"k" * 32),
        "garbage": "not.a.token",
        "tampered role": good.split(".")[0] + "." + _forge({**c, "role": "admin"}, key).split(".")[1]
        + "." + good.split(".")[2],
    }
    with session_scope(engine, write=False) as s:
        for name, token in bad.items():
            with pytest.raises(AuthFailed):
                staff.staff_for_token(s, token)
                pytest.fail(f"{name} accepted")
        assert staff.staff_for_token(s, good).id == user.id


@pytest.mark.filterwarnings("ignore:The HMAC key")
def test_hs512_with_the_right_key_is_refused_too(engine):
    """The allow-list, not the key, refuses it."""
    add(engine)
    user = sign_in(engine)
    c = _claims(staff.issue_token(user)[0])
    with pytest.raises(AuthFailed):
        staff.decode_token(_forge(c, staff._signing_key(), "HS512"))


def test_token_refused_after_password_reset_and_when_disabled(engine):
    add(engine)
    add(engine, "bob")
    alice = sign_in(engine)
    old, _ = staff.issue_token(alice)
    with session_scope(engine) as s:
        staff.reset_password(s, "alice", "another good passphrase", actor=OP)
    with session_scope(engine, write=False) as s, pytest.raises(AuthFailed, match="password changed"):
        staff.staff_for_token(s, old)
    fresh, _ = staff.issue_token(sign_in(engine, password="another good passphrase"))
    bob_token, _ = staff.issue_token(sign_in(engine, "bob"))
    with session_scope(engine) as s:
        staff.disable_user(s, "alice", actor=OP)
    with session_scope(engine, write=False) as s:
        with pytest.raises(AuthFailed, match="disabled"):
            staff.staff_for_token(s, fresh)
        assert staff.staff_for_token(s, bob_token).username == "bob"
