"""Bulk filing of paper or call-centre claims from CSV (``restitution claims import``), by the
API's rules: the same :func:`claims.intake.prepare` and :func:`claims.intake.file_many`.

The file's header is the API's claim fields (docs/formats.md): ``case_id``
optional (when given on a row it must be the case imported), ``evidence_tx_hashes`` joined by
``;``, ``consent`` ``true``/``false``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from claims.audit import Actor
from claims.db.gate import write_gate
from claims.errors import InvalidInput
from claims.gc_pause import gc_paused
from claims.intake.filing import Filed, file_many
from claims.cases import get_open_case
from claims.intake.validation import CLAIM_FIELDS, REQUIRED_FIELDS, Prepared, prepare

__all__ = ["ImportOutcome", "csv_row_to_data", "header_problems", "import_rows"]

_OPTIONAL_CELLS = ("date_of_birth", "scheme_account", "evidence_tx_hashes")


@dataclass
class ImportOutcome:
    """What :func:`import_rows` did: ``filed`` (line, reference, access token; empty when the
    caller takes them chunk by chunk instead, ``keep_filed=False``), ``filed_count`` and
    ``rejected`` (line, field, message) — every refusal of a line is listed."""

    filed: list[tuple[int, str, str]] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    filed_count: int = 0

    @property
    def rejected_lines(self) -> int:
        return len({line for line, _, _ in self.rejected})


def header_problems(header: list[str]) -> list[str]:
    """What is wrong with a claims CSV's header (duplicate, unknown or missing columns), as
    messages; empty when it is usable."""
    problems = []
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        problems.append(f"duplicate column(s): {', '.join(dupes)}")
    unknown = [h for h in header if h not in CLAIM_FIELDS]
    if unknown:
        problems.append(f"unknown column(s): {', '.join(unknown)} "
                        f"(the columns are the API's claim fields: {', '.join(CLAIM_FIELDS)})")
    missing = [f for f in REQUIRED_FIELDS if f != "case_id" and f not in header]
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)}")
    return problems


def csv_row_to_data(row: Mapping[str, str], code: str) -> dict[str, Any]:
    """A claim CSV row (the API's fields as cells) → the API's claim body.

    ``evidence_tx_hashes`` are joined by ``;``; ``consent`` is ``true``/``false``; empty optional
    cells mean "not given"; a ``case_id`` cell, when present and not empty, must be ``code``.
    """
    data: dict[str, Any] = {}
    for name in CLAIM_FIELDS:
        cell = row.get(name)
        if cell is None:
            continue
        if name == "consent":
            data[name] = cell.strip().lower() == "true"
        elif name in _OPTIONAL_CELLS and not cell.strip():
            continue
        else:
            data[name] = cell
    given = (row.get("case_id") or "").strip()
    data["case_id"] = given or code
    return data


@gc_paused()
def import_rows(
    code: str,
    rows: Iterable[tuple[int, Mapping[str, str]]],
    *,
    engine: Engine | None = None,
    actor: Actor | None = None,
    chunk_size: int = 25_000,
    on_chunk: Callable[[list[tuple[int, str, str]]], Any] | None = None,
    keep_filed: bool = True,
) -> ImportOutcome:
    """File CSV rows ``(line, row)`` for case ``code`` by the API's rules: bad rows are
    refused by line and skipped, good rows filed in bulk, one transaction per ``chunk_size``
    rows. ``on_chunk(filed)`` is called after each committed chunk with its ``(line,
    reference, token)`` triples; ``keep_filed=False`` leaves them out of the outcome (a
    caller that writes them as they come keeps memory flat: only the counts and the
    refusals are kept).

    Large chunks: each commit writes every index page it dirtied, and a claim dirties a page
    in each of its random-key indexes (reference, IIN hash, name, e-mail, address), so fewer
    commits write much less (bench/RESULTS.md). A chunk holds the write lock while it is
    written; web filings wait for it.

    An unknown or closed case raises :class:`InvalidInput` naming ``case_id`` before anything
    is filed.
    """
    from claims.db import get_engine, session_scope

    actor = actor or Actor.operator()
    with session_scope(engine, write=False) as s:
        get_open_case(s, code)
    engine = engine or get_engine()
    outcome = ImportOutcome()
    batch: list[tuple[int, Prepared]] = []
    for line, prepared in _prepared_rows(code, rows, outcome):
        batch.append((line, prepared))
        if len(batch) >= chunk_size:
            _file_chunk(engine, code, batch, actor, outcome, on_chunk, keep_filed)
            batch = []
    _file_chunk(engine, code, batch, actor, outcome, on_chunk, keep_filed)
    outcome.rejected.sort(key=lambda r: r[0])
    return outcome


def _prepared_rows(code: str, rows: Iterable[tuple[int, Mapping[str, str]]],
                   outcome: ImportOutcome) -> Iterator[tuple[int, Prepared]]:
    """The rows that pass validation, prepared; each refusal goes to ``outcome.rejected``
    (a bad field, another case, an IIN on an earlier line of the file)."""
    seen: dict[str, int] = {}  # IIN hash → first line
    for line, row in rows:
        data = csv_row_to_data(row, code)
        if data["case_id"] != code:
            outcome.rejected.append((line, "case_id", f"must be {code} (the case being imported)"))
            continue
        try:
            prepared = prepare(data)
        except InvalidInput as exc:
            outcome.rejected.extend((line, e["field"], e["message"]) for e in exc.errors)
            continue
        first = seen.get(prepared.iin_hash)
        if first is not None:
            outcome.rejected.append((line, "iin", f"the same IIN is on line {first}"))
            continue
        seen[prepared.iin_hash] = line
        yield line, prepared


def _file_chunk(engine: Engine, code: str, batch: list[tuple[int, Prepared]], actor: Actor,
                outcome: ImportOutcome, on_chunk, keep_filed: bool) -> None:
    """File one chunk in its own transaction and add its outcome."""
    if not batch:
        return
    from claims.db import session_scope

    with write_gate(engine), session_scope(engine) as s:
        case = get_open_case(s, code)
        results = file_many(s, case, [p for _, p in batch], source="import", actor=actor)
    done = []
    for (line, _), res in zip(batch, results):
        if isinstance(res, Filed):
            done.append((line, res.reference, res.access_token))
        else:
            outcome.rejected.append((line, "iin", res.detail))
    outcome.filed_count += len(done)
    if keep_filed:
        outcome.filed.extend(done)
    if on_chunk is not None:
        on_chunk(done)
