"""Cases (claims/cases.py) and the blocked-address list (claims/blocked.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update

from claims import blocked, cases
from claims.audit import Actor, verify_chain
from claims.db import session_scope
from claims.errors import CaseClosed, Conflict, InvalidInput, NotFound
from claims.models import AuditEvent, Case
from claims.validators import normalize_address_key

ETH = "0x52908400098527886E0F7030069857D2E4169EE7"
TRON = "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8"


def events(engine, action_prefix: str = "") -> list[AuditEvent]:
    with session_scope(engine, write=False) as s:
        rows = s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
    return [e for e in rows if e.action.startswith(action_prefix)]


# ----------------------------------------------------------------------------- cases


def test_create_case_is_audited(engine):
    with session_scope(engine) as s:
        case = cases.create_case(s, "kz-2024", "  KZ   Ponzi ", "2999-12-31", Actor.operator())
        assert (case.code, case.name, case.status) == ("kz-2024", "KZ Ponzi", "open")
        assert case.deadline == dt.date(2999, 12, 31)
    (ev,) = events(engine, "case.")
    assert (ev.action, ev.subject_type, ev.subject_id, ev.role) == (
        "case.create", "case", "kz-2024", "operator")
    assert ev.after["deadline"] == "2999-12-31"


@pytest.mark.parametrize(
    "code, name, deadline, fields",
    [
        ("KZ", "x", None, ["code"]),
        ("-kz", "x", None, ["code"]),
        ("k", "x", None, ["code"]),
        ("a" * 65, "x", None, ["code"]),
        ("kz_1", "x", None, ["code"]),
        ("kz", "  ", None, ["name"]),
        ("kz", "x", "31.12.2030", ["deadline"]),
        ("kz", "x", "2030-02-30", ["deadline"]),
        ("kz", "x", "2001-01-01", ["deadline"]),
        ("K Z", "", "soon", ["code", "name", "deadline"]),
    ],
)
def test_create_case_refuses_bad_input_naming_every_field(engine, code, name, deadline, fields):
    with session_scope(engine) as s:
        with pytest.raises(InvalidInput) as exc:
            cases.create_case(s, code, name, deadline, Actor.operator())
    assert [e["field"] for e in exc.value.errors] == fields
    assert events(engine) == []


def test_codes_of_two_and_sixty_four_characters(engine):
    with session_scope(engine) as s:
        cases.create_case(s, "k1", "short", None, Actor.operator())
        cases.create_case(s, "a" * 64, "long", None, Actor.operator())


def test_duplicate_code_conflicts(engine):
    with session_scope(engine) as s:
        cases.create_case(s, "kz", "one", None, Actor.operator())
    with session_scope(engine) as s:
        with pytest.raises(Conflict):
            cases.create_case(s, "kz", "two", None, Actor.operator())


def test_close_case_and_filing_refusals(engine):
    with session_scope(engine) as s:
        cases.create_case(s, "kz", "one", None, Actor.operator())
    with session_scope(engine, write=False) as s:
        assert cases.get_open_case(s, "kz").code == "kz"
    with session_scope(engine) as s:
        case = cases.close_case(s, "kz", Actor.operator())
        assert case.status == "closed" and case.closed_at is not None
    assert [e.action for e in events(engine, "case.")] == ["case.create", "case.close"]
    with session_scope(engine) as s:
        with pytest.raises(Conflict):
            cases.close_case(s, "kz", Actor.operator())
        with pytest.raises(NotFound):
            cases.close_case(s, "nope", Actor.operator())
        with pytest.raises(CaseClosed) as exc:
            cases.get_open_case(s, "kz")
        assert exc.value.errors[0]["field"] == "case_id"
        for unknown in ("nope", "", None, 7):
            with pytest.raises(InvalidInput) as exc:
                cases.get_open_case(s, unknown)
            assert [e["field"] for e in exc.value.errors] == ["case_id"]
        assert cases.get_case_by_code(s, "kz").status == "closed"
        with pytest.raises(NotFound):
            cases.get_case_by_code(s, "nope")


def test_filings_after_the_deadline_are_refused(engine):
    with session_scope(engine) as s:
        cases.create_case(s, "kz", "one", dt.date.today().isoformat(), Actor.operator())
    with session_scope(engine, write=False) as s:
        cases.get_open_case(s, "kz")  # the deadline day itself is open
    with session_scope(engine) as s:
        s.execute(update(Case).values(deadline=dt.date.today() - dt.timedelta(days=1)))
    with session_scope(engine, write=False) as s:
        with pytest.raises(CaseClosed) as exc:
            cases.get_open_case(s, "kz")
    assert "deadline" in exc.value.errors[0]["message"]


# ----------------------------------------------------------------------------- blocked


def test_block_list_add_remove_list(engine):
    with session_scope(engine) as s:
        res = blocked.add_blocked(s, f"  {ETH} ", "OFAC SDN list", Actor.operator())
        assert (res.network, res.warnings, res.entry.address) == ("ethereum", [], ETH)
        res = blocked.add_blocked(s, TRON, "frozen by Tether", Actor.operator())
        assert res.network == "tron"
    with session_scope(engine, write=False) as s:
        listed = [blocked.blocked_view(b) for b in blocked.list_blocked(s)]
        assert [(b["address"], b["network"], b["reason"]) for b in listed] == [
            (ETH, "ethereum", "OFAC SDN list"), (TRON, "tron", "frozen by Tether")]
        keys = {b.address_key for b in blocked.list_blocked(s)}
        assert keys == {ETH.lower(), TRON}
        # A payout address is matched by its key (as Claim.payout_address_key): Ethereum
        # ignores letter case; TRON is case-sensitive base58.
        assert normalize_address_key("ethereum", ETH.lower()) in keys
        assert normalize_address_key(None, "0x" + ETH[2:].upper()) in keys
        assert normalize_address_key("tron", TRON) in keys
        assert normalize_address_key("tron", TRON.lower()) not in keys
    with session_scope(engine) as s:
        blocked.remove_blocked(s, ETH.lower(), Actor.operator())
    with session_scope(engine, write=False) as s:
        keys = {b.address_key for b in blocked.list_blocked(s)}
        assert keys == {TRON}
        assert normalize_address_key("ethereum", ETH) not in keys
    evs = events(engine, "blocked.")
    assert [(e.action, e.subject_id) for e in evs] == [
        ("blocked.add", ETH.lower()), ("blocked.add", TRON), ("blocked.remove", ETH.lower())]
    assert evs[0].after["reason"] == "OFAC SDN list"
    assert evs[2].before["address"] == ETH
    with session_scope(engine, write=False) as s:
        assert verify_chain(s).ok


def test_block_duplicate_conflicts_whatever_the_case(engine):
    with session_scope(engine) as s:
        blocked.add_blocked(s, ETH, "sanctioned", Actor.operator())
    with session_scope(engine) as s:
        with pytest.raises(Conflict) as exc:
            blocked.add_blocked(s, ETH.lower(), "again", Actor.operator())
    assert "already blocked" in exc.value.detail


def test_block_lower_case_ethereum_warns_and_stores_checksummed(engine):
    with session_scope(engine) as s:
        res = blocked.add_blocked(s, ETH.lower(), "sanctioned", Actor.operator())
    assert res.entry.address == ETH and res.warnings


@pytest.mark.parametrize(
    "address, reason, fields",
    [
        ("hello", "x", ["address"]),
        (ETH.replace("E", "e", 1), "x", ["address"]),  # EIP-55 typo
        (TRON[:-1] + "9", "x", ["address"]),           # base58check typo
        ("", "x", ["address"]),
        (TRON, "   ", ["reason"]),
        ("0x123", "", ["address", "reason"]),
    ],
)
def test_block_refuses_bad_input(engine, address, reason, fields):
    with session_scope(engine) as s:
        with pytest.raises(InvalidInput) as exc:
            blocked.add_blocked(s, address, reason, Actor.operator())
    assert [e["field"] for e in exc.value.errors] == fields
    assert events(engine) == []


def test_unblock_unknown_address(engine):
    with session_scope(engine) as s:
        with pytest.raises(NotFound):
            blocked.remove_blocked(s, TRON, Actor.operator())
        with pytest.raises(InvalidInput):
            blocked.remove_blocked(s, "  ", Actor.operator())
