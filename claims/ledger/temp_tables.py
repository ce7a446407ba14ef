"""SQL plumbing the ledger import needs beyond :mod:`claims.db`: TEMP tables and a bulk
writer that streams an iterator of rows into one.

Kept apart from the ledger's rules so that the dialect details stay in one place; these are
candidates for :mod:`claims.db.bulk` (:func:`stream_rows` is :func:`claims.db.bulk_insert`
for an iterator too long to hold in memory).

- :func:`temp_types` — the column types a TEMP table's integer key and timestamps take
  (SQLite's ``INTEGER PRIMARY KEY`` is the rowid; its timestamps are text).
- :func:`create_temp_table` — a TEMP table that goes with the transaction on PostgreSQL
  (``ON COMMIT DROP``); on SQLite it lives as long as the connection, so it is dropped by
  :func:`drop_temp_tables` after use and before the next one.
- :func:`stream_rows` — ``COPY … FROM STDIN`` on PostgreSQL (psycopg), the driver's
  ``executemany`` of the iterator itself elsewhere: the rows are never all in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from claims.db import driver_sql, is_sqlite


def temp_types(conn) -> tuple[str, str]:
    """(integer primary key, timestamp) column types for a TEMP table on ``conn``."""
    if is_sqlite(conn):
        return "INTEGER PRIMARY KEY", "TEXT"
    return "BIGINT PRIMARY KEY", "TIMESTAMP"


def create_temp_table(conn, name: str, columns: str) -> None:
    """``CREATE TEMP TABLE name (columns)``, dropped at commit where the database can."""
    tail = "" if is_sqlite(conn) else " ON COMMIT DROP"
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} ({columns}){tail}")


def drop_temp_tables(conn, names: Iterable[str]) -> None:
    """Drop these TEMP tables if they exist."""
    schema = "temp" if is_sqlite(conn) else "pg_temp"
    for name in names:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{name}")


def stream_rows(conn, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """INSERT ``rows`` (an iterator of tuples in ``columns`` order, values as the driver takes
    them) into ``table`` in the connection's transaction, one row in memory at a time."""
    names = ", ".join(columns)
    dialect = conn.dialect
    cursor = conn.connection.driver_connection.cursor()
    try:
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
        else:
            marks = ", ".join("?" * len(columns))
            cursor.executemany(
                driver_sql(conn, f"INSERT INTO {table} ({names}) VALUES ({marks})"), rows)
    finally:
        cursor.close()
