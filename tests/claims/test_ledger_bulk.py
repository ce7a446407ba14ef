"""The ledger import's bulk paths (claims/ledger/) agree with its row rules.

The import checks the usual spellings inline (amounts, times, tx hashes), builds the accounts,
identity match keys and insiders from the rows that start a run of equal identity values, and
numbers identical rows only when some row was not added. Here every stored value is compared
with what the documented per-cell rules (``Rules.check_*``, the slow path) give for each row,
on files mixing the usual and the unusual spellings, interleaved accounts and identical rows.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from claims import ledger
from claims.audit import Actor
from claims.cases import create_case
from claims.db import session_scope
from claims.errors import LedgerImportError
from claims.ledger.rules import Rules
from claims.money import parse_amount
from claims.settings import get_settings

HEADER = ["account_id", "entry_type", "amount", "occurred_at", "tx_hash", "wallet", "email",
          "phone", "iin", "insider"]
ETH = "0x52908400098527886E0F7030069857D2E4169EE7"
TRON = "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8"
IINS = ["791028302728", "061211600012"]


@pytest.fixture
def case(engine):
    with session_scope(engine) as s:
        create_case(s, "bulk", "Bulk", None, Actor.operator())
    return "bulk"


def csv_text(rows: list[list[str]], header: list[str] = HEADER) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def mixed_rows(seed: int, n: int) -> list[list[str]]:
    rnd = random.Random(seed)
    accounts = ["ACC1", " ACC2 ", "Zoë-3", "acc 4", "ACC5"]
    types = ["deposit", "withdrawal", "bonus", "Deposit", " bonus "]
    amounts = ["1", "0.5", "12.345600", "100.000001", "999999.999999", "1000000",
               "7", "250.5", "0.000001"]
    times = ["2023-01-01T00:00:00Z", "2023-01-01 10:00:00Z", "2024-02-29T23:59:59Z",
             "2023-01-01", "2023-01-01T05:00:00+05:00", "2023-01-01T12:00:00",
             "2023-01-01T00:00:00.123456Z", "2000-02-29T00:00:00Z", "2023-12-31T23:59:59.5+00:00"]
    hexes = [rnd.randbytes(32).hex() for _ in range(6)]
    txs = ["", "0x" + hexes[0], hexes[1].upper(), "0X" + hexes[2], hexes[3], "0x" + hexes[4]]
    wallets = ["", ETH, ETH.lower(), TRON, f" {TRON} "]
    emails = ["", "Alice@Example.COM", "bob@example.org", " carol@example.kz "]
    phones = ["", "+7 701 234 5678", "+77010000001", "+7(701)000-00-02"]
    insiders = ["", "false", "true", "TRUE", " false "]
    rows = []
    for _ in range(n):
        if rows and rnd.random() < 0.1:
            rows.append(list(rnd.choice(rows)))  # an identical row
            continue
        rows.append([
            rnd.choice(accounts), rnd.choice(types), rnd.choice(amounts), rnd.choice(times),
            rnd.choice(txs), rnd.choice(wallets), rnd.choice(emails), rnd.choice(phones),
            rnd.choice(["", *IINS]), rnd.choice(insiders),
        ])
    return rows


def expected(rows: list[list[str]], header: list[str] = HEADER) -> dict:
    """What the documented rules store, row by row (no fast path, no bulk SQL)."""
    rules = Rules(get_settings().pii_key)
    col = {name: i for i, name in enumerate(header)}
    entries, idents, totals, insiders = [], set(), {}, set()
    seen: Counter = Counter()
    for row in rows:
        def cell(name: str) -> str:
            return row[col[name]] if name in col else ""

        acct = rules.check_account(cell("account_id"))
        etype = rules.check_entry_type(cell("entry_type"))
        amount = rules.check_amount(cell("amount"))
        when = rules.check_occurred_at(cell("occurred_at"))
        tx = rules.check_tx_hash(cell("tx_hash"))
        w = rules.check_wallet(cell("wallet"))
        email = rules.check_email(cell("email"))
        phone = rules.check_phone(cell("phone"))
        iin_h = rules.check_iin(cell("iin"))
        key = hashlib.sha256(f"{acct}\x1f{etype}\x1f{amount}\x1f{when}\x1f{tx or ''}".encode()
                             ).hexdigest()[:32]
        seen[key] += 1
        if seen[key] > 1:
            key = hashlib.sha256(f"{key}#{seen[key]}".encode()).hexdigest()[:32]
        entries.append((acct, etype, amount, when, tx, w[0] if w else None, email, phone,
                        iin_h, key))
        for kind, value in (("tx_hash", tx), ("wallet", w[1] if w else None), ("email", email),
                            ("phone", phone), ("iin", iin_h)):
            if value is not None:
                idents.add((kind, value, acct))
        dep, wd, bon = totals.get(acct, (0, 0, 0))
        totals[acct] = (dep + (amount if etype == "deposit" else 0),
                        wd + (0 if etype == "deposit" else amount),
                        bon + (amount if etype == "bonus" else 0))
        if cell("insider") and rules.check_insider(cell("insider")):
            insiders.add(acct)
    return {"entries": sorted(entries, key=repr), "idents": idents, "totals": totals,
            "insiders": insiders, "duplicates": sum(c - 1 for c in seen.values())}


def stored(engine, code: str) -> dict:
    with session_scope(engine, write=False) as s:
        cid = s.execute(text("SELECT id FROM \"case\" WHERE code = :c"), {"c": code}).scalar()
        entries = []
        for r in s.execute(text(
            "SELECT a.account_id, e.entry_type, e.amount, e.occurred_at, e.tx_hash, e.wallet, "
            "e.email, e.phone, e.iin_hash, e.row_key FROM ledger_entry e "
            "JOIN ledger_account a ON a.id = e.account_pk WHERE e.case_id = :c"), {"c": cid}):
            when = r[3]
            if not isinstance(when, str):
                when = when.replace(tzinfo=None).isoformat(" ", "microseconds")
            entries.append((r[0], r[1], int(r[2]), when, *r[4:]))
        idents = {tuple(r) for r in s.execute(text(
            "SELECT i.kind, i.value, a.account_id FROM ledger_identifier i "
            "JOIN ledger_account a ON a.id = i.account_pk WHERE i.case_id = :c"), {"c": cid})}
        accts = s.execute(text(
            "SELECT account_id, deposits, withdrawals, bonuses, insider FROM ledger_account "
            "WHERE case_id = :c"), {"c": cid}).all()
    return {
        "entries": sorted(entries, key=repr),
        "idents": idents,
        "totals": {a: (int(d), int(w), int(b)) for a, d, w, b, _i in accts},
        "insiders": {a for a, *_x, i in accts if i},
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_bulk_import_stores_what_the_row_rules_give(engine, case, tmp_path, seed):
    rows = mixed_rows(seed, 400)
    path = tmp_path / "mixed.csv"
    path.write_text(csv_text(rows), encoding="utf-8")
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    want = expected(rows)
    got = stored(engine, case)
    assert got["entries"] == want["entries"]
    assert got["idents"] == want["idents"]
    assert got["totals"] == want["totals"]
    assert got["insiders"] == want["insiders"]
    assert (res.rows_read, res.rows_added) == (len(rows), len(rows))
    assert res.duplicates_in_file == want["duplicates"] > 0
    assert res.identifiers_added == len(want["idents"])
    assert res.accounts_added == len(want["totals"])
    assert res.insiders_marked == len(want["insiders"])

    # The same rows in another order (identical rows included) add nothing.
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    path.write_text(csv_text(shuffled), encoding="utf-8")
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    assert (res.rows_added, res.identifiers_added, res.accounts_added) == (0, 0, 0)
    assert stored(engine, case) == got


def test_interleaved_accounts_and_changing_identity_values(engine, case, tmp_path):
    # Runs of equal identity values are short here: every change must still give its keys.
    t = "2023-01-01T00:00:{:02d}Z"
    rows = [
        ["A", "deposit", "1", t.format(1), "", ETH, "a@example.com", "", "", "false"],
        ["B", "deposit", "1", t.format(2), "", TRON, "b@example.com", "", IINS[1], ""],
        ["A", "deposit", "1", t.format(3), "", ETH, "a2@example.com", "+77010000001", "", ""],
        ["A", "deposit", "1", t.format(4), "", "", "", "", IINS[0], "true"],
        ["A", "deposit", "1", t.format(5), "", ETH, "a@example.com", "", "", "false"],
        ["B", "withdrawal", "1", t.format(6), "", TRON, "b@example.com", "", IINS[1], ""],
    ]
    path = tmp_path / "l.csv"
    path.write_text(csv_text(rows), encoding="utf-8")
    ledger.import_ledger(engine, case, path, Actor.operator())
    want, got = expected(rows), stored(engine, case)
    assert got == {k: v for k, v in want.items() if k != "duplicates"}
    assert got["insiders"] == {"A"}  # an insider row that is not the account's first


def test_long_runs_give_every_entry_its_accounts_values(engine, case, tmp_path):
    # The usual export: an account's rows together, its identity values on each of them (only
    # the first row of such a run is staged with them); one value changes mid-account.
    t = "2023-01-01T00:{:02d}:00Z"
    rows = []
    for a, (wallet, email, iin) in enumerate([(ETH, "a@example.com", IINS[0]),
                                              (TRON, "b@example.com", IINS[1]),
                                              ("", "", "")]):
        for i in range(5):
            rows.append([f"ACC{a}", "deposit" if i % 2 else "bonus", f"{i + 1}.5",
                         t.format(a * 10 + i), f"{a}{i}".ljust(64, "f"), wallet,
                         "changed@example.com" if a == 0 and i >= 3 else email,
                         "+77010000001" if a == 1 else "", iin, "true" if a == 2 else ""])
    rows.append(list(rows[1]))  # an identical row closing ACC0's run, far from its twin
    path = tmp_path / "l.csv"
    path.write_text(csv_text(rows), encoding="utf-8")
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    want, got = expected(rows), stored(engine, case)
    assert got == {k: v for k, v in want.items() if k != "duplicates"}
    assert (res.rows_added, res.duplicates_in_file) == (16, 1)
    assert got["insiders"] == {"ACC2"}


def test_only_required_columns_take_the_same_paths(engine, case, tmp_path):
    header = ["amount", "account_id", "occurred_at", "entry_type"]
    rows = [[r[2], r[0], r[3], r[1]] for r in mixed_rows(3, 200)]
    path = tmp_path / "l.csv"
    path.write_text(csv_text(rows, header), encoding="utf-8")
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    want, got = expected(rows, header), stored(engine, case)
    assert got["entries"] == want["entries"] and got["totals"] == want["totals"]
    assert got["idents"] == set() and res.rows_added == len(rows)


amount_text = st.one_of(
    st.from_regex(r"(0|[1-9][0-9]{0,13})(\.[0-9]{1,7})?", fullmatch=True),
    st.from_regex(r"[0-9., +eE-]{1,10}", fullmatch=True),
)
time_text = st.one_of(
    st.from_regex(r"[12][0-9]{3}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-5][0-9]:[0-6][0-9]Z",
                  fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:]{8}(Z|[+-]0[0-9]:00)?)?",
                  fullmatch=True),
)


# Each example runs in a transaction that is rolled back: the fixtures may be shared.
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(amount_text, min_size=1, max_size=20),
       times=st.lists(time_text, min_size=1, max_size=20))
def test_amounts_and_times_agree_with_the_rules_or_fail_with_their_words(
    engine, case, tmp_path, amounts, times
):
    n = max(len(amounts), len(times))
    rows = [[f"H{i}", "deposit", amounts[i % len(amounts)], times[i % len(times)]]
            for i in range(n)]
    header = HEADER[:4]
    rules = Rules(get_settings().pii_key)
    bad = []
    for i, row in enumerate(rows):
        problems = []
        for check, cell in ((rules.check_amount, row[2]), (rules.check_occurred_at, row[3])):
            try:
                check(cell)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            bad.append(f"line {i + 2}: {'; '.join(problems)}")
    path = tmp_path / "h.csv"
    path.write_text(csv_text(rows, header), encoding="utf-8")
    with session_scope(engine) as s:  # rolled back: every example starts empty
        if bad:
            with pytest.raises(LedgerImportError) as exc:
                ledger.import_ledger(s, case, path, Actor.operator())
            assert exc.value.lines == bad
        else:
            ledger.import_ledger(s, case, path, Actor.operator())
            got = s.execute(text("SELECT amount FROM ledger_entry ORDER BY id")).scalars().all()
            assert [int(a) for a in got] == [parse_amount(r[2]) for r in rows]
        s.rollback()


def test_bytes_that_are_not_utf8_far_into_a_big_file(engine, case, tmp_path):
    # Past the first read-ahead buffers: the row is still named, and only that row.
    body = "".join(f"Z{i},deposit,1,2023-01-01T00:00:00Z\n" for i in range(60_000))
    path = tmp_path / "big.csv"
    path.write_bytes(("account_id,entry_type,amount,occurred_at\n" + body).encode()
                     + "Zoë,deposit,1,2023-01-01\n".encode("latin-1")
                     + b"Z-last,deposit,x,2023-01-01\n")
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, path, Actor.operator())
    assert exc.value.lines == [
        "line 60002: is not UTF-8 text (save the file as UTF-8)",
        'line 60003: amount: is not an amount (expected digits with at most 6 decimals, '
        'e.g. "12.5")',
    ]
