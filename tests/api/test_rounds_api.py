"""Rounds over HTTP (api/routes/rounds.py) and the reports (api/pages/reports.py):
docs/allocation.md's catch-up example end to end, four eyes and roles, validation, stale rounds,
plan.csv, the staff report page and the public statistics.

Preparation goes through ``PREPARE``; here it is the same work without the Prefect server
(``claims.rounds.prepare_round_committed``). The flow path runs in
tests/flows/test_rounds_flow.py.
"""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select, update

from claims.db import session_scope
from claims.models import AuditEvent, Claim, DistributionRound, Notification

ROLES = ("caseworker", "finance", "admin", "auditor")


@pytest.fixture(autouse=True)
def _no_prefect(monkeypatch):
    from api.routes import rounds as routes
    from claims.rounds import prepare_round_committed

    monkeypatch.setattr(routes, "PREPARE", prepare_round_committed)


def rounds_url(code):
    return f"/api/v1/cases/{code}/rounds"


def counts(engine):
    with session_scope(engine, write=False) as s:
        return {m.__name__: s.execute(select(func.count()).select_from(m)).scalar_one()
                for m in (DistributionRound, AuditEvent, Notification)}


def approved(filed_claim, case, loss, *, status="approved", **kw):
    return filed_claim(case=case, status=status, flags=(), recognized_loss=loss, **kw)


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------ docs/allocation.md's catch-up end to end


def test_catch_up_example_end_to_end(client, make_staff, filed_claim, engine):
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    a = approved(filed_claim, "api-catchup", "1000")
    b = approved(filed_claim, "api-catchup", "600")
    c = approved(filed_claim, "api-catchup", "400", status="disputed")

    r = client.post(rounds_url("api-catchup"), json={"pool": "600"}, headers=cw1)
    assert r.status_code == 201, r.text
    body = r.json()
    rid = body["id"]
    assert isinstance(rid, str)
    assert {k: body[k] for k in ("status", "pool", "rate", "allocated", "reserved", "released",
                                 "undistributed", "claims")} == {
        "status": "prepared", "pool": "600", "rate": "0.3", "allocated": "480",
        "reserved": "120", "released": "0", "undistributed": "0", "claims": 3}
    assert body["method"] == "pro-rata" and body["number"] == 1
    assert body["prepared_by"] == cw1.username and body["case_id"] == "api-catchup"

    r = client.post(f"/api/v1/rounds/{rid}/approve", headers=cw2)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["approved_by"] == cw2.username

    r = client.post(f"/api/v1/review/claims/{c.reference}/settle",
                    json={"amount": "300", "reason": "statements agree on 300"}, headers=cw1)
    assert r.status_code == 200, r.text
    r1 = client.get(f"/api/v1/rounds/{rid}", headers=cw2).json()
    assert (r1["allocated"], r1["reserved"], r1["released"], r1["undistributed"]) == (
        "570", "0", "30", "0")
    plan1 = {x["claim_id"]: x for x in csv_rows(client.get(f"/api/v1/rounds/{rid}/plan.csv",
                                                           headers=cw1).text)}
    assert (plan1[c.reference]["allocation"], plan1[c.reference]["released"]) == ("90", "30")

    r = client.post(rounds_url("api-catchup"), json={"pool": "430", "method": "pro-rata"},
                    headers=cw2)
    assert r.status_code == 201, r.text
    rid2 = r.json()["id"]
    assert r.json()["number"] == 2 and r.json()["allocated"] == "430"
    res = client.get(f"/api/v1/rounds/{rid2}/plan.csv", headers=cw1)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    rows = csv_rows(res.text)
    assert list(rows[0])[:4] == ["claim_id", "net_loss", "allocation", "reserved"]
    got = {x["claim_id"]: (x["allocation"], x["paid_before"]) for x in rows}
    assert got == {a.reference: ("226.315789", "300"), b.reference: ("135.789474", "180"),
                   c.reference: ("67.894737", "90")}

    listed = client.get(rounds_url("api-catchup"), headers=make_staff("auditor")).json()
    assert listed["total"] == 2 and [x["id"] for x in listed["items"]] == [rid, rid2]


# ------------------------------------------------------------------ roles and four eyes


