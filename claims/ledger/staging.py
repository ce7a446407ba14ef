"""The TEMP staging tables of a ledger import and their bulk writer.

A *run* is a stretch of rows with the same account and identity values (wallet, e-mail, phone,
IIN hash, insider): a few per account, as exports list an account's rows together. Only the
row that starts a run carries those values into ``ledger_stage`` (``account_id`` … ``insider``;
``''`` and 0 on the others); every row names its run's first line in ``run_line``. The
accounts, the identity match keys and the insiders are built from the run starts
(``ledger_ident``), and each entry takes its account and identity values from its run: a staged
row stays small (fewer bytes to write, read and drop) and an entry's account is found by line
number rather than by account id.

A missing value is staged as ``''`` (made NULL when the rows are stored), not ``None``: the
SQLite driver binds ``None`` through its adapter lookup, which made the identity cells of a
row that does not start a run cost more than the rest of it.

The tables live in the import's transaction (dropped at commit on PostgreSQL, by
:meth:`Stage.drop` on SQLite, whose TEMP tables belong to the connection).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from claims.db import bulk_insert, drop_temp_tables, temp_table

STAGE_COLUMNS = (
    "line", "k", "row_key", "run_line", "entry_type", "amount", "occurred_at", "tx_hash",
    "account_id", "wallet", "wallet_key", "email", "phone", "iin_hash", "insider",
)
TABLES = ("ledger_stage", "ledger_ident", "ledger_agg")


class Stage:
    """The staging tables of one import on the session's connection."""

    def __init__(self, session: Session) -> None:
        self.conn = session.connection()
        self.drop()
        temp_table(
            self.conn, "ledger_stage",
            "line {pk}, k BIGINT NOT NULL, "
            "row_key VARCHAR(32) NOT NULL, run_line BIGINT NOT NULL, "
            "entry_type VARCHAR(16) NOT NULL, amount BIGINT NOT NULL, occurred_at {ts} NOT NULL, "
            "tx_hash VARCHAR(128) NOT NULL, account_id VARCHAR(128) NOT NULL, "
            "wallet VARCHAR(128) NOT NULL, wallet_key VARCHAR(128) NOT NULL, "
            "email VARCHAR(320) NOT NULL, phone VARCHAR(32) NOT NULL, "
            "iin_hash VARCHAR(64) NOT NULL, insider INTEGER NOT NULL",
        )
        temp_table(
            self.conn, "ledger_ident",
            "line {pk}, account_pk BIGINT, "
            "account_id VARCHAR(128) NOT NULL, wallet VARCHAR(128), wallet_key VARCHAR(128), "
            "email VARCHAR(320), phone VARCHAR(32), iin_hash VARCHAR(64), "
            "insider INTEGER NOT NULL",
        )

    def write(self, rows: Any) -> None:
        """Stream ``rows`` (an iterator of tuples in :data:`STAGE_COLUMNS` order) into
        ``ledger_stage``."""
        bulk_insert(self.conn, "ledger_stage", STAGE_COLUMNS, rows)

    def add_totals_table(self) -> None:
        """``ledger_agg``: the new entries' sums per account (see
        :func:`claims.ledger.storing.add_totals`)."""
        temp_table(
            self.conn, "ledger_agg",
            "account_pk BIGINT PRIMARY KEY, dep BIGINT NOT NULL, wd BIGINT NOT NULL, "
            "bon BIGINT NOT NULL",
        )

    def drop(self) -> None:
        drop_temp_tables(self.conn, TABLES)
