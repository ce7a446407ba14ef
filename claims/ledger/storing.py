"""From the staging tables into the ledger: set-based SQL, in the import's transaction.

Entries are written with ``INSERT … SELECT … ON CONFLICT (case_id, row_key) DO NOTHING``; only
when some row was not added (a re-import, an extended file, identical rows) are identical rows
looked for (GROUP BY on a 64-bit prefix of the key) and their n-th copies added under their own
keys. Accounts, identity match keys and insiders come from the few rows that start a run
(``ledger_ident``, see :mod:`claims.ledger.staging`); each entry takes its account and identity
values from its run's row, found by line number; the totals and tx-hash keys come from the new
entries only, so a re-import changes nothing.

Totals (``ledger_account``): ``deposits``; ``withdrawals`` = withdrawals + bonuses; ``bonuses``;
``insider``.

Match keys (table ``ledger_identifier``, read by verification — query ``(case_id, kind,
value)``; every value is normalized exactly as below, so normalize the claim's side the same
way before looking it up):

| kind      | value                                                                      |
|-----------|----------------------------------------------------------------------------|
| `tx_hash` | :func:`claims.validators.tx_hash_key`: 64 lower-case hex digits **without** |
|           | ``0x``                                                                      |
| `iin`     | :func:`claims.crypto.iin_hash` of the IIN (same as ``Claim.iin_hash``)      |
| `email`   | :func:`claims.validators.email_key` of the validated address (as           |
|           | ``Claim.email_key``)                                                        |
| `phone`   | E.164 from :func:`claims.validators.validate_phone` (as ``Claim.phone``)    |
| `wallet`  | :func:`claims.validators.normalize_address_key` (as                        |
|           | ``Claim.payout_address_key``)                                               |

``ledger_entry`` stores the same normalized ``tx_hash``, ``email`` and ``phone``, the
``wallet`` (EIP-55 for a mixed-case Ethereum address; an all-lower-case one as the ledger spells
it; TRON as given) and ``iin_hash``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text

from claims.ledger.reading import nth_row_key
from claims.ledger.staging import Stage

IDENTIFIER_KINDS = ("tx_hash", "iin", "email", "phone", "wallet")
#: The identity match keys of an account and the ``ledger_ident`` column each comes from.
IDENTITY_COLUMNS = (("iin", "iin_hash"), ("email", "email"), ("phone", "phone"),
                    ("wallet", "wallet_key"))

# Entries: only rows not stored before; account and identity values from their run (CROSS
# JOIN: on SQLite the stage is the outer loop, in line order, and the run is found by its line).
_INSERT_ENTRIES = (
    "INSERT INTO ledger_entry (case_id, account_pk, row_key, entry_type, amount, occurred_at, "
    "tx_hash, wallet, email, phone, iin_hash) "
    "SELECT :c, i.account_pk, s.row_key, s.entry_type, s.amount, s.occurred_at, "
    "NULLIF(s.tx_hash, ''), i.wallet, i.email, i.phone, i.iin_hash "
    "FROM ledger_stage s CROSS JOIN ledger_ident i WHERE i.line = s.run_line {} "
    "ON CONFLICT (case_id, row_key) DO NOTHING"
)


@dataclass
class ImportResult:
    case: str
    rows_read: int
    rows_added: int
    accounts_added: int
    identifiers_added: int
    insiders_marked: int
    duplicates_in_file: int
    file_sha256: str

    @property
    def rows_existing(self) -> int:
        """Rows of the file that were already stored (re-import / extended file)."""
        return self.rows_read - self.rows_added

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_existing"] = self.rows_existing
        return d


def store(stage: Stage, case_id: int, case_code: str, rows_read: int,
          file_sha: str) -> ImportResult:
    """Write the staged rows into the ledger of case ``case_id``; returns what was added."""
    conn = stage.conn
    copy_runs(conn)
    max_before = conn.execute(text("SELECT coalesce(max(id), 0) FROM ledger_entry")).scalar()
    accounts_added = add_accounts(conn, case_id)
    rows_added = add_entries(conn, case_id)
    dup_rows = 0
    if rows_added < rows_read:
        dup_rows, more = add_identical_rows(conn, case_id)
        rows_added += more
    identifiers_added = 0
    if rows_added:
        add_totals(stage, case_id, max_before)
        identifiers_added += add_tx_hash_keys(conn, case_id, max_before)
    identifiers_added += add_identity_keys(conn, case_id)
    insiders_marked = mark_file_insiders(conn, case_id)
    return ImportResult(
        case=case_code,
        rows_read=rows_read,
        rows_added=rows_added,
        accounts_added=accounts_added,
        identifiers_added=identifiers_added,
        insiders_marked=insiders_marked,
        duplicates_in_file=dup_rows,
        file_sha256=file_sha,
    )


def copy_runs(conn) -> None:
    """The runs (the rows that start one) into ``ledger_ident``: a few rows per account."""
    conn.exec_driver_sql(
        "INSERT INTO ledger_ident (line, account_id, wallet, wallet_key, email, phone, iin_hash, "
        "insider) SELECT line, account_id, NULLIF(wallet, ''), NULLIF(wallet_key, ''), "
        "NULLIF(email, ''), NULLIF(phone, ''), NULLIF(iin_hash, ''), insider "
        "FROM ledger_stage WHERE account_id <> ''"
    )


def add_accounts(conn, case_id: int) -> int:
    """New accounts (at zero: their totals follow from the new entries), and each run's
    account id; returns how many were added."""
    p = {"c": case_id}
    added = conn.execute(text(
        "INSERT INTO ledger_account (case_id, account_id, deposits, withdrawals, bonuses, insider) "
        "SELECT :c, account_id, 0, 0, 0, false FROM ledger_ident WHERE true "
        "GROUP BY account_id ORDER BY account_id "
        "ON CONFLICT (case_id, account_id) DO NOTHING"
    ), p).rowcount
    conn.execute(text(
        "UPDATE ledger_ident SET account_pk = (SELECT a.id FROM ledger_account a "
        "WHERE a.case_id = :c AND a.account_id = ledger_ident.account_id)"
    ), p)
    return added


def add_entries(conn, case_id: int) -> int:
    """The staged rows not stored before, in line order; returns how many were added."""
    return conn.execute(text(_INSERT_ENTRIES.format("ORDER BY s.line")), {"c": case_id}).rowcount


def add_identical_rows(conn, case_id: int) -> tuple[int, int]:
    """Identical rows within the file: the n-th (n ≥ 2) gets its own key (:func:`nth_row_key`)
    and goes in. Called only when some row was not added — a re-import, an extended file, or
    identical rows: each such n-th row lost the conflict on (case_id, row_key) to the first.
    Returns (identical rows in the file, rows added)."""
    dups = conn.execute(text(
        "SELECT line, row_key FROM ledger_stage WHERE k IN "
        "(SELECT k FROM ledger_stage GROUP BY k HAVING count(*) > 1) ORDER BY line"
    )).all()
    seen: dict[str, int] = {}
    fixes = []
    for line, key in dups:
        n = seen[key] = seen.get(key, 0) + 1
        if n > 1:
            fixes.append({"k": nth_row_key(key, n), "line": line, "c": case_id})
    if not fixes:
        return 0, 0
    conn.execute(text("UPDATE ledger_stage SET row_key = :k WHERE line = :line"), fixes)
    insert_one = text(_INSERT_ENTRIES.format("AND s.line = :line"))
    added = sum(conn.execute(insert_one, fix).rowcount for fix in fixes)
    return len(fixes), added


def add_totals(stage: Stage, case_id: int, max_before: int) -> None:
    """Add the new entries (ids above ``max_before``) to their accounts' totals."""
    conn = stage.conn
    stage.add_totals_table()
    conn.execute(text(
        "INSERT INTO ledger_agg (account_pk, dep, wd, bon) "
        "SELECT account_pk, "
        "sum(CASE WHEN entry_type = 'deposit' THEN amount ELSE 0 END), "
        "sum(CASE WHEN entry_type = 'deposit' THEN 0 ELSE amount END), "
        "sum(CASE WHEN entry_type = 'bonus' THEN amount ELSE 0 END) "
        "FROM ledger_entry WHERE id > :m AND +case_id = :c GROUP BY account_pk"
    ), {"c": case_id, "m": max_before})
    agg = "(SELECT g.{} FROM ledger_agg g WHERE g.account_pk = ledger_account.id)"
    conn.execute(text(
        f"UPDATE ledger_account SET deposits = deposits + {agg.format('dep')}, "
        f"withdrawals = withdrawals + {agg.format('wd')}, "
        f"bonuses = bonuses + {agg.format('bon')} "
        "WHERE id IN (SELECT account_pk FROM ledger_agg)"
    ))


