"""RFC 9457 problem+json for every error, with ``errors: [{field, message}]`` on 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from claims.errors import DomainError, InvalidInput, TooManyAttempts

PROBLEM = "application/problem+json"


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


def problem_response(
    status: int, title: str, detail: str, *, errors: list[dict] | None = None,
    headers: dict[str, str] | None = None, type_: str = "about:blank",
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field_name(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "body"


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def validation_errors(exc: RequestValidationError) -> list[dict]:
    out, seen = [], set()
    for err in exc.errors():
        field = _field_name(tuple(err.get("loc", ())))
        if field in seen:
            continue
        seen.add(field)
        out.append({"field": field, "message": _message(err)})
    return out


# Status codes and their problem docs, for route ``responses=`` so OpenAPI documents them.
def problems(*codes: int) -> dict[int | str, dict]:
    return {
        code: {"model": Problem, "content": {PROBLEM: {}}, "description": _DESCRIPTIONS.get(code, "Problem")}
        for code in codes
    }


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed for this role",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input (every bad field listed)",
    429: "Too many requests (see Retry-After)",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        headers = {}
        if isinstance(exc, TooManyAttempts):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        errors = exc.errors if isinstance(exc, InvalidInput) else None
        return problem_response(exc.status, exc.title, exc.detail, errors=errors, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        title = {401: "Not authenticated", 403: "Forbidden", 404: "Not found",
                 405: "Method not allowed", 409: "Conflict", 413: "Body too large",
                 415: "Unsupported media type", 429: "Too many requests"}.get(exc.status_code, "Error")
        return problem_response(exc.status_code, title, str(exc.detail or title),
                                headers=getattr(exc, "headers", None))
