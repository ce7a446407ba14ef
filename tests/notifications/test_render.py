"""Rendering of the victims' emails: every kind in every language, headers, structure, links."""

from __future__ import annotations

import email
import email.policy
import html as htmllib
import re
from datetime import datetime, timezone
from email.message import EmailMessage
from fractions import Fraction
from gettext import c2py
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from notifications import i18n
from notifications.i18n import LOCALE_DIR, get_translations, make_env
from notifications.render import KINDS, RenderError, explorer_url, render, status_url

PUBLIC_URL = "https://restitution.example.kz"
MAIL_FROM = "Restitution <no-reply@restitution.example.kz>"
REF = "KZR-7Q2M-X9KD"
TRON_TX = "a3" * 32
ETH_TX = "0x" + "5f" * 32
NOTICE = (
    "We never ask for your seed phrase or private key, never ask you to connect a wallet, never charge a fee. "
    "The only official address is %(public_url)s."
)
KAZAKH_LETTERS = set("әғқңөұүһіӘҒҚҢӨҰҮҺІ")
CYRILLIC = re.compile(r"[А-Яа-яЁё]")

CONTEXTS: dict[str, dict[str, object]] = {
    "received": {},
    "needs_info": {"request": "A bank statement showing the deposit of 12 March."},
    "approved": {"recognized_loss": "1250.5"},
    "rejected": {"reason": "The scheme's records show no deposit from this account."},
    "dispute_received": {"amount": "1400"},
    "dispute_settled": {"amount": "1300", "reason": "The March deposit is confirmed by the bank statement."},
    "address_change_requested": {
        "code": "482913",
        "payout_network": "tron",
        "payout_address": "TJRabPrwbZy45sbavfcjinPJC18kjpRTv8",
        "expires_minutes": 15,
    },
    "address_changed": {"payout_network": "ethereum", "payout_address": "0x52908400098527886E0F7030069857D2E4169EE7"},
    "allocated": {"amount": "312.625", "rate_percent": "25"},
    "paid": {"amount": "312.625", "tx_id": TRON_TX, "payout_network": "tron"},
    "failed": {"amount": "312.625"},
    "token_reset": {"access_token": "tok_9f8e7d6c5b4a39281706"},
}
assert set(CONTEXTS) == set(KINDS)


def do_render(kind: str, lang: str, nid: int | str = 7, **extra: object) -> EmailMessage:
    ctx = {"reference": REF, **CONTEXTS[kind], **extra}
    return render(kind, lang, ctx, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to="victim@example.kz", notification_id=nid)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def bodies(msg: EmailMessage) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()  # type: ignore[union-attr]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "href":
                self.hrefs.append(value or "")
            if name in ("src", "action", "background"):
                self.srcs.append(value or "")


