"""Request dependencies shared by the routes: database sessions and settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlmodel import Session

from claims.db import get_engine, session_scope
from claims.settings import Settings, get_settings


def get_db() -> Iterator[Session]:
    """One write transaction per request: committed when the handler returns normally, before
    the response is sent (``scope="function"`` below: FastAPI's default ends a dependency
    with ``yield`` only after the response has gone, which would answer 200 for a write that
    is not yet visible — or that then fails to commit)."""
    with session_scope(get_engine()) as session:
        yield session


def get_read_db() -> Iterator[Session]:
    """A read transaction (deferred on SQLite, so reads never wait for writers)."""
    engine = get_engine().execution_options(sqlite_begin="DEFERRED")
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
        finally:
            session.rollback()


SessionDep = Annotated[Session, Depends(get_db, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_db, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
