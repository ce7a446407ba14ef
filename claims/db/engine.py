"""Engines and sessions.

SQLite (the embedded default) runs in WAL mode with a busy timeout, foreign keys on, and
write transactions that begin IMMEDIATE so that the server and CLI commands can work on one
file at once without lock-upgrade deadlocks. PostgreSQL works through psycopg 3. Every engine
this module hands out has its schema current (:func:`claims.db.schema.ensure_schema`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

#: Upper bound of each SQLite connection's page cache (KiB).
SQLITE_CACHE_KIB = 131_072
#: The bound while one bulk operation runs (:func:`claims.db.bulk.bulk_cache`): the ledger
#: import, whose working set outgrows the everyday bound.
SQLITE_BULK_CACHE_KIB = 1_048_576

#: Marks a pooled connection whose cache :func:`claims.db.bulk.bulk_cache` raised.
BULK_MARK = "restitution_bulk_cache"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_current: set[str] = set()


def make_engine(url: str, **kw) -> Engine:
    """A new engine for ``url`` with this project's connection settings."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, **kw
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _rec):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            # SQLite's default page cache is 2 MiB: once a big case's indexes outgrow it, every
            # random-order insert re-reads B-tree pages from the OS. A fixed cap per
            # connection, pages allocated as used: small databases pay nothing.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            # Builds with SECURE_DELETE (Debian's) zero every page a dropped table frees; for
            # the temp database (import staging, deleted with the connection) that rewrites a
            # big ledger's whole stage on DROP. FAST still zeroes deleted content on the pages
            # that stay; the main database keeps the build's setting.
            cur.execute("PRAGMA temp.secure_delete=FAST")
            cur.close()

        @event.listens_for(engine, "checkin")
        def _on_checkin(dbapi_conn, rec):  # pragma: no cover - exercised by bulk writes
            if rec.info.pop(BULK_MARK, False):  # bulk_cache: back to the everyday bound
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
                cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 20)
    return create_engine(url, **kw)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database), schema current."""
    if url is None:
        from claims.settings import get_settings

        url = get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
    if url not in _current:
        from claims.db.schema import ensure_schema

        ensure_schema(engine)
        _current.add(url)
    return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _current.clear()


@contextmanager
def session_scope(engine: Engine | None = None, *, write: bool = True) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error.

    ``write=False`` opens a deferred (read) transaction on SQLite so readers never queue
    behind writers.
    """
    engine = engine or get_engine()
    bind = engine if write else engine.execution_options(sqlite_begin="DEFERRED")
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