def urls_in(text: str) -> list[str]:
    return [u.rstrip(".,;)") for u in re.findall(r"(?i)\b(?:https?|ftp)://[^\s<>\"']+", text)]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_every_language(kind: str, lang: str) -> None:
    msg = do_render(kind, lang, nid=1000 + KINDS.index(kind))
    wire = msg.wire_bytes()  # type: ignore[attr-defined]
    parsed = parse(wire)

    # Headers
    subject = str(msg["Subject"])
    assert subject.strip() and REF in subject
    assert parsed["Subject"] == subject  # round-trips through RFC 2047
    assert parsed["Content-Language"] == lang
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Message-ID"] == f"<notification-{1000 + KINDS.index(kind)}@restitution.example.kz>"
    assert parsed["From"].addresses[0].addr_spec == "no-reply@restitution.example.kz"
    assert parsed["To"].addresses[0].addr_spec == "victim@example.kz"
    assert parsed["Date"].datetime.tzinfo is not None
    head = wire.split(b"\n\n", 1)[0]
    assert head.isascii() and max(len(line) for line in head.split(b"\n")) <= 78

    # Structure: multipart/alternative of text/plain then text/html, UTF-8
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    text, html = bodies(parsed)
    assert bodies(msg) == (text, html)  # the object and its bytes agree
    assert bodies(parse(msg.as_bytes())) == (text, html)  # and so does the standard generator

    # Reference and the anti-phishing notice, in the claimant's language
    notice = get_translations("emails", lang).gettext(NOTICE) % {"public_url": PUBLIC_URL}
    if lang != "en":
        assert notice != NOTICE % {"public_url": PUBLIC_URL}
    assert REF in text and REF in html
    assert notice in text
    assert notice in htmllib.unescape(html)
    assert f'<html lang="{lang}">' in html

    # Language of the prose
    prose = text.replace(notice, "")
    if lang == "kk":
        assert KAZAKH_LETTERS & set(prose) and KAZAKH_LETTERS & set(subject)
    elif lang == "ru":
        assert CYRILLIC.search(prose) and not KAZAKH_LETTERS & set(prose + subject)
    else:
        assert not CYRILLIC.search(prose + subject)

    # Links: only the status page (and, for a payment, the explorer's page of the transaction)
    status = status_url(PUBLIC_URL, REF, lang)
    assert status == f"{PUBLIC_URL}/status?reference={REF}&lang={lang}"
    explorer = f"https://tronscan.org/#/transaction/{TRON_TX}"
    allowed_links = {status} | ({explorer} if kind == "paid" else set())
    links = Links()
    links.feed(html)
    assert status in links.hrefs
    assert set(links.hrefs) <= allowed_links
    assert links.srcs == []
    assert set(urls_in(text)) <= allowed_links | {PUBLIC_URL}
    assert status in urls_in(text)
    assert set(urls_in(htmllib.unescape(html))) <= allowed_links | {PUBLIC_URL}
    if kind == "paid":
        assert explorer in links.hrefs and explorer in text

    # Victims read plain words, never internal flag codes
    for code in ("no_ledger_match", "amount_differs", "net_winner", "duplicate_", "blocked_address", "address_changed"):
        assert code not in text and code not in html


def test_catalogs_are_complete_compiled_and_in_step_with_the_templates(tmp_path: Path) -> None:
    from babel.messages.frontend import CommandLineInterface

    root = Path(__file__).resolve().parents[2]
    pot = tmp_path / "emails.pot"
    CommandLineInterface().run(
        ["pybabel", "-q", "extract", "-F", str(root / "babel-emails.cfg"), "-o", str(pot), str(root / "templates" / "email")]
    )
    with pot.open("rb") as fh:
        extracted = {m.id for m in read_po(fh) if m.id}
    assert len(extracted) > 50
    for lang in ("kk", "ru"):
        po_path = LOCALE_DIR / lang / "LC_MESSAGES" / "emails.po"
        with po_path.open("rb") as fh:
            catalog = read_po(fh, locale=lang)
        entries = {m.id: m for m in catalog if m.id}
        assert set(entries) == extracted, f"{lang}: run `make translations`"
        translations = get_translations("emails", lang)
        for msgid, m in entries.items():
            assert "fuzzy" not in m.flags, msgid
            if isinstance(msgid, tuple):
                assert all(m.string), msgid
                plural = c2py(catalog.plural_expr)
                for n in (1, 2, 5, 21):
                    assert translations.ngettext(msgid[0], msgid[1], n) == m.string[plural(n)]
            else:
                assert m.string, msgid
                assert translations.gettext(msgid) == m.string, f"{lang}: .mo is stale for {msgid!r}"
                assert set(re.findall(r"%\(\w+\)s", m.string)) == set(re.findall(r"%\(\w+\)s", msgid)), msgid


@pytest.mark.parametrize(
    ("lang", "minutes", "expected"),
    [
        ("ru", 1, "Код действителен 1 минуту."),
        ("ru", 3, "Код действителен 3 минуты."),
        ("ru", 15, "Код действителен 15 минут."),
        ("ru", 21, "Код действителен 21 минуту."),
        ("kk", 15, "Код 15 минут бойы жарамды."),
        ("en", 1, "The code is valid for 1 minute."),
        ("en", 15, "The code is valid for 15 minutes."),
    ],
)
def test_plural_forms(lang: str, minutes: int, expected: str) -> None:
    text, html = bodies(do_render("address_change_requested", lang, expires_minutes=minutes))
    assert expected in text and expected in html


