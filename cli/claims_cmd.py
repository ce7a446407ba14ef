"""``restitution claims import CODE FILE.csv [--out RECEIPTS.csv] [--json]``.

Bulk filing of paper or call-centre claims by the API's rules (:func:`claims.intake.import_rows`).
The header is the API's claim fields (``case_id`` optional; when given on a row it must be
CODE); ``evidence_tx_hashes`` joined by ``;``; ``consent`` ``true``/``false``. Bad rows are
reported on stderr as ``line N: field: message`` and skipped; good rows are filed in bulk
(docs/formats.md describes the file). ``--out`` writes ``line,reference,access_token`` for each
filed row (created mode 0600: it holds access tokens). Exit 0 when every row was filed, 1 when
some were refused, 2 for a bad file or usage (unknown or closed case, unreadable file, a header
without the required fields or with unknown ones).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, err, fail, print_json


def _read_rows(path: Path):
    """(header, iterator of (line, row dict)); a bad file exits 2."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text (byte {exc.start})")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        fail(f"{path}: empty file (expected a header line)")
    except csv.Error as exc:
        fail(f"line 1: {exc}")
    return [h.strip() for h in header], reader


def _check_header(header: list[str]) -> None:
    from claims.intake import header_problems

    problems = header_problems(header)
    if problems:
        for p in problems:
            err(f"line 1: {p}")
        raise typer.Exit(EXIT_USAGE)


def _rows(header: list[str], reader, bad: list[tuple[int, str, str]]):
    line = 1
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            bad.append((start, "row", str(exc)))
            line = reader.line_num
            continue
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            bad.append((start, "row", f"has {len(cells)} cells; the header has {len(header)}"))
            continue
        yield start, dict(zip(header, cells))


def import_claims(
    code: Annotated[str, typer.Argument(help="The case CODE.")],
    file: Annotated[Path, typer.Argument(help="The claims CSV (header = the API's claim fields).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write line,reference,access_token "
                                             "for each filed row.")] = None,
    json_: Annotated[bool, typer.Option("--json", help='Print {"filed": n, "rejected": n}.')] = False,
) -> None:
    """Bulk-file claims by the API's rules; bad rows are reported by line and skipped."""
    from claims.errors import InvalidInput
    from claims.intake import import_rows

    header, reader = _read_rows(file)
    _check_header(header)
    bad: list[tuple[int, str, str]] = []
    receipts = None
    writer = None
    if out is not None:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            fail(f"{out}: {exc.strerror or exc}")
        receipts = os.fdopen(fd, "w", newline="", encoding="utf-8")
        writer = csv.writer(receipts)
        writer.writerow(["line", "reference", "access_token"])

    def on_chunk(done):
        if writer is not None:
            writer.writerows(done)
            receipts.flush()

    try:
        outcome = import_rows(code, _rows(header, reader, bad), on_chunk=on_chunk,
                              keep_filed=False)
    except InvalidInput as exc:
        for e in exc.errors:
            err(f"{e['field']}: {e['message']}")
        raise typer.Exit(EXIT_USAGE)
    finally:
        if receipts is not None:
            receipts.close()
    refused = sorted(bad + outcome.rejected, key=lambda r: r[0])
    for line, field, message in refused:
        err(f"line {line}: {field}: {message}")
    rejected = len({line for line, _, _ in refused})
    if json_:
        print_json({"filed": outcome.filed_count, "rejected": rejected})
    else:
        typer.echo(f"filed {outcome.filed_count} claim(s), refused {rejected} row(s)")
    raise typer.Exit(EXIT_FAILED if rejected else EXIT_OK)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Claims filed on paper or by the call centre.", no_args_is_help=True)
    group.command("import")(import_claims)
    app.add_typer(group, name="claims")
