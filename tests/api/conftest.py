"""Fixtures for API tests (reuse them; they run on SQLite and, when configured, PostgreSQL).

- ``client`` — a ``fastapi.testclient.TestClient`` on ``create_app()`` over the test
  database (``db_url``).
- ``make_staff(role, username=None, *, password=STAFF_PASSWORD, totp=False)`` — creates a
  staff member straight in the database and returns bearer ``headers`` for it: a ``dict``
  (pass it as ``headers=``) that also carries ``.username``, ``.id``, ``.role``,
  ``.password``, ``.totp_secret`` and ``.actor`` (a ``claims.audit.Actor``). Roles:
  caseworker, finance, admin, auditor. Cheap: the password hash is computed once per test run.
- ``filed_claim(**overrides)`` — inserts a ``Case`` (get-or-create by code), optionally a
  ledger account with entries, and a ``Claim`` with flags, directly through the models (no
  intake, no verification). Returns a :class:`FiledClaim`: ``.reference``, ``.id``,
  ``.access_token`` (the victim's ``X-Claim-Token``), ``.case_code``, ``.claim`` (the
  detached ``Claim``; its attributes are also readable on the FiledClaim). Keywords:

  ``case`` (code, default ``"test-case"``), ``status`` (default ``"flagged"``), ``flags``
  (codes or ``(code, message)`` pairs; default ``("no_ledger_match",)`` — open flags),
  ``claimed_amount`` (USDT string, default ``"1000"``), ``ledger`` (``None`` = no match, or a
  dict ``{"account_id", "deposits", "withdrawals", "bonuses", "insider", "entries"}`` with
  amounts as USDT strings; ``entries`` a list of ``(entry_type, amount, iso_time[, tx_hash])``;
  without ``entries`` one deposit and one withdrawal are made from the totals), and any
  ``Claim`` column as a keyword (``recognized_loss``/``invested``/``withdrawn`` as USDT
  strings; by default a matched claim gets the ledger's numbers). ``language``,
  ``full_name``, ``email``, ``payout_network`` / ``payout_address`` have sensible defaults;
  each claim gets its own valid IIN, e-mail and TRON address unless given.
- autouse: cheap argon2 parameters and a clean in-memory sign-in throttle for every test.
- ``session_for`` — ``session_for()`` opens ``claims.db.session_scope`` on the test
  database (a context manager) for assertions on what was written.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pytest

STAFF_PASSWORD = "correct horse battery staple"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_counter = itertools.count(1)


@lru_cache(maxsize=8)
def _password_hash(password: str) -> str:
    from claims.crypto import hash_password

    return hash_password(password)


@pytest.fixture(autouse=True)
def _fast_argon2_and_fresh_throttle(monkeypatch):
    """Cheap argon2 parameters for tests (the sign-in policy is ours, argon2's cost is not
    under test) and no sign-in throttle state carried between tests."""
    from argon2 import PasswordHasher

    from claims import crypto, staff

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    staff._unknown.clear()
    yield
    staff._unknown.clear()


@pytest.fixture
def client(db_url):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def session_for(engine):
    from claims.db import session_scope

    def _open(write: bool = True):
        return session_scope(engine, write=write)

    return _open


class StaffHeaders(dict):
    """Bearer headers for a staff member, with the member's particulars as attributes."""

    username: str
    id: int
    role: str
    password: str
    totp_secret: str | None

    @property
    def actor(self):
        from claims.audit import Actor

        return Actor(self.username, self.role, self.id)


@pytest.fixture
def make_staff(engine):
    from claims.crypto import encrypt
    from claims.db import session_scope
    from claims.models import StaffUser, utcnow
    from claims.staff import issue_token

    def _make(role: str, username: str | None = None, *, password: str = STAFF_PASSWORD,
              totp: bool = False) -> StaffHeaders:
        import pyotp

        username = username or f"{role}{next(_counter)}"
        now = utcnow()
        secret = pyotp.random_base32() if totp else None
        with session_scope(engine) as s:
            user = StaffUser(username=username, role=role, password_hash=_password_hash(password),
                             created_at=now, password_changed_at=now,
                             totp_secret_encrypted=encrypt(secret) if secret else None)
            s.add(user)
            s.flush()
            token, _ = issue_token(user)
            uid = user.id
        headers = StaffHeaders(Authorization=f"Bearer {token}")
        headers.username, headers.id, headers.role = username, uid, role
        headers.password, headers.totp_secret = password, secret
        return headers

    return _make


@dataclass
class FiledClaim:
    claim: Any
    access_token: str
    case_code: str

    @property
    def reference(self) -> str:
        return self.claim.reference

    @property
    def id(self) -> int:
        return self.claim.id

    def __getattr__(self, name: str) -> Any:
        if name == "claim":  # not yet set (dataclass init)
            raise AttributeError(name)
        return getattr(self.claim, name)


