"""Database engine, sessions and schema upgrades.

SQLite (the embedded default) runs in WAL mode with a busy timeout, foreign keys on, and
write transactions that begin IMMEDIATE so that the server and CLI commands can work on one
file at once without lock-upgrade deadlocks. PostgreSQL works through psycopg 3.

The schema is owned by Alembic (``migrations/``); every process calls :func:`ensure_schema`
on start, which costs one query when the database is current and migrates when it is behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"

#: Upper bound of each SQLite connection's page cache (KiB).
SQLITE_CACHE_KIB = 131_072
#: The bound while one bulk operation runs (:func:`bulk_cache`): the ledger import, whose
#: working set outgrows the everyday bound (filing 1M claims under it measured no gain).
SQLITE_BULK_CACHE_KIB = 1_048_576

_BULK = "restitution_bulk_cache"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_current: set[str] = set()


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


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
            # random-order insert re-reads B-tree pages from the OS (2M random-key inserts:
            # 40 → 25 CPU s with 256 MiB; the 1M-row ledger import ~12 % less CPU). A fixed cap
            # per connection, pages allocated as used: small databases pay nothing.
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            # Builds with SECURE_DELETE (Debian's) zero every page a dropped table frees; for
            # the temp database (import staging, deleted with the connection) that rewrote a
            # 6M-row ledger's whole stage on DROP (2.5 GB). FAST still zeroes deleted content
            # on the pages that stay; the main database keeps the build's setting.
            cur.execute("PRAGMA temp.secure_delete=FAST")
            cur.close()

        @event.listens_for(engine, "checkin")
        def _on_checkin(dbapi_conn, rec):  # pragma: no cover - exercised by bulk writes
            if rec.info.pop(_BULK, False):  # bulk_cache: back to the everyday bound
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


def bulk_cache(session: Session) -> None:
    """Let this session's SQLite connection cache up to :data:`SQLITE_BULK_CACHE_KIB` for the
    bulk write it is about to do; the everyday bound comes back when the connection returns to
    the pool (after the commit), and SQLite then frees the pages above it.

    A transaction whose dirty pages outgrow the page cache spills them to the WAL and writes
    them again when they are dirtied again: the 6M-row ledger of a 1M-victim case inserted its
    entries with 46 CPU s and 7.5 GB written under the everyday 128 MiB bound, 28 CPU s and
    0.7 GB under 1 GiB. Scoped rather than the everyday bound, so that an API server's pooled
    connections do not each grow to it over a long life. PostgreSQL: nothing to do.
    """
    if not is_sqlite(session.get_bind()):
        return
    conn = session.connection()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    conn.connection.info[_BULK] = True


_sequences: dict[tuple[str, str], str] = {}


def next_ids(conn, table: str, n: int) -> list[int] | None:
    """``n`` ids for rows about to be inserted into ``table`` (an integer ``id`` key) by a bulk
    insert that names them: from the table's sequence on PostgreSQL; after the largest id on
    SQLite, whose write transaction holds the database's write lock, so nobody else inserts
    meanwhile (they are the ids SQLite would give). ``None`` on other databases (insert with
    ``RETURNING`` there)."""
    name = conn.dialect.name
    if name == "sqlite":
        last = conn.exec_driver_sql(f"SELECT max(id) FROM {table}").scalar() or 0
        return list(range(last + 1, last + 1 + n))
    if name != "postgresql":  # pragma: no cover - the project runs on SQLite and PostgreSQL
        return None
    key = (conn.engine.url.render_as_string(hide_password=True), table)
    seq = _sequences.get(key)
    if seq is None:
        seq = _sequences[key] = conn.exec_driver_sql(
            f"SELECT pg_get_serial_sequence('{table}', 'id')").scalar_one()
    return list(conn.exec_driver_sql(
        "SELECT nextval(%(seq)s::regclass) FROM generate_series(1, %(n)s)",
        {"seq": seq, "n": n}).scalars())


def lock_clause(session: Session) -> bool:
    """Whether ``SELECT … FOR UPDATE`` means anything here (not on SQLite, where the
    IMMEDIATE transaction already holds the database's write lock)."""
    return not is_sqlite(session.get_bind())


# ---------------------------------------------------------------- schema (Alembic)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration's id, read from the files (importing Alembic costs ~0.3 s, and
    commands that find the schema current should not pay it)."""
    import re

    revs, downs = set(), set()
    for f in (MIGRATIONS / "versions").glob("*.py"):
        text_ = f.read_text()
        m = re.search(r"^revision(?:: str)?\s*=\s*['\"]([^'\"]+)['\"]", text_, re.M)
        if m:
            revs.add(m.group(1))
        d = re.search(r"^down_revision[^=]*=\s*['\"]([^'\"]+)['\"]", text_, re.M)
        if d:
            downs.add(d.group(1))
    heads = revs - downs
    if len(heads) != 1:  # branches or an unusual file: ask Alembic
        from alembic.script import ScriptDirectory

        return ScriptDirectory(str(MIGRATIONS)).get_current_head()
    return heads.pop()


def current_revision(conn) -> str | None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def ensure_schema(engine: Engine) -> None:
    """Upgrade the schema to head if it is behind; cheap when it is current."""
    head = head_revision()
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        with conn.begin():
            if current_revision(conn) == head:
                return
    from alembic import command

    with engine.connect() as conn:
        with conn.begin():
            if not is_sqlite(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(7305442)"))
            if current_revision(conn) == head:
                return
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            _seed(conn)


def _seed(conn) -> None:
    """Rows every database needs: the audit chain head."""
    if conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 0:
        conn.execute(text("INSERT INTO audit_head (id, last_id, last_hash, count) "
                          "VALUES (1, 0, :h, 0)"), {"h": "0" * 64})
