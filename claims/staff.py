"""Staff accounts, sign-in and bearer tokens (docs/api.md "Staff sign-in"; the roles:
docs/lifecycle.md "Who may do what (four eyes)"; the ``restitution users`` commands:
docs/operations.md).

Roles: ``caseworker``, ``finance``, ``admin``, ``auditor`` (reads everything, changes nothing).
Passwords are argon2id hashes (:mod:`claims.crypto`), at least 12 characters. An optional TOTP
second factor (RFC 6238, 30-second steps, one step of clock drift accepted) is enrolled at
creation; its secret is stored encrypted with the PII key.

Sign-in (:func:`authenticate`)
------------------------------
- An unknown user costs the same password hashing as a known one and gets the same answer as
  a wrong password (no user enumeration).
- Repeated failures: the consecutive-failure counter lives on the account (``failed_logins``,
  ``last_failed_at``). A failure more than :data:`FAILURE_WINDOW` after the previous one starts
  the count again. From the :data:`THROTTLE_AFTER`-th failure on, the account is throttled:
  every attempt, right password or not, is answered :class:`TooManyAttempts` with a
  ``retry_after`` (30 s, doubling per further failure, at most 15 min) until ``locked_until``.
  The :data:`LOCK_AFTER`-th failure locks the account out until an administrator lifts it
  (``restitution users enable NAME`` or ``users reset-password NAME``); the lock-out is audited.
  Unknown user names are throttled the same way in memory, so the answers do not tell them apart.
- The counter must survive the refusal although the caller's transaction rolls back when
  :func:`authenticate` raises (``cli.common.sign_in_as`` runs it inside ``session_scope``).
  So :func:`authenticate` does its own bookkeeping in short transactions of its own on the
  session's engine and only reads the signed-in user through the caller's session at the end.
  Call it before the caller's session has started a transaction (on SQLite a write
  transaction holds the database lock the bookkeeping needs): first thing in a fresh session.
- Every refusal is logged on the ``restitution.security`` logger with the reason and the
  user name (an unknown name only as a short fingerprint: people type passwords into the
  user-name field), never a password, code or token.

Tokens (:func:`issue_token`, :func:`staff_for_token`)
-----------------------------------------------------
HS256 JWTs (pyjwt) keyed by a key derived from ``RESTITUTION_SECRET_KEY``, with ``sub`` (the
staff id), ``role``, ``aud`` ``restitution-staff``, ``iss``, ``iat``, ``exp``
(``RESTITUTION_TOKEN_TTL_SECONDS``, never under 15 minutes), ``jti`` and ``pwv`` (the
password version). Decoding allows only HS256 and requires ``exp``/``aud``/``iss``. A token
of a disabled user, or issued before the user's last password change, is refused. The role
used for authorization is the account's current role, not the token's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.crypto import (
    decrypt,
    dummy_verify,
    encrypt,
    hash_password,
    new_token,
    verify_password,
)
from claims.db import for_update, get_one, is_sqlite
from claims.errors import AuthFailed, Conflict, InvalidInput, TooManyAttempts
from claims.models import RevokedToken, Role, StaffUser, utcnow
from claims.settings import get_settings

log = logging.getLogger("restitution.security")

ROLES: tuple[str, ...] = tuple(r.value for r in Role)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 takes anything; refuse absurd bodies
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")

THROTTLE_AFTER = 5  # consecutive failures → 429 with Retry-After
LOCK_AFTER = 10  # consecutive failures → locked out until an administrator lifts it
FAILURE_WINDOW = dt.timedelta(minutes=15)  # a failure older than this starts the count again
THROTTLE_BASE_SECONDS = 30
THROTTLE_MAX_SECONDS = 900
LOCKOUT_RETRY_AFTER = 3600  # what a locked-out sign-in is told to wait (an admin must act)
# ``locked_until`` of a lock-out: never expires by itself.
LOCKED_OUT = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)

TOKEN_AUDIENCE = "restitution-staff"
TOKEN_ISSUER = "restitution"
TOKEN_ALGORITHMS = ["HS256"]
MIN_TOKEN_TTL = 15 * 60
TOTP_ISSUER = "Restitution"

BAD_CREDENTIALS = "wrong user name, password or one-time code"
THROTTLED = "too many failed sign-ins; try again later"
LOCKED = ("this account is locked after repeated failed sign-ins; "
          "an administrator must lift the lock (restitution users enable)")


def clock() -> dt.datetime:
    """Now (UTC). A function so tests can move time."""
    return utcnow()


# ------------------------------------------------------------------ accounts


@dataclass
class NewStaff:
    """What :func:`create_user` returns; ``totp_secret``/``totp_uri`` when TOTP is enrolled."""

    user: StaffUser
    totp_secret: str | None = None
    totp_uri: str | None = None


def validate_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidInput([{"field": "username", "message":
                             "must be 2-64 characters: lower-case letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit"}])
    return username


def validate_role(role: object) -> str:
    value = getattr(role, "value", role)
    if value not in ROLES:
        raise InvalidInput([{"field": "role", "message": f"must be one of {', '.join(ROLES)}"}])
    return value


def validate_password(password: object) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput([{"field": "password",
                             "message": f"must be at least {MIN_PASSWORD_LENGTH} characters"}])
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput([{"field": "password",
                             "message": f"must be at most {MAX_PASSWORD_LENGTH} characters"}])
    return password


def get_user(session: Session, username: str, *, lock: bool = False) -> StaffUser:
    return get_one(session, select(StaffUser).where(StaffUser.username == username), lock=lock,
                   missing=f"no staff member named {username!r}")


def create_user(
    session: Session, username: str, role: str, password: str, totp: bool = False,
    *, actor: Actor,
) -> NewStaff:
    """Create a staff account (audited ``staff.created``). With ``totp`` a TOTP secret is
    enrolled and returned with its ``otpauth://`` provisioning URI, once."""
    import pyotp

    errors: list[dict] = []
    for check, value in ((validate_username, username), (validate_role, role),
                         (validate_password, password)):
        try:
            check(value)
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidInput(errors)
    role = validate_role(role)
    if session.execute(select(StaffUser.id).where(StaffUser.username == username)).first():
        raise Conflict(f"a staff member named {username!r} already exists")
    now = utcnow()
    secret = uri = None
    user = StaffUser(username=username, role=role, password_hash=hash_password(password),
                     created_at=now, password_changed_at=now)
    if totp:
        secret = pyotp.random_base32()
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)
        user.totp_secret_encrypted = encrypt(secret)
    session.add(user)
    session.flush()
    audit.record(session, actor, "staff.created", "staff_user", username,
                 after={"username": username, "role": role, "totp": bool(totp)})
    return NewStaff(user, secret, uri)


