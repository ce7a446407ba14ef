"""Idempotency keys: a repeated request with the same key gets the stored answer.

Protocol (docs/api.md, ``POST /api/v1/claims``; also usable by any other operation —
:func:`run_once` runs the whole of it around one unit of work):

1. :func:`begin` claims ``(scope, key)`` in **its own committed transaction** by inserting an
   ``in_flight`` row that carries a keyed hash of the canonical request body. The row is
   visible to every other process before the real work starts, so a concurrent duplicate
   finds it and is refused (:class:`~claims.errors.IdempotencyConflict`, 409).
2. The caller does its work in one transaction and, in that same transaction, calls
   :func:`complete` with the answer to store; the work and the ``done`` row commit together.
3. When the work fails (nothing was stored), the caller calls :func:`abandon`: the key is
   free again and a corrected request may reuse it.

What :func:`begin` answers for a key it finds:

* ``done`` with the same request hash → :class:`Replay` (the caller answers from it);
* another request hash (``done`` or ``in_flight``) → 409 "used with another request";
* ``in_flight`` with the same hash → 409 "still being processed", unless the row is older
  than :data:`TAKEOVER_AFTER` (its process died between steps 1 and 3): then this request
  takes it over by re-stamping it (an atomic compare-and-set on ``created_at``).

Ownership is the row's ``created_at`` stamp: :func:`complete` only succeeds while the row is
still ``in_flight`` with the stamp :func:`begin` gave it, so a request that was taken over
(because it stalled for longer than :data:`TAKEOVER_AFTER`) cannot commit a second outcome.

The request hash is HMAC-SHA256 (keyed by the secret key) of the canonical JSON of the body,
so the table never holds a guessable digest of personal data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from claims.errors import IdempotencyConflict, InvalidInput
from claims.models import IdempotencyKey, utcnow
from claims.settings import get_settings

#: An ``in_flight`` row older than this belongs to a request that died; it may be taken over.
TAKEOVER_AFTER = dt.timedelta(minutes=5)

_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces


def check_key(key: str, *, field: str = "Idempotency-Key") -> str:
    if not _KEY_RE.fullmatch(key):
        raise InvalidInput(
            [{"field": field, "message": "must be 1-255 printable ASCII characters without spaces"}]
        )
    return key


def request_hash(body: Any) -> str:
    """Keyed SHA-256 (HMAC) of the canonical JSON of ``body`` (sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key = hmac.new(get_settings().secret_key.encode(), b"restitution/idempotency", hashlib.sha256)
    return hmac.new(key.digest(), canonical.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Ticket:
    """This request owns ``(scope, key)`` until it completes or abandons it."""

    id: int
    stamp: dt.datetime


@dataclass(frozen=True)
class Replay:
    """The key was used before with the same request: here is the stored answer."""

    status_code: int
    response: dict


def begin(engine: Engine, scope: str, key: str, req_hash: str) -> Ticket | Replay:
    """Claim the key (committed at once) or return the stored answer; see the module doc."""
    from claims.db import session_scope

    for _ in range(3):
        stamp = utcnow()
        try:
            with session_scope(engine) as s:
                new_id = s.execute(
                    insert(IdempotencyKey)
                    .values(scope=scope, key=key, request_hash=req_hash, state="in_flight",
                            created_at=stamp)
                    .returning(IdempotencyKey.id)
                ).scalar_one()
            return Ticket(new_id, stamp)
        except IntegrityError:
            pass
        with session_scope(engine) as s:
            row = s.execute(
                select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
            ).scalar_one_or_none()
            if row is None:  # abandoned meanwhile: try to claim it again
                continue
            if not hmac.compare_digest(row.request_hash, req_hash):
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request"
                )
            if row.state == "done":
                return Replay(row.status_code or 200, dict(row.response or {}))
            if utcnow() - row.created_at < TAKEOVER_AFTER:
                raise IdempotencyConflict(
                    "a request with this Idempotency-Key is still being processed; retry later"
                )
            # The owner died: take the key over (only one taker wins the compare-and-set).
            stamp = utcnow()
            res = s.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row.id, IdempotencyKey.state == "in_flight",
                       IdempotencyKey.created_at == row.created_at)
                .values(created_at=stamp)
            )
            if res.rowcount == 1:
                return Ticket(row.id, stamp)
        # Lost the race for the takeover: report it as in flight.
        raise IdempotencyConflict(
            "a request with this Idempotency-Key is still being processed; retry later"
        )
    raise IdempotencyConflict("this Idempotency-Key is contended; retry later")


def complete(session, ticket: Ticket, status_code: int, response: dict) -> None:
    """Store the answer in the caller's transaction (the work commits with it)."""
    res = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == ticket.id, IdempotencyKey.state == "in_flight",
               IdempotencyKey.created_at == ticket.stamp)
        .values(state="done", status_code=status_code, response=response)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise IdempotencyConflict(
            "this request stalled and its Idempotency-Key was taken over by a retry"
        )


def abandon(engine: Engine, ticket: Ticket) -> None:
    """Free the key after a failed request (nothing was stored)."""
    from claims.db import session_scope

    with session_scope(engine) as s:
        s.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id == ticket.id, IdempotencyKey.state == "in_flight",
                IdempotencyKey.created_at == ticket.stamp,
            )
        )


def run_once(engine: Engine, scope: str, key: str, request: Any,
             work: Callable[[Session], dict], *, status_code: int = 200) -> dict:
    """The protocol around one unit of work: claim ``(scope, key)`` for ``request`` (its
    canonical body, hashed by :func:`request_hash`); a key used before with the same request
    answers the stored answer without working again. Otherwise ``work(session)`` runs in one
    transaction and its answer is stored with ``status_code`` in that same transaction; when
    it fails the key is freed (:func:`abandon`) and the error propagates."""
    from claims.db import session_scope

    outcome = begin(engine, scope, key, request_hash(request))
    if isinstance(outcome, Replay):
        return outcome.response
    try:
        with session_scope(engine) as s:
            body = work(s)
            complete(s, outcome, status_code, body)
    except BaseException:
        abandon(engine, outcome)
        raise
    return body
