"""``POST /api/v1/auth/token``: the OAuth2 password flow for staff (docs/api.md "Staff sign-in")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from pydantic import BaseModel

from api.deps import ReadSessionDep
from api.problems import problems

router = APIRouter(tags=["staff sign-in"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post(
    "/api/v1/auth/token",
    response_model=TokenOut,
    responses=problems(401, 422, 429),
    summary="Sign in (OAuth2 password flow) and get a bearer token",
)
def token(
    session: ReadSessionDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    totp: Annotated[str | None, Form(max_length=16, description="the one-time code, when enrolled")] = None,
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    scope: Annotated[str, Form()] = "",
) -> TokenOut:
    """A form post with ``username``, ``password`` and, for an account enrolled in TOTP, ``totp``.
    Wrong credentials → 401; repeated failures → 429 with ``Retry-After``, then a lock-out an
    administrator lifts."""
    from claims.staff import authenticate, issue_token

    user = authenticate(session, username, password, totp=totp or None)
    access_token, expires_in = issue_token(user)
    return TokenOut(access_token=access_token, expires_in=expires_in)