def add_tx_hash_keys(conn, case_id: int, max_before: int) -> int:
    """The tx-hash match keys of the new entries (one per row); returns how many were added."""
    return conn.execute(text(
        "INSERT INTO ledger_identifier (case_id, kind, value, account_pk) "
        "SELECT :c, 'tx_hash', tx_hash, account_pk FROM ledger_entry "
        "WHERE id > :m AND +case_id = :c AND tx_hash IS NOT NULL "
        "ORDER BY tx_hash, account_pk "
        "ON CONFLICT (case_id, kind, value, account_pk) DO NOTHING"
    ), {"c": case_id, "m": max_before}).rowcount


def add_identity_keys(conn, case_id: int) -> int:
    """The identity match keys of the accounts, from the runs (ON CONFLICT: the values of rows
    stored before are there already); returns how many were added.

    GROUP BY, not DISTINCT: SQLite makes DISTINCT a temporary B-tree in the temp database,
    whose small cache spills to disk on a big ledger; GROUP BY and ORDER BY share one sort."""
    added = 0
    for kind, column in IDENTITY_COLUMNS:
        added += conn.execute(text(
            f"INSERT INTO ledger_identifier (case_id, kind, value, account_pk) "
            f"SELECT :c, '{kind}', {column}, account_pk FROM ledger_ident "
            f"WHERE {column} IS NOT NULL GROUP BY {column}, account_pk "
            f"ORDER BY {column}, account_pk "
            f"ON CONFLICT (case_id, kind, value, account_pk) DO NOTHING"
        ), {"c": case_id}).rowcount
    return added


def mark_file_insiders(conn, case_id: int) -> int:
    """Mark the insiders the file names (an import never unmarks one); returns how many."""
    return conn.execute(text(
        "UPDATE ledger_account SET insider = true, "
        "insider_reason = coalesce(insider_reason, 'insider in the imported ledger') "
        "WHERE case_id = :c AND NOT insider AND id IN "
        "(SELECT account_pk FROM ledger_ident WHERE insider = 1)"
    ), {"c": case_id}).rowcount
