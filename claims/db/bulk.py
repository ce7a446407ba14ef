"""SQL plumbing shared by every rule module: bulk inserts and updates, ids taken ahead of a
bulk insert, row locks, long ``IN`` lists, and the differences between SQLite and PostgreSQL.

Rule modules say *what* to write; this module knows *how* each database takes it fast:

- :func:`bulk_insert` — ``COPY … FROM STDIN`` on PostgreSQL (psycopg), one ``executemany``
  elsewhere, of a list or a stream of rows; values already as the driver takes them
  (:func:`bind_value`, :func:`bind_processor`); :func:`temp_table`, :func:`drop_temp_tables`
  for staging.
- :func:`update_rows` — many guarded ``UPDATE``s: on SQLite one statement per group of rows
  (``json_each``), elsewhere one ``executemany``.
- :func:`next_ids` — the ids a bulk insert will give, so rows that refer to them can be
  written in the same transaction.
- :func:`for_update` — ``SELECT … FOR UPDATE`` where it means something (not on SQLite, whose
  IMMEDIATE write transaction already holds the database's write lock); :func:`get_one`, an
  entity by its key, locked or not, or ``NotFound``.
- :func:`in_values` — ``column IN (…)`` for a long list.
- :func:`run`, :func:`fetch_all`, :func:`read_columns`, :func:`markers`, :func:`unindexed` —
  hand-written SQL for
  hot paths (``?`` markers, in the driver's style), and :func:`advisory_xact_lock`.
- :func:`bulk_cache` — a larger SQLite page cache for one big write.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, String, bindparam, func, literal_column, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

#: From this many values on, an ``IN`` list goes to SQLite as one JSON parameter.
JSON_IN_MIN = 64
#: ``UPDATE … FROM`` is SQLite 3.33+.
SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


def _dialect(bind) -> Any:
    """The dialect of an engine, connection or session."""
    if hasattr(bind, "get_bind"):  # a Session
        bind = bind.get_bind()
    return bind.dialect


def is_sqlite(bind: Engine | str | Any) -> bool:
    """Whether ``bind`` (an engine, connection, session or URL) is SQLite."""
    if isinstance(bind, str):
        return make_url(bind).get_backend_name() == "sqlite"
    return _dialect(bind).name == "sqlite"


def lock_clause(session) -> bool:
    """Whether ``SELECT … FOR UPDATE`` means anything here (not on SQLite, where the
    IMMEDIATE transaction already holds the database's write lock)."""
    return not is_sqlite(session)


def for_update(stmt, session, **kw):
    """``stmt`` with ``FOR UPDATE`` (``kw``: ``skip_locked=True``, ``of=…``) where the
    database takes row locks; ``stmt`` unchanged on SQLite."""
    return stmt.with_for_update(**kw) if lock_clause(session) else stmt


def get_one(session, stmt, *, lock: bool = False, missing: str) -> Any:
    """The one entity ``stmt`` selects (its row locked for update when ``lock``), or
    :class:`claims.errors.NotFound` with the message ``missing``."""
    from claims.errors import NotFound

    found = session.execute(for_update(stmt, session) if lock else stmt).scalar_one_or_none()
    if found is None:
        raise NotFound(missing)
    return found


def bind_processor(session, column) -> Callable[[Any], Any] | None:
    """The bind processing ``column``'s type applies on the session's dialect (or None)."""
    dialect = _dialect(session)
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def bind_value(session, column, value: Any) -> Any:
    """``value`` as the driver takes it for ``column`` (the column type's bind processing, as
    SQLAlchemy would apply it): compute once, pass to :func:`bulk_insert` many times."""
    proc = bind_processor(session, column)
    return proc(value) if proc is not None else value


def bind_repeats(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``proc`` for a column's values in a batch, processing a value that repeats (the same
    object: the batch's one ``now``) once."""
    last: Any = bind_repeats
    out: Any = None

    def bind(value: Any) -> Any:
        nonlocal last, out
        if value is not last:
            last, out = value, proc(value)
        return out

    return bind


def driver_sql(session, sql: str) -> str:
    """``sql`` written with ``?`` markers, in the session's driver's parameter style."""
    if _dialect(session).paramstyle == "qmark":
        return sql
    return sql.replace("%", "%%").replace("?", "%s")


def bulk_insert(bind, table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """INSERT ``rows`` (tuples in ``columns`` order, values already as the driver takes them:
    ints, str, None, JSON as text, times through :func:`bind_value`) into ``table`` (a table
    or its name) in the transaction of ``bind`` (a session or a connection):
    ``COPY … FROM STDIN`` on PostgreSQL (psycopg), the driver's ``executemany`` elsewhere — no
    per-row statement compilation or type processing. ``rows`` may be an iterator: it is
    consumed as it is written, never held in memory whole. A driver error is raised as
    SQLAlchemy's (``IntegrityError`` for a broken constraint) on every database."""
    if isinstance(rows, Sequence) and not rows:
        return
    conn = bind if isinstance(bind, Connection) else bind.connection()
    name = table if isinstance(table, str) else table.name
    names = ", ".join(columns)
    dialect = conn.dialect
    copy_in = dialect.name == "postgresql" and dialect.driver == "psycopg"
    sql = (f"COPY {name} ({names}) FROM STDIN" if copy_in else driver_sql(
        conn, f"INSERT INTO {name} ({names}) VALUES ({', '.join('?' * len(columns))})"))
    cursor = conn.connection.driver_connection.cursor()
    try:
        if copy_in:
            with cursor.copy(sql) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
        else:
            cursor.executemany(sql, rows)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def temp_table(bind, name: str, columns: str) -> None:
    """``CREATE TEMP TABLE name (columns)`` — dropped at commit on PostgreSQL; on SQLite it
    lasts as long as the connection, so :func:`drop_temp_tables` it after use.
    ``{pk}`` and ``{ts}`` in ``columns`` stand for the database's integer primary key and
    timestamp types (SQLite's ``INTEGER PRIMARY KEY`` is the rowid; its times are text)."""
    conn = bind if isinstance(bind, Connection) else bind.connection()
    sqlite = is_sqlite(conn)
    columns = columns.format(pk="INTEGER PRIMARY KEY" if sqlite else "BIGINT PRIMARY KEY",
                             ts="TEXT" if sqlite else "TIMESTAMP")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} ({columns})"
                         + ("" if sqlite else " ON COMMIT DROP"))


def drop_temp_tables(bind, names: Iterable[str]) -> None:
    """Drop these TEMP tables if they exist."""
    conn = bind if isinstance(bind, Connection) else bind.connection()
    schema = "temp" if is_sqlite(conn) else "pg_temp"
    for name in names:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{name}")


def update_rows(session, table, *, keys: Sequence[str], columns: Sequence[str],
                rows: Sequence[tuple], extra_sql: str = "", extra: Sequence[Any] = ()) -> int:
    """Many ``UPDATE table SET extra_sql, column = … WHERE key = … AND …`` in the session's
    transaction; returns how many rows changed.

    ``rows`` are ``(*key values, *column values)`` — Python values, bound through the
    columns' types here. ``extra_sql`` sets what every row shares (``"status = ?, version =
    version + 1"``) with ``extra`` its parameters.

    On SQLite the rows go as one JSON parameter: rows that share their values apart from the
    first key as one ``UPDATE … WHERE key IN json_each(?)``, otherwise one ``UPDATE … FROM
    json_each(?)`` for all, each ``OR ROLLBACK`` (any error rolls back the whole transaction,
    so it needs no statement journal). One statement per claim would, for a foreign-key
    column, copy the same pages into a statement journal again for every row. Elsewhere one
    ``executemany``."""
    if not rows:
        return 0
    tab = table.name
    c = table.c
    nkeys = len(keys)
    procs = [bind_processor(session, c[k]) for k in (*keys, *columns)]
    procs = [bind_repeats(p) if p is not None else None for p in procs]
    if any(procs):
        rows = [tuple(p(v) if p else v for p, v in zip(procs, row)) for row in rows]
    head = f"{extra_sql}, " if extra_sql and columns else extra_sql
    conn = session.connection()
    if not is_sqlite(session) or not SQLITE_UPDATE_FROM:
        sets = head + ", ".join(f"{k} = ?" for k in columns)
        where = " AND ".join(f"{k} = ?" for k in keys)
        params = [(*extra, *row[nkeys:], *row[:nkeys]) for row in rows]
        return conn.exec_driver_sql(driver_sql(session, f"UPDATE {tab} SET {sets} WHERE {where}"),
                                    params).rowcount
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[row[1:]].append(row[0])
    if len(groups) <= 4:
        sets = head + ", ".join(f"{k} = ?" for k in columns)
        where = " AND ".join([f"{keys[0]} IN (SELECT value FROM json_each(?))",
                              *(f"{k} = ?" for k in keys[1:])])
        sql = f"UPDATE OR ROLLBACK {tab} SET {sets} WHERE {where}"
        changed = 0
        for rest, firsts in groups.items():
            changed += conn.exec_driver_sql(
                sql, (*extra, *rest[nkeys - 1:], json.dumps(firsts), *rest[:nkeys - 1])).rowcount
        return changed
    names = [*(f"k{i}" for i in range(nkeys)), *(f"v{i}" for i in range(len(columns)))]
    cols = ", ".join(f"json_extract(value, '$[{i}]') AS {n}" for i, n in enumerate(names))
    sets = head + ", ".join(f"{k} = u.v{i}" for i, k in enumerate(columns))
    where = " AND ".join(f"{tab}.{k} = u.k{i}" for i, k in enumerate(keys))
    sql = (f"UPDATE OR ROLLBACK {tab} SET {sets} "
           f"FROM (SELECT {cols} FROM json_each(?)) AS u WHERE {where}")
    return conn.exec_driver_sql(
        sql, (*extra, json.dumps(rows, separators=(",", ":")))).rowcount


def markers(n: int) -> str:
    """``?, ?, …`` (``n`` markers) for an ``IN (…)`` list of a :func:`run` statement."""
    return ", ".join(["?"] * n)


def run(session, sql: str, params: Any = ()) -> Any:
    """Run ``sql`` (written with ``?`` markers) in the session's transaction as the driver
    takes it, with no statement compilation or type processing: a tuple of parameters runs
    it once, a list of tuples runs it for each (``executemany``). Pending ORM changes are
    flushed first, as ``session.execute`` would."""
    session.flush()
    return session.connection().exec_driver_sql(driver_sql(session, sql), params)


def fetch_all(session, sql: str, params: Any = ()) -> list:
    """The rows of a :func:`run` ``SELECT``, fetched at once."""
    return run(session, sql, params).fetchall()


def read_columns(session, sql: str, params: Any = (), *, chunk: int = 10_000) -> list[list]:
    """The rows of a :func:`run` ``SELECT`` as one list per column (read in chunks): for
    hot paths that work on columns (a case's claims solved at once)."""
    result = run(session, sql, params)
    cols: list[list] = [[] for _ in result.keys()]
    while rows := result.fetchmany(chunk):
        for col, values in zip(cols, zip(*rows)):
            col.extend(values)
    return cols


def unindexed(session, column: str) -> str:
    """``column`` in a condition that must not pick SQLite's index: ``+column`` on SQLite
    (its planner, without statistics, may prefer a broad index, e.g. a round's, over the ids
    of an ``id IN (…)`` list), ``column`` elsewhere."""
    return f"+{column}" if is_sqlite(session) else column


def advisory_xact_lock(session, key: int) -> None:
    """Hold the transaction-level advisory lock ``key`` until the transaction ends
    (PostgreSQL); nothing on SQLite, whose write transaction holds the database's lock."""
    if not is_sqlite(session):
        session.connection().exec_driver_sql("SELECT pg_advisory_xact_lock(%(k)s)", {"k": key})


def in_values(session, column, values: Sequence):
    """``column IN (values)``. On SQLite a long list goes as one JSON parameter
    (``IN (SELECT value FROM json_each(?))``): SQLAlchemy's per-value expansion of a
    many-thousand-item list costs more than the query."""
    if len(values) >= JSON_IN_MIN and is_sqlite(session):
        sub = select(literal_column("value")).select_from(
            func.json_each(bindparam(None, json.dumps(list(values)), type_=String))
        )
        return column.in_(sub)
    return column.in_(values)


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


def bulk_cache(session) -> None:
    """Let this session's SQLite connection cache up to
    :data:`claims.db.engine.SQLITE_BULK_CACHE_KIB` for the bulk write it is about to do; the
    everyday bound comes back when the connection returns to the pool (after the commit), and
    SQLite then frees the pages above it.

    A transaction whose dirty pages outgrow the page cache spills them to the WAL and writes
    them again when they are dirtied again (a million-victim ledger wrote ten times as much
    under the everyday bound). Scoped rather than the everyday bound, so that an API server's
    pooled connections do not each grow to it over a long life. PostgreSQL: nothing to do."""
    from claims.db.engine import BULK_MARK, SQLITE_BULK_CACHE_KIB

    if not is_sqlite(session):
        return
    conn = session.connection()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    conn.connection.info[BULK_MARK] = True
