"""Keys, hashes and ciphers for personal data, tokens and passwords.

- IINs: a keyed HMAC-SHA256 (duplicate detection without plain text) and Fernet ciphertext
  (for staff who must see them), both keyed by ``RESTITUTION_PII_KEY``.
- Access tokens and codes: ≥128 random bits, stored as SHA-256, compared in constant time.
- Staff passwords: argon2id (argon2-cffi).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from claims.settings import get_settings


def _derive(key: str, label: bytes) -> bytes:
    return hmac.new(key.encode(), label, hashlib.sha256).digest()


@lru_cache(maxsize=4)
def _fernet(pii_key: str):
    from cryptography.fernet import Fernet

    return Fernet(base64.urlsafe_b64encode(_derive(pii_key, b"restitution/pii-encryption")))


@lru_cache(maxsize=16)
def _hash_key(pii_key: str, kind: str) -> bytes:
    return _derive(pii_key, b"restitution/pii-hash/" + kind.encode())


def pii_hash(value: str, *, kind: str = "iin", pii_key: str | None = None) -> str:
    key = _hash_key(pii_key or get_settings().pii_key, kind)
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def iin_hash(iin: str, pii_key: str | None = None) -> str:
    return pii_hash(iin, kind="iin", pii_key=pii_key)


def encrypt(value: str, pii_key: str | None = None) -> bytes:
    return _fernet(pii_key or get_settings().pii_key).encrypt(value.encode())


def decrypt(token: bytes, pii_key: str | None = None) -> str:
    return _fernet(pii_key or get_settings().pii_key).decrypt(token).decode()


def mask_iin(iin: str) -> str:
    return iin[:2] + "*" * 6 + iin[-4:]


def new_token(nbytes: int = 24) -> str:
    """A URL-safe random token of ``nbytes`` bytes (default 192 bits)."""
    return secrets.token_urlsafe(nbytes)


def new_tokens(n: int, nbytes: int = 24) -> list[str]:
    """``n`` tokens as :func:`new_token` makes them, from one read of the random source (a
    bulk import asks for one a claim)."""
    raw = secrets.token_bytes(nbytes * n)
    enc = base64.urlsafe_b64encode
    return [enc(raw[i:i + nbytes]).rstrip(b"=").decode() for i in range(0, nbytes * n, nbytes)]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str | None, stored_hash: str | None) -> bool:
    if not token or not stored_hash:
        # Still spend the comparison so timing does not tell "no such claim" from "wrong token".
        hmac.compare_digest(token_hash(token or ""), "0" * 64)
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)


def new_code(digits: int = 6) -> str:
    return f"{secrets.randbelow(10**digits):0{digits}d}"


@lru_cache(maxsize=1)
def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password: str, stored: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# A fixed hash to verify against when the user does not exist (equal timing).
def dummy_verify(password: str) -> None:
    verify_password(password, _dummy_hash())


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))
