"""What every validator shares: the errors it raises and the text helpers it starts with.

A check raises :class:`ValidationFailed` naming the field the API and the CSV import report
(docs/api.md: a 422 lists every bad field); :class:`ErrorCollector` gathers every bad field of
one record so that they are raised together as :class:`FieldErrors`.

Text input is read the same way everywhere: :func:`required_text` and :func:`optional_text`
strip surrounding whitespace and treat a blank value as missing; :func:`has_control` finds the
control characters that no stored text may hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "ValidationFailed",
    "FieldErrors",
    "ErrorCollector",
    "required_text",
    "optional_text",
    "has_control",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Errors


class ValidationFailed(ValueError):
    """One bad field: ``field`` is the name the API reports, ``message`` plain English."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class FieldErrors(ValueError):
    """Several bad fields at once; ``errors`` is ``[{"field", "message"}, ...]`` in order."""

    def __init__(self, errors: Iterable[Mapping[str, str] | tuple[str, str]]) -> None:
        items: list[dict[str, str]] = []
        for e in errors:
            if isinstance(e, tuple):
                field, message = e
            else:
                field, message = e["field"], e["message"]
            items.append({"field": field, "message": message})
        if not items:
            raise ValueError("FieldErrors needs at least one error")
        self.errors = items
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in items))

    @property
    def fields(self) -> list[str]:
        return [e["field"] for e in self.errors]


class ErrorCollector:
    """Collects every bad field (and warning) of one record, then raises them together.

    >>> from claims.validators import validate_iin, validate_phone
    >>> errs = ErrorCollector()
    >>> iin = errs.check("iin", validate_iin, "791028302728")
    >>> with errs.field("phone"):
    ...     phone = validate_phone("+7 701 234 56 78")
    >>> errs.raise_if_any()

    A :class:`ValidationFailed` keeps its own field (``validate_iin`` may name
    ``date_of_birth``); any other ``ValueError`` (e.g. ``claims.money.AmountError``) is filed
    under the field given here.
    """

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def warn(self, field: str, message: str) -> None:
        self.warnings.append({"field": field, "message": message})

    def has(self, field: str) -> bool:
        return any(e["field"] == field for e in self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def _record(self, field: str, exc: ValueError) -> None:
        if isinstance(exc, FieldErrors):
            self.errors.extend(exc.errors)
        elif isinstance(exc, ValidationFailed):
            self.add(exc.field, exc.message)
        else:
            self.add(field, str(exc))

    @contextmanager
    def field(self, field: str) -> Iterator[None]:
        """``with errs.field("x"): ...`` — a ``ValueError`` inside is recorded, not raised."""
        try:
            yield
        except ValueError as exc:
            self._record(field, exc)

    def check(self, field: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args)``; on a ``ValueError`` record it and return ``None``."""
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            self._record(field, exc)
            return None

    def raise_if_any(self) -> None:
        if self.errors:
            raise FieldErrors(self.errors)


# --------------------------------------------------------------------------------------
# Text helpers

# Control characters: Unicode categories Cc (C0, DEL, C1) and Cs (surrogates) — both fixed
# ranges — and the bidirectional embedding/override/isolate controls (invisible, used to
# spoof text).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def has_control(value: str) -> bool:
    """Whether ``value`` holds a control character (see :data:`CONTROL_CHARACTERS`)."""
    return CONTROL_CHARACTERS.search(value) is not None


def required_text(field: str, value: object, *, what: str = "text") -> str:
    """A required string, stripped; ``None``/missing/blank → "is required"."""
    if value is None:
        raise ValidationFailed(field, "is required")
    if not isinstance(value, str):
        raise ValidationFailed(field, f"must be {what} (a string)")
    value = value.strip()
    if not value:
        raise ValidationFailed(field, "is required")
    return value


def optional_text(field: str, value: object, max_len: int) -> str | None:
    """An optional free-text field, stripped; ``None``/blank → ``None`` (an empty CSV cell),
    else at most ``max_len`` characters without control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be text (a string)")
    text = value.strip()
    if not text:
        return None
    if has_control(text):
        raise ValidationFailed(field, "must not contain control characters")
    if len(text) > max_len:
        raise ValidationFailed(field, f"must be at most {max_len} characters (got {len(text)})")
    return text
