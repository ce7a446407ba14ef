"""Payout addresses: TRON (TRC-20) and Ethereum (ERC-20), and the network an address is on.

docs/formats.md describes both forms. A TRON address is base58check (``T…``, 34 characters)
and comes back as given; an Ethereum address is ``0x`` + 40 hex and comes back EIP-55
checksummed — all-lower/all-upper input is accepted with a warning, since its checksum cannot
be checked. An address of the other network, a hex-form TRON address and the zero address are
refused with a message saying so.

:func:`normalize_address_key` is the key addresses are compared on (``duplicate_wallet`` and
the blocked list, docs/lifecycle.md); :func:`validate_any_address` accepts either network
where none is given (the blocked list, the ledger's wallet column).

``eth_hash`` (keccak, for EIP-55) is a costly import: it is imported on first use only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache

import base58

from claims.validators.common import ValidationFailed, required_text

__all__ = [
    "NETWORKS",
    "validate_tron_address",
    "make_tron_address",
    "to_checksum_address",
    "validate_eth_address",
    "make_eth_address",
    "validate_network",
    "validate_payout_address",
    "detect_network",
    "normalize_address_key",
    "validate_any_address",
]

NETWORKS = ("tron", "ethereum")

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_SET = frozenset(_B58_ALPHABET)
# A base58 text's bytes → its digits' values (for ``bytes.translate``).
_B58_DIGITS = bytes.maketrans(_B58_ALPHABET.encode(), bytes(range(58)))
_TRON_PREFIX = 0x41
_ETH_SHAPE = re.compile(r"0[xX][0-9a-fA-F]{40}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_TRON_HEX = re.compile(r"41[0-9a-fA-F]{40}")


# --------------------------------------------------------------------------------------
# TRON (TRC-20) addresses


def _b58check_checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def _b58_tron_payload(addr: str) -> bytes | None:
    """The 25 bytes (prefix, account id, checksum) of a base58 TRON address, or None when its
    number is not a version-``0x41`` payload of that size. ``addr`` is base58 and starts with
    ``T`` (no leading ``1``: no leading zero bytes), so the number alone decides."""
    n = 0
    for digit in addr.encode().translate(_B58_DIGITS):
        n = n * 58 + digit
    if n >> 192 != _TRON_PREFIX:
        return None
    return n.to_bytes(25, "big")


def _looks_tron(addr: str) -> bool:
    return len(addr) == 34 and addr[0] == "T" and set(addr) <= _B58_SET


def validate_tron_address(addr: object, *, field: str = "payout_address") -> str:
    """Check a TRON base58check address (``T…``, 34 characters); return it stripped."""
    addr = required_text(field, addr, what="an address")
    if _ETH_SHAPE.fullmatch(addr):
        raise ValidationFailed(field, "this is an Ethereum address; the network is tron")
    if _TRON_HEX.fullmatch(addr) or (addr[:2] in ("0x", "0X") and _TRON_HEX.fullmatch(addr[2:])):
        raise ValidationFailed(
            field, "this is a TRON address in hex form; give its base58 form starting with T"
        )
    if not addr.startswith("T"):
        raise ValidationFailed(field, "a TRON address starts with T")
    if not _B58_SET.issuperset(addr):
        bad = sorted({c for c in addr if c not in _B58_SET})
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValidationFailed(
            field,
            f"a TRON address uses base58 letters and digits only (no 0, O, I or l); "
            f"found {shown}",
        )
    if len(addr) != 34:
        raise ValidationFailed(field, f"a TRON address has 34 characters, not {len(addr)}")
    raw = _b58_tron_payload(addr)
    if raw is None:
        raise ValidationFailed(field, "is not a TRON address — check for a typo")
    if _b58check_checksum(raw[:21]) != raw[21:]:
        raise ValidationFailed(field, "TRON address checksum does not match — check for a typo")
    if raw[1:21] == bytes(20):
        raise ValidationFailed(field, "this is the TRON zero address; it cannot receive payouts")
    return addr


def make_tron_address(payload20: bytes) -> str:
    """The base58check TRON address of a 20-byte account id (for tests and the demo)."""
    if len(payload20) != 20:
        raise ValueError("a TRON account id has 20 bytes")
    raw = bytes([_TRON_PREFIX]) + bytes(payload20)
    return base58.b58encode(raw + _b58check_checksum(raw)).decode("ascii")


# --------------------------------------------------------------------------------------
# Ethereum (ERC-20) addresses


@lru_cache(maxsize=1)
def _keccak() -> Callable[[bytes], bytes]:
    from eth_hash.auto import keccak  # a costly import: on first use only

    return keccak


def to_checksum_address(addr: str) -> str:
    """EIP-55 form of ``0x`` + 40 hex (no validation beyond the shape)."""
    if not _ETH_SHAPE.fullmatch(addr):
        raise ValueError("an Ethereum address is 0x followed by 40 hexadecimal characters")
    lower = addr[2:].lower()
    digest = _keccak()(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c in "abcdef" and int(h, 16) >= 8 else c for c, h in zip(lower, digest)
    )


def validate_eth_address(addr: object, *, field: str = "payout_address") -> tuple[str, list[str]]:
    """Check ``0x`` + 40 hex with EIP-55; return ``(checksummed, warnings)``.

    Mixed case must match the checksum. All lower or all upper case (with any letter not in
    checksum form) is accepted with a warning.
    """
    addr = required_text(field, addr, what="an address")
    if _looks_tron(addr):
        raise ValidationFailed(field, "this is a TRON address; the network is ethereum")
    if _HEX40.fullmatch(addr):
        raise ValidationFailed(field, "an Ethereum address starts with 0x")
    if not addr.startswith("0x"):
        if addr.startswith("0X"):
            raise ValidationFailed(field, "an Ethereum address starts with 0x (lower-case x)")
        raise ValidationFailed(field, "an Ethereum address starts with 0x")
    body = addr[2:]
    bad = sorted({c for c in body if c not in "0123456789abcdefABCDEF"})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise ValidationFailed(
            field, f"an Ethereum address has only hexadecimal digits (0-9, a-f) after 0x; "
            f"found {shown}"
        )
    if len(body) != 40:
        raise ValidationFailed(
            field, f"an Ethereum address has 40 hexadecimal digits after 0x, not {len(body)}"
        )
    if int(body, 16) == 0:
        raise ValidationFailed(
            field, "this is the Ethereum zero address; it cannot receive payouts"
        )
    checksummed = to_checksum_address(addr)
    if addr == checksummed:
        return checksummed, []
    if body == body.lower() or body == body.upper():
        case = "lower" if body == body.lower() else "upper"
        return checksummed, [
            f"the address is all {case} case, so its checksum (EIP-55) cannot be checked; "
            "make sure it is exactly right"
        ]
    raise ValidationFailed(
        field, "Ethereum address checksum (EIP-55 mixed case) does not match — check for a typo"
    )


def make_eth_address(payload20: bytes) -> str:
    """The EIP-55 address of a 20-byte account id (for tests and the demo)."""
    if len(payload20) != 20:
        raise ValueError("an Ethereum address has 20 bytes")
    return to_checksum_address("0x" + bytes(payload20).hex())


# --------------------------------------------------------------------------------------
# Networks and payout addresses


def validate_network(network: object, *, field: str = "payout_network") -> str:
    """``tron`` or ``ethereum`` (:data:`NETWORKS`), stripped."""
    network = required_text(field, network)
    if network not in NETWORKS:
        raise ValidationFailed(field, "must be tron or ethereum")
    return network


def validate_payout_address(network: object, address: object) -> tuple[str, list[str]]:
    """``(canonical address, warnings)`` for ``network`` ``tron`` | ``ethereum``.

    An unknown network names ``payout_network``; an address of the other network (or a bad
    one) names ``payout_address``. Canonical: EIP-55 for Ethereum, as given for TRON.
    """
    network = validate_network(network)
    if network == "tron":
        return validate_tron_address(address), []
    return validate_eth_address(address)


def detect_network(address: str) -> str | None:
    """``"ethereum"``/``"tron"`` by shape (``0x`` + 40 hex / ``T`` + 33 base58), else None."""
    address = address.strip()
    if _ETH_SHAPE.fullmatch(address):
        return "ethereum"
    if _looks_tron(address):
        return "tron"
    return None


def normalize_address_key(network: str | None, address: str) -> str:
    """The comparison key of a payout address (duplicate wallets, the blocked list).

    Ethereum: lower case (case is only a checksum); TRON: as given (base58 is case-sensitive).
    With ``network=None`` the network is inferred from the shape (``blocked add ADDRESS``).
    """
    address = address.strip()
    if network is None:
        network = detect_network(address) or "tron"
    if network == "ethereum":
        return address.lower()
    if network == "tron":
        return address
    raise ValidationFailed("payout_network", "must be tron or ethereum")


def validate_any_address(address: object, *, field: str = "address") -> tuple[str, str, list[str]]:
    """``(network, canonical, warnings)`` for an address of either network (blocked list)."""
    text = required_text(field, address, what="an address")
    if text[:2] in ("0x", "0X"):
        canonical, warnings = validate_eth_address(text, field=field)
        return "ethereum", canonical, warnings
    if text.startswith("T"):
        return "tron", validate_tron_address(text, field=field), []
    raise ValidationFailed(
        field, "is neither a TRON address (T…) nor an Ethereum address (0x…)"
    )
