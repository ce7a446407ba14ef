"""The SQL the payout hot paths write by hand: statements with ``?`` markers run as the
driver takes them (:func:`claims.db.driver_sql`), without per-row statement compilation or
type processing, for steps of thousands of rows.

Generic helpers, not payout rules: they belong with :mod:`claims.db.bulk` and live here
until they move there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from claims.db import bulk_insert, driver_sql, is_sqlite


def marks(n: int) -> str:
    """``?, ?, …`` (``n`` markers) for an ``IN (…)`` list."""
    return ", ".join(["?"] * n)


def run(session: Session, sql: str, params: Any = ()) -> Any:
    """Run ``sql`` (``?`` markers) in the session's transaction: a tuple of parameters runs it
    once, a list of tuples runs it for each (``executemany``). Pending ORM changes are flushed
    first, as ``session.execute`` would."""
    session.flush()
    return session.connection().exec_driver_sql(driver_sql(session, sql), params)


def rows(session: Session, sql: str, params: Any = ()) -> list:
    """The rows of a ``SELECT`` (``?`` markers), fetched at once."""
    return run(session, sql, params).fetchall()


def unindexed(session: Session, column: str) -> str:
    """``column`` in a condition that must not pick SQLite's index: ``+column`` on SQLite (its
    planner, without statistics, prefers e.g. the round's index over the ids of an
    ``id IN (…)`` list — a scan of the whole round per chunk), ``column`` elsewhere."""
    return f"+{column}" if is_sqlite(session) else column


def insert(session: Session, table: Any, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """:func:`claims.db.bulk_insert`, a constraint violation raised as SQLAlchemy's
    ``IntegrityError`` on every backend (``COPY`` raises the driver's own)."""
    dbapi = session.get_bind().dialect.loaded_dbapi
    try:
        bulk_insert(session, table, columns, rows)
    except IntegrityError:
        raise
    except dbapi.IntegrityError as exc:
        raise IntegrityError(f"INSERT INTO {table.name}", None, exc) from exc


def advisory_xact_lock(session: Session, key: int) -> None:
    """Hold the transaction-level advisory lock ``key`` until the transaction ends (PostgreSQL);
    nothing on SQLite, whose write transaction already holds the database's write lock."""
    if not is_sqlite(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