def _lift_lock_values() -> dict:
    return {"failed_logins": 0, "last_failed_at": None, "locked_until": None}


def disable_user(session: Session, username: str, *, actor: Actor) -> StaffUser:
    """Disable an account: it cannot sign in and its tokens stop working at once."""
    user = get_user(session, username, lock=True)
    if not user.disabled:
        user.disabled = True
        session.flush()
        audit.record(session, actor, "staff.disabled", "staff_user", username,
                     before={"disabled": False}, after={"disabled": True})
    return user


def enable_user(session: Session, username: str, *, actor: Actor) -> StaffUser:
    """Enable an account again; this also lifts a throttle or lock-out."""
    user = get_user(session, username, lock=True)
    before = {"disabled": user.disabled, "failed_logins": user.failed_logins,
              "locked": user.locked_until is not None}
    if user.disabled or user.failed_logins or user.locked_until is not None:
        user.disabled = False
        for k, v in _lift_lock_values().items():
            setattr(user, k, v)
        session.flush()
        audit.record(session, actor, "staff.enabled", "staff_user", username,
                     before=before, after={"disabled": False, "failed_logins": 0, "locked": False})
    return user


def reset_password(session: Session, username: str, password: str, *, actor: Actor) -> StaffUser:
    """Set a new password: earlier tokens stop working and a lock-out is lifted."""
    validate_password(password)
    user = get_user(session, username, lock=True)
    user.password_hash = hash_password(password)
    # Strictly later than before, even within one clock tick: it versions the tokens.
    now = max(utcnow(), user.password_changed_at + dt.timedelta(microseconds=1))
    user.password_changed_at = now
    for k, v in _lift_lock_values().items():
        setattr(user, k, v)
    session.flush()
    audit.record(session, actor, "staff.password_reset", "staff_user", username,
                 after={"password_changed_at": now})
    return user


