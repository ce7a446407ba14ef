"""Identity and payout-address validators (the formats of docs/formats.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claims.validators import (
    ErrorCollector,
    FieldErrors,
    ValidationFailed,
    detect_network,
    email_key,
    iin_sex,
    make_eth_address,
    make_iin,
    make_tron_address,
    name_key,
    normalize_address_key,
    to_checksum_address,
    validate_any_address,
    validate_case_code,
    validate_claim_fields,
    validate_date_of_birth,
    validate_email,
    validate_eth_address,
    validate_full_name,
    validate_iin,
    validate_language,
    validate_payout_address,
    validate_phone,
    validate_tron_address,
    validate_tx_hash,
)

IIN_MALE_1979 = "791028302728"
IIN_FEMALE_2006 = "061211600012"  # its first weighted sum is 10: uses the second weight set
USDT_TRC20 = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
EIP55_VECTORS = [
    # EIP-55 test cases: all caps, all lower, normal (each is its own checksum form)
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
MIXED = EIP55_VECTORS[4:]


def failure(fn, *args, **kwargs) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------
# IIN


def oracle_iin_valid(iin: str) -> bool:
    """The IIN rule (docs/formats.md) written out independently of the module under test."""
    if len(iin) != 12 or not all(c in "0123456789" for c in iin):
        return False
    d = [int(c) for c in iin]
    century = {1: 1800, 2: 1800, 3: 1900, 4: 1900, 5: 2000, 6: 2000}.get(d[6])
    if century is None:
        return False
    try:
        born = dt.date(century + d[0] * 10 + d[1], d[2] * 10 + d[3], d[4] * 10 + d[5])
    except ValueError:
        return False
    if born > dt.date.today():
        return False
    s = sum(d[k - 1] * k for k in range(1, 12)) % 11
    if s == 10:
        w = [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2]
        s = sum(d[k] * w[k] for k in range(11)) % 11
        if s == 10:
            return False
    return s == d[11]


def with_check_digit(first11: str) -> str:
    """Complete 11 digits with a correct check digit (ignoring date/century validity)."""
    d = [int(c) for c in first11]
    s = sum(d[k - 1] * k for k in range(1, 12)) % 11
    if s == 10:
        s = sum(x * w for x, w in zip(d, [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2])) % 11
    assert s != 10, "pick other digits"
    return first11 + str(s)


def test_design_examples_are_valid():
    assert validate_iin(IIN_MALE_1979) == dt.date(1979, 10, 28)
    assert validate_iin(IIN_FEMALE_2006) == dt.date(2006, 12, 11)
    assert iin_sex(IIN_MALE_1979) == "male"
    assert iin_sex(IIN_FEMALE_2006) == "female"


def test_second_weight_set_is_used_when_the_first_sum_is_10():
    d = [int(c) for c in IIN_FEMALE_2006]
    assert sum(d[k - 1] * k for k in range(1, 12)) % 11 == 10  # so the example needs set 2
    # The digit the first set would give (10) is impossible; any other digit but 2 is wrong.
    for check in "013456789":
        assert "check digit" in failure(validate_iin, IIN_FEMALE_2006[:11] + check).message


@pytest.mark.parametrize("iin", [IIN_MALE_1979, IIN_FEMALE_2006])
def test_single_digit_mutations_follow_the_check_digit_rule(iin):
    invalid = valid = 0
    for pos in range(12):
        for digit in "0123456789":
            if digit == iin[pos]:
                continue
            mutated = iin[:pos] + digit + iin[pos + 1 :]
            expected = oracle_iin_valid(mutated)
            if expected:
                valid += 1
                validate_iin(mutated)  # valid by chance: the rule cannot catch it
            else:
                invalid += 1
                assert failure(validate_iin, mutated).field == "iin", mutated
            if pos == 11:  # a changed check digit is always caught
                assert not expected
    assert invalid + valid == 108
    assert invalid >= 90  # the weak spot is digit 11 (weight 11 ≡ 0 mod 11 in the first set)


def test_digit_11_changes_are_invisible_to_the_first_weight_set():
    # A documented property of the IIN rule, not of this code: weight 11 ≡ 0 (mod 11).
    for digit in "013456789":
        mutated = IIN_MALE_1979[:10] + digit + IIN_MALE_1979[11]
        assert validate_iin(mutated) == dt.date(1979, 10, 28)


@pytest.mark.parametrize("century", "0789")
def test_century_digit_outside_1_to_6_is_invalid(century):
    iin = with_check_digit("791028" + century + "0272")
    err = failure(validate_iin, iin)
    assert err.field == "iin"
    assert "digit 7" in err.message


@pytest.mark.parametrize(
    "yymmdd, century",
    [("790230", "3"), ("790431", "3"), ("791301", "3"), ("790001", "3"), ("791000", "3"),
     ("000229", "3"),  # 1900 was not a leap year
     ("010229", "5")],
)
def test_impossible_birth_dates_are_invalid(yymmdd, century):
    iin = with_check_digit(yymmdd + century + "1234")
    err = failure(validate_iin, iin)
    assert err.field == "iin"
    assert "not a real date" in err.message


def test_leap_day_2000_is_a_real_date():
    iin = make_iin(dt.date(2000, 2, 29), "female", 42)
    assert iin[:7] == "0002296"
    assert validate_iin(iin) == dt.date(2000, 2, 29)


def test_both_weight_sets_giving_10_is_invalid():
    head = "7910283"
    for serial in range(10000):
        first11 = f"{head}{serial:04d}"
        d = [int(c) for c in first11]
        s1 = sum(d[k - 1] * k for k in range(1, 12)) % 11
        s2 = sum(x * w for x, w in zip(d, [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2])) % 11
        if s1 == 10 and s2 == 10:
            break
    else:  # pragma: no cover
        pytest.fail("no such serial")
    for check in "0123456789":
        err = failure(validate_iin, first11 + check)
        assert "cannot have a check digit" in err.message
    # make_iin skips that serial
    made = make_iin(dt.date(1979, 10, 28), "male", serial)
    assert made[7:11] == f"{(serial + 1) % 10000:04d}"
    assert validate_iin(made) == dt.date(1979, 10, 28)


@pytest.mark.parametrize(
    "bad, words",
    [("79102830272", "12 digits (got 11)"), ("7910283027281", "12 digits (got 13)"),
     ("79102830272a", "12 digits"), ("7910 28302728", "12 digits"),
     ("７９１０２８３０２７２８", "12 digits"), ("", "required"), (None, "required")],
)
def test_malformed_iin(bad, words):
    err = failure(validate_iin, bad)
    assert err.field == "iin"
    assert words in err.message


def test_iin_not_a_string():
    assert failure(validate_iin, 791028302728).field == "iin"


def test_iin_surrounding_whitespace_is_ignored():
    assert validate_iin(f"  {IIN_MALE_1979}\n") == dt.date(1979, 10, 28)


def test_date_of_birth_disagreement_names_date_of_birth():
    assert validate_iin(IIN_MALE_1979, dt.date(1979, 10, 28)) == dt.date(1979, 10, 28)
    err = failure(validate_iin, IIN_MALE_1979, dt.date(1979, 10, 29))
    assert err.field == "date_of_birth"
    assert "IIN" in err.message
    assert IIN_MALE_1979 not in str(err)


def test_messages_never_contain_the_iin():
    for bad in [IIN_MALE_1979[:11] + "9", "791328302728", "791028902728"]:
        assert bad not in str(failure(validate_iin, bad))


def test_future_birth_date_is_invalid():
    future = dt.date.today() + dt.timedelta(days=400)
    if future.year > 2099:  # pragma: no cover
        pytest.skip("calendar beyond the IIN's range")
    assert "future" in failure(validate_iin, make_iin(future, "M", 1)).message


@settings(max_examples=200, deadline=None)
@given(
    born=st.dates(min_value=dt.date(1800, 1, 1), max_value=dt.date.today()),
    sex=st.sampled_from(["male", "female", "M", "F"]),
    serial=st.integers(0, 9999),
    wrong=st.integers(1, 9),
)
def test_make_iin_round_trips_and_a_changed_check_digit_fails(born, sex, serial, wrong):
    iin = make_iin(born, sex, serial)
    assert len(iin) == 12 and oracle_iin_valid(iin)
    assert validate_iin(iin) == born
    assert iin_sex(iin) == ("male" if sex[0].upper() == "M" else "female")
    assert int(iin[7:11]) in (serial, (serial + 1) % 10000)
    changed = iin[:11] + str((int(iin[11]) + wrong) % 10)
    assert failure(validate_iin, changed).field == "iin"


def test_make_iin_refuses_bad_arguments():
    with pytest.raises(ValueError):
        make_iin(dt.date(1799, 12, 31), "M", 0)
    with pytest.raises(ValueError):
        make_iin(dt.date(1990, 1, 1), "X", 0)
    with pytest.raises(ValueError):
        make_iin(dt.date(1990, 1, 1), "F", 10000)


# --------------------------------------------------------------------------------------
# TRON


@pytest.mark.parametrize("addr", [
    "T" + "1" * 33,  # too small a number for 25 bytes
    "T" + "z" * 33,  # too large
    base58.b58encode_check(b"\x42" + bytes(range(1, 21))).decode(),  # another version byte
])
def test_base58_that_is_no_tron_payload_is_refused(addr):
    assert addr[0] == "T" and len(addr) == 34
    assert failure(validate_tron_address, addr).message == (
        "is not a TRON address — check for a typo")


def test_usdt_contract_address_is_valid():
    assert validate_tron_address(USDT_TRC20) == USDT_TRC20
    assert validate_tron_address(f" {USDT_TRC20} ") == USDT_TRC20


def test_every_single_character_substitution_fails():
    count = 0
    for pos in range(len(USDT_TRC20)):
        for c in B58:
            if c == USDT_TRC20[pos]:
                continue
            typo = USDT_TRC20[:pos] + c + USDT_TRC20[pos + 1 :]
            err = failure(validate_tron_address, typo)
            assert err.field == "payout_address"
            count += 1
    assert count == 34 * 57


def test_checksum_typo_message():
    typo = USDT_TRC20[:-1] + ("u" if USDT_TRC20[-1] != "u" else "v")
    assert failure(validate_tron_address, typo).message == (
        "TRON address checksum does not match — check for a typo"
    )


def test_adjacent_transpositions_fail():
    for pos in range(1, len(USDT_TRC20) - 1):
        a, b = USDT_TRC20[pos], USDT_TRC20[pos + 1]
        if a != b:
            swapped = USDT_TRC20[:pos] + b + a + USDT_TRC20[pos + 2 :]
            failure(validate_tron_address, swapped)


@pytest.mark.parametrize(
    "bad, words",
    [(USDT_TRC20[:-1], "34 characters, not 33"), (USDT_TRC20 + "a", "34 characters, not 35"),
     ("A" + USDT_TRC20[1:], "starts with T"), (USDT_TRC20[:5] + "0" + USDT_TRC20[6:], "'0'"),
     (USDT_TRC20[:5] + "l" + USDT_TRC20[6:], "'l'"),
     ("41" + "a614f803b6fd780986a42c78ec9c7f77e6ded13c", "hex form"),
     ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "Ethereum address; the network is tron")],
)
def test_malformed_tron_addresses(bad, words):
    assert words in failure(validate_tron_address, bad).message


def test_tron_zero_address_is_refused():
    zero = make_tron_address(bytes(20))
    assert zero == "T9yD14Nj9j7xAB4dbGeiX9h8unkKHxuWwb"
    assert "zero address" in failure(validate_tron_address, zero).message


def test_make_tron_address_matches_the_base58_package():
    payload = bytes.fromhex("a614f803b6fd780986a42c78ec9c7f77e6ded13c")
    assert make_tron_address(payload) == USDT_TRC20
    assert base58.b58encode_check(b"\x41" + payload).decode() == USDT_TRC20


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=20, max_size=20).filter(any), pos=st.integers(1, 33),
       c=st.sampled_from(B58))
def test_generated_tron_addresses_validate_and_typos_fail(payload, pos, c):
    addr = make_tron_address(payload)
    assert len(addr) == 34 and addr[0] == "T"
    assert validate_tron_address(addr) == addr
    raw = base58.b58decode(addr)
    assert raw[21:] == hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4]
    if c != addr[pos]:
        failure(validate_tron_address, addr[:pos] + c + addr[pos + 1 :])


# --------------------------------------------------------------------------------------
# Ethereum


@pytest.mark.parametrize("addr", EIP55_VECTORS)
def test_eip55_vectors_are_valid_without_warning(addr):
    assert validate_eth_address(addr) == (addr, [])
    assert to_checksum_address(addr.lower()) == addr


@pytest.mark.parametrize("addr", MIXED)
def test_case_flipped_letter_fails(addr):
    for i, ch in enumerate(addr[2:], start=2):
        if ch.isalpha():
            flipped = addr[:i] + ch.swapcase() + addr[i + 1 :]
            err = failure(validate_eth_address, flipped)
            assert err.field == "payout_address"
            assert "checksum" in err.message


@pytest.mark.parametrize("addr", MIXED)
def test_all_lower_or_upper_is_accepted_with_a_warning(addr):
    for variant, case in ((addr.lower(), "lower"), ("0x" + addr[2:].upper(), "upper")):
        checksummed, warnings = validate_eth_address(variant)
        assert checksummed == addr
        assert len(warnings) == 1 and f"all {case} case" in warnings[0]


@pytest.mark.parametrize(
    "bad, words",
    [("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "starts with 0x"),
     ("0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "lower-case x"),
     ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "not 39"),
     ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd", "not 41"),
     ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "'g'"),
     (USDT_TRC20, "TRON address; the network is ethereum"),
     ("0x" + "0" * 40, "zero address"), ("", "required")],
)
def test_malformed_eth_addresses(bad, words):
    assert words in failure(validate_eth_address, bad).message


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(min_size=20, max_size=20).filter(any))
def test_checksum_agrees_with_eth_utils(payload):
    from eth_utils import to_checksum_address as reference  # slow import: tests only

    expected = reference("0x" + payload.hex())
    assert make_eth_address(payload) == expected
    assert validate_eth_address(expected) == (expected, [])
    lower = "0x" + payload.hex()
    assert validate_eth_address(lower)[0] == expected


# --------------------------------------------------------------------------------------
# Payout addresses and networks


def test_payout_address_by_network():
    assert validate_payout_address("tron", USDT_TRC20) == (USDT_TRC20, [])
    assert validate_payout_address("ethereum", MIXED[0]) == (MIXED[0], [])
    addr, warnings = validate_payout_address("ethereum", MIXED[0].lower())
    assert addr == MIXED[0] and warnings


def test_wrong_network_is_an_error_both_ways():
    err = failure(validate_payout_address, "tron", MIXED[0])
    assert (err.field, err.message) == (
        "payout_address", "this is an Ethereum address; the network is tron")
    err = failure(validate_payout_address, "ethereum", USDT_TRC20)
    assert (err.field, err.message) == (
        "payout_address", "this is a TRON address; the network is ethereum")


@pytest.mark.parametrize("network", ["bitcoin", "TRON", "", None, "erc20"])
def test_unknown_network_names_payout_network(network):
    assert failure(validate_payout_address, network, USDT_TRC20).field == "payout_network"


def test_address_keys():
    assert normalize_address_key("ethereum", MIXED[0]) == MIXED[0].lower()
    assert normalize_address_key("ethereum", MIXED[0].upper().replace("0X", "0x")) == (
        MIXED[0].lower())
    assert normalize_address_key("tron", USDT_TRC20) == USDT_TRC20
    assert normalize_address_key(None, MIXED[0]) == MIXED[0].lower()
    assert normalize_address_key(None, f" {USDT_TRC20} ") == USDT_TRC20
    assert failure(normalize_address_key, "btc", USDT_TRC20).field == "payout_network"


def test_detect_and_validate_any_address():
    assert detect_network(MIXED[0]) == "ethereum"
    assert detect_network(USDT_TRC20) == "tron"
    assert detect_network("hello") is None
    assert validate_any_address(USDT_TRC20) == ("tron", USDT_TRC20, [])
    net, addr, warnings = validate_any_address(MIXED[1].lower())
    assert (net, addr) == ("ethereum", MIXED[1]) and warnings
    assert failure(validate_any_address, "hello").field == "address"


# --------------------------------------------------------------------------------------
# Transaction hashes


def test_tx_hashes():
    h = "ab" * 32
    assert validate_tx_hash("0x" + h.upper(), "ethereum") == "0x" + h
    assert "starts with 0x" in failure(validate_tx_hash, h, "ethereum").message
    assert validate_tx_hash(h.upper(), "tron") == h
    assert validate_tx_hash("0x" + h, "tron") == h
    for bad in ("0x" + h[:-1], h + "a", "0x" + h[:-1] + "g"):
        for network in ("ethereum", "tron"):
            assert failure(validate_tx_hash, bad, network).field == "evidence_tx_hashes"


# --------------------------------------------------------------------------------------
# Phones, e-mails, names, language, case code, date of birth


@pytest.mark.parametrize(
    "raw", ["+77012345678", "+7 701 234 56 78", "+7 (701) 234-56-78", " +7-701-234-5678 ",
            "+7\u00a0701\u00a02345678"],
)
def test_phone_normalizes_to_e164(raw):
    assert validate_phone(raw) == "+77012345678"


@pytest.mark.parametrize(
    "raw, words",
    [("+7701234567", "10 digits after +7, not 9"), ("+770123456789", "not 11"),
     ("87012345678", "+7 followed by 10 digits"), ("77012345678", "international form"),
     ("+447911123456", "Kazakhstan"), ("+7 701 234 56 7x", "only +, digits"),
     ("+7.701.234.56.78", "only +, digits"), ("++77012345678", "only +, digits"),
     ("", "required"), (None, "required")],
)
def test_bad_phones(raw, words):
    err = failure(validate_phone, raw)
    assert err.field == "phone"
    assert words in err.message


@pytest.mark.parametrize("raw", [
    "victim@example.kz", "Victim.Name+tag@Mail.EXAMPLE.com", "a_b-c@sub-domain.example.org",
    "Info@Example.com", "POSTMASTER@example.com", "support.team@example.com",  # role mailboxes
    "x@xn--e1afmkfd.xn--p1ai", "x@XN--E1AFMKFD.xn--p1ai",  # IDNA → Unicode domain
    "victim@localhost", "victim@example", "victim@a.test", "victim@a.invalid", "victim@1.2.3.4",
    "victim@ex--ample.com", "victim@-example.com", "victim@example-.com", "victim@example..com",
    "victim@example.com.", "victim@" + "a" * 64 + ".com", ".victim@example.com",
    "victim.@example.com", "vic..tim@example.com", "l" * 64 + "@example.com",
    "l" * 65 + "@example.com", "l" * 100 + "@" + "d" * 60 + "." + "d" * 60 + "." + "d" * 40 + ".com",
    "жертва@пример.рф", "a@b@example.com", "Victim <victim@example.com>", '"v i"@example.com',
])
def test_email_result_is_email_validators(raw):
    """The shortcut for common addresses gives email-validator's result, or its message."""
    from email_validator import EmailNotValidError
    from email_validator import validate_email as library

    from claims.validators.contact import email_message

    try:
        expected = ("ok", library(raw, check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        expected = ("refused", email_message(str(exc)))
    try:
        got = ("ok", validate_email(raw))
    except ValidationFailed as exc:
        got = ("refused", exc.message)
    assert got == expected


def test_control_characters_are_the_unicode_categories():
    """``has_control``'s ranges are exactly categories Cc and Cs and the bidi controls."""
    import unicodedata

    from claims.validators.common import has_control

    bidi = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    for cp in range(0x110000):
        c = chr(cp)
        assert has_control(c) == (unicodedata.category(c) in ("Cc", "Cs") or c in bidi), hex(cp)


def test_email_is_normalized():
    assert validate_email("  Victim@EXAMPLE.com ") == "Victim@example.com"
    assert validate_email("жертва@пример.рф") == "жертва@пример.рф"
    assert email_key("Victim@example.com") == email_key("victim@EXAMPLE.COM")


@pytest.mark.parametrize(
    "raw, words",
    [("victim", "@-sign"), ("victim@example", "period"), ("a..b@example.com", "periods"),
     ("victim@@example.com", "invalid characters"), ("", "required")],
)
def test_bad_emails(raw, words):
    err = failure(validate_email, raw)
    assert err.field == "email"
    assert words in err.message
    assert not err.message.startswith("The email address is not valid")


def test_full_name():
    assert validate_full_name("  Айгүл   Серікқызы ") == "Айгүл Серікқызы"
    assert validate_full_name("A" * 200) == "A" * 200
    assert "at most 200" in failure(validate_full_name, "A" * 201).message
    assert "control" in failure(validate_full_name, "Ivan\x00 Petrov").message
    assert "control" in failure(validate_full_name, "Ivan \u202ePetroV").message
    assert "letters" in failure(validate_full_name, "12345").message
    assert failure(validate_full_name, "   ").message == "is required"
    assert name_key("Айгүл  СЕРІКҚЫЗЫ") == name_key("айгүл серікқызы")


def test_language():
    for lang in ("kk", "ru", "en"):
        assert validate_language(lang) == lang
    for bad in ("kz", "KK", "de", ""):
        assert failure(validate_language, bad).field == "language"


def test_case_code():
    assert validate_case_code("finiko-2023") == "finiko-2023"
    for bad in ("-abc", "a", "Finiko", "abc_def", "a" * 65, "abc def"):
        assert failure(validate_case_code, bad).field == "case_id"
    assert validate_case_code("a" * 64) == "a" * 64


def test_date_of_birth():
    assert validate_date_of_birth("1979-10-28") == dt.date(1979, 10, 28)
    assert validate_date_of_birth(dt.date(1979, 10, 28)) == dt.date(1979, 10, 28)
    assert validate_date_of_birth(None) is None
    assert validate_date_of_birth("") is None
    for bad, words in [("1979-02-30", "not a real date"), ("28.10.1979", "YYYY-MM-DD"),
                       ("19791028", "YYYY-MM-DD"), ("1700-01-01", "before 1800"),
                       (dt.datetime(1979, 10, 28, 12), "without a time"), (19791028, "YYYY")]:
        err = failure(validate_date_of_birth, bad)
        assert err.field == "date_of_birth" and words in err.message
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    assert "future" in failure(validate_date_of_birth, tomorrow.isoformat()).message


# --------------------------------------------------------------------------------------
# Errors and the collector


def test_field_errors_and_collector():
    errs = ErrorCollector()
    assert errs.check("iin", validate_iin, IIN_MALE_1979) == dt.date(1979, 10, 28)
    assert errs.check("iin", validate_iin, IIN_MALE_1979, dt.date(2000, 1, 1)) is None
    with errs.field("phone"):
        validate_phone("123")
    with errs.field("claimed_amount"):
        raise ValueError("must be greater than 0")
    errs.warn("payout_address", "all lower case")
    with pytest.raises(FieldErrors) as info:
        errs.raise_if_any()
    assert info.value.fields == ["date_of_birth", "phone", "claimed_amount"]
    assert info.value.errors[2] == {"field": "claimed_amount", "message": "must be greater than 0"}
    assert isinstance(info.value, ValueError)
    assert errs.warnings == [{"field": "payout_address", "message": "all lower case"}]
    ErrorCollector().raise_if_any()  # nothing collected: no exception
    assert str(FieldErrors([("a", "x"), {"field": "b", "message": "y"}])) == "a: x; b: y"
    with pytest.raises(ValueError):
        FieldErrors([])


# --------------------------------------------------------------------------------------
# A whole claim


def good_claim(**overrides):
    claim = {
        "case_id": "finiko-2023",
        "full_name": "Айгүл Серікқызы",
        "iin": IIN_MALE_1979,
        "date_of_birth": "1979-10-28",
        "email": "victim@example.com",
        "phone": "+7 701 234 56 78",
        "language": "kk",
        "scheme_account": " FIN-000123 ",
        "claimed_amount": "1250.5",
        "evidence_tx_hashes": ["AB" * 32, "0x" + "ab" * 32, "cd" * 32],
        "payout_network": "tron",
        "payout_address": USDT_TRC20,
        "consent": True,
        "something_else": "ignored",
    }
    claim.update(overrides)
    return claim


def test_good_claim_is_cleaned():
    clean, warnings = validate_claim_fields(good_claim())
    assert warnings == []
    assert clean == {
        "case_id": "finiko-2023",
        "full_name": "Айгүл Серікқызы",
        "iin": IIN_MALE_1979,
        "birth_date": dt.date(1979, 10, 28),
        "date_of_birth": dt.date(1979, 10, 28),
        "email": "victim@example.com",
        "phone": "+77012345678",
        "language": "kk",
        "scheme_account": "FIN-000123",
        "claimed_amount": 1_250_500_000,
        "evidence_tx_hashes": ["ab" * 32, "cd" * 32],  # normalized and de-duplicated
        "payout_network": "tron",
        "payout_address": USDT_TRC20,
        "consent": True,
    }


def test_optional_fields_may_be_missing_or_blank():
    claim = good_claim(scheme_account="", evidence_tx_hashes="")
    del claim["date_of_birth"]
    clean, _ = validate_claim_fields(claim)
    assert clean["date_of_birth"] is None
    assert clean["birth_date"] == dt.date(1979, 10, 28)
    assert clean["scheme_account"] is None
    assert clean["evidence_tx_hashes"] == []


def test_csv_cell_of_evidence_hashes_is_split_on_semicolons():
    clean, _ = validate_claim_fields(good_claim(evidence_tx_hashes=f"{'ab' * 32}; {'cd' * 32}"))
    assert clean["evidence_tx_hashes"] == ["ab" * 32, "cd" * 32]


def test_lower_case_eth_address_gives_a_warning():
    clean, warnings = validate_claim_fields(
        good_claim(payout_network="ethereum", payout_address=MIXED[0].lower(),
                   evidence_tx_hashes=["0x" + "ab" * 32]))
    assert clean["payout_address"] == MIXED[0]
    assert [w["field"] for w in warnings] == ["payout_address"]


def test_every_bad_field_is_reported_at_once():
    bad = {
        "case_id": "Bad Case",
        "full_name": "",
        "iin": "791028302729",
        "date_of_birth": "1979-02-30",
        "email": "nobody",
        "phone": "8 701 234 56 78",
        "language": "de",
        "scheme_account": "x" * 101,
        "claimed_amount": 12.5,
        "evidence_tx_hashes": ["abc"],
        "payout_network": "tron",
        "payout_address": MIXED[0],
        "consent": "true",
    }
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(bad)
    errors = {e["field"]: e["message"] for e in info.value.errors}
    assert set(errors) == set(bad) - {"payout_network"}  # tron is fine; all else is bad
    assert errors["claimed_amount"].endswith("not a number")
    assert errors["payout_address"] == "this is an Ethereum address; the network is tron"
    assert errors["iin"].startswith("IIN check digit is wrong")
    assert errors["evidence_tx_hashes"].startswith("item 1:")
    assert IIN_MALE_1979[:11] not in str(info.value)


def test_missing_required_fields_are_each_named():
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields({})
    assert info.value.fields == [
        "case_id", "full_name", "iin", "email", "phone", "language", "claimed_amount",
        "payout_network", "payout_address", "consent",
    ]


def test_birth_date_disagreement_names_date_of_birth_in_a_claim():
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(date_of_birth="1979-10-29"))
    assert info.value.fields == ["date_of_birth"]


@pytest.mark.parametrize("amount, words", [("0", "greater than 0"), ("-5", "negative"),
                                           ("1.0000001", "6 decimals"), (100, "not a number")])
def test_claimed_amount_uses_money_rules(amount, words):
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(claimed_amount=amount))
    assert info.value.fields == ["claimed_amount"]
    assert words in info.value.errors[0]["message"]


