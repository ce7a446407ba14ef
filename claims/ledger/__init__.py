"""The seized ledger: import, totals, match keys, summary, insiders.

The ledger CSV (its columns, the rules of a row, row identity, match keys) is described in
docs/formats.md, "Ledger CSV". The package, in the order an import goes through it:

- :mod:`claims.ledger.source` — the file opened: its bytes hashed and counted, its text decoded
  so that a row that is not UTF-8 can be named;
- :mod:`claims.ledger.rules` — the header and the rules of each cell;
- :mod:`claims.ledger.reading` — one pass: rows checked and streamed into the stage;
- :mod:`claims.ledger.staging` — the TEMP staging tables (on the SQL plumbing of
  :mod:`claims.db`);
- :mod:`claims.ledger.storing` — set-based SQL from the stage: entries, accounts, totals,
  match keys, insiders;
- :mod:`claims.ledger.importing` — :func:`import_ledger`, the whole import in one transaction;
- :mod:`claims.ledger.accounts` — reading back: :func:`ledger_summary`, :func:`mark_insider`.
"""

from claims.ledger.accounts import get_account, insider_accounts, ledger_summary, mark_insider
from claims.ledger.importing import import_ledger, run_import
from claims.ledger.reading import PROGRESS_EVERY, ProgressFn
from claims.ledger.rules import ENTRY_TYPES, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from claims.ledger.storing import IDENTIFIER_KINDS, ImportResult

__all__ = [
    "ENTRY_TYPES",
    "IDENTIFIER_KINDS",
    "OPTIONAL_COLUMNS",
    "PROGRESS_EVERY",
    "REQUIRED_COLUMNS",
    "ImportResult",
    "ProgressFn",
    "get_account",
    "import_ledger",
    "ledger_summary",
    "insider_accounts",
    "mark_insider",
    "run_import",
]
