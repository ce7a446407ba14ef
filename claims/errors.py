"""One exception class per failure. The API maps them to problem+json, the CLI to exit codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every rule the domain refuses. ``status`` is the HTTP status it maps to."""

    status = 400
    title = "Request refused"

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class InvalidInput(DomainError):
    """Bad input naming the fields: ``errors`` is a list of {"field", "message"}."""

    status = 422
    title = "Invalid input"

    def __init__(self, errors: list[dict], detail: str | None = None) -> None:
        self.errors = errors
        super().__init__(detail or "; ".join(f"{e['field']}: {e['message']}" for e in errors))


class IllegalTransition(Conflict):
    title = "Illegal state transition"


class CaseClosed(InvalidInput):
    pass


class DuplicateClaim(Conflict):
    title = "Duplicate claim"


class IdempotencyConflict(Conflict):
    title = "Idempotency key conflict"


class StaleRound(Conflict):
    title = "Round is stale"


class FourEyes(DomainError):
    status = 403
    title = "Four-eyes rule"


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"


class AuthFailed(DomainError):
    status = 401
    title = "Authentication failed"


class TooManyAttempts(DomainError):
    status = 429
    title = "Too many attempts"

    def __init__(self, detail: str = "", retry_after: int = 60) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UnsupportedMediaType(DomainError):
    status = 415
    title = "Unsupported media type"


class PayloadTooLarge(DomainError):
    status = 413
    title = "Body too large"


class PayoutError(Conflict):
    title = "Payout refused"


class PayoutAlreadyTriggered(PayoutError):
    title = "A release is already running or nothing is left to pay"


class LedgerImportError(DomainError):
    """A bad ledger file: ``lines`` lists every bad line as ``line N: reason``."""

    status = 422
    title = "Ledger file refused"

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))