def test_message_id_is_derived_from_the_notification_id_only() -> None:
    first = do_render("paid", "ru", nid=123)
    again = render(
        "paid",
        "ru",
        {"reference": REF, **CONTEXTS["paid"]},
        public_url=PUBLIC_URL + "/",
        mail_from=MAIL_FROM,
        to="victim@example.kz",
        notification_id="123",
        date=datetime(2030, 1, 1, tzinfo=timezone.utc),
    )
    assert first["Message-ID"] == again["Message-ID"] == "<notification-123@restitution.example.kz>"
    assert parse(again.wire_bytes())["Message-ID"] == "<notification-123@restitution.example.kz>"  # type: ignore[attr-defined]
    assert do_render("paid", "ru", nid=124)["Message-ID"] != first["Message-ID"]
    other = render(
        "received", "en", {"reference": REF}, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to="v@example.kz",
        notification_id=5, domain_for_message_id="mail.example.org",
    )
    assert other["Message-ID"] == "<notification-5@mail.example.org>"
    local = render(
        "received", "en", {"reference": REF}, public_url="http://127.0.0.1:8000", mail_from=MAIL_FROM,
        to="v@example.kz", notification_id=5,
    )
    assert local["Message-ID"] == "<notification-5@127.0.0.1>"


def test_explorer_links() -> None:
    assert explorer_url("tron", TRON_TX) == f"https://tronscan.org/#/transaction/{TRON_TX}"
    assert explorer_url("tron", "0x" + TRON_TX.upper()) == f"https://tronscan.org/#/transaction/{TRON_TX}"
    assert explorer_url("ethereum", ETH_TX) == f"https://etherscan.io/tx/{ETH_TX}"
    assert explorer_url("ethereum", ETH_TX[2:]) == f"https://etherscan.io/tx/{ETH_TX}"
    assert explorer_url("ethereum", "CUST-2026-000042") is None
    assert explorer_url("tron", TRON_TX[:-1]) is None
    assert explorer_url(None, TRON_TX) is None

    eth = do_render("paid", "en", tx_id=ETH_TX, payout_network="ethereum")
    text, html = bodies(eth)
    assert f"https://etherscan.io/tx/{ETH_TX}" in text
    assert f'href="https://etherscan.io/tx/{ETH_TX}"' in html
    assert "Ethereum (ERC-20)" in text


def test_a_custodian_id_is_shown_without_a_link() -> None:
    msg = do_render("paid", "kk", tx_id="CUST-2026/000042 https://custodian.example/tx/42", payout_network="tron")
    text, html = bodies(msg)
    assert "CUST-2026/000042" in text and "CUST-2026/000042" in html
    links = Links()
    links.feed(html)
    assert links.hrefs == [status_url(PUBLIC_URL, REF, "kk")]
    assert not any("custodian.example" in u for u in urls_in(text) + urls_in(html))
    assert "custodian[.]example/tx/42" in text


def test_free_text_is_escaped_in_html_and_cannot_add_links() -> None:
    request = 'Send <b>the "statement"</b> & a photo\nSecond line: upload to https://evil.example/upload'
    text, html = bodies(do_render("needs_info", "ru", request=request))
    assert '> Send <b>the "statement"</b> & a photo' in text
    assert "> Second line: upload to evil[.]example/upload" in text
    assert "&lt;b&gt;the &#34;statement&#34;&lt;/b&gt; &amp; a photo<br>" in html
    assert "<b>the" not in html
    assert not [u for u in urls_in(text) + urls_in(html) if "evil" in u]


def test_greeting_uses_a_plain_name_only() -> None:
    text, html = bodies(do_render("received", "kk", name="Әсел Нұрланқызы"))
    assert text.startswith("Құрметті Әсел Нұрланқызы!")
    assert "Құрметті Әсел Нұрланқызы!" in html
    text, _ = bodies(do_render("received", "ru", name="Claim your bonus at evil.example now"))
    assert text.startswith("Здравствуйте!\n")
    assert "evil" not in text


def test_amounts_are_money_strings() -> None:
    text, _ = bodies(do_render("approved", "en", recognized_loss=1_250_500_000))
    assert "1250.5 USDT" in text
    text, _ = bodies(do_render("approved", "en", recognized_loss="1250.500000"))
    assert "1250.5 USDT" in text
    for bad in (1250.5, "1,250.5", "-3", "1.0000001"):
        with pytest.raises(RenderError, match="recognized_loss"):
            do_render("approved", "en", recognized_loss=bad)