def is_locked_out(user: StaffUser) -> bool:
    return user.failed_logins >= LOCK_AFTER


def list_users(session: Session) -> list[dict[str, Any]]:
    now = clock()
    users = session.execute(select(StaffUser).order_by(StaffUser.username)).scalars().all()
    return [
        {
            "username": u.username,
            "role": u.role,
            "disabled": bool(u.disabled),
            "locked": is_locked_out(u),
            "throttled": (not is_locked_out(u) and u.locked_until is not None
                          and u.locked_until > now),
            "totp": u.totp_secret_encrypted is not None,
            "failed_logins": u.failed_logins,
            "created_at": u.created_at.isoformat(),
        }
        for u in users
    ]


# ------------------------------------------------------------------ sign-in


def _fingerprint(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:12]


def _throttle_seconds(failures: int) -> int:
    return min(THROTTLE_BASE_SECONDS * 2 ** (failures - THROTTLE_AFTER), THROTTLE_MAX_SECONDS)


def _retry_after(until: dt.datetime, now: dt.datetime) -> int:
    return max(1, math.ceil((until - now).total_seconds()))


@dataclass
class _FailureState:
    failed: int = 0
    last_failed_at: dt.datetime | None = None
    locked_until: dt.datetime | None = None


def _next_failure(state: _FailureState, now: dt.datetime) -> _FailureState:
    """The policy, once, for accounts and unknown names alike."""
    failed = state.failed
    if failed < LOCK_AFTER and (state.last_failed_at is None
                                or now - state.last_failed_at > FAILURE_WINDOW):
        failed = 0
    failed += 1
    if failed >= LOCK_AFTER:
        until = LOCKED_OUT
    elif failed >= THROTTLE_AFTER:
        until = now + dt.timedelta(seconds=_throttle_seconds(failed))
    else:
        until = None
    return _FailureState(failed, now, until)


def _refusal_if_blocked(state: _FailureState, now: dt.datetime) -> TooManyAttempts | None:
    if state.failed >= LOCK_AFTER:
        return TooManyAttempts(LOCKED, retry_after=LOCKOUT_RETRY_AFTER)
    if state.locked_until is not None and state.locked_until > now:
        return TooManyAttempts(THROTTLED, retry_after=_retry_after(state.locked_until, now))
    return None


