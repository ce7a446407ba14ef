"""Seized-ledger import (claims/ledger/): all-or-nothing validation naming every bad line,
idempotent re-imports, identical rows, totals, match keys, summary, insiders."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from claims import ledger
from claims.audit import Actor
from claims.cases import create_case
from claims.crypto import iin_hash
from claims.db import session_scope
from claims.errors import LedgerImportError, NotFound
from claims.models import AuditEvent, LedgerAccount, LedgerEntry, LedgerIdentifier
from claims.validators import ValidationFailed, email_key, validate_email

IIN = "791028302728"
IIN2 = "061211600012"
ETH = "0x52908400098527886E0F7030069857D2E4169EE7"
TRON = "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8"
TX1 = "0x" + "ab" * 32
TX2 = "cd" * 32
HEADER = "account_id,entry_type,amount,occurred_at,tx_hash,wallet,email,phone,iin,insider\n"

GOOD = HEADER + (
    f"A1,deposit,1000,2023-01-01T00:00:00Z,{TX1},{ETH},Alice@Example.COM,+7 701 234 5678,{IIN},false\n"
    f"A1,withdrawal,250.5,2023-02-01T10:00:00+05:00,,,,,,\n"
    f"A1,bonus,49.5,2023-03-01,,,,,,\n"
    f"A2,deposit,300,2023-01-05T12:00:00,{TX2},{TRON},bob@example.org,+77010000001,{IIN2},\n"
    f"A2,withdrawal,400,2023-04-01T00:00:00Z,,,,,,\n"
    f"P1,deposit,10,2023-01-01T00:00:00Z,,,,,,true\n"
)


@pytest.fixture
def case(engine):
    with session_scope(engine) as s:
        create_case(s, "kz-ponzi", "KZ Ponzi", None, Actor.operator())
    return "kz-ponzi"


def write(tmp_path, content: str, name: str = "ledger.csv"):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def counts(engine) -> dict[str, int]:
    with session_scope(engine, write=False) as s:
        return {
            "accounts": s.execute(select(func.count()).select_from(LedgerAccount)).scalar(),
            "entries": s.execute(select(func.count()).select_from(LedgerEntry)).scalar(),
            "identifiers": s.execute(select(func.count()).select_from(LedgerIdentifier)).scalar(),
            "events": s.execute(select(func.count()).select_from(AuditEvent)).scalar(),
        }


def accounts(engine) -> dict[str, LedgerAccount]:
    with session_scope(engine, write=False) as s:
        return {a.account_id: a for a in s.execute(select(LedgerAccount)).scalars()}


def summary(engine, code="kz-ponzi") -> dict:
    with session_scope(engine, write=False) as s:
        return ledger.ledger_summary(s, code)


# ----------------------------------------------------------------------------- good files


def test_import_stores_rows_totals_and_match_keys(engine, case, tmp_path):
    path = write(tmp_path, GOOD)
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    assert (res.rows_read, res.rows_added, res.rows_existing) == (6, 6, 0)
    assert res.accounts_added == 3 and res.insiders_marked == 1
    assert res.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    accts = accounts(engine)
    a1, a2, p1 = accts["A1"], accts["A2"], accts["P1"]
    assert (a1.deposits, a1.withdrawals, a1.bonuses) == (1000_000000, 300_000000, 49_500000)
    assert (a2.deposits, a2.withdrawals, a2.bonuses) == (300_000000, 400_000000, 0)
    assert not a1.insider and not a2.insider and p1.insider

    with session_scope(engine, write=False) as s:
        keys = {
            (i.kind, i.value, i.account_pk)
            for i in s.execute(select(LedgerIdentifier)).scalars()
        }
        entries = s.execute(select(LedgerEntry).order_by(LedgerEntry.id)).scalars().all()
    assert keys == {
        ("tx_hash", "ab" * 32, a1.id),
        ("tx_hash", "cd" * 32, a2.id),
        ("wallet", ETH.lower(), a1.id),
        ("wallet", TRON, a2.id),
        ("email", "alice@example.com", a1.id),
        ("email", "bob@example.org", a2.id),
        ("phone", "+77012345678", a1.id),
        ("phone", "+77010000001", a2.id),
        ("iin", iin_hash(IIN), a1.id),
        ("iin", iin_hash(IIN2), a2.id),
    }
    assert res.identifiers_added == 10
    names = {a.id: name for name, a in accts.items()}
    by_row = {(names[e.account_pk], e.entry_type): e for e in entries}
    assert set(by_row) == {("A1", "deposit"), ("A1", "withdrawal"), ("A1", "bonus"),
                           ("A2", "deposit"), ("A2", "withdrawal"), ("P1", "deposit")}
    # Times in UTC: an offset converted; a naive time and a date alone taken as UTC.
    assert by_row["A1", "withdrawal"].occurred_at.isoformat() == "2023-02-01T05:00:00+00:00"
    assert by_row["A1", "bonus"].occurred_at.isoformat() == "2023-03-01T00:00:00+00:00"
    assert by_row["A2", "deposit"].occurred_at.isoformat() == "2023-01-05T12:00:00+00:00"
    first = by_row["A1", "deposit"]
    assert (first.amount, first.tx_hash, first.wallet) == (1000_000000, "ab" * 32, ETH)
    assert (first.email, first.phone, first.iin_hash) == (
        "alice@example.com", "+77012345678", iin_hash(IIN))
    assert by_row["A1", "withdrawal"].tx_hash is None
    assert all(len(e.row_key) == 32 for e in entries)
    assert len({e.row_key for e in entries}) == 6


def test_plain_iin_is_stored_nowhere(engine, case, tmp_path):
    ledger.import_ledger(engine, case, write(tmp_path, GOOD), Actor.operator())
    with session_scope(engine, write=False) as s:
        for table in ("ledger_entry", "ledger_identifier", "ledger_account", "audit_event"):
            for row in s.execute(text(f"SELECT * FROM {table}")):
                assert not any(IIN in str(v) or IIN2 in str(v) for v in row), table


def test_one_audit_event_per_import_with_counts_and_file_hash(engine, case, tmp_path):
    path = write(tmp_path, GOOD)
    before = counts(engine)["events"]
    ledger.import_ledger(engine, case, path, Actor.operator())
    with session_scope(engine, write=False) as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.id > before)).scalars().all()
    assert [e.action for e in events] == ["ledger.import"]
    after = events[0].after
    assert after["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (after["rows_read"], after["rows_added"], after["file_name"]) == (6, 6, "ledger.csv")
    assert events[0].role == "operator" and events[0].subject_id == case


def test_reimport_changes_nothing(engine, case, tmp_path):
    path = write(tmp_path, GOOD)
    ledger.import_ledger(engine, case, path, Actor.operator())
    first, totals = counts(engine), summary(engine)
    res = ledger.import_ledger(engine, case, path, Actor.operator())
    assert (res.rows_read, res.rows_added, res.rows_existing, res.accounts_added) == (6, 0, 6, 0)
    assert res.identifiers_added == 0 and res.insiders_marked == 0
    second = counts(engine)
    assert {k: v for k, v in second.items() if k != "events"} == {
        k: v for k, v in first.items() if k != "events"}
    assert second["events"] == first["events"] + 1  # the attempt itself is audited
    assert summary(engine) == totals


def test_reimport_with_other_spellings_of_the_same_rows_changes_nothing(engine, case, tmp_path):
    ledger.import_ledger(engine, case, write(tmp_path, GOOD), Actor.operator())
    first = counts(engine)
    respelled = HEADER + (
        # same instant, another offset; tx hash without 0x and upper case; amount with zeros
        f"A1,Deposit,1000.000,2023-01-01T05:00:00+05:00,{TX1[2:].upper()},,,,,\n"
        f"A1,withdrawal,250.50,2023-02-01T05:00:00Z,,,,,,\n"
    )
    res = ledger.import_ledger(engine, case, write(tmp_path, respelled, "b.csv"), Actor.operator())
    assert res.rows_added == 0
    assert counts(engine)["entries"] == first["entries"]


def test_extending_file_adds_only_new_rows(engine, case, tmp_path):
    lines = GOOD.splitlines(keepends=True)
    ledger.import_ledger(engine, case, write(tmp_path, "".join(lines[:4]), "a.csv"),
                         Actor.operator())
    assert counts(engine)["entries"] == 3
    res = ledger.import_ledger(engine, case, write(tmp_path, GOOD, "b.csv"), Actor.operator())
    assert (res.rows_read, res.rows_added, res.rows_existing, res.accounts_added) == (6, 3, 3, 2)
    accts = accounts(engine)
    assert (accts["A1"].deposits, accts["A1"].withdrawals) == (1000_000000, 300_000000)
    assert (accts["A2"].deposits, accts["A2"].withdrawals) == (300_000000, 400_000000)


def test_identical_rows_within_a_file_are_all_kept(engine, case, tmp_path):
    row = "A9,deposit,5,2023-06-01T00:00:00Z,,,,,,\n"
    other = "A9,withdrawal,1,2023-06-02T00:00:00Z,,,,,,\n"
    res = ledger.import_ledger(
        engine, case, write(tmp_path, HEADER + row + other + row), Actor.operator())
    assert (res.rows_added, res.duplicates_in_file) == (3, 1)
    assert accounts(engine)["A9"].deposits == 10_000000
    # The same two copies again: nothing new; a third copy: one new row.
    res = ledger.import_ledger(
        engine, case, write(tmp_path, HEADER + row + row, "b.csv"), Actor.operator())
    assert res.rows_added == 0
    res = ledger.import_ledger(
        engine, case, write(tmp_path, HEADER + row + other + row + row, "c.csv"),
        Actor.operator())
    assert (res.rows_read, res.rows_added) == (4, 1)
    assert accounts(engine)["A9"].deposits == 15_000000
    with session_scope(engine, write=False) as s:
        keys = s.execute(select(LedgerEntry.row_key)).scalars().all()
    assert len(keys) == len(set(keys)) == 4


def test_only_required_columns_any_order_blank_lines_and_bom(engine, case, tmp_path):
    content = "\ufeffoccurred_at, AMOUNT ,entry_type,account_id\r\n\r\n2023-01-01,7,deposit,X1\r\n\r\n"
    res = ledger.import_ledger(engine, case, write(tmp_path, content), Actor.operator())
    assert (res.rows_read, res.rows_added) == (1, 1)
    assert accounts(engine)["X1"].deposits == 7_000000


def test_file_objects_binary_and_text(engine, case):
    data = GOOD.encode()
    res = ledger.import_ledger(engine, case, io.BytesIO(data), Actor.operator())
    assert res.rows_added == 6 and res.file_sha256 == hashlib.sha256(data).hexdigest()
    res = ledger.import_ledger(engine, case, io.StringIO(GOOD), Actor.operator())
    assert res.rows_added == 0 and res.file_sha256 == hashlib.sha256(data).hexdigest()


def test_header_only_file_imports_nothing(engine, case, tmp_path):
    res = ledger.import_ledger(engine, case, write(tmp_path, HEADER), Actor.operator())
    assert (res.rows_read, res.rows_added) == (0, 0)


def test_progress_callback(engine, case, tmp_path):
    body = "".join(f"B{i},deposit,1,2023-01-01T00:00:{i % 60:02d}Z,,,,,,\n" for i in range(25))
    calls = []
    ledger.import_ledger(engine, case, write(tmp_path, HEADER + body), Actor.operator(),
                         progress=lambda *a: calls.append(a), progress_every=10)
    assert [c[:2] for c in calls] == [("reading", 10), ("reading", 20), ("reading", 25),
                                      ("storing", 25)]
    assert calls[-1][2] == len((HEADER + body).encode())


def test_session_form_runs_in_the_callers_transaction(engine, case, tmp_path):
    with session_scope(engine) as s:
        res = ledger.import_ledger(s, case, write(tmp_path, GOOD), Actor.operator())
        assert res.rows_added == 6
        s.rollback()
    assert counts(engine)["entries"] == 0


# ----------------------------------------------------------------------------- bad files


def assert_nothing_stored(engine, events_before: int) -> None:
    c = counts(engine)
    assert (c["accounts"], c["entries"], c["identifiers"]) == (0, 0, 0)
    assert c["events"] == events_before


def test_bad_rows_reject_the_whole_file_naming_every_bad_line(engine, case, tmp_path):
    rows = [
        "G1,deposit,100,2023-01-01T00:00:00Z,,,,,,",                   # 2 good
        "G1,deposit,100,2023-01-01T00:00:00Z,,,,,",                    # 3 field count
        "G2,payout,100,2023-01-01T00:00:00Z,,,,,,",                    # 4 entry type
        "G2,deposit,-5,2023-01-01T00:00:00Z,,,,,,",                    # 5 negative
        "G2,deposit,1.1234567,2023-01-01T00:00:00Z,,,,,,",             # 6 7 decimals
        "G2,deposit,0,2023-01-01T00:00:00Z,,,,,,",                     # 7 zero
        "G2,deposit,10,2023-02-30T00:00:00Z,,,,,,",                    # 8 no such date
        "G2,deposit,10,2999-01-01T00:00:00Z,,,,,,",                    # 9 future
        "G3,deposit,10,2023-01-01T00:00:00Z,0x1234,,,,,",              # 10 tx hash
        f"G3,deposit,10,2023-01-01T00:00:00Z,,{ETH.replace('E', 'e', 1)},,,,",  # 11 EIP-55
        "G3,deposit,10,2023-01-01T00:00:00Z,,,not-an-email,,,",        # 12 email
        "G3,deposit,10,2023-01-01T00:00:00Z,,,,87012345678,,",         # 13 phone
        "G3,deposit,10,2023-01-01T00:00:00Z,,,,,791028302729,",        # 14 IIN checksum
        "G3,deposit,10,2023-01-01T00:00:00Z,,,,,,yes",                 # 15 insider
        ",deposit,10,2023-01-01T00:00:00Z,,,,,,",                      # 16 no account
        "G4,deposit,10,yesterday,,,,,,",                               # 17 not ISO
        "G5,withdrawal,1e3,2023-01-01T00:00:00Z,,,,,,",                # 18 exponent
        "G5,withdrawal,20,2023-01-01T00:00:00Z,,,,,,",                 # 19 good
        "G6,deposit, 10,2023-01-01T00:00:00Z,,TXXX,,,,",               # 20 two problems
    ]
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    before = counts(engine)["events"]
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, path, Actor.operator())
    lines = exc.value.lines
    assert [ln.split(":")[0] for ln in lines] == [f"line {n}" for n in range(3, 19)] + ["line 20"]
    by_line = {int(ln.split(":")[0].split()[1]): ln for ln in lines}
    assert by_line[3] == "line 3: has 9 fields, the header has 10"
    assert "entry_type: must be deposit, withdrawal or bonus" in by_line[4]
    assert "amount: must not be negative" in by_line[5]
    assert "amount: has more than 6 decimals" in by_line[6]
    assert "amount: must be greater than 0" in by_line[7]
    assert "occurred_at:" in by_line[8]
    assert "occurred_at: is in the future" in by_line[9]
    assert "tx_hash:" in by_line[10]
    assert "wallet:" in by_line[11] and "checksum" in by_line[11]
    assert "email:" in by_line[12]
    assert "phone:" in by_line[13]
    assert "iin:" in by_line[14] and "791028302729" not in by_line[14]
    assert "insider: must be true or false" in by_line[15]
    assert "account_id: is required" in by_line[16]
    assert "occurred_at: must be an ISO 8601" in by_line[17]
    assert "amount: must not use an exponent" in by_line[18]
    assert "amount:" in by_line[20] and "wallet:" in by_line[20]  # every problem of a line
    assert_nothing_stored(engine, before)


def test_one_bad_row_at_the_end_of_a_big_file_stores_nothing(engine, case, tmp_path):
    body = "".join(f"C{i % 100},deposit,{i + 1},2023-01-01T00:00:00Z,,,,,,\n" for i in range(30_000))
    path = write(tmp_path, HEADER + body + "C1,deposit,abc,2023-01-01T00:00:00Z,,,,,,\n")
    before = counts(engine)["events"]
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, path, Actor.operator())
    assert exc.value.lines == [
        'line 30002: amount: is not an amount (expected digits with at most 6 decimals, e.g. "12.5")'
    ]
    assert_nothing_stored(engine, before)


@pytest.mark.parametrize(
    "header, message",
    [
        ("account_id,entry_type,amount\n", "line 1: missing required column: occurred_at"),
        ("account_id,amount\n", "line 1: missing required columns: entry_type, occurred_at"),
        ("account_id,entry_type,amount,occurred_at,emial\n", "line 1: unknown column 'emial'"),
        ("account_id,entry_type,amount,occurred_at,amount\n", "line 1: column 'amount' appears twice"),
        ("A,deposit,1,2023-01-01\n", "line 1: missing required columns: account_id"),
    ],
)
def test_header_errors(engine, case, tmp_path, header, message):
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, write(tmp_path, header + "A,deposit,1,2023-01-01\n"),
                             Actor.operator())
    assert exc.value.lines[0].startswith(message)
    assert all(ln.startswith("line 1: ") for ln in exc.value.lines)


@pytest.mark.parametrize(
    "content, what",
    [("", "the file is empty"), ("\n\n", "the line is blank"), (" , ,\n", "the line is blank")],
)
def test_empty_file(engine, case, tmp_path, content, what):
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, write(tmp_path, content), Actor.operator())
    assert exc.value.lines == [f"line 1: {what}; expected the header "
                               "account_id,entry_type,amount,occurred_at"]


def test_bytes_that_are_not_utf8_name_their_line(engine, case, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "A1,deposit,1,2023-01-01,,,,,,\n").encode()
                     + "Zoë,deposit,1,2023-01-01,,,,,,\n".encode("latin-1"))
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, path, Actor.operator())
    assert exc.value.lines == ["line 3: is not UTF-8 text (save the file as UTF-8)"]
    path.write_bytes("account_id,entry_type,amount,occurred_at,Zoë\n".encode("latin-1"))
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, path, Actor.operator())
    assert exc.value.lines == ["line 1: is not UTF-8 text (save the file as UTF-8)"]


def test_unknown_case(engine, tmp_path):
    with pytest.raises(NotFound):
        ledger.import_ledger(engine, "no-such-case", write(tmp_path, GOOD), Actor.operator())


# ----------------------------------------------------------------------------- summary, insiders


def test_summary_per_contract(engine, case, tmp_path):
    assert summary(engine) == {"accounts": 0, "deposits": "0", "withdrawals": "0",
                               "net_winners": 0, "total_net_loss": "0"}
    ledger.import_ledger(engine, case, write(tmp_path, GOOD), Actor.operator())
    # A1: 1000 in, 300 out (bonus included) → loss 700; A2: 300 in, 400 out → net winner;
    # P1: 10 in → loss 10.
    assert summary(engine) == {"accounts": 3, "deposits": "1310", "withdrawals": "700",
                               "net_winners": 1, "total_net_loss": "710"}
    with pytest.raises(NotFound):
        summary(engine, "nope")


def test_summary_counts_break_even_as_net_winner(engine, case, tmp_path):
    content = HEADER + "E1,deposit,5.5,2023-01-01,,,,,,\nE1,bonus,5.5,2023-01-02,,,,,,\n"
    ledger.import_ledger(engine, case, write(tmp_path, content), Actor.operator())
    assert summary(engine)["net_winners"] == 1 and summary(engine)["total_net_loss"] == "0"


def test_mark_insider(engine, case, tmp_path):
    ledger.import_ledger(engine, case, write(tmp_path, GOOD), Actor.operator())
    with session_scope(engine) as s:
        acct = ledger.mark_insider(s, case, "A1", "promoter: ran the Telegram channel",
                                   Actor.operator())
        assert acct.insider and acct.insider_reason == "promoter: ran the Telegram channel"
    with session_scope(engine, write=False) as s:
        ev = s.execute(select(AuditEvent).order_by(AuditEvent.id.desc())).scalars().first()
    assert ev.action == "ledger.mark_insider" and ev.subject_id == f"{case}/A1"
    assert ev.before == {"insider": False, "insider_reason": None}
    events = counts(engine)["events"]
    with session_scope(engine) as s:  # the same again: nothing to record
        ledger.mark_insider(s, case, "A1", "promoter: ran the Telegram channel", Actor.operator())
    assert counts(engine)["events"] == events
    with session_scope(engine) as s:
        with pytest.raises(NotFound):
            ledger.mark_insider(s, case, "nobody", None, Actor.operator())
        with pytest.raises(NotFound):
            ledger.mark_insider(s, "no-case", "A1", None, Actor.operator())
    # A re-import whose file says insider=false does not unmark.
    ledger.import_ledger(engine, case, write(tmp_path, GOOD, "b.csv"), Actor.operator())
    assert accounts(engine)["A1"].insider


# ----------------------------------------------------------------------------- match keys


def test_tx_hash_match_keys_whatever_the_spelling(engine, case, tmp_path):
    """A ledger tx hash is stored and matched as claims.validators.tx_hash_key gives it: lower
    case, without 0x, spaces around the cell ignored; anything else is refused."""
    body = HEADER + (
        f"T1,deposit,1,2023-01-01T00:00:00Z, 0x{'AB' * 32} ,,,,,\n"
        f"T2,deposit,1,2023-01-01T00:00:00Z,0X{'cd' * 32},,,,,\n"
        f"T3,deposit,1,2023-01-01T00:00:00Z,{'EF' * 32},,,,,\n"
    )
    ledger.import_ledger(engine, case, write(tmp_path, body), Actor.operator())
    with session_scope(engine, write=False) as s:
        keys = set(s.execute(select(LedgerIdentifier.value)
                             .where(LedgerIdentifier.kind == "tx_hash")).scalars())
        stored = set(s.execute(select(LedgerEntry.tx_hash)).scalars())
    assert keys == stored == {"ab" * 32, "cd" * 32, "ef" * 32}
    bad = HEADER + "T4,deposit,1,2023-01-01T00:00:00Z,0x1234,,,,,\n"
    with pytest.raises(LedgerImportError) as exc:
        ledger.import_ledger(engine, case, write(tmp_path, bad, "bad.csv"), Actor.operator())
    assert exc.value.lines == [
        "line 2: tx_hash: must be 64 hexadecimal digits (with or without 0x)"]


_local = st.text("abcXYZ019._+-", min_size=1, max_size=70)
_label = st.text("abcXYZ019-", min_size=1, max_size=12)
_tld = st.sampled_from(["com", "ORG", "kz", "test", "local", "c0m", "x", "example", "onion"])


@settings(max_examples=300, deadline=None)
@given(local=_local, labels=st.lists(_label, min_size=1, max_size=3), tld=_tld)
def test_email_match_key_is_the_validators_rule(local, labels, tld):
    """A ledger e-mail is accepted exactly when claims.validators accepts it (refused with its
    words), and its match key is the one a claim's validated e-mail gets."""
    from claims.ledger.rules import Rules
    from claims.settings import get_settings

    address = f"{local}@{'.'.join(labels)}.{tld}"
    rules = Rules(get_settings().pii_key)
    try:
        clean = validate_email(address)
    except ValidationFailed as exc:
        with pytest.raises(ValueError) as refused:
            rules.check_email(address)
        assert str(refused.value) == f"email: {exc.message}"
        return
    assert rules.check_email(address) == email_key(clean)