def test_round_rate_as_percent() -> None:
    text, _ = bodies(do_render("allocated", "en", rate_percent=None, rate=Fraction(1, 3)))
    assert "33.3333% of the recognized loss" in text
    text, _ = bodies(do_render("allocated", "kk", rate_percent=None, rate="0.4"))
    assert "танылған залал сомасының 40%-ы" in text
    text, _ = bodies(do_render("allocated", "ru", rate_percent="25.5"))
    assert "25.5% от признанной суммы ущерба" in text
    for bad in ({"rate_percent": "140"}, {"rate_percent": None, "rate": 0.4}, {"rate_percent": None}):
        with pytest.raises(RenderError):
            do_render("allocated", "en", **bad)


def test_refuses_what_can_never_be_rendered() -> None:
    with pytest.raises(RenderError, match="kind"):
        render("bonus", "en", {"reference": REF}, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to="v@x.kz", notification_id=1)
    with pytest.raises(RenderError, match="language"):
        render("received", "de", {"reference": REF}, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to="v@x.kz", notification_id=1)
    with pytest.raises(RenderError, match="access_token"):
        do_render("token_reset", "en", access_token="")
    with pytest.raises(RenderError, match="reference"):
        render("received", "en", {}, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to="v@x.kz", notification_id=1)
    with pytest.raises(RenderError, match="one line"):
        render("received", "en", {"reference": REF}, public_url=PUBLIC_URL, mail_from=MAIL_FROM,
               to="v@x.kz\nBcc: all@x.kz", notification_id=1)
    with pytest.raises(RenderError, match="notification_id"):
        do_render("received", "en", nid="1@evil>")
    assert issubclass(RenderError, ValueError)


def test_a_changed_message_is_serialized_from_the_object() -> None:
    msg = do_render("received", "en")
    fast = msg.wire_bytes()  # type: ignore[attr-defined]
    msg.replace_header("To", "other@example.kz")
    changed = parse(msg.wire_bytes())  # type: ignore[attr-defined]
    assert changed["To"] == "other@example.kz"
    assert parse(fast)["To"] == "victim@example.kz"
    assert bodies(changed) == bodies(parse(fast))


def test_non_ascii_sender_name_and_long_subject_are_encoded() -> None:
    msg = render(
        "dispute_settled", "kk", {"reference": REF, **CONTEXTS["dispute_settled"]}, public_url=PUBLIC_URL,
        mail_from="Өтеу бағдарламасы <no-reply@restitution.example.kz>", to="victim@example.kz", notification_id=9,
    )
    parsed = parse(msg.wire_bytes())  # type: ignore[attr-defined]
    assert parsed["From"].addresses[0].display_name == "Өтеу бағдарламасы"
    assert parsed["Subject"] == f"{REF} өтініші бойынша шағымыңызға шешім шығарылды"
    head = msg.wire_bytes().split(b"\n\n", 1)[0]  # type: ignore[attr-defined]
    assert head.isascii()


def test_make_env_is_generic_for_other_domains() -> None:
    env = make_env(Path("."), "emails", "ru")
    template = env.from_string(
        '{{ _("Reason:") }} {% trans %}Hello,{% endtrans %} {{ _("Dear %(name)s,", name=who) }} '
        '{{ ngettext("The code is valid for %(num)s minute.", "The code is valid for %(num)s minutes.", n) }}'
    )
    assert template.render(who="<Айгүл>", n=2) == (
        "Причина: Здравствуйте! Здравствуйте, <Айгүл>! Код действителен 2 минуты."
    )
    html_env = make_env(Path("."), "emails", "kk", autoescape=True)
    assert html_env.from_string('{{ _("Dear %(name)s,", name=who) }}').render(who="<b>") == "Құрметті &lt;b&gt;!"
    with pytest.raises(FileNotFoundError):
        get_translations("no-such-domain", "kk")
    assert get_translations("no-such-domain", "en").gettext("x") == "x"
    with pytest.raises(i18n.UnknownLanguage):
        get_translations("emails", "fr")


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_long_subjects_fold_within_78_characters_and_round_trip(lang: str) -> None:
    ref = "KZR-1234-5678-" + "ABCD-" * 8 + "EFGH"
    msg = render(
        "needs_info", lang, {"reference": ref, "request": "x"}, public_url=PUBLIC_URL, mail_from=MAIL_FROM,
        to="victim@example.kz", notification_id=3,
    )
    wire = msg.wire_bytes()  # type: ignore[attr-defined]
    head = wire.split(b"\n\n", 1)[0]
    assert max(len(line) for line in head.split(b"\n")) <= 78
    assert head.count(b"\n ") >= 2  # folded
    assert parse(wire)["Subject"] == str(msg["Subject"])
    assert ref in parse(wire)["Subject"]


