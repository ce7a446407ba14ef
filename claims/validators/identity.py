"""Who the claimant is: the IIN, the full name and the date of birth (docs/formats.md).

The IIN (Kazakhstan individual identification number) encodes a birth date and sex and ends in
a check digit; :func:`validate_iin` checks all three and returns the birth date, which must agree
with a given date of birth. :func:`name_key` is the key names are compared on when looking for
a claimant who filed twice (``duplicate_identity``, docs/lifecycle.md).

Messages never contain the value that was checked: an IIN is personal data and 422 bodies may
end up in logs.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

from claims.validators.common import ValidationFailed, has_control, required_text

__all__ = [
    "MAX_NAME_LEN",
    "validate_iin",
    "iin_sex",
    "make_iin",
    "validate_full_name",
    "name_key",
    "validate_date_of_birth",
]

MAX_NAME_LEN = 200


# --------------------------------------------------------------------------------------
# IIN (Kazakhstan individual identification number)

_IIN_RE = re.compile(r"[0-9]{12}")
_IIN_W1 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
_IIN_W2 = (3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2)
_IIN_W_SUM = sum(_IIN_W1)  # == sum(_IIN_W2)
# digit 7 → (first year of the century, sex)
_IIN_CENTURY = {
    "1": (1800, "male"),
    "2": (1800, "female"),
    "3": (1900, "male"),
    "4": (1900, "female"),
    "5": (2000, "male"),
    "6": (2000, "female"),
}


def _iin_check_digit(first11: str) -> int | None:
    """The check digit of 11 digits, or ``None`` when both weight sets give 10."""
    digits = first11.encode()  # ASCII digits: d - 48 is the digit
    s = (sum(map(int.__mul__, digits, _IIN_W1)) - 48 * _IIN_W_SUM) % 11
    if s == 10:
        s = (sum(map(int.__mul__, digits, _IIN_W2)) - 48 * _IIN_W_SUM) % 11
        if s == 10:
            return None
    return s


def validate_iin(iin: object, date_of_birth: dt.date | None = None) -> dt.date:
    """Check an IIN and return the birth date it encodes.

    Raises :class:`ValidationFailed` on field ``iin`` — or on ``date_of_birth`` when the IIN is
    valid but its birth date differs from ``date_of_birth``.
    """
    iin = required_text("iin", iin)
    if not _IIN_RE.fullmatch(iin):
        if len(iin) != 12 and iin.isascii() and iin.isdigit():
            raise ValidationFailed("iin", f"must have exactly 12 digits (got {len(iin)})")
        raise ValidationFailed("iin", "must be exactly 12 digits (0-9), nothing else")
    century_digit = iin[6]
    if century_digit not in _IIN_CENTURY:
        raise ValidationFailed(
            "iin",
            f"digit 7 of an IIN (century and sex) must be 1 to 6, not {century_digit}",
        )
    century, _sex = _IIN_CENTURY[century_digit]
    try:
        birth = dt.date(century + int(iin[0:2]), int(iin[2:4]), int(iin[4:6]))
    except ValueError:
        raise ValidationFailed(
            "iin", "digits 1-6 of an IIN (birth date YYMMDD) are not a real date"
        ) from None
    expected = _iin_check_digit(iin[:11])
    if expected is None:
        raise ValidationFailed("iin", "is not a valid IIN: these digits cannot have a check digit")
    if expected != int(iin[11]):
        raise ValidationFailed("iin", "IIN check digit is wrong — check for a typo")
    if birth > dt.date.today():
        raise ValidationFailed("iin", "the birth date in the IIN is in the future")
    if date_of_birth is not None and date_of_birth != birth:
        raise ValidationFailed("date_of_birth", "does not match the birth date in the IIN")
    return birth


def iin_sex(iin: str) -> str:
    """``"male"`` or ``"female"`` from digit 7 of a (validated) IIN."""
    validate_iin(iin)
    return _IIN_CENTURY[iin.strip()[6]][1]


def make_iin(birth_date: dt.date, sex: str, serial: int = 0) -> str:
    """A valid IIN for tests and the demo.

    ``sex`` is ``"male"``/``"female"`` (or ``"M"``/``"F"``); ``serial`` 0..9999 fills digits
    8-11. A serial whose check digit would be 10 under both weight sets is skipped: the next
    serial (wrapping at 10000) is used, so the result's serial may be ``serial + 1``.
    """
    s = sex.strip().lower()
    if s in ("m", "male"):
        odd = True
    elif s in ("f", "female"):
        odd = False
    else:
        raise ValueError("sex must be 'male' or 'female' ('M' or 'F')")
    if not 1800 <= birth_date.year <= 2099:
        raise ValueError("an IIN encodes birth years 1800 to 2099 only")
    if not 0 <= serial <= 9999:
        raise ValueError("serial must be 0..9999")
    century_digit = {1800: 1, 1900: 3, 2000: 5}[birth_date.year // 100 * 100] + (0 if odd else 1)
    head = f"{birth_date:%y%m%d}{century_digit}"
    for k in range(10000):
        first11 = f"{head}{(serial + k) % 10000:04d}"
        check = _iin_check_digit(first11)
        if check is not None:
            return f"{first11}{check}"
    raise AssertionError("unreachable: some serial always has a check digit")


# --------------------------------------------------------------------------------------
# Names


def validate_full_name(name: object) -> str:
    """1-200 characters, at least one letter, no control characters; NFC, spaces collapsed."""
    text = required_text("full_name", name, what="a name")
    text = unicodedata.normalize("NFC", text)
    if has_control(text):
        raise ValidationFailed("full_name", "must not contain control characters")
    text = " ".join(text.split())
    if len(text) > MAX_NAME_LEN:
        raise ValidationFailed(
            "full_name", f"must be at most {MAX_NAME_LEN} characters (got {len(text)})"
        )
    if not any(c.isalpha() for c in text):
        raise ValidationFailed("full_name", "must contain letters")
    return text


def name_key(name: str) -> str:
    """Comparison key of a (validated) full name for ``duplicate_identity``."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


# --------------------------------------------------------------------------------------
# Dates of birth

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EARLIEST_BIRTH = dt.date(1800, 1, 1)


def validate_date_of_birth(value: object) -> dt.date | None:
    """``None``/blank → ``None``; a ``date`` or an ISO ``YYYY-MM-DD`` string → ``date``."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise ValidationFailed("date_of_birth", "must be a date without a time (YYYY-MM-DD)")
    if isinstance(value, dt.date):
        d = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _ISO_DATE.fullmatch(text):
            raise ValidationFailed("date_of_birth", "must be a date in the form YYYY-MM-DD")
        try:
            d = dt.date.fromisoformat(text)
        except ValueError:
            raise ValidationFailed("date_of_birth", "is not a real date") from None
    else:
        raise ValidationFailed("date_of_birth", "must be a date in the form YYYY-MM-DD")
    if d > dt.date.today():
        raise ValidationFailed("date_of_birth", "is in the future")
    if d < _EARLIEST_BIRTH:
        raise ValidationFailed("date_of_birth", "is before 1800")
    return d
