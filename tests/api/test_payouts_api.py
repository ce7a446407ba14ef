"""Finance's payout endpoints: release (Idempotency-Key), summary, custodian files,
hold/resume/retry, mismatches, the authorization matrix and the OpenAPI documentation."""

from __future__ import annotations

import csv
import io

import pytest
from payouts_seed import USDT, seed_round
from sqlalchemy import select

from claims.models import DistributionRound, Payout

STATES = {"pending", "held", "signed", "broadcast", "exported", "confirmed", "failed"}


def payout_ids(session_for, round_id) -> dict[int, int]:
    with session_for(write=False) as s:
        return dict(s.execute(select(Payout.claim_id, Payout.id)
                              .where(Payout.round_id == round_id)).all())


def test_release_is_idempotent_runs_in_the_background_and_settles(client, engine, make_staff,
                                                                  session_for):
    fin = make_staff("finance")
    seeded = seed_round(engine, [("ethereum", 2 * USDT + i) for i in range(3)]
                        + [("tron", 5 * USDT)])
    url = f"/api/v1/rounds/{seeded.round_id}/payouts"
    r = client.post(url, headers=fin)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in r.json()["detail"]
    r = client.post(url, headers={**fin, "Idempotency-Key": "rel-1"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["payouts"] == 4 and body["status"] == "released"
    assert body["rails"]["evm"] == {"count": 3, "amount": "6.000003"}
    again = client.post(url, headers={**fin, "Idempotency-Key": "rel-1"})
    assert again.status_code == 202 and again.json() == body
    other = client.post(url, headers={**fin, "Idempotency-Key": "rel-2"})
    assert other.status_code == 409
    # The background run paid the EVM payouts on the in-process chain and exported TRON.
    s = client.get(url, headers=fin).json()
    assert set(s["by_state"]) == STATES
    assert s["by_state"]["confirmed"] == {"count": 3, "amount": "6.000003"}
    assert s["by_state"]["exported"] == {"count": 1, "amount": "5"}
    assert s["total"] == {"count": 4, "amount": "11.000003"}
    assert s["wallet"]["address"].startswith("0x") and s["wallet"]["in_process"] is True
    assert s["round_status"] == "released" and s["release_running"] is False
    # The custodian's file, read twice, and its confirmation settle the round.
    csv1 = client.get(f"{url}/instructions.csv", headers=fin)
    assert csv1.status_code == 200 and csv1.headers["content-type"].startswith("text/csv")
    assert client.get(f"{url}/instructions.csv", headers=fin).text == csv1.text
    (line,) = list(csv.DictReader(io.StringIO(csv1.text)))
    assert line["amount"] == "5" and line["network"] == "tron"
    conf = f"payout_id,tx_id,amount\n{line['payout_id']},{'c' * 64},5\n"
    r = client.post(f"{url}/confirmations", content=conf,
                    headers={**fin, "Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json() == {"confirmed": 1, "failed": 0, "already": 0,
                                                 "mismatches": []}
    r = client.post(f"{url}/confirmations", content=conf,
                    headers={**fin, "Content-Type": "text/csv"})
    assert r.json()["already"] == 1
    assert client.get(url, headers=fin).json()["round_status"] == "settled"
    rep = client.post(f"/api/v1/rounds/{seeded.round_id}/reconcile", headers=fin)
    assert rep.status_code == 200 and rep.json()["ok"] == 4 and rep.json()["mismatches"] == []


def test_confirmation_mismatch_stops_the_round_until_resolved(client, engine, make_staff):
    fin = make_staff("finance")
    seeded = seed_round(engine, [("tron", 3 * USDT), ("tron", 4 * USDT)])
    url = f"/api/v1/rounds/{seeded.round_id}/payouts"
    assert client.post(url, headers={**fin, "Idempotency-Key": "m-1"}).status_code == 202
    lines = list(csv.DictReader(io.StringIO(
        client.get(f"{url}/instructions.csv", headers=fin).text)))
    conf = ("payout_id,tx_id,amount\n"
            f"{lines[0]['payout_id']},T1,{lines[0]['amount']}\n"
            f"{lines[1]['payout_id']},T2,999\n")
    r = client.post(f"{url}/confirmations", content=conf,
                    headers={**fin, "Content-Type": "text/csv"})
    assert r.status_code == 200
    body = r.json()
    assert body["confirmed"] == 1
    assert body["mismatches"] == [{"line": 3, "payout_id": lines[1]["payout_id"],
                                   "reason": body["mismatches"][0]["reason"]}]
    assert "amount differs" in body["mismatches"][0]["reason"]
    s = client.get(url, headers=fin).json()
    assert s["round_status"] == "stopped" and s["open_mismatches"] == 1
    ms = client.get(f"/api/v1/rounds/{seeded.round_id}/mismatches", headers=fin).json()["items"]
    assert len(ms) == 1 and ms[0]["resolved_at"] is None
    bad = client.post(f"/api/v1/rounds/{seeded.round_id}/payouts/confirmations",
                      content="payout_id,tx_id\n1,x\n", headers={**fin, "Content-Type": "text/csv"})
    assert bad.status_code == 422 and "line 1" in bad.json()["detail"]
    assert client.post(f"/api/v1/rounds/{seeded.round_id}/payouts/restart",
                       headers=fin).status_code == 409  # a mismatch is open
    r = client.post(f"/api/v1/rounds/{seeded.round_id}/mismatches/{ms[0]['id']}/resolve",
                    json={"reason": "custodian corrected its report"}, headers=fin)
    assert r.status_code == 200 and r.json()["resolved_at"]
    assert client.get(url, headers=fin).json()["round_status"] == "released"


def test_hold_resume_retry_endpoints(client, engine, make_staff, session_for):
    fin = make_staff("finance")
    seeded = seed_round(engine, [("tron", USDT), ("tron", 2 * USDT)])
    url = f"/api/v1/rounds/{seeded.round_id}/payouts"
    # The release's background run exports both at once: an exported payout cannot be held;
    # one the custodian reports failed is retried as a new attempt.
    assert client.post(url, headers={**fin, "Idempotency-Key": "h-1"}).status_code == 202
    ids = payout_ids(session_for, seeded.round_id)
    p0, p1 = ids[seeded.tron[0].id], ids[seeded.tron[1].id]
    r = client.post(f"/api/v1/payouts/{p0}/hold", headers=fin)
    assert r.status_code == 409 and "only a pending payout" in r.json()["detail"]
    conf = f"payout_id,tx_id,amount,status\n{p0},F1,1,failed\n"
    assert client.post(f"{url}/confirmations", content=conf,
                       headers={**fin, "Content-Type": "text/csv"}).json()["failed"] == 1
    r = client.post(f"/api/v1/payouts/{p0}/retry", headers=fin)
    assert r.status_code == 200, r.text
    # retried (attempt 2) and, through the background run, exported again
    assert r.json()["attempt"] == 2 and r.json()["id"] == str(p0)
    with session_for(write=False) as s:
        assert s.get(Payout, p0).state == "exported"
    assert client.post(f"/api/v1/payouts/{p0}/retry", headers=fin).status_code == 409
    assert client.post(f"/api/v1/payouts/{p1}/resume", headers=fin).status_code == 409
    assert client.post("/api/v1/payouts/999999/hold", headers=fin).status_code == 404
    items = client.get(f"{url}/items?state=exported", headers=fin).json()
    assert items["total"] == 2 and {i["id"] for i in items["items"]} == {str(p0), str(p1)}
    assert client.get(f"{url}/items?state=nope", headers=fin).status_code == 422


def test_hold_then_resume_a_pending_payout(client, engine, make_staff, session_for):
    fin = make_staff("finance")
    seeded = seed_round(engine, [("tron", USDT)])
    from claims import payouts
    from claims.audit import Actor

    with session_for() as s:  # released without running (as if the worker had not started)
        payouts.release_round(s, seeded.round_id, actor=Actor(fin.username, "finance", fin.id))
    (pid,) = payout_ids(session_for, seeded.round_id).values()
    r = client.post(f"/api/v1/payouts/{pid}/hold", json={"reason": "call the victim"}, headers=fin)
    assert r.status_code == 200 and r.json()["state"] == "held"
    assert "call the victim" in r.json()["reason"]
    r = client.post(f"/api/v1/payouts/{pid}/resume", headers=fin)
    assert r.status_code == 200 and r.json()["state"] == "pending"
    with session_for(write=False) as s:
        assert s.get(Payout, pid).state == "exported"  # the background run picked it up


ENDPOINTS = [
    ("post", "/api/v1/rounds/{rid}/payouts", False),
    ("get", "/api/v1/rounds/{rid}/payouts", True),
    ("get", "/api/v1/rounds/{rid}/payouts/items", True),
    ("get", "/api/v1/rounds/{rid}/payouts/instructions.csv", True),
    ("post", "/api/v1/rounds/{rid}/payouts/confirmations", False),
    ("post", "/api/v1/payouts/{pid}/hold", False),
    ("post", "/api/v1/payouts/{pid}/resume", False),
    ("post", "/api/v1/payouts/{pid}/retry", False),
    ("get", "/api/v1/rounds/{rid}/mismatches", True),
    ("post", "/api/v1/rounds/{rid}/mismatches/1/resolve", False),
    ("post", "/api/v1/rounds/{rid}/payouts/restart", False),
    ("post", "/api/v1/rounds/{rid}/reconcile", False),
]


def test_authorization_matrix(client, engine, make_staff, session_for):
    seeded = seed_round(engine, [("tron", USDT)])
    staff = {role: make_staff(role) for role in ("caseworker", "admin", "auditor", "finance")}
    from claims import payouts
    from claims.audit import Actor

    with session_for() as s:
        payouts.release_round(s, seeded.round_id, actor=Actor("f", "finance"))
    (pid,) = payout_ids(session_for, seeded.round_id).values()
    for method, path, auditor_reads in ENDPOINTS:
        url = path.format(rid=seeded.round_id, pid=pid)
        call = getattr(client, method)
        r = call(url)
        assert r.status_code == 401, (url, r.status_code)
        assert r.headers.get("www-authenticate") == "Bearer"
        r = call(url, headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401, url
        for role in ("caseworker", "admin"):
            assert call(url, headers=staff[role]).status_code == 403, (url, role)
        r = call(url, headers=staff["auditor"])
        if auditor_reads:
            assert r.status_code == 200, (url, r.text)
        else:
            assert r.status_code == 403, (url, r.status_code)
    # The auditor's read of the instructions exported nothing.
    with session_for(write=False) as s:
        assert s.get(Payout, pid).state == "pending"
        assert s.get(DistributionRound, seeded.round_id).status == "released"
    r = client.get(f"/api/v1/rounds/{seeded.round_id}/payouts/instructions.csv",
                   headers=staff["finance"])
    assert r.status_code == 200 and len(r.text.splitlines()) == 2
    assert client.get("/api/v1/rounds/999999/payouts", headers=staff["finance"]).status_code == 404


def test_openapi_documents_the_payout_endpoints(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    rel = paths["/api/v1/rounds/{id}/payouts"]
    assert {"202", "400", "401", "403", "404", "409"} <= set(rel["post"]["responses"])
    assert rel["post"]["responses"]["409"]["content"].get("application/problem+json") is not None
    assert any(p["name"] == "Idempotency-Key" for p in rel["post"]["parameters"])
    assert {"200", "401", "403", "404"} <= set(rel["get"]["responses"])
    assert "text/csv" in paths["/api/v1/rounds/{id}/payouts/instructions.csv"]["get"][
        "responses"]["200"]["content"]
    conf = paths["/api/v1/rounds/{id}/payouts/confirmations"]["post"]
    assert "text/csv" in conf["requestBody"]["content"] and "422" in conf["responses"]
    for action in ("hold", "resume", "retry"):
        assert "409" in paths[f"/api/v1/payouts/{{id}}/{action}"]["post"]["responses"]


@pytest.mark.parametrize("key", ["has space", "x" * 256])
def test_a_bad_idempotency_key_is_refused(client, engine, make_staff, key):
    fin = make_staff("finance")
    seeded = seed_round(engine, [("tron", USDT)])
    r = client.post(f"/api/v1/rounds/{seeded.round_id}/payouts",
                    headers={**fin, "Idempotency-Key": key})
    assert r.status_code == 422
