"""Money: integer micro-USDT inside, decimal strings at the edges.

USDT has 6 decimals on TRON and Ethereum; 1 USDT = 1_000_000 micro-USDT. Every amount
in code and in the database is an ``int`` of micro-USDT. This module is the only place
that turns text into amounts and amounts into text. No float ever touches money.
"""

from __future__ import annotations

import re
from fractions import Fraction

MICRO = 1_000_000
DECIMALS = 6

#: An amount as text: digits without leading zeros, an optional point and 1 to 6 decimals
#: (docs/api.md, Conventions). The API's schemas carry this same pattern.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$"
_AMOUNT_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]{1,6}))?")
_SHAPE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Larger than any real pool; keeps a BigInteger column from overflowing (2**63 - 1).
MAX_MICRO = 10**18


class AmountError(ValueError):
    """A text that is not an amount, with the reason in plain words."""


def parse_amount(text: object, *, allow_zero: bool = True) -> int:
    """Parse a USDT decimal string into micro-USDT.

    Accepts exactly the documented form (docs/api.md): digits, no leading zeros, an optional point and one to
    six decimals. Refuses JSON numbers (anything not a ``str``), signs, exponents, grouping,
    whitespace and a seventh decimal, each with its own message.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        raise AmountError("must be a decimal string such as \"12.5\", not a number")
    if text == "":
        raise AmountError("must not be empty")
    m = _AMOUNT_RE.fullmatch(text)
    if m is None:
        raise AmountError(_why_not(text))
    whole, frac = m.group(1), m.group(2) or ""
    value = int(whole) * MICRO + int(frac.ljust(DECIMALS, "0") or "0")
    if value > MAX_MICRO:
        raise AmountError("is too large")
    if not allow_zero and value == 0:
        raise AmountError("must be greater than 0")
    return value


def _why_not(text: str) -> str:
    if text != text.strip():
        return "must not contain spaces"
    if text[:1] in "+-":
        return "must not have a sign" if text[:1] == "+" else "must not be negative"
    if any(c in text for c in "eE") and not text.isalpha():
        return "must not use an exponent"
    if any(c in text for c in ", _'"):
        return "must not use digit grouping"
    if _SHAPE_RE.fullmatch(text):
        whole, _, frac = text.partition(".")
        if len(frac) > DECIMALS:
            return "has more than 6 decimals (USDT has 6)"
        if len(whole) > 1 and whole.startswith("0"):
            return "must not have leading zeros"
    if text.endswith(".") or text.startswith("."):
        return "needs digits on both sides of the decimal point"
    return "is not an amount (expected digits with at most 6 decimals, e.g. \"12.5\")"


def format_amount(micro: int, *, trim: bool = True) -> str:
    """micro-USDT → decimal string ("12.5", "0.000001", "545000")."""
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise TypeError("amounts are integers of micro-USDT")
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if frac == 0:
        return f"{sign}{whole}" if trim else f"{sign}{whole}.000000"
    digits = f"{frac:06d}"
    if trim:
        digits = digits.rstrip("0")
    return f"{sign}{whole}.{digits}"


def format_usdt(micro: int) -> str:
    """Staff-facing amount: ``1,200.5 USDT`` (grouped whole part; exact decimals)."""
    text = format_amount(micro)
    whole, dot, frac = text.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-')):,}{dot}{frac} USDT"


def net_loss(invested: int, withdrawn: int) -> int:
    """A claim's net loss: what it put in less what it took out (withdrawals, bonuses and
    referral payouts), never below 0. A claim with no net loss is a net winner."""
    return invested - withdrawn if invested > withdrawn else 0


def format_rate(rate: Fraction, places: int = 9) -> str:
    """An exact rate in [0, 1] as a decimal string rounded half-up to ``places`` digits."""
    scaled = rate * 10**places
    n = scaled.numerator * 2 + scaled.denominator
    q = n // (2 * scaled.denominator)
    whole, frac = divmod(q, 10**places)
    s = f"{whole}.{frac:0{places}d}".rstrip("0").rstrip(".")
    return s or "0"


def parse_rate(text: str) -> Fraction:
    """A round's exact rate as stored (``"num/den"``, or a whole number)."""
    num, _, den = text.partition("/")
    return Fraction(int(num), int(den or 1))


def rate_percent(rate: Fraction) -> str:
    """A rate as a percentage string ("30", "52.6316"), as victims read it (the
    ``allocated`` notice, the status page): 4 decimals, half up."""
    return format_rate(rate * 100, 4)


def percent(part: int, whole: int, places: int = 2) -> str:
    """``part / whole`` as a percentage string, exact rounding half-up (for reports)."""
    if whole == 0:
        return "0"
    return format_rate(Fraction(part * 100, whole), places)
