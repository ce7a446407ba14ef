"""Request limits: body size (413) and per-client rate limiting (429).

Body size (:class:`BodyLimitMiddleware`, pure ASGI, installed on the whole app): a body over
1 MiB is answered ``413`` problem+json *before* anything parses it — at once when
``Content-Length`` says so, and as soon as the running count passes the limit for a chunked
body without ``Content-Length``. The whole body (up to the limit) is read before the app sees
it, so no route ever parses a partial body. Some routes allow more (:data:`BODY_LIMITS`:
documents 10 MiB). Before answering 413 the middleware reads and discards what the client is
still sending (up to :data:`DRAIN_LIMIT`), so the client is done writing and reads the answer
instead of seeing a reset connection.

Rate limiting (:func:`rate_limited`, a route dependency) uses the maintained ``limits``
library: ``RESTITUTION_RATE_LIMIT`` (e.g. ``20/minute``; ``off`` disables it) per client
address, a moving window kept in ``RESTITUTION_RATE_LIMIT_STORAGE`` (``memory://`` per
process; ``redis://…`` shares the count between server processes and hosts). Over the limit →
``429`` problem+json with ``Retry-After`` (seconds until the window lets the next request in).
Each bucket is counted separately: ``filing`` (``POST /api/v1/claims`` and the claim form),
``contact`` (requests that send the claimant an e-mail: token reset, address change). The
client address is the connection's peer; behind a reverse proxy run uvicorn with
``--proxy-headers`` / ``--forwarded-allow-ips`` so it is the real client's.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI, Request

from claims.errors import TooManyAttempts
from claims.settings import get_settings

MIB = 1024 * 1024
DEFAULT_MAX_BODY = 1 * MIB
#: (path pattern, limit in bytes) for routes that take more than the default.
BODY_LIMITS: list[tuple[re.Pattern[str], int]] = [
    # A 10 MiB document plus the multipart envelope.
    (re.compile(r"^/api/v1/claims/[^/]+/documents/?$"), 10 * MIB + 64 * 1024),
    (re.compile(r"^/status/documents/?$"), 10 * MIB + 64 * 1024),
    # Staff: a custodian's confirmations CSV for a large round (owned by the payouts routes).
    (re.compile(r"^/api/v1/rounds/[^/]+/payouts/confirmations/?$"), 64 * MIB),
]
#: At most this much of an oversized body is read and thrown away before answering 413.
DRAIN_LIMIT = 64 * MIB


def body_limit_for(path: str) -> int:
    for pattern, limit in BODY_LIMITS:
        if pattern.match(path):
            return limit
    return DEFAULT_MAX_BODY


def _problem_413(limit: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({
        "type": "about:blank",
        "title": "Body too large",
        "status": 413,
        "detail": f"the request body is larger than {limit} bytes",
    }).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return body, headers


class BodyLimitMiddleware:
    """See the module docstring."""

    def __init__(self, app, limit_for: Callable[[str], int] = body_limit_for) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        declared = None
        expect_continue = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if declared is not None and declared > limit:
            # The client waiting for "100 Continue" has sent nothing: answer straight away.
            if not expect_continue and declared <= DRAIN_LIMIT:
                await self._drain(receive, DRAIN_LIMIT)
            return await self._reject(send, limit)

        chunks: list[bytes] = []
        size = 0
        more = True
        disconnect = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnect = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                if message.get("more_body", False):
                    await self._drain(receive, DRAIN_LIMIT - size)
                return await self._reject(send, limit)
            if body:
                chunks.append(body)
            more = message.get("more_body", False)
        whole = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if disconnect is not None and delivered:
                return disconnect
            if not delivered:
                delivered = True
                if disconnect is not None:
                    return disconnect
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive, budget: int) -> None:
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    @staticmethod
    async def _reject(send, limit: int) -> None:
        body, headers = _problem_413(limit)
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# ----------------------------------------------------------------------------- rate limiting

_lock = threading.Lock()
_cache: dict[tuple[str, str], tuple[object, object]] = {}


def _limiter():
    """(limiter, item) for the current settings, or None when rate limiting is off."""
    settings = get_settings()
    if not settings.rate_limit_enabled:
        return None
    key = (settings.rate_limit.strip(), settings.rate_limit_storage.strip())
    found = _cache.get(key)
    if found is None:
        with _lock:
            found = _cache.get(key)
            if found is None:
                from limits import parse
                from limits.storage import storage_from_string
                from limits.strategies import MovingWindowRateLimiter

                item = parse(key[0])
                found = (MovingWindowRateLimiter(storage_from_string(key[1])), item)
                _cache[key] = found
    return found


def reset() -> None:
    """Forget every counter (tests)."""
    with _lock:
        _cache.clear()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_rate(request: Request, bucket: str) -> None:
    """Count one request of ``bucket`` for the client; over the limit → TooManyAttempts (429)."""
    found = _limiter()
    if found is None:
        return
    limiter, item = found
    ident = client_address(request)
    if limiter.hit(item, bucket, ident):  # type: ignore[attr-defined]
        return
    stats = limiter.get_window_stats(item, bucket, ident)  # type: ignore[attr-defined]
    retry = max(1, math.ceil(stats.reset_time - time.time()))
    raise TooManyAttempts("too many requests from this address; try again later",
                          retry_after=retry)


def rate_limited(bucket: str):
    """A route dependency counting requests of ``bucket`` per client address."""

    async def dependency(request: Request) -> None:
        check_rate(request, bucket)

    dependency.__name__ = f"rate_limit_{bucket}"
    return dependency


def install(app: FastAPI) -> None:
    """Add the body-size middleware once; fail fast on a malformed RESTITUTION_RATE_LIMIT."""
    if getattr(app.state, "body_limit_installed", False):
        return
    app.state.body_limit_installed = True
    app.add_middleware(BodyLimitMiddleware)
    _limiter()
