"""The SQL plumbing (claims.db.bulk): what rule modules rely on, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from claims.db import bulk_insert, for_update, in_values, is_sqlite, session_scope, update_rows
from claims.db.bulk import SQLITE_UPDATE_FROM
from claims.models import UTCDateTime

_meta = MetaData()
PROBE = Table(
    "bulk_probe", _meta,
    Column("id", Integer, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("n", Integer),
    Column("at", UTCDateTime),
)
T0 = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


@pytest.fixture
def probe(engine):
    _meta.drop_all(engine, checkfirst=True)
    _meta.create_all(engine)
    with session_scope(engine) as s:
        bulk_insert(s, PROBE, ("id", "status", "n"), [(i, "open", i) for i in range(1, 201)])
    yield engine
    _meta.drop_all(engine)


def _rows(engine):
    with session_scope(engine, write=False) as s:
        return {r.id: (r.status, r.n, r.at) for r in s.execute(select(PROBE))}


def test_update_rows_same_values_for_a_batch(probe):
    with session_scope(probe) as s:
        changed = update_rows(s, PROBE, keys=("id", "status"), columns=("n", "at"),
                              rows=[(i, "open", 7, T0) for i in range(1, 101)],
                              extra_sql="status = ?", extra=("done",))
    assert changed == 100
    rows = _rows(probe)
    assert all(rows[i] == ("done", 7, T0) for i in range(1, 101))
    assert all(rows[i] == ("open", i, None) for i in range(101, 201))


def test_update_rows_different_values_per_row(probe):
    with session_scope(probe) as s:
        changed = update_rows(s, PROBE, keys=("id", "status"), columns=("n",),
                              rows=[(i, "open", 1000 + i) for i in range(1, 201)])
    assert changed == 200
    assert all(v == ("open", 1000 + i, None) for i, v in _rows(probe).items())


def test_update_rows_guard_counts_only_matching_rows(probe):
    """A row whose guard no longer holds changes nothing; the caller sees the count."""
    with session_scope(probe) as s:
        update_rows(s, PROBE, keys=("id",), columns=("status",), rows=[(5, "closed")])
    with session_scope(probe) as s:
        changed = update_rows(s, PROBE, keys=("id", "status"), columns=("n",),
                              rows=[(i, "open", -i) for i in range(1, 11)])
    assert changed == 9
    assert _rows(probe)[5] == ("closed", 5, None)


def test_update_rows_nothing_to_do(probe):
    with session_scope(probe) as s:
        assert update_rows(s, PROBE, keys=("id",), columns=("n",), rows=[]) == 0


def test_sqlite_takes_update_from(engine):
    """The one-statement form needs SQLite 3.33 (Debian's is newer)."""
    if is_sqlite(engine):
        assert SQLITE_UPDATE_FROM


def test_in_values_long_and_short_lists(probe):
    with session_scope(probe, write=False) as s:
        for ids in ([3, 4], list(range(50, 150))):
            got = s.execute(select(PROBE.c.id).where(in_values(s, PROBE.c.id, ids))).scalars()
            assert sorted(got) == ids


def test_for_update_only_where_rows_lock(probe):
    with session_scope(probe) as s:
        sql = str(for_update(select(PROBE.c.id), s).compile(s.get_bind()))
        assert ("FOR UPDATE" in sql) is (not is_sqlite(s))
