"""Schema upgrades: Alembic owns the schema (``migrations/``).

Every process calls :func:`ensure_schema` on start (through :func:`claims.db.get_engine`): one
query when the database is current, a migration to head when it is behind.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, text

from claims.db.bulk import is_sqlite

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration's id, read from the files (importing Alembic is slow, and
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
