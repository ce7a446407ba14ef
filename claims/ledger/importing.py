"""The ledger import: a file read, checked and stored in one transaction.

The file is streamed once (:mod:`claims.ledger.reading`): each row is checked and fed to the
bulk writer of a TEMP staging table (:mod:`claims.ledger.staging`) directly, inside the one
transaction of the import. What stays in memory is bounded whatever the file size: one row,
small caches of repeated values (:class:`~claims.ledger.rules.Rules`) and, on SQLite, the
connection's fixed page cache (:func:`claims.db.bulk_cache`). Then set-based SQL
(:mod:`claims.ledger.storing`) writes entries, accounts, totals, match keys and insiders.

Any bad row raises :class:`~claims.errors.LedgerImportError` after the whole file has been read
(so it names every bad line) and before anything is written outside the staging table; the
transaction then rolls back. Imports of one case are serialized (the case row is locked where
the database takes row locks; SQLite's IMMEDIATE transaction serializes all writers).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.cases import get_case_by_code
from claims.db import bulk_cache, get_engine, session_scope
from claims.errors import LedgerImportError
from claims.gc_pause import gc_paused
from claims.ledger.reading import PROGRESS_EVERY, ProgressFn, read_into_stage
from claims.ledger.rules import Rules
from claims.ledger.source import open_source
from claims.ledger.staging import Stage
from claims.ledger.storing import ImportResult, store
from claims.settings import get_settings


def import_ledger(
    session_or_engine: Session | Engine | None,
    case_code: str,
    file: Any,
    actor: Actor | None = None,
    progress: ProgressFn | None = None,
    *,
    progress_every: int = PROGRESS_EVERY,
) -> ImportResult:
    """Import a ledger CSV (a path, or a binary or text file object) into case ``case_code``.

    With an engine (or ``None``: the configured database) the import runs in its own
    transaction and commits; with a session it runs in the caller's transaction (roll it back
    on error). Raises ``NotFound`` for an unknown case and ``LedgerImportError`` listing every
    bad line; nothing is stored then.
    """
    if isinstance(session_or_engine, Session):
        return run_import(session_or_engine, case_code, file, actor, progress, progress_every)
    engine = session_or_engine if session_or_engine is not None else get_engine()
    with session_scope(engine) as session:
        return run_import(session, case_code, file, actor, progress, progress_every)


@gc_paused()
def run_import(
    session: Session,
    case_code: str,
    file: Any,
    actor: Actor | None,
    progress: ProgressFn | None,
    progress_every: int,
) -> ImportResult:
    """:func:`import_ledger` in the session's transaction (the cyclic collector paused)."""
    # Lock the case: imports of one case are serialized, so "rows with id > max" are this
    # import's.
    case = get_case_by_code(session, case_code, for_update=True)
    bulk_cache(session)
    rules = Rules(get_settings().pii_key)
    source = open_source(file)
    try:
        stage = Stage(session)
        rows_read, errors = read_into_stage(source, rules, stage, progress, progress_every)
        if errors:
            raise LedgerImportError(errors)
        if progress:
            progress("storing", rows_read, source.raw.bytes)
        result = store(stage, case.id, case.code, rows_read, source.raw.sha.hexdigest())
        stage.drop()
    finally:
        rules.clear()
        source.close()
    audit.record(
        session, actor or Actor.operator(), "ledger.import", "case", case.code,
        after={**result.as_dict(), "file_name": source.name},
    )
    return result