class _UnknownNames:
    """The same throttle for names that are no account, in this process's memory (bounded),
    so that a throttled answer does not reveal which names exist."""

    def __init__(self, size: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._states: OrderedDict[str, _FailureState] = OrderedDict()
        self._size = size

    def get(self, key: str) -> _FailureState:
        with self._lock:
            return self._states.get(key) or _FailureState()

    def fail(self, key: str, now: dt.datetime) -> _FailureState:
        with self._lock:
            state = _next_failure(self._states.pop(key, None) or _FailureState(), now)
            self._states[key] = state
            while len(self._states) > self._size:
                self._states.popitem(last=False)
            return state

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


_unknown = _UnknownNames()


def _own_session(session: Session, *, write: bool = True) -> Session:
    """A session of its own on the caller's engine, for bookkeeping that must persist
    whatever the caller's transaction does (``write=False``: a read that never waits)."""
    bind = session.get_bind()
    mode = "IMMEDIATE" if write else "DEFERRED"
    return Session(bind.execution_options(sqlite_begin=mode), expire_on_commit=False)


def _check_fresh(session: Session) -> None:
    if session.in_transaction() and is_sqlite(session):
        raise RuntimeError(
            "claims.staff.authenticate must run before its session starts a transaction "
            "(its bookkeeping commits on its own, and SQLite allows one writer)"
        )


def _record_failure(session: Session, user_id: int, username: str, reason: str,
                    now: dt.datetime) -> TooManyAttempts | None:
    """Count one failure durably (own transaction); returns the refusal to give when the
    count reached the throttle or the lock-out."""
    with _own_session(session) as own:
        user = own.execute(
            for_update(select(StaffUser).where(StaffUser.id == user_id), own)).scalar_one()
        state = _next_failure(_FailureState(user.failed_logins, user.last_failed_at,
                                            user.locked_until), now)
        own.execute(update(StaffUser).where(StaffUser.id == user_id).values(
            failed_logins=state.failed, last_failed_at=state.last_failed_at,
            locked_until=state.locked_until))
        if state.failed == LOCK_AFTER:
            audit.record(own, Actor.system("sign-in"), "staff.locked_out", "staff_user",
                         username, after={"failed_logins": state.failed})
        own.commit()
    log.warning("sign-in refused: user=%s reason=%s consecutive_failures=%d",
                username, reason, state.failed)
    if state.failed == LOCK_AFTER:
        log.warning("sign-in lock-out: user=%s locked after %d consecutive failures",
                    username, state.failed)
    return _refusal_if_blocked(state, now)


def _record_success(session: Session, user_id: int) -> None:
    with _own_session(session) as own:
        own.execute(update(StaffUser).where(StaffUser.id == user_id).values(
            **_lift_lock_values()))
        own.commit()


def _totp_step(user: StaffUser, code: str | None, now: dt.datetime) -> int | None:
    """The time step whose code ``code`` is (one step of drift either way), else None."""
    import hmac

    import pyotp

    if not code:
        return None
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(decrypt(user.totp_secret_encrypted))
    step = totp.timecode(now)
    for candidate in (step - 1, step, step + 1):
        if hmac.compare_digest(code, totp.generate_otp(candidate)):
            return candidate
    return None


def _use_totp_step(session: Session, user_id: int, step: int) -> bool:
    """Record ``step`` as used, atomically: False when it (or a later one) was used already,
    so that an observed code cannot be replayed within its validity."""
    with _own_session(session) as own:
        res = own.execute(
            update(StaffUser)
            .where(StaffUser.id == user_id,
                   (StaffUser.totp_last_step.is_(None)) | (StaffUser.totp_last_step < step))
            .values(totp_last_step=step, **_lift_lock_values())
        )
        own.commit()
    return res.rowcount == 1


def authenticate(session: Session, username: str, password: str,
                 totp: str | None = None) -> StaffUser:
    """Check a sign-in; returns the staff member (loaded in ``session``).

    Raises :class:`AuthFailed` (wrong or unknown name, wrong password, missing or wrong
    one-time code, disabled account) or :class:`TooManyAttempts` (throttled or locked out,
    with ``retry_after`` seconds). See the module docstring for the policy.
    """
    _check_fresh(session)
    now = clock()
    username = (username or "").strip()
    password = password or ""
    user = None
    if USERNAME_RE.fullmatch(username):  # no account has another shape: don't ask the database
        with _own_session(session, write=False) as own:
            user = own.execute(
                select(StaffUser).where(StaffUser.username == username)
            ).scalar_one_or_none()  # closing the session ends the read (and keeps ``user`` loaded)

    if user is None:
        key = _fingerprint(username)
        refusal = _refusal_if_blocked(_unknown.get(key), now)
        if refusal is not None:
            log.warning("sign-in refused: unknown user fingerprint=%s reason=throttled", key)
            raise refusal
        dummy_verify(password)
        state = _unknown.fail(key, now)
        log.warning("sign-in refused: unknown user fingerprint=%s reason=unknown_user "
                    "consecutive_failures=%d", key, state.failed)
        raise _refusal_if_blocked(state, now) or AuthFailed(BAD_CREDENTIALS)

    refusal = _refusal_if_blocked(
        _FailureState(user.failed_logins, user.last_failed_at, user.locked_until), now)
    if refusal is not None:
        reason = "locked_out" if is_locked_out(user) else "throttled"
        log.warning("sign-in refused: user=%s reason=%s", username, reason)
        raise refusal

    if not verify_password(password, user.password_hash):
        raise _record_failure(session, user.id, username, "wrong_password", now) \
            or AuthFailed(BAD_CREDENTIALS)
    step = None
    if user.totp_secret_encrypted is not None:
        step = _totp_step(user, totp, now)
        if step is None:
            reason = "totp_missing" if not totp else "totp_wrong"
            refusal = _record_failure(session, user.id, username, reason, now)
            if refusal is not None:
                raise refusal
            if not totp:
                raise AuthFailed("this account needs its one-time code (field totp)")
            raise AuthFailed(BAD_CREDENTIALS)
    if user.disabled:
        log.warning("sign-in refused: user=%s reason=disabled", username)
        raise AuthFailed("this account is disabled")
    if step is not None:
        if not _use_totp_step(session, user.id, step):
            raise _record_failure(session, user.id, username, "totp_replayed", now) \
                or AuthFailed(BAD_CREDENTIALS)
    elif user.failed_logins or user.locked_until is not None or user.last_failed_at is not None:
        _record_success(session, user.id)
    signed_in = session.get(StaffUser, user.id)
    assert signed_in is not None
    return signed_in


# ------------------------------------------------------------------ tokens


def _signing_key() -> bytes:
    import hmac

    return hmac.new(get_settings().secret_key.encode(), b"restitution/staff-jwt",
                    hashlib.sha256).digest()


def _password_version(user: StaffUser) -> int:
    ts = user.password_changed_at
    return int(ts.timestamp()) * 1_000_000 + ts.microsecond


def token_ttl() -> int:
    return max(MIN_TOKEN_TTL, int(get_settings().token_ttl_seconds))


def issue_token(user: StaffUser, *, now: dt.datetime | None = None) -> tuple[str, int]:
    """A signed bearer token for ``user`` → ``(token, expires_in seconds)``."""
    import jwt

    now = now or clock()
    ttl = token_ttl()
    iat = int(now.timestamp())
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "aud": TOKEN_AUDIENCE,
        "iss": TOKEN_ISSUER,
        "iat": iat,
        "exp": iat + ttl,
        "jti": new_token(16),
        "pwv": _password_version(user),
    }
    return jwt.encode(claims, _signing_key(), algorithm="HS256"), ttl