def new_reference() -> str:
    chars = "".join(secrets.choice(_CROCKFORD) for _ in range(8))
    return f"KZR-{chars[:4]}-{chars[4:]}"


def _micro(value: Any) -> int | None:
    from claims.money import parse_amount

    if value is None or isinstance(value, int):
        return value
    return parse_amount(value)


@pytest.fixture
def filed_claim(engine):
    from sqlalchemy import select

    from claims import crypto
    from claims.db import session_scope
    from claims.models import Case, Claim, Flag, LedgerAccount, LedgerEntry, utcnow
    from claims.validators import (
        email_key,
        make_iin,
        make_tron_address,
        name_key,
        normalize_address_key,
    )

    def _case(s, code: str) -> Case:
        case = s.execute(select(Case).where(Case.code == code)).scalar_one_or_none()
        if case is None:
            case = Case(code=code, name=f"Case {code}")
            s.add(case)
            s.flush()
        return case

    def _ledger(s, case: Case, spec: dict) -> LedgerAccount:
        deposits = _micro(spec.get("deposits", "1000"))
        withdrawals = _micro(spec.get("withdrawals", "0"))
        bonuses = _micro(spec.get("bonuses", "0"))
        entries = spec.get("entries")
        if entries is None:
            entries = [("deposit", deposits, "2023-01-10T10:00:00+00:00")]
            if withdrawals - bonuses:
                entries.append(("withdrawal", withdrawals - bonuses, "2023-03-01T10:00:00+00:00"))
            if bonuses:
                entries.append(("bonus", bonuses, "2023-02-01T10:00:00+00:00"))
        account = LedgerAccount(case_id=case.id, account_id=spec.get("account_id") or f"ACC-{next(_counter)}",
                                deposits=deposits, withdrawals=withdrawals, bonuses=bonuses,
                                insider=bool(spec.get("insider", False)),
                                insider_reason=spec.get("insider_reason"))
        s.add(account)
        s.flush()
        for i, (kind, amount, when, *rest) in enumerate(entries):
            s.add(LedgerEntry(case_id=case.id, account_pk=account.id,
                              row_key=f"{account.account_id}-{i}", entry_type=kind,
                              amount=_micro(amount), occurred_at=dt.datetime.fromisoformat(when),
                              tx_hash=rest[0] if rest else None))
        s.flush()
        return account

    def _file(*, case: str = "test-case", status: str = "flagged",
              flags=("no_ledger_match",), claimed_amount: Any = "1000",
              ledger: dict | None = None, **columns: Any) -> FiledClaim:
        n = next(_counter)
        token = crypto.new_token()
        birth = dt.date(1980, 1, 1) + dt.timedelta(days=n % 9000)
        iin = columns.pop("iin", None) or make_iin(birth, "male", n % 9999)
        full_name = columns.pop("full_name", f"Test Person {n}")
        email = columns.pop("email", f"person{n}@example.org")
        network = columns.pop("payout_network", "tron")
        address = columns.pop("payout_address", make_tron_address(n.to_bytes(20, "big")))
        for money in ("recognized_loss", "invested", "withdrawn"):
            if money in columns:
                columns[money] = _micro(columns[money])
        now = utcnow()
        with session_scope(engine) as s:
            case_row = _case(s, case)
            account = _ledger(s, case_row, ledger) if ledger is not None else None
            values: dict[str, Any] = dict(
                case_id=case_row.id,
                reference=new_reference(),
                status=status,
                full_name=full_name,
                name_key=name_key(full_name),
                iin_hash=crypto.iin_hash(iin),
                iin_encrypted=crypto.encrypt(iin),
                iin_masked=crypto.mask_iin(iin),
                birth_date=birth,
                email=email,
                email_key=email_key(email),
                phone=columns.pop("phone", "+77011234567"),
                language=columns.pop("language", "en"),
                claimed_amount=_micro(claimed_amount),
                payout_network=network,
                payout_address=address,
                payout_address_key=normalize_address_key(network, address),
                access_token_hash=crypto.token_hash(token),
                created_at=now,
                updated_at=now,
            )
            if account is not None:
                withdrawn = account.withdrawals
                values.update(ledger_account_pk=account.id, match_rule="scheme_account",
                              scheme_account=account.account_id, invested=account.deposits,
                              withdrawn=withdrawn,
                              recognized_loss=max(0, account.deposits - withdrawn),
                              verified_at=now)
            values.update(columns)
            claim = Claim(**values)
            s.add(claim)
            s.flush()
            for f in flags or ():
                code, message = (f, f"test flag {f}") if isinstance(f, str) else f
                s.add(Flag(claim_id=claim.id, code=code, message=message, created_at=now))
            s.flush()
        return FiledClaim(claim, token, case)

    return _file