TRICKY = 'Line <b>one</b> & "two" %(reference)s {{ reference }} %s\nline two'


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_cached_skeletons_render_exactly_what_the_templates_render(kind: str, lang: str) -> None:
    from notifications.context import prepare_context
    from notifications.templating import pack_html, render_bodies, render_direct

    base = {"reference": REF, **CONTEXTS[kind]}
    variants = [
        base,
        {**base, "name": "Д'Артаньян-Әсел Нұрланқызы"},
        {**base, **{k: TRICKY for k in ("request", "reason") if k in base}},
        {**base, **{k: "\ue000reference\ue001 & <x>" for k in ("request", "reason") if k in base}},
        {k: v for k, v in base.items() if k not in ("expires_minutes", "payout_network", "amount", "reason")}
        if kind in ("address_change_requested", "dispute_received", "failed", "paid", "dispute_settled")
        else base,
        {**base, "expires_minutes": 1} if kind == "address_change_requested" else base,
        {**base, "tx_id": "CUST/42 https://x.example/y"} if kind == "paid" else base,
    ]
    for context in variants:
        try:
            ctx = prepare_context(kind, lang, context, PUBLIC_URL)
        except RenderError:
            continue  # a variant that drops a required value
        fast = render_bodies(kind, lang, ctx)
        subject, text, html = render_direct(kind, lang, ctx)
        assert fast[0] == subject
        assert fast[1] == text
        assert fast[2].split() == pack_html(html).split()  # packing changes only whitespace
        if not any("\ue000" in str(v) for v in context.values()):
            assert "\ue000" not in fast[0] + fast[1] + fast[2]  # every slot filled


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_the_email_object_is_built_on_first_use_and_describes_the_same_message(lang: str) -> None:
    msg = do_render("paid", lang, nid=77)
    fast = msg.wire_bytes()  # type: ignore[attr-defined]
    # sending needs neither the header list nor the parts
    assert msg.wire_message_id() == "<notification-77@restitution.example.kz>"  # type: ignore[attr-defined]
    assert "_pending" in msg.__dict__
    parsed = parse(fast)
    # the first look builds them: the same headers, parts and contents as the bytes
    assert [(k, str(v)) for k, v in msg.items()] == [(k, str(v)) for k, v in parsed.items()]
    assert "_pending" not in msg.__dict__
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert bodies(msg) == bodies(parsed)
    assert msg.wire_bytes() == fast  # type: ignore[attr-defined]
    assert parse(msg.as_bytes()).get_body(("plain",)).get_content() == bodies(parsed)[0]  # type: ignore[union-attr]
    # a changed part is serialized from the object
    msg.get_body(("plain",)).set_content("changed")  # type: ignore[union-attr]
    assert bodies(parse(msg.wire_bytes()))[0] == "changed\n"  # type: ignore[attr-defined]
    assert msg.wire_message_id() == "<notification-77@restitution.example.kz>"  # type: ignore[attr-defined]


def test_a_rendered_message_copies_and_pickles() -> None:
    import copy
    import pickle

    msg = do_render("received", "kk")
    for clone in (copy.copy(msg), copy.deepcopy(msg), pickle.loads(pickle.dumps(msg))):
        assert clone.wire_bytes() == msg.wire_bytes()  # type: ignore[attr-defined]
        assert clone["Content-Language"] == "kk"