def test_who_may_prepare_approve_and_read(client, make_staff, filed_claim, engine):
    approved(filed_claim, "api-roles", "100")
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    before = counts(engine)
    for role in ("finance", "admin", "auditor"):
        r = client.post(rounds_url("api-roles"), json={"pool": "10"}, headers=make_staff(role))
        assert r.status_code == 403, (role, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        r = client.post(rounds_url("api-roles"), json={"pool": "10"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert counts(engine) == before

    rid = client.post(rounds_url("api-roles"), json={"pool": "10"}, headers=cw1).json()["id"]
    approve = f"/api/v1/rounds/{rid}/approve"
    r = client.post(approve, headers=cw1)
    assert r.status_code == 403 and "another caseworker" in r.json()["detail"]
    for role in ("finance", "admin", "auditor"):
        assert client.post(approve, headers=make_staff(role)).status_code == 403
    assert client.post(approve).status_code == 401
    for role in ROLES:
        h = make_staff(role)
        assert client.get(f"/api/v1/rounds/{rid}", headers=h).json()["status"] == "prepared"
        assert client.get(rounds_url("api-roles"), headers=h).status_code == 200
        assert client.get(f"/api/v1/rounds/{rid}/plan.csv", headers=h).status_code == 200
        assert client.get(f"/staff/rounds/{rid}/report", headers=h).status_code == 200
    for url in (f"/api/v1/rounds/{rid}", rounds_url("api-roles"), f"/api/v1/rounds/{rid}/plan.csv",
                f"/staff/rounds/{rid}/report"):
        assert client.get(url).status_code == 401
    assert client.post(approve, headers=cw2).status_code == 200
    r = client.post(approve, headers=cw2)
    assert r.status_code == 409  # approved already


# ------------------------------------------------------------------ input


@pytest.mark.parametrize("body,field", [
    ({"pool": 600}, "pool"),
    ({"pool": "-1"}, "pool"),
    ({"pool": "1.0000001"}, "pool"),
    ({"pool": "1e3"}, "pool"),
    ({"pool": "0"}, "pool"),
    ({}, "pool"),
    ({"pool": "10", "method": "equal"}, "method"),
    ({"pool": "10", "min_payout": 5}, "min_payout"),
    ({"pool": "10", "min_payout": "1,5"}, "min_payout"),
    ({"pool": "10", "extra": "x"}, "extra"),
])
def test_bad_bodies_are_refused_naming_the_field(client, make_staff, filed_claim, engine,
                                                 body, field):
    approved(filed_claim, "api-bad", "100")
    cw = make_staff("caseworker")
    before = counts(engine)
    r = client.post(rounds_url("api-bad"), json=body, headers=cw)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    assert counts(engine) == before


def test_unknown_case_empty_case_unknown_round(client, make_staff, filed_claim, engine):
    cw = make_staff("caseworker")
    assert client.post(rounds_url("no-such-case"), json={"pool": "1"}, headers=cw).status_code == 404
    filed_claim(case="api-empty", status="flagged")
    before = counts(engine)
    r = client.post(rounds_url("api-empty"), json={"pool": "1"}, headers=cw)
    assert r.status_code == 409 and "no approved or disputed claim" in r.json()["detail"]
    assert counts(engine) == before
    for rid in ("999999", "2147483648", "99999999999999999", "9" * 30, "abc", "0", "-1", "1.5", "07"):
        assert client.get(f"/api/v1/rounds/{rid}", headers=cw).status_code == 404
        assert client.get(f"/api/v1/rounds/{rid}/plan.csv", headers=cw).status_code == 404
        assert client.post(f"/api/v1/rounds/{rid}/approve", headers=cw).status_code == 404
    assert client.get(rounds_url("no-such-case"), headers=cw).status_code == 404


# ------------------------------------------------------------------ stale rounds


def test_a_change_after_preparation_makes_approval_409(client, make_staff, filed_claim, engine):
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    approved(filed_claim, "api-stale", "100")
    late = filed_claim(case="api-stale", status="flagged")
    rid = client.post(rounds_url("api-stale"), json={"pool": "50"}, headers=cw1).json()["id"]
    r = client.post(f"/api/v1/review/claims/{late.reference}/decision",
                    json={"decision": "approve", "reason": "documents", "recognized_loss": "100"},
                    headers=cw2)
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/rounds/{rid}", headers=cw1).json()["status"] == "stale"
    r = client.post(f"/api/v1/rounds/{rid}/approve", headers=cw2)
    assert r.status_code == 409 and r.json()["title"] == "Round is stale"

    # re-prepare: a new round over both claims, the same number; the old one stays stale
    r = client.post(rounds_url("api-stale"), json={"pool": "50"}, headers=cw1).json()
    assert (r["number"], r["claims"], r["allocated"]) == (1, 2, "50")
    rid2 = r["id"]
    # a change that bypassed the lifecycle is caught by approval's snapshot check, and the
    # stale mark survives the 409
    with session_scope(engine) as s:
        s.execute(update(Claim).where(Claim.reference == late.reference)
                  .values(version=Claim.version + 1))
    r = client.post(f"/api/v1/rounds/{rid2}/approve", headers=cw2)
    assert r.status_code == 409 and late.reference in r.json()["detail"]
    assert client.get(f"/api/v1/rounds/{rid2}", headers=cw2).json()["status"] == "stale"
    items = client.get(rounds_url("api-stale"), headers=cw1).json()["items"]
    assert [x["status"] for x in items] == ["stale", "stale"]


# ------------------------------------------------------------------ reports


def test_round_report_page(client, make_staff, filed_claim):
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    claims = [approved(filed_claim, "api-report", loss, full_name=f"Secret Name {i}")
              for i, loss in enumerate(("1000", "600", "3"))]
    disputed = approved(filed_claim, "api-report", "400", status="disputed")
    rid = client.post(rounds_url("api-report"), json={"pool": "600", "min_payout": "1"},
                      headers=cw1).json()["id"]
    client.post(f"/api/v1/rounds/{rid}/approve", headers=cw2)
    r = client.get(f"/staff/rounds/{rid}/report", headers=make_staff("auditor"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<svg" in html and "<script" not in html
    assert f"/api/v1/rounds/{rid}/plan.csv" in html
    for c in (*claims, disputed):
        assert c.reference in html
        assert c.full_name not in html and c.email not in html and c.iin_masked not in html
    # the histogram: A and B at 30 %, C (reserve only) and the de minimis claim at 0 %
    assert 'aria-label="Recovery histogram"' in html
    assert "<td>30–40%</td><td class=\"num\">2</td>" in html
    assert "<td>0–10%</td><td class=\"num\">2</td>" in html
    assert "de minimis" in html
    page = client.get(f"/staff/rounds/{rid}/report?limit=2&offset=2", headers=cw1).text
    assert "Lines 3–4 of 4" in page and claims[0].reference not in page.split("Per claim")[1]
    assert client.get("/staff/rounds/12345/report", headers=cw1).status_code == 404


def test_public_statistics_are_aggregates_only(client, make_staff, filed_claim):
    cw1, cw2 = make_staff("caseworker"), make_staff("caseworker")
    refs = [approved(filed_claim, "api-stats", loss, full_name="Hidden Person")
            for loss in ("1000", "600")]
    refs.append(approved(filed_claim, "api-stats", "400", status="disputed"))
    refs.append(filed_claim(case="api-stats", status="flagged"))
    refs.append(filed_claim(case="api-stats-2", status="rejected", flags=()))
    rid = client.post(rounds_url("api-stats"), json={"pool": "600"}, headers=cw1).json()["id"]

    r = client.get("/api/v1/statistics")  # public: no token
    assert r.status_code == 200
    data = r.json()
    assert data["claims"]["total"] == 5
    assert data["claims"]["by_status"] == {"submitted": 0, "verifying": 0, "flagged": 1,
                                           "needs_info": 0, "approved": 2, "disputed": 1,
                                           "rejected": 1}
    case = {c["case_id"]: c for c in data["cases"]}["api-stats"]
    assert case["claims"]["total"] == 4 and case["rounds"] == []  # prepared: not public yet

    client.post(f"/api/v1/rounds/{rid}/approve", headers=cw2)
    data = client.get("/api/v1/statistics").json()
    (rnd,) = {c["case_id"]: c for c in data["cases"]}["api-stats"]["rounds"]
    assert {k: rnd[k] for k in ("number", "status", "rate", "rate_percent", "pool", "allocated",
                                "reserved", "released", "undistributed", "claims")} == {
        "number": 1, "status": "approved", "rate": "0.3", "rate_percent": "30", "pool": "600",
        "allocated": "480", "reserved": "120", "released": "0", "undistributed": "0",
        "claims": 3}
    text = client.get("/api/v1/statistics").text
    for c in refs:
        assert c.reference not in text and c.email not in text and "Hidden Person" not in text

    for lang, word in (("ru", "Статистика"), ("kk", "Мәртебе"), ("en", "Claims by status")):
        page = client.get(f"/statistics?lang={lang}")
        assert page.status_code == 200 and f'<html lang="{lang}">' in page.text
        assert word in page.text and "30%" in page.text and "480" in page.text
        for c in refs:
            assert c.reference not in page.text and "Hidden Person" not in page.text
    assert '<html lang="kk">' in client.get("/statistics").text  # Kazakh by default
    assert "Одобрено" in client.get("/statistics?lang=ru").text


def test_openapi_documents_the_round_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    expect = {
        ("/api/v1/cases/{code}/rounds", "post"): {"201", "401", "403", "404", "409", "422"},
        ("/api/v1/rounds/{id}/approve", "post"): {"200", "401", "403", "404", "409"},
        ("/api/v1/cases/{code}/rounds", "get"): {"200", "401", "403", "404"},
        ("/api/v1/rounds/{id}", "get"): {"200", "401", "403", "404"},
        ("/api/v1/rounds/{id}/plan.csv", "get"): {"200", "401", "403", "404"},
        ("/api/v1/statistics", "get"): {"200"},
    }
    for (path, method), codes in expect.items():
        assert codes <= set(paths[path][method]["responses"]), (path, method)
    assert "text/csv" in paths["/api/v1/rounds/{id}/plan.csv"]["get"]["responses"]["200"]["content"]
