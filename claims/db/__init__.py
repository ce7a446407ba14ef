"""The database: engines and sessions (:mod:`claims.db.engine`), the schema
(:mod:`claims.db.schema`), the SQL plumbing every rule module shares (:mod:`claims.db.bulk`)
and the SQLite write gate (:mod:`claims.db.gate`)."""

from claims.db.bulk import (
    advisory_xact_lock,
    bind_processor,
    bind_repeats,
    bind_value,
    bulk_cache,
    bulk_insert,
    driver_sql,
    drop_temp_tables,
    fetch_all,
    for_update,
    get_one,
    in_values,
    is_sqlite,
    lock_clause,
    markers,
    next_ids,
    read_columns,
    run,
    temp_table,
    unindexed,
    update_rows,
)
from claims.db.engine import (
    SQLITE_BULK_CACHE_KIB,
    SQLITE_CACHE_KIB,
    dispose_engines,
    get_engine,
    make_engine,
    session_scope,
)
from claims.db.gate import WriteGate, drain_gate, write_gate
from claims.db.schema import (
    MIGRATIONS,
    alembic_config,
    current_revision,
    ensure_schema,
    head_revision,
)

__all__ = [
    "advisory_xact_lock", "drop_temp_tables", "fetch_all", "get_one", "temp_table", "markers", "read_columns", "run", "unindexed",
    "MIGRATIONS", "SQLITE_BULK_CACHE_KIB", "SQLITE_CACHE_KIB", "WriteGate", "alembic_config",
    "bind_processor", "bind_repeats", "bind_value", "bulk_cache", "bulk_insert",
    "current_revision", "dispose_engines", "drain_gate", "driver_sql", "ensure_schema", "for_update",
    "get_engine", "head_revision", "in_values", "is_sqlite", "lock_clause", "make_engine",
    "next_ids", "session_scope", "update_rows", "write_gate",
]