def decode_token(token: str) -> dict[str, Any]:
    """Verify a bearer token's signature, algorithm, audience, issuer and expiry; returns its
    claims. Raises :class:`AuthFailed` (never saying more than "invalid or expired")."""
    import jwt

    try:
        return jwt.decode(
            token,
            _signing_key(),
            algorithms=TOKEN_ALGORITHMS,
            audience=TOKEN_AUDIENCE,
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "jti"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError:
        log.warning("token refused: reason=expired")
        raise AuthFailed("the token has expired; sign in again") from None
    except jwt.PyJWTError as exc:
        log.warning("token refused: reason=%s", type(exc).__name__)
        raise AuthFailed("invalid token") from None


def revoke_token(session: Session, token: str) -> bool:
    """End a valid token before its expiry (console sign-out): :func:`staff_for_token` refuses
    it from now on, in every process that shares the database. Rows of tokens that have
    expired anyway are dropped on the way. Returns whether ``token`` was valid (an invalid
    or expired one needs no revoking)."""
    try:
        claims = decode_token(token)
    except AuthFailed:
        return False
    now = utcnow()
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    jti = str(claims["jti"])
    if session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(
            jti=jti, expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)))
        session.flush()
    return True


def staff_for_token(session: Session, token: str) -> StaffUser:
    """The staff member a bearer token stands for, checked against the account now:
    refused when the token was revoked (signed out), the account is gone or disabled, or the
    password changed since."""
    claims = decode_token(token)
    if session.get(RevokedToken, str(claims["jti"])) is not None:
        log.warning("token refused: reason=signed_out")
        raise AuthFailed("signed out; sign in again")
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError):
        log.warning("token refused: reason=bad_subject")
        raise AuthFailed("invalid token") from None
    user = session.get(StaffUser, user_id)
    if user is None:
        log.warning("token refused: reason=unknown_subject sub=%s", user_id)
        raise AuthFailed("invalid token")
    if user.disabled:
        log.warning("token refused: user=%s reason=disabled", user.username)
        raise AuthFailed("this account is disabled")
    if claims.get("pwv") != _password_version(user):
        log.warning("token refused: user=%s reason=password_changed", user.username)
        raise AuthFailed("the password changed since this token was issued; sign in again")
    return user


def actor_for(user: StaffUser) -> Actor:
    return Actor(user.username, user.role, user.id)
