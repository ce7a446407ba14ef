"""Claim references: ``KZR-XXXX-XXXX``, 40 random bits in Crockford base32 (docs/api.md).

Random rather than sequential, so a reference tells nothing about how many claims there are
and cannot be guessed from another; the access token, not the reference, opens a claim."""

from __future__ import annotations

import base64
import re
import secrets

__all__ = ["CROCKFORD", "REFERENCE_RE", "new_reference", "new_references", "normalize_reference"]

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERENCE_RE = re.compile(r"KZR-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}")
# What people mistype when copying a reference (Crockford's decoding rules).
_CROCKFORD_FIX = str.maketrans({"O": "0", "I": "1", "L": "1"})
# RFC 4648's base32 digits → Crockford's (the same 5 bits per character).
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD.encode())


def new_reference() -> str:
    """``KZR-XXXX-XXXX``: 40 random bits in Crockford base32, upper case."""
    return new_references(1)[0]


def new_references(n: int) -> list[str]:
    """``n`` references as :func:`new_reference` makes them, from one read of the random
    source (5 random bytes are 8 base32 characters)."""
    chars = base64.b32encode(secrets.token_bytes(5 * n)).translate(_TO_CROCKFORD).decode()
    return [f"KZR-{chars[i:i + 4]}-{chars[i + 4:i + 8]}" for i in range(0, 8 * n, 8)]


def normalize_reference(text: object) -> str | None:
    """A reference as typed (any case, spaces around, O for 0, I/L for 1) → canonical, or None."""
    if not isinstance(text, str):
        return None
    ref = text.strip().upper()
    if len(ref) != 13 or not ref.startswith("KZR-"):
        return None
    ref = "KZR-" + ref[4:].translate(_CROCKFORD_FIX)
    return ref if REFERENCE_RE.fullmatch(ref) else None
