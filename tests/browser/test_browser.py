"""End to end in a real browser (see conftest.py): victims file in kk/ru/en, errors beside
the fields, a caseworker approves a flagged claim, two caseworkers prepare and approve a
round, finance releases and watches the payouts settle, finance is kept out of the
caseworker's pages. Screenshots: test-artifacts/screenshots/."""

from __future__ import annotations

import re
import secrets

import pytest

pytest.importorskip("playwright", reason="the playwright package is not installed")
from playwright.sync_api import expect  # noqa: E402

PASSWORD = "browser test password 1"  # conftest's Seeder.staff password


def sign_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/staff/sign-in")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def sign_out(page) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/staff/sign-in**")

REFERENCE = re.compile(r"^KZR-[0-9A-Z]{4}-[0-9A-Z]{4}$")


def _code(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _fill_claim(page, case: str, *, iin: str, email: str, amount: str = "1200",
                address: str | None = None) -> None:
    from claims.validators import make_tron_address

    page.locator("#f-case_id").select_option(case)
    page.locator("#f-full_name").fill("Айгүл Серікқызы Нұрланова")
    page.locator("#f-iin").fill(iin)
    page.locator("#f-email").fill(email)
    page.locator("#f-phone").fill("+7 701 234 5678")
    page.locator("#f-claimed_amount").fill(amount)
    page.locator("#f-payout_network").select_option("tron")
    page.locator("#f-payout_address").fill(address or make_tron_address(secrets.token_bytes(20)))
    page.locator("#f-consent").check()


def test_victim_files_in_each_language_and_sees_the_reference(page, seed, shot):
    import datetime as dt

    from claims.validators import make_iin

    case = seed.case(_code("bv"), "Browser scheme")
    buttons = set()
    for i, lang in enumerate(("kk", "ru", "en")):
        page.goto(f"/?lang={lang}")
        expect(page.locator("html")).to_have_attribute("lang", lang)
        _fill_claim(page, case, iin=make_iin(dt.date(1980 + i, 3, 4), "female", 700 + i),
                    email=f"victim-{lang}-{secrets.token_hex(3)}@example.org")
        shot(page, f"01-victim-form-{lang}")
        buttons.add(page.locator("form button[type=submit]").inner_text())
        page.locator("form button[type=submit]").click()
        reference = page.locator("#reference")
        expect(reference).to_be_visible()
        assert REFERENCE.match(reference.inner_text().strip()), reference.inner_text()
        expect(page.locator("html")).to_have_attribute("lang", lang)
        shot(page, f"02-victim-filed-{lang}")
        assert seed.status(reference.inner_text().strip()) in ("submitted", "verifying",
                                                                "flagged", "approved")
    assert len(buttons) == 3, buttons  # each language its own words


def test_errors_appear_beside_the_fields_and_keep_what_was_typed(browser, server, seed, shot):
    case = seed.case(_code("be"))
    context = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto("/?lang=en")
        page.locator("#f-case_id").select_option(case)
        page.locator("#f-full_name").fill("Typed Name Kept")
        page.locator("#f-iin").fill("123")
        page.locator("#f-email").fill("not-an-email")
        page.locator("#f-claimed_amount").fill("12.1234567")
        page.locator("form button[type=submit]").click()
        for name in ("iin", "email", "claimed_amount", "consent"):
            err = page.locator(f"#e-{name}")
            expect(err).to_be_visible()
            # beside its field: in the same .field block as the input
            field = page.locator(f".field:has(#f-{name})")
            expect(field.locator(f"#e-{name}")).to_have_count(1)
            expect(page.locator(f"#f-{name}")).to_have_attribute("aria-describedby",
                                                                 re.compile(f"e-{name}"))
        expect(page.locator("#f-full_name")).to_have_value("Typed Name Kept")
        expect(page.locator("#f-email")).to_have_value("not-an-email")
        # phone width: nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "03-victim-errors-phone")
    finally:
        context.close()


def test_caseworker_signs_in_and_approves_a_flagged_claim(page, seed, shot):
    case = seed.case(_code("bc"))
    ref = seed.claim(case, claimed="750")  # no ledger account: flagged no_ledger_match
    assert seed.status(ref) == "flagged"
    cw = seed.staff("caseworker")

    page.goto("/staff/queue")
    expect(page).to_have_url(re.compile(r"/staff/sign-in\?next="))
    shot(page, "10-staff-sign-in")
    page.get_by_label("User name").fill(cw)
    page.get_by_label("Password").fill("wrong password here")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name")
    sign_in(page, cw)
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    page.get_by_label("Case").select_option(case)
    page.get_by_label("Open flag").select_option("no_ledger_match")
    page.get_by_role("button", name="Filter").click()
    shot(page, "11-caseworker-queue")
    page.get_by_role("link", name=ref).click()
    expect(page.get_by_text("No ledger account matches this claim: approving")).to_be_visible()
    page.get_by_label("Approve").check()
    page.get_by_label("Reason").fill("Bank statements show 700 USDT sent to the scheme")
    page.get_by_role("button", name="Record the decision").click()
    # without a ledger match the amount is required: the error beside the field
    expect(page.locator("#recognized_loss-error")).to_be_visible()
    expect(page.get_by_label("Reason")).to_have_value(
        "Bank statements show 700 USDT sent to the scheme")
    shot(page, "12-caseworker-decision-error")
    page.get_by_label("Approve").check()
    page.get_by_label("Recognized loss (USDT)").fill("700")
    page.get_by_role("button", name="Record the decision").click()
    expect(page.get_by_role("status")).to_have_text("Decision recorded.")
    expect(page.locator("h1 .badge")).to_have_text("approved")
    shot(page, "13-caseworker-approved")
    assert seed.status(ref) == "approved"


def _approved_case(seed, prefix: str, network: str, losses: list[str]) -> tuple[str, list[str]]:
    case = seed.case(_code(prefix))
    accounts = {f"ACC-{i}": (loss, "0") for i, loss in enumerate(losses)}
    seed.ledger(case, accounts)
    refs = [seed.claim(case, scheme_account=f"ACC-{i}", claimed=loss, network=network)
            for i, loss in enumerate(losses)]
    assert [seed.status(r) for r in refs] == ["approved"] * len(refs)
    return case, refs


def test_two_caseworkers_prepare_and_approve_a_round(page, seed, shot):
    case, _ = _approved_case(seed, "br", "tron", ["1000", "600", "400"])
    cw1, cw2 = seed.staff("caseworker"), seed.staff("caseworker")

    sign_in(page, cw1)
    page.get_by_role("link", name="Rounds").click()
    page.get_by_label("Case").select_option(case)
    page.get_by_label("Pool (USDT)").fill("1000")
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("section.warn")
    expect(preview).to_contain_text("not stored yet")
    expect(preview).to_contain_text("50 %")
    shot(page, "20-round-preview")
    page.get_by_role("button", name="Prepare this round").click()
    expect(page.get_by_role("status")).to_contain_text("Round prepared")
    expect(page.locator("#why-not")).to_contain_text("another caseworker must approve it")
    round_url = page.url.split("?")[0]
    shot(page, "21-round-prepared-preparer")
    sign_out(page)

    sign_in(page, cw2)
    page.goto(round_url)
    page.get_by_role("button", name="Approve this round").click()
    expect(page.get_by_role("status")).to_have_text("Round approved.")
    expect(page.locator("h1 .badge")).to_have_text("approved")
    page.get_by_role("link", name="Report with the recovery chart").click()
    expect(page.locator("svg").first).to_be_visible()
    shot(page, "22-round-report")


def test_finance_releases_and_watches_the_payouts_settle(page, seed, shot):
    from claims import rounds
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.models import StaffUser
    from sqlalchemy import select

    case, refs = _approved_case(seed, "bf", "ethereum", ["300", "200", "100"])
    cw1, cw2 = seed.staff("caseworker"), seed.staff("caseworker")
    with session_scope(seed.engine) as s:
        ids = dict(s.execute(select(StaffUser.username, StaffUser.id)
                             .where(StaffUser.username.in_([cw1, cw2]))).all())
        rid = rounds.prepare_round(s, case, 300_000_000,
                                   actor=Actor(cw1, "caseworker", ids[cw1])).id
    with session_scope(seed.engine) as s:
        rounds.approve_round(s, rid, actor=Actor(cw2, "caseworker", ids[cw2]))
    fin = seed.staff("finance")

    sign_in(page, fin)
    expect(page.get_by_role("heading", name="Rounds to pay")).to_be_visible()
    page.get_by_role("link", name=f"#{rid}").click()
    page.get_by_role("link", name="Release payouts…").click()
    expect(page.locator("#release-summary")).to_contain_text("3 payouts totalling 300 USDT")
    shot(page, "30-release-confirmation")
    page.get_by_role("button", name=re.compile(r"Release 3 payouts")).click()
    expect(page.get_by_role("status").first).to_contain_text("Payouts released")
    shot(page, "31-release-progress")
    confirmed = page.locator('#progress tr[data-state="confirmed"] td.num').first
    expect(confirmed).to_have_text("3", timeout=60_000)  # the page refreshes itself
    expect(page.locator("#round-status")).to_have_text("settled", timeout=15_000)
    shot(page, "32-payouts-settled")


def test_finance_cannot_reach_caseworker_pages(page, seed, shot):
    fin = seed.staff("finance")
    sign_in(page, fin)
    for url in ("/staff/queue", "/staff/rounds", "/staff/audit"):
        response = page.goto(url)
        assert response is not None and response.status == 403, url
        expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("link", name="Review queue")).to_have_count(0)
    shot(page, "40-finance-forbidden")
