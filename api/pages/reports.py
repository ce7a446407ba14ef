"""Round reports for staff and the public statistics.

- ``GET /staff/rounds/{id}/report`` — the round report page (HTML, no JavaScript): totals,
  counts, an inline SVG histogram of recovery percentages and the per-claim lines (claim
  references only; ``?limit=&offset=`` pages through them), with the CSV download
  (``/api/v1/rounds/{id}/plan.csv``). Every staff role reads it; it authenticates with the
  staff bearer token through the same dependencies as the API (the /staff console may later
  link to it with its own session).
- ``GET /statistics`` (``?lang=kk|ru|en``, Kazakh by default, as the other public pages) and
  ``GET /api/v1/statistics`` (JSON) — public aggregates only: claims by status, every
  decided round's rate and totals (:func:`claims.reports.statistics`). The page's words are
  kept here in the three languages (the shared layout's words come from the ``pages``
  catalog).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, Field

from api.auth import StaffReader
from api.deps import ReadSessionDep
from api.problems import problems
from claims import reports
from claims.models import ClaimStatus
from notifications.i18n import TEMPLATES_DIR

router = APIRouter(tags=["reports"])

STAFF_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@lru_cache(maxsize=1)
def _staff_env() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR / "staff")),
        autoescape=select_autoescape(("html",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# ------------------------------------------------------------------ staff: the round report


@router.get("/staff/rounds/{id}/report", response_class=HTMLResponse, include_in_schema=False)
def round_report_page(
    id: str,
    staff: StaffReader,
    session: ReadSessionDep,
    limit: int = Query(500, ge=1, le=reports.MAX_PAGE),
    offset: int = Query(0, ge=0, le=2**31 - 1),
) -> HTMLResponse:
    report = reports.round_report(session, id, limit=limit, offset=offset)
    v = report["round"]
    chart = reports.histogram_svg(
        report["histogram"], title=f"Round {v['number']}: recovery of net loss")
    prev_offset = max(0, offset - limit) if offset > 0 else None
    next_offset = offset + limit if offset + limit < report["total_rows"] else None
    html = _staff_env().get_template("round_report.html").render(
        report=report, r=v, chart=chart, staff=staff, limit=limit,
        prev_offset=prev_offset, next_offset=next_offset,
        csv_url=f"/api/v1/rounds/{v['id']}/plan.csv",
    )
    return HTMLResponse(html, headers=STAFF_HEADERS)


# ------------------------------------------------------------------ public statistics

WORDS: dict[str, dict[str, str]] = {
    "title": {"en": "Statistics", "ru": "Статистика", "kk": "Статистика"},
    "intro": {
        "en": "Figures of the restitution programme: how many claims are in each status and "
              "how each distribution round was shared. Totals only: no personal data.",
        "ru": "Данные программы возмещения: сколько заявлений в каждом статусе и как "
              "распределён каждый раунд выплат. Только итоги, без личных данных.",
        "kk": "Өтемақы бағдарламасының деректері: әр мәртебедегі өтініштер саны және әр "
              "төлем кезеңінің қалай бөлінгені. Тек жиынтық сандар, жеке деректер жоқ.",
    },
    "all_claims": {"en": "All claims", "ru": "Все заявления", "kk": "Барлық өтініштер"},
    "claims_by_status": {"en": "Claims by status", "ru": "Заявления по статусам",
                         "kk": "Мәртебе бойынша өтініштер"},
    "status": {"en": "Status", "ru": "Статус", "kk": "Мәртебе"},
    "claims": {"en": "Claims", "ru": "Заявления", "kk": "Өтініштер"},
    "total": {"en": "Total", "ru": "Всего", "kk": "Барлығы"},
    "case": {"en": "Case", "ru": "Дело", "kk": "Іс"},
    "rounds": {"en": "Distribution rounds", "ru": "Раунды распределения",
               "kk": "Бөлу кезеңдері"},
    "round": {"en": "Round", "ru": "Раунд", "kk": "Кезең"},
    "round_status": {"en": "State", "ru": "Состояние", "kk": "Күйі"},
    "rate": {"en": "Share of each loss", "ru": "Доля каждого ущерба", "kk": "Әр шығынның үлесі"},
    "pool": {"en": "Round fund", "ru": "Фонд раунда", "kk": "Кезең қоры"},
    "allocated": {"en": "Allocated", "ru": "Распределено", "kk": "Бөлінді"},
    "reserved": {"en": "Held for open objections", "ru": "В резерве по спорам",
                 "kk": "Даулар бойынша резервте"},
    "released": {"en": "Returned by settled objections", "ru": "Возвращено после споров",
                 "kk": "Даулардан кейін қайтарылды"},
    "undistributed": {"en": "Undistributed", "ru": "Не распределено", "kk": "Бөлінбеді"},
    "round_claims": {"en": "Claims in the round", "ru": "Заявлений в раунде",
                     "kk": "Кезеңдегі өтініштер"},
    "approved_on": {"en": "Approved on", "ru": "Утверждён", "kk": "Бекітілген күні"},
    "no_rounds": {"en": "No distribution round has been approved yet.",
                  "ru": "Раунды распределения ещё не утверждались.",
                  "kk": "Бөлу кезеңдері әлі бекітілген жоқ."},
    "amounts_note": {
        "en": "Amounts in USDT. The share is the part of every recognized loss that the round "
              "brings each claim up to.",
        "ru": "Суммы в USDT. Доля — часть каждого признанного ущерба, до которой раунд "
              "доводит выплаты по каждому заявлению.",
        "kk": "Сомалар USDT-мен. Үлес — кезең әр өтініш бойынша төлемдерді жеткізетін "
              "танылған шығынның бөлігі.",
    },
    "closed": {"en": "closed to new claims", "ru": "приём заявлений закрыт",
               "kk": "өтініш қабылдау жабық"},
}

STATUS_WORDS: dict[str, dict[str, str]] = {
    "submitted": {"en": "Received", "ru": "Получено", "kk": "Қабылданды"},
    "verifying": {"en": "Being checked", "ru": "Проверяется", "kk": "Тексерілуде"},
    "flagged": {"en": "Under review", "ru": "На рассмотрении", "kk": "Қаралуда"},
    "needs_info": {"en": "Waiting for information", "ru": "Ожидает информации",
                   "kk": "Ақпарат күтілуде"},
    "approved": {"en": "Approved", "ru": "Одобрено", "kk": "Мақұлданды"},
    "disputed": {"en": "Objection under review", "ru": "Оспаривается", "kk": "Дау қаралуда"},
    "rejected": {"en": "Rejected", "ru": "Отклонено", "kk": "Қабылданбады"},
}

ROUND_WORDS: dict[str, dict[str, str]] = {
    "approved": {"en": "Approved", "ru": "Утверждён", "kk": "Бекітілді"},
    "released": {"en": "Being paid", "ru": "Выплачивается", "kk": "Төленуде"},
    "settled": {"en": "Paid", "ru": "Выплачен", "kk": "Төленді"},
    "stopped": {"en": "Paused", "ru": "Приостановлен", "kk": "Тоқтатылды"},
}

assert set(STATUS_WORDS) == {s.value for s in ClaimStatus}


def words(lang: str) -> dict[str, Any]:
    return {
        **{k: v[lang] for k, v in WORDS.items()},
        "statuses": {k: v[lang] for k, v in STATUS_WORDS.items()},
        "round_states": {k: v[lang] for k, v in ROUND_WORDS.items()},
    }


class StatusCounts(BaseModel):
    total: int
    by_status: dict[str, int] = Field(description="every claim status, 0 when none")


class PublicRound(BaseModel):
    number: int
    status: str
    method: str
    rate: str = Field(description="the round's common rate r in [0, 1]")
    rate_percent: str
    pool: str
    allocated: str
    reserved: str
    released: str
    undistributed: str
    claims: int
    approved_on: str | None


class PublicCase(BaseModel):
    case_id: str
    name: str
    status: str
    claims: StatusCounts
    rounds: list[PublicRound]


class Statistics(BaseModel):
    claims: StatusCounts
    cases: list[PublicCase]


@router.get(
    "/api/v1/statistics",
    response_model=Statistics,
    responses=problems(),
    summary="Public aggregates: claims by status, every decided round's rate and totals",
)
def statistics_json(session: ReadSessionDep) -> dict[str, Any]:
    return reports.statistics(session)


@router.get("/statistics", response_class=HTMLResponse, include_in_schema=False)
def statistics_page(request: Request, session: ReadSessionDep) -> HTMLResponse:
    from api.pages.public import page_language, render

    lang = page_language(request)
    data = reports.statistics(session)
    return render(request, lang, "statistics.html", stats=data, t=words(lang),
                  statuses=[s.value for s in ClaimStatus])
