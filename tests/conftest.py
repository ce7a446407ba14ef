"""Shared fixtures.

Database tests take the ``db_url`` fixture (directly or through ``engine`` / ``session``);
they run on SQLite always and on PostgreSQL too when ``RESTITUTION_TEST_DATABASE_URL`` is set
(each pytest process gets its own throw-away PostgreSQL database, emptied between tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

# Process-wide test environment, before any project module reads settings.
_TMP = Path(tempfile.mkdtemp(prefix="restitution-tests-"))
os.environ.update(
    {
        "RESTITUTION_VAR_DIR": str(_TMP / "var"),
        "RESTITUTION_SECRET_KEY": "test-secret-key-0123456789abcdef0123456789abcdef",
        "RESTITUTION_PII_KEY": "test-pii-key-0123456789abcdef0123456789abcdef0123",
        "RESTITUTION_MAILDIR": str(_TMP / "mail"),
        "RESTITUTION_DOCUMENTS_DIR": str(_TMP / "documents"),
        "RESTITUTION_RATE_LIMIT": "off",
        "RESTITUTION_DATABASE_URL": f"sqlite:///{_TMP / 'default.db'}",
        "PREFECT_HOME": str(_TMP / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
)
os.environ.pop("RESTITUTION_PASSWORD", None)

PG_ADMIN_URL = os.environ.get("RESTITUTION_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_ADMIN_URL else [])


def pytest_generate_tests(metafunc):
    if "db_url" in metafunc.fixturenames:
        metafunc.parametrize("db_url", BACKENDS, indirect=True)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    from claims.db import ensure_schema, make_engine

    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    engine.dispose()  # the last connection's close checkpoints the WAL into the file
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


@pytest.fixture(scope="session")
def pg_database():
    """A throw-away PostgreSQL database for this pytest process, schema at head."""
    if not PG_ADMIN_URL:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from claims.db import ensure_schema, make_engine

    name = f"restitution_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    yield url
    from claims.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_pg(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlmodel import SQLModel

    import claims.models  # noqa: F401

    engine = create_engine(url)
    # DELETE in reverse dependency order is ~20x faster than TRUNCATE on tiny tables.
    with engine.begin() as conn:
        for t in reversed(SQLModel.metadata.sorted_tables):
            conn.execute(text(f'DELETE FROM "{t.name}"'))
        conn.execute(
            text("INSERT INTO audit_head (id, last_id, last_hash, count) VALUES (1, 0, :h, 0)"),
            {"h": "0" * 64},
        )
    engine.dispose()


@pytest.fixture
def db_url(request, tmp_path, sqlite_template, pg_database, monkeypatch):
    """The URL of an empty database at the current schema, set as RESTITUTION_DATABASE_URL."""
    from claims.db import dispose_engines
    from claims.settings import reset_settings

    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(sqlite_template, path)
        url = f"sqlite:///{path}"
    else:
        url = pg_database
        _empty_pg(url)
    monkeypatch.setenv("RESTITUTION_DATABASE_URL", url)
    monkeypatch.setenv("RESTITUTION_MAILDIR", str(tmp_path / "mail"))
    monkeypatch.setenv("RESTITUTION_DOCUMENTS_DIR", str(tmp_path / "documents"))
    dispose_engines()
    reset_settings()
    yield url
    dispose_engines()
    reset_settings()


@pytest.fixture
def engine(db_url):
    from claims.db import get_engine

    return get_engine(db_url)


@pytest.fixture
def session(engine):
    from sqlmodel import Session

    with Session(engine, expire_on_commit=False) as s:
        yield s
        s.rollback()
