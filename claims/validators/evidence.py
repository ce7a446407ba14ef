"""Evidence: the transaction hashes a claimant gives of their deposits (docs/formats.md).

Ethereum hashes are ``0x`` + 64 hex; TRON ones 64 hex with or without ``0x``. Evidence may come
from the scheme's chain rather than the payout network, so a claim's evidence accepts either
shape and keeps :func:`tx_hash_key` — 64 lower-case hex digits without ``0x``, the form TRON
explorers show — which is also how the ledger's ``tx_hash`` is stored, so the two match.
"""

from __future__ import annotations

import re

from claims.validators.common import ValidationFailed, required_text

__all__ = [
    "MAX_EVIDENCE_HASHES",
    "tx_hash_key",
    "validate_tx_hash",
    "validate_evidence",
]

MAX_EVIDENCE_HASHES = 100

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def tx_hash_key(text: str, *, field: str = "evidence_tx_hashes") -> str:
    """The comparison key of a transaction hash on any network: 64 lower-case hex digits
    without ``0x`` (what evidence and the ledger's ``tx_hash`` are matched on)."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if not _HEX64.fullmatch(body):
        raise ValidationFailed(field, "a transaction hash is 64 hexadecimal digits (0x optional)")
    return body.lower()


def validate_tx_hash(h: object, network: str, *, field: str = "evidence_tx_hashes") -> str:
    """An evidence transaction hash, lower case.

    Ethereum: ``0x`` + 64 hex (returned with ``0x``). TRON: 64 hex with or without ``0x``
    (returned without, as TRON explorers show it).
    """
    text = required_text(field, h, what="a transaction hash")
    if network == "ethereum":
        if text[:2] == "0x" and _HEX64.fullmatch(text[2:]):
            return text.lower()
        if _HEX64.fullmatch(text):
            raise ValidationFailed(field, "an Ethereum transaction hash starts with 0x")
        raise ValidationFailed(
            field, "an Ethereum transaction hash is 0x followed by 64 hexadecimal digits"
        )
    if network == "tron":
        body = text[2:] if text[:2] in ("0x", "0X") else text
        if _HEX64.fullmatch(body):
            return body.lower()
        raise ValidationFailed(field, "a TRON transaction id is 64 hexadecimal digits")
    raise ValidationFailed("payout_network", "must be tron or ethereum")


def _evidence_list(value: object) -> list[object]:
    """A list/tuple of hashes, or one CSV cell joined by ``;``; ``None``/blank → []."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(";")) if part]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValidationFailed("evidence_tx_hashes", "must be a list of transaction hashes")


def validate_evidence(value: object, network: str | None) -> list[str]:
    """A claim's evidence (a list, or one CSV cell joined by ``;``) as distinct
    :func:`tx_hash_key` keys in the order given; every bad item is named in one message."""
    items = _evidence_list(value)
    if len(items) > MAX_EVIDENCE_HASHES:
        raise ValidationFailed(
            "evidence_tx_hashes", f"at most {MAX_EVIDENCE_HASHES} transaction hashes"
        )
    out: list[str] = []
    problems: list[str] = []
    for i, item in enumerate(items, start=1):
        # Evidence may come from the scheme's chain, not the payout network: accept either
        # shape and keep the match key (64 lower-case hex digits, no 0x).
        try:
            h = tx_hash_key(required_text("evidence_tx_hashes", item, what="a transaction hash"))
        except ValidationFailed as exc:
            problems.append(f"item {i}: {exc.message}")
            continue
        if h not in out:
            out.append(h)
    if problems:
        raise ValidationFailed("evidence_tx_hashes", "; ".join(problems))
    return out
