"""The public pages `/` and `/status` in Kazakh, Russian and English, without JavaScript."""

from __future__ import annotations

import datetime as dt
import html
import re
from html.parser import HTMLParser

import pytest
from sqlalchemy import func, select

from claims.validators import make_iin, make_tron_address

CASE = "pages-case"
BIRTH = dt.date(1988, 5, 17)
FIELDS = ("case_id", "full_name", "iin", "date_of_birth", "email", "phone", "language",
          "scheme_account", "claimed_amount", "evidence_tx_hashes", "payout_network",
          "payout_address", "consent")


class Page(HTMLParser):
    """Labels, form controls (with their values), error paragraphs, the <html lang>."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.lang = None
        self.labels: dict[str, str] = {}
        self.controls: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.forms: list[dict] = []
        self.scripts = 0
        self._label = None
        self._error = None
        self._textarea = None
        self._option_selected = None
        self._select = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        elif tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append(a)
        elif tag == "label" and a.get("for"):
            self._label = a["for"]
            self.labels[self._label] = ""
        elif tag == "p" and a.get("class") == "error" and a.get("id", "").startswith("e-"):
            self._error = a["id"][2:]
            self.errors[self._error] = ""
        elif tag in ("input", "select", "textarea") and a.get("id"):
            self.controls[a["id"]] = {"tag": tag, **a}
            if tag == "textarea":
                self._textarea = a["id"]
                self.controls[a["id"]]["value"] = ""
            if tag == "select":
                self._select = a["id"]
        elif tag == "option" and self._select and "selected" in a:
            self.controls[self._select]["value"] = a.get("value")

    def handle_endtag(self, tag):
        if tag == "label":
            self._label = None
        elif tag == "p":
            self._error = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data):
        if self._label:
            self.labels[self._label] += data
        if self._error:
            self.errors[self._error] += data
        if self._textarea:
            self.controls[self._textarea]["value"] += data


def form(n: int = 1, **over) -> dict:
    data = {
        "case_id": CASE,
        "full_name": f"Дәулет Ахметов {n}",
        "iin": make_iin(BIRTH, "male", n),
        "date_of_birth": BIRTH.isoformat(),
        "email": f"page{n}@example.kz",
        "phone": "+7 701 000 11 22",
        "language": "kk",
        "scheme_account": "",
        "claimed_amount": "320.5",
        "evidence_tx_hashes": "",
        "payout_network": "tron",
        "payout_address": make_tron_address(bytes([n]) * 20),
        "consent": "true",
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def case(engine):
    from claims.cases import create_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        create_case(s, CASE, "Pages scheme")
    return CASE


def n_claims(engine) -> int:
    from claims.db import session_scope
    from claims.models import Claim

    with session_scope(engine, write=False) as s:
        return s.execute(select(func.count()).select_from(Claim)).scalar_one()


NOTICE = {
    "kk": "сид-фразаңызды",
    "ru": "сид-фразу",
    "en": "seed phrase",
}
TITLE = {"kk": "Өтініш беру", "ru": "Подать заявление", "en": "File a claim"}


@pytest.mark.parametrize("lang", ["kk", "ru", "en"])
def test_form_in_each_language_with_labels_and_the_notice(client, case, lang):
    r = client.get(f"/?lang={lang}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = Page(r.text)
    assert page.lang == lang
    assert TITLE[lang] in r.text
    text = html.unescape(r.text)
    assert NOTICE[lang] in text
    assert page.scripts == 0
    for name in FIELDS:
        control = page.controls[f"f-{name}"]
        assert control["name"] == name
        assert page.labels[f"f-{name}"].strip(), name
    (claim_form,) = [f for f in page.forms if f.get("action", "").startswith("/?")]
    assert claim_form["method"] == "post"
    assert page.controls["f-language"]["value"] == lang
    assert page.controls["f-case_id"]["value"] == CASE  # the only open case is chosen
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_kazakh_by_default_and_accept_language_honoured(client, case):
    assert Page(client.get("/").text).lang == "kk"
    assert Page(client.get("/", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.8"}).text).lang == "ru"
    assert Page(client.get("/", headers={"Accept-Language": "de-DE, en;q=0.5"}).text).lang == "en"
    assert Page(client.get("/", headers={"Accept-Language": "de, fr"}).text).lang == "kk"
    assert Page(client.get("/?lang=en", headers={"Accept-Language": "ru"}).text).lang == "en"
    assert Page(client.get("/?lang=xx").text).lang == "kk"
    assert Page(client.get("/status?lang=ru").text).lang == "ru"


ERRORS = {
    "kk": {"iin": "ЖСН-ның бақылау саны сәйкес келмейді", "payout_address": "Бұл Ethereum мекенжайы",
           "consent": "келісім беруіңіз керек", "claimed_amount": "6 таңбадан артық"},
    "ru": {"iin": "Контрольная цифра ИИН не сходится", "payout_address": "Это адрес Ethereum",
           "consent": "согласиться на обработку", "claimed_amount": "Больше 6 знаков"},
    "en": {"iin": "IIN check digit is wrong", "payout_address": "this is an Ethereum address",
           "consent": "must be true", "claimed_amount": "more than 6 decimals"},
}


@pytest.mark.parametrize("lang", ["kk", "ru", "en"])
def test_errors_beside_each_field_in_the_language_and_typed_values_kept(client, case, engine, lang):
    good_iin = make_iin(BIRTH, "male", 5)
    bad_iin = good_iin[:-1] + str((int(good_iin[-1]) + 1) % 10)
    typed = form(5, iin=bad_iin, payout_address="0x" + "ab" * 20, claimed_amount="1.1234567",
                 consent=None, evidence_tx_hashes="cd" * 32)
    r = client.post(f"/?lang={lang}", data=typed)
    assert r.status_code == 422
    page = Page(r.text)
    assert page.lang == lang
    assert set(page.errors) == {"iin", "payout_address", "consent", "claimed_amount"}
    for field, needle in ERRORS[lang].items():
        assert needle in html.unescape(page.errors[field]), (field, page.errors[field])
        control = page.controls[f"f-{field}"]
        assert f"e-{field}" in control.get("aria-describedby", "")
    for name in ("full_name", "iin", "email", "phone", "claimed_amount", "payout_address", "date_of_birth"):
        assert page.controls[f"f-{name}"]["value"] == typed[name], name
    assert page.controls["f-evidence_tx_hashes"]["value"] == "cd" * 32
    assert page.controls["f-payout_network"]["value"] == "tron"
    assert "checked" not in page.controls["f-consent"]
    assert n_claims(engine) == 0


def test_an_untranslated_validator_message_falls_back_to_the_field_hint(client, case):
    r = client.post("/?lang=kk", data=form(6, email="not-an-email"))
    assert r.status_code == 422
    page = Page(r.text)
    assert "Дұрыс электрондық пошта мекенжайын жазыңыз" in html.unescape(page.errors["email"])


@pytest.mark.parametrize("lang", ["kk", "ru"])
def test_filing_through_the_form_shows_reference_and_token_once(client, case, engine, lang):
    r = client.post(f"/?lang={lang}", data=form(7, evidence_tx_hashes="aa" * 32 + "\n" + "bb" * 32))
    assert r.status_code == 201, r.text
    ref = re.search(r'id="reference">([^<]+)<', r.text).group(1)
    token = re.search(r'id="access-token">([^<]+)<', r.text).group(1)
    assert re.fullmatch(r"KZR-[0-9A-Z]{4}-[0-9A-Z]{4}", ref)
    assert f"/status?lang={lang}&amp;reference={ref}" in r.text
    assert n_claims(engine) == 1
    api = client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": html.unescape(token)})
    assert api.status_code == 200
    from claims.db import session_scope
    from claims.models import Claim

    with session_scope(engine, write=False) as s:
        claim = s.execute(select(Claim)).scalar_one()
        assert claim.evidence_tx_hashes == ["aa" * 32, "bb" * 32]
        assert claim.language == "kk"
    # The same person again: told in their language, nothing new stored.
    again = client.post(f"/?lang={lang}", data=form(7))
    assert again.status_code == 409
    assert {"kk": "осы ЖСН-мен өтініш бұрын берілген", "ru": "с этим ИИН по этому делу уже подано"}[lang] in html.unescape(again.text)
    assert n_claims(engine) == 1


def test_status_page_by_post_in_each_language(client, case, engine):
    r = client.post("/?lang=en", data=form(8))
    ref = re.search(r'id="reference">([^<]+)<', r.text).group(1)
    token = html.unescape(re.search(r'id="access-token">([^<]+)<', r.text).group(1))
    empty = client.get("/status?lang=ru")
    (lookup,) = [f for f in Page(empty.text).forms if f["action"].startswith("/status?")]
    assert lookup["method"] == "post"
    for lang, text in [("kk", "Қабылданды, тексеруді күтуде"), ("ru", "Получено, ожидает проверки"),
                       ("en", "Received, waiting to be checked")]:
        r = client.post(f"/status?lang={lang}", data={"reference": ref, "access_token": token})
        assert r.status_code == 200
        page = Page(r.text)
        assert page.lang == lang
        assert text in html.unescape(r.text)
        assert ref in r.text
    wrong = client.post("/status?lang=ru", data={"reference": ref, "access_token": "nope"})
    unknown = client.post("/status?lang=ru", data={"reference": "KZR-ZZZZ-ZZZZ", "access_token": token})
    assert wrong.status_code == unknown.status_code == 404
    assert "не найдено" in wrong.text
    assert make_iin(BIRTH, "male", 8) not in wrong.text + unknown.text


def test_status_page_reply_and_document_without_javascript(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import ClaimMessage, Document

    fc = filed_claim(status="needs_info", language="ru")
    with session_scope(engine) as s:
        s.add(ClaimMessage(claim_id=fc.id, kind="request", body="Пришлите выписку"))
    r = client.post("/status?lang=ru", data={"reference": fc.reference, "access_token": fc.access_token})
    assert "Пришлите выписку" in r.text
    page = Page(r.text)
    assert any(f["action"].startswith("/status/reply") for f in page.forms)
    pdf = b"%PDF-1.4\n%%EOF\n"
    d = client.post("/status/documents?lang=ru", data={"reference": fc.reference, "access_token": fc.access_token},
                    files={"file": ("statement.pdf", pdf, "application/pdf")})
    assert d.status_code == 200 and "документ получен" in d.text
    bad = client.post("/status/documents?lang=ru", data={"reference": fc.reference, "access_token": fc.access_token},
                      files={"file": ("x.txt", b"hello", "text/plain")})
    assert bad.status_code == 415
    r = client.post("/status/reply?lang=ru", data={"reference": fc.reference, "access_token": fc.access_token,
                                                  "message": "Выписка приложена"})
    assert r.status_code == 200 and "ответ получен" in r.text
    assert "Проверяется по учётным записям схемы" in r.text
    with session_scope(engine, write=False) as s:
        assert s.execute(select(func.count()).select_from(Document)).scalar_one() == 1
        kinds = sorted(s.execute(select(ClaimMessage.kind)).scalars())
        assert kinds == ["reply", "request"]


def test_token_reset_page_answers_the_same_either_way(client, case, engine):
    from claims.db import session_scope
    from claims.models import Notification

    r = client.post("/?lang=kk", data=form(9))
    ref = re.search(r'id="reference">([^<]+)<', r.text).group(1)
    miss = client.post("/status/token-reset?lang=kk", data={"reference": ref, "email": "x@example.kz"})
    hit = client.post("/status/token-reset?lang=kk", data={"reference": ref, "email": "page9@example.kz"})
    assert miss.status_code == hit.status_code == 202
    assert miss.text == hit.text
    with session_scope(engine, write=False) as s:
        kinds = s.execute(select(Notification.kind).order_by(Notification.id)).scalars().all()
    assert kinds == ["received", "token_reset"]


def test_the_form_is_rate_limited_like_the_api(client, case, engine, monkeypatch):
    from api import limits
    from claims.settings import reset_settings

    monkeypatch.setenv("RESTITUTION_RATE_LIMIT", "1/minute")
    reset_settings()
    limits.reset()
    try:
        assert client.post("/?lang=ru", data=form(10)).status_code == 201
        r = client.post("/?lang=ru", data=form(11))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "Слишком много попыток" in r.text
        assert Page(r.text).controls["f-full_name"]["value"] == form(11)["full_name"]
    finally:
        monkeypatch.setenv("RESTITUTION_RATE_LIMIT", "off")
        reset_settings()
        limits.reset()
    assert n_claims(engine) == 1


def test_catalogs_translate_every_page_string():
    """Every msgid of the pages domain has a Kazakh and a Russian translation."""
    from babel.messages.pofile import read_po

    from notifications.i18n import LOCALE_DIR

    for lang in ("kk", "ru"):
        with (LOCALE_DIR / lang / "LC_MESSAGES" / "pages.po").open("rb") as fh:
            catalog = read_po(fh)
        untranslated = [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
        assert untranslated == [], lang
        assert (LOCALE_DIR / lang / "LC_MESSAGES" / "pages.mo").stat().st_size > 0


def test_status_link_of_a_notice_fills_in_the_reference(client):
    """The link every e-mail carries opens the status page with the claim's reference filled
    in (only the access token is left to type)."""
    from notifications.render import status_url

    ref = "KZR-ABCD-EF12"
    url = status_url("http://testserver", ref, "ru")
    r = client.get(url.removeprefix("http://testserver"))
    assert r.status_code == 200
    (lookup,) = [f for f in Page(r.text).forms if f["action"].startswith("/status?")]
    assert 'value="KZR-ABCD-EF12"' in r.text and Page(r.text).lang == "ru"