@pytest.mark.parametrize("consent", [False, "true", 1, None])
def test_consent_must_be_exactly_true(consent):
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(consent=consent))
    assert info.value.fields == ["consent"]


def test_unknown_network_with_a_valid_address_names_only_the_network():
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(payout_network="trc20"))
    assert info.value.fields == ["payout_network"]
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(payout_network="trc20", payout_address="nonsense"))
    assert info.value.fields == ["payout_network", "payout_address"]


def test_evidence_hashes_are_matched_on_any_network():
    # A victim may have paid into a TRON scheme and want USDT on Ethereum: evidence hashes
    # of either shape are accepted and kept as 64 lower-case hex digits.
    clean, _ = validate_claim_fields(good_claim(
        payout_network="ethereum", payout_address=MIXED[0],
        evidence_tx_hashes=["0x" + "AB" * 32, "cd" * 32, "ab" * 32]))
    assert clean["evidence_tx_hashes"] == ["ab" * 32, "cd" * 32]
    with pytest.raises(FieldErrors) as info:
        validate_claim_fields(good_claim(evidence_tx_hashes=["0x1234"]))
    assert info.value.errors == [{
        "field": "evidence_tx_hashes",
        "message": "item 1: a transaction hash is 64 hexadecimal digits (0x optional)"}]


# --------------------------------------------------------------------------------------
# Import cost


def test_import_is_light():
    code = (
        "import sys, claims.validators\n"
        "heavy = [m for m in ('eth_hash', 'email_validator', 'web3', 'eth_utils', 'prefect',"
        " 'Crypto') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == ""
