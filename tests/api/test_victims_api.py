"""The victims' API (docs/api.md): filing, idempotency, duplicates,
limits, status privacy, documents, replies, disputes, address changes, token resets."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from claims.validators import make_eth_address, make_iin, make_tron_address

CASE = "alpha-case"
IIN_BIRTH = dt.date(1979, 10, 28)


def body(n: int = 1, **over) -> dict:
    data = {
        "case_id": CASE,
        "full_name": f"Асель Нұрланқызы {n}",
        "iin": make_iin(IIN_BIRTH, "female", n),
        "date_of_birth": IIN_BIRTH.isoformat(),
        "email": f"victim{n}@example.kz",
        "phone": "+7 701 234 56 78",
        "language": "ru",
        "scheme_account": f"acc-{n}",
        "claimed_amount": "1500.25",
        "evidence_tx_hashes": ["ab" * 32],
        "payout_network": "tron",
        "payout_address": make_tron_address(n.to_bytes(20, "big")),
        "consent": True,
    }
    data.update(over)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.fixture
def case(engine):
    from claims.cases import create_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        create_case(s, CASE, "Alpha scheme")
    return CASE


def counts(engine) -> dict[str, int]:
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim, IdempotencyKey, Notification

    with session_scope(engine, write=False) as s:
        return {
            m.__tablename__: s.execute(select(func.count()).select_from(m)).scalar_one()
            for m in (Claim, Notification, AuditEvent, IdempotencyKey)
        }


def claims_count(engine) -> int:
    return counts(engine)["claim"]


# ----------------------------------------------------------------------------- filing


def test_file_claim_stores_it_hashed_with_receipt_and_audit(client, case, engine):
    from claims import crypto
    from claims.audit import verify_chain
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim, Notification

    data = body(1)
    r = client.post("/api/v1/claims", json=data)
    assert r.status_code == 201, r.text
    out = r.json()
    assert set(out) == {"reference", "status", "access_token", "warnings"}
    assert out["status"] == "submitted" and out["warnings"] == []
    import re

    assert re.fullmatch(r"KZR-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", out["reference"])
    assert len(out["access_token"]) >= 22  # ≥ 128 bits in URL-safe base64
    with session_scope(engine, write=False) as s:
        claim = s.execute(select(Claim)).scalar_one()
        assert claim.reference == out["reference"] and claim.status == "submitted"
        assert claim.access_token_hash == crypto.token_hash(out["access_token"])
        assert claim.iin_hash == crypto.iin_hash(data["iin"])
        assert crypto.decrypt(claim.iin_encrypted) == data["iin"]
        assert claim.iin_masked == data["iin"][:2] + "******" + data["iin"][-4:]
        assert data["iin"] not in claim.iin_encrypted.decode("latin-1")
        assert claim.claimed_amount == 1_500_250_000
        assert claim.phone == "+77012345678"
        notes = s.execute(select(Notification)).scalars().all()
        assert [(n.kind, n.claim_id, n.to_email, n.language) for n in notes] == [
            ("received", claim.id, data["email"], "ru")]
        events = s.execute(select(AuditEvent).where(AuditEvent.subject_type == "claim")).scalars().all()
        assert [(e.action, e.subject_id, e.actor) for e in events] == [
            ("claim.filed", claim.reference, f"claimant:{claim.reference}")]
        assert data["iin"] not in json.dumps(events[0].after)
        assert verify_chain(s).ok


def test_lower_case_ethereum_address_is_accepted_with_a_warning(client, case):
    addr = make_eth_address(bytes(range(1, 21))).lower()
    r = client.post("/api/v1/claims", json=body(2, payout_network="ethereum", payout_address=addr,
                                                 evidence_tx_hashes=["0x" + "cd" * 32]))
    assert r.status_code == 201, r.text
    assert [w["field"] for w in r.json()["warnings"]] == ["payout_address"]


def _typo(addr: str) -> str:
    i = 10
    c = "A" if addr[i] != "A" else "B"
    return addr[:i] + c + addr[i + 1:]


def _bad_eip55() -> str:
    good = make_eth_address(bytes(range(1, 21)))
    body_ = good[2:]
    for i, ch in enumerate(body_):
        if ch.isalpha():
            flipped = ch.lower() if ch.isupper() else ch.upper()
            return "0x" + body_[:i] + flipped + body_[i + 1:]
    raise AssertionError("no letter")


BAD_INPUTS = [
    ("iin checksum", {"iin": make_iin(IIN_BIRTH, "female", 1)[:-1] + str((int(make_iin(IIN_BIRTH, "female", 1)[-1]) + 1) % 10)}, "iin"),
    ("iin vs date of birth", {"date_of_birth": "1980-01-01"}, "date_of_birth"),
    ("tron typo", {"payout_address": _typo(make_tron_address(b"\x07" * 20))}, "payout_address"),
    ("bad eip-55", {"payout_network": "ethereum", "payout_address": _bad_eip55(), "evidence_tx_hashes": ...}, "payout_address"),
    ("wrong network", {"payout_network": "tron", "payout_address": make_eth_address(b"\x05" * 20)}, "payout_address"),
    ("seven decimals", {"claimed_amount": "1.1234567"}, "claimed_amount"),
    ("negative", {"claimed_amount": "-5"}, "claimed_amount"),
    ("exponent", {"claimed_amount": "1e3"}, "claimed_amount"),
    ("json number", {"claimed_amount": 1500}, "claimed_amount"),
    ("zero", {"claimed_amount": "0"}, "claimed_amount"),
    ("bad email", {"email": "not-an-email"}, "email"),
    ("bad phone", {"phone": "+1 555 123 4567"}, "phone"),
    ("unknown language", {"language": "de"}, "language"),
    ("no consent", {"consent": False}, "consent"),
    ("consent missing", {"consent": ...}, "consent"),
    ("consent as string", {"consent": "true"}, "consent"),
    ("unknown case", {"case_id": "no-such-case"}, "case_id"),
    ("full name missing", {"full_name": ...}, "full_name"),
]


@pytest.mark.parametrize("label, over, field", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
        client, case, engine, label, over, field):
    before = counts(engine)
    r = client.post("/api/v1/claims", json=body(3, **over), headers={"Idempotency-Key": "k-" + label.replace(" ", "-")})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 422 and problem["title"]
    assert [e["field"] for e in problem["errors"]] == [field]
    assert counts(engine) == before  # nothing stored, the idempotency key freed


def test_closed_case_is_refused_naming_case_id(client, case, engine):
    from claims.cases import close_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        close_case(s, CASE)
    before = counts(engine)
    r = client.post("/api/v1/claims", json=body(4))
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["case_id"]
    assert counts(engine) == before


def test_every_bad_field_is_listed_at_once(client, case, engine):
    r = client.post("/api/v1/claims", json=body(
        5, case_id="nope-case", iin="123", email="x", phone="12", language="fr",
        claimed_amount=12.5, payout_network="bitcoin", consent=False))
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"case_id", "iin", "email", "phone", "language", "claimed_amount",
                      "payout_network", "consent"}
    assert claims_count(engine) == 0


@pytest.mark.parametrize("raw", [b"[1, 2]", b"not json", b"", b'"text"'])
def test_a_body_that_is_not_a_json_object_names_body(client, case, raw):
    r = client.post("/api/v1/claims", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["body"]


def test_unknown_extra_fields_are_ignored(client, case):
    r = client.post("/api/v1/claims", json={**body(6), "favourite_colour": "green"})
    assert r.status_code == 201


def test_a_second_claim_for_the_same_iin_in_the_case_is_409_revealing_nothing(client, case, engine):
    first = client.post("/api/v1/claims", json=body(7)).json()
    other = body(7, full_name="Someone Else", email="else@example.kz",
                 payout_address=make_tron_address(b"\x09" * 20))
    r = client.post("/api/v1/claims", json=other)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    text = r.text
    for secret in (first["reference"], first["access_token"], "victim7", "Асель"):
        assert secret not in text
    assert claims_count(engine) == 1
    # The same person may claim in another case.
    from claims.cases import create_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        create_case(s, "beta-case", "Beta scheme")
    assert client.post("/api/v1/claims", json=body(7, case_id="beta-case")).status_code == 201


def test_the_database_itself_refuses_a_second_claim_for_an_iin(client, case, engine):
    from sqlalchemy.exc import IntegrityError

    from claims import cases, intake
    from claims.db import session_scope

    client.post("/api/v1/claims", json=body(8))
    prepared = intake.prepare(body(8, email="other@example.kz"))
    with pytest.raises(IntegrityError):
        with session_scope(engine) as s:
            case_row = cases.get_open_case(s, CASE)
            # Bypass the check the domain does first: the unique constraint still refuses.
            from claims.models import Claim, utcnow

            s.add(Claim(case_id=case_row.id, reference="KZR-0000-0000", access_token_hash="x",
                        consent_at=utcnow(), **prepared.values))
            s.flush()


# ----------------------------------------------------------------------------- idempotency


def test_idempotent_replay_answers_the_same_reference_with_a_fresh_token(client, case, engine):
    headers = {"Idempotency-Key": "abc-123"}
    r1 = client.post("/api/v1/claims", json=body(10), headers=headers)
    r2 = client.post("/api/v1/claims", json=body(10), headers=headers)
    assert r1.status_code == r2.status_code == 201
    a, b = r1.json(), r2.json()
    assert a["reference"] == b["reference"] and a["access_token"] != b["access_token"]
    assert claims_count(engine) == 1
    ref = a["reference"]
    # One token at a time: the replay's token works, the first one no longer does.
    assert client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": b["access_token"]}).status_code == 200
    assert client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": a["access_token"]}).status_code == 404
    # Key order in the body does not matter (canonical JSON).
    reordered = dict(reversed(list(body(10).items())))
    assert client.post("/api/v1/claims", json=reordered, headers=headers).json()["reference"] == ref


def test_the_same_key_with_another_body_is_409(client, case, engine):
    headers = {"Idempotency-Key": "same-key"}
    assert client.post("/api/v1/claims", json=body(11), headers=headers).status_code == 201
    r = client.post("/api/v1/claims", json=body(12), headers=headers)
    assert r.status_code == 409
    assert claims_count(engine) == 1


def test_a_key_in_flight_is_409_and_a_stale_one_is_taken_over(client, case, engine):
    from claims import idempotency
    from claims.db import session_scope
    from claims.models import IdempotencyKey

    data = body(13)
    ticket = idempotency.begin(engine, "claims", "in-flight", idempotency.request_hash(data))
    assert isinstance(ticket, idempotency.Ticket)
    r = client.post("/api/v1/claims", json=data, headers={"Idempotency-Key": "in-flight"})
    assert r.status_code == 409 and "processed" in r.json()["detail"]
    assert claims_count(engine) == 0
    # The first request's process died long ago: the key is taken over and the filing done.
    from claims.models import utcnow

    with session_scope(engine) as s:
        s.execute(update(IdempotencyKey).values(created_at=utcnow() - dt.timedelta(minutes=10)))
    r = client.post("/api/v1/claims", json=data, headers={"Idempotency-Key": "in-flight"})
    assert r.status_code == 201
    # The stalled first request can no longer complete with its stale ticket.
    from claims.errors import IdempotencyConflict

    with pytest.raises(IdempotencyConflict):
        with session_scope(engine) as s:
            idempotency.complete(s, ticket, 201, {})


def test_a_failed_filing_frees_its_key(client, case, engine):
    headers = {"Idempotency-Key": "retry-me"}
    assert client.post("/api/v1/claims", json=body(14, phone="12"), headers=headers).status_code == 422
    assert client.post("/api/v1/claims", json=body(14), headers=headers).status_code == 201


def test_a_malformed_idempotency_key_is_422(client, case, engine):
    r = client.post("/api/v1/claims", json=body(15), headers={"Idempotency-Key": "has space"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"
    assert client.post("/api/v1/claims", json=body(15), headers={"Idempotency-Key": ""}
                       ).status_code == 422
    assert claims_count(engine) == 0


def test_other_methods_on_the_filing_path_are_405(client):
    for method in ("GET", "PUT", "DELETE"):
        r = client.request(method, "/api/v1/claims")
        assert r.status_code == 405, method
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "POST" in r.headers.get("allow", "")

def test_the_filing_documents_its_idempotency_key_header(client):
    op = client.get("/openapi.json").json()["paths"]["/api/v1/claims"]["post"]
    (param,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
    assert param["in"] == "header" and param["required"] is False
    assert param["schema"]["anyOf"][0]["pattern"] == r"^[\x21-\x7e]{1,255}$"
    assert {"409", "413", "422", "429"} <= set(op["responses"])


# ----------------------------------------------------------------------------- a live server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(db_url):
    """The app under uvicorn in a thread on a loopback port (real sockets, real concurrency)."""
    import uvicorn

    from api.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline:  # pragma: no cover
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_concurrent_requests_with_one_key_file_one_claim(live_server, case, engine):
    import httpx

    data = body(20)
    results: list[httpx.Response] = []
    barrier = threading.Barrier(8)

    def send():
        with httpx.Client(base_url=live_server, timeout=30) as c:
            barrier.wait()
            results.append(c.post("/api/v1/claims", json=data, headers={"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {201, 409} and 201 in codes, codes
    assert len({r.json()["reference"] for r in results if r.status_code == 201}) == 1
    assert claims_count(engine) == 1


def test_concurrent_filings_for_one_iin_file_one_claim(live_server, case, engine):
    import httpx

    results: list[int] = []
    barrier = threading.Barrier(6)

    def send(i):
        with httpx.Client(base_url=live_server, timeout=30) as c:
            barrier.wait()
            results.append(c.post("/api/v1/claims", json=body(21, email=f"x{i}@example.kz")).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 5
    assert claims_count(engine) == 1


def test_413_reaches_a_real_client_with_and_without_content_length(live_server, case, engine):
    import httpx

    big = b'{"case_id": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    with httpx.Client(base_url=live_server, timeout=30) as c:
        r = c.post("/api/v1/claims", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 413

        def chunks():
            for i in range(0, len(big), 64 * 1024):
                yield big[i:i + 64 * 1024]

        r = c.post("/api/v1/claims", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["status"] == 413
    assert claims_count(engine) == 0


# ----------------------------------------------------------------------------- limits


def test_413_before_parsing_in_process(client, case):
    big = b"x" * (1024 * 1024 + 1)
    r = client.post("/api/v1/claims", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.post("/api/v1/claims", content=iter([big[:600_000], big[600_000:]]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    # Exactly at the limit is parsed (and refused as JSON, not as size).
    r = client.post("/api/v1/claims", content=b" " * (1024 * 1024),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_429_with_retry_after_over_the_rate_limit(client, case, engine, monkeypatch):
    from api import limits
    from claims.settings import reset_settings

    monkeypatch.setenv("RESTITUTION_RATE_LIMIT", "2/minute")
    reset_settings()
    limits.reset()
    try:
        assert client.post("/api/v1/claims", json=body(30)).status_code == 201
        assert client.post("/api/v1/claims", json=body(31, phone="1")).status_code == 422
        r = client.post("/api/v1/claims", json=body(32))
        assert r.status_code == 429
        assert r.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert claims_count(engine) == 1
        # Reading a status is not a filing.
        assert client.get("/api/v1/claims/KZR-0000-0000").status_code == 404
    finally:
        monkeypatch.setenv("RESTITUTION_RATE_LIMIT", "off")
        reset_settings()
        limits.reset()


# ----------------------------------------------------------------------------- status


def test_status_privacy_same_404_and_never_the_iin(client, case):
    data = body(40)
    filed = client.post("/api/v1/claims", json=data).json()
    ref, token = filed["reference"], filed["access_token"]
    ok = client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": token})
    assert ok.status_code == 200
    view = ok.json()
    assert view["reference"] == ref and view["status"] == "submitted"
    assert view["status_text"] == "Получено, ожидает проверки"  # the claimant's language (ru)
    assert [e["event"] for e in view["timeline"]] == ["filed"]
    assert view["timeline"][0]["text"] == "Заявление получено"
    assert view["recognized_loss"] is None and view["requests"] == []
    assert data["iin"] not in ok.text and data["iin"][:6] not in ok.text
    answers = [
        client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": token + "x"}),
        client.get(f"/api/v1/claims/{ref}"),
        client.get("/api/v1/claims/KZR-ZZZZ-ZZZZ", headers={"X-Claim-Token": token}),
        client.get("/api/v1/claims/not-a-reference", headers={"X-Claim-Token": token}),
    ]
    assert [a.status_code for a in answers] == [404] * 4
    assert len({a.text for a in answers}) == 1
    # A reference typed in lower case, with O for 0, still finds the claim.
    typed = ref.lower().replace("0", "o")
    assert client.get(f"/api/v1/claims/{typed}", headers={"X-Claim-Token": token}).status_code == 200


def _round_with_payout(engine, claim_id: int, *, state: str, tx_id: str | None = None,
                       network: str = "tron", round_status: str = "released") -> int:
    from claims.db import session_scope
    from claims.models import Allocation, DistributionRound, Payout, Claim

    with session_scope(engine) as s:
        claim = s.get(Claim, claim_id)
        rnd = DistributionRound(case_id=claim.case_id, number=1, status=round_status, method="pro-rata",
                                pool=1_000_000_000, rate="1/4", allocated=250_000_000)
        s.add(rnd)
        s.flush()
        alloc = Allocation(round_id=rnd.id, claim_id=claim_id, claim_version=claim.version,
                           invested=1_000_000_000, net_loss=1_000_000_000, amount=250_000_000)
        s.add(alloc)
        s.flush()
        p = Payout(round_id=rnd.id, claim_id=claim_id, allocation_id=alloc.id,
                   idempotency_key=f"p-{claim_id}-{rnd.id}", amount=250_000_000, rail="custodian",
                   network=network, state=state, tx_id=tx_id)
        s.add(p)
        s.flush()
        return p.id


def test_status_shows_allocations_payouts_and_requests_in_plain_words(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import ClaimMessage

    fc = filed_claim(status="approved", flags=(), language="kk", recognized_loss="1000")
    _round_with_payout(engine, fc.id, state="confirmed", tx_id="ab" * 32)
    with session_scope(engine) as s:
        s.add(ClaimMessage(claim_id=fc.id, kind="request", body="Please send your bank statement"))
    r = client.get(f"/api/v1/claims/{fc.reference}", headers={"X-Claim-Token": fc.access_token})
    assert r.status_code == 200
    v = r.json()
    assert v["status_text"] == "Мақұлданды"
    assert v["recognized_loss"] == "1000"
    assert v["allocations"] == [{"round": 1, "amount": "250", "reserved": "0", "rate_percent": "25"}]
    (p,) = v["payouts"]
    assert p["state"] == "confirmed" and p["state_text"] == "Төленді" and p["amount"] == "250"
    assert p["tx_id"] == "ab" * 32
    assert p["explorer_url"] == "https://tronscan.org/#/transaction/" + "ab" * 32
    assert [q["text"] for q in v["requests"]] == ["Please send your bank statement"]
    assert "no_ledger_match" not in r.text and "flag" not in json.dumps(v).lower()


def test_flagged_claim_reads_under_review_never_the_flag_code(client, filed_claim):
    fc = filed_claim(status="flagged", flags=("net_winner", "insider"), language="en")
    r = client.get(f"/api/v1/claims/{fc.reference}", headers={"X-Claim-Token": fc.access_token})
    assert r.json()["status_text"] == "Under review by a caseworker"
    assert "net_winner" not in r.text and "insider" not in r.text


def test_prepared_round_allocations_are_not_shown(client, filed_claim, engine):
    fc = filed_claim(status="approved", flags=(), recognized_loss="1000")
    _round_with_payout(engine, fc.id, state="pending", round_status="prepared")
    v = client.get(f"/api/v1/claims/{fc.reference}", headers={"X-Claim-Token": fc.access_token}).json()
    assert v["allocations"] == []


# ----------------------------------------------------------------------------- documents

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + b"\x00" * 32


def test_documents_pdf_and_png_accepted_other_types_415(client, filed_claim, engine, db_url):
    from claims.db import session_scope
    from claims.models import AuditEvent, Document
    from claims.settings import get_settings

    fc = filed_claim(status="needs_info")
    h = {"X-Claim-Token": fc.access_token}
    r = client.post(f"/api/v1/claims/{fc.reference}/documents", headers=h,
                    files={"file": ("../../etc/passwd.pdf", PDF, "text/plain")})
    assert r.status_code == 201, r.text
    out = r.json()
    assert set(out) == {"id", "sha256"} and out["sha256"] == hashlib.sha256(PDF).hexdigest()
    r = client.post(f"/api/v1/claims/{fc.reference}/documents", headers=h,
                    files={"file": ("x.bin", PNG, "application/octet-stream")})
    assert r.status_code == 201
    for name, content, ctype in [("a.pdf", b"just text, not a PDF", "application/pdf"),
                                 ("a.gif", b"GIF89a" + b"\x00" * 20, "image/gif"),
                                 ("a.zip", b"PK\x03\x04" + b"\x00" * 30, "application/pdf")]:
        r = client.post(f"/api/v1/claims/{fc.reference}/documents", headers=h,
                        files={"file": (name, content, ctype)})
        assert r.status_code == 415, name
        assert r.headers["content-type"].startswith("application/problem+json")
    bad = client.post(f"/api/v1/claims/{fc.reference}/documents",
                      headers={"X-Claim-Token": "wrong"}, files={"file": ("a.pdf", PDF, "application/pdf")})
    assert bad.status_code == 404
    docs_dir = Path(get_settings().documents_dir)
    with session_scope(engine, write=False) as s:
        docs = s.execute(select(Document).order_by(Document.created_at)).scalars().all()
        assert [d.content_type for d in docs] == ["application/pdf", "image/png"]
        assert docs[0].stored_name == f"{docs[0].id}.pdf"
        assert (docs_dir / docs[0].stored_name).read_bytes() == PDF
        actions = s.execute(select(AuditEvent.action)).scalars().all()
        assert actions.count("claim.document_added") == 2
    assert sorted(p.name for p in docs_dir.iterdir()) == sorted(d.stored_name for d in docs)


def test_a_document_over_10_mib_is_413(client, filed_claim):
    fc = filed_claim(status="needs_info")
    big = PDF + b"0" * (10 * 1024 * 1024)
    r = client.post(f"/api/v1/claims/{fc.reference}/documents",
                    headers={"X-Claim-Token": fc.access_token},
                    files={"file": ("big.pdf", big, "application/pdf")})
    assert r.status_code == 413


# ----------------------------------------------------------------------------- reply, dispute


def test_reply_answers_the_request_and_sends_the_claim_back_to_verification(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import ClaimMessage, Claim

    fc = filed_claim(status="needs_info")
    with session_scope(engine) as s:
        s.add(ClaimMessage(claim_id=fc.id, kind="request", body="Which wallet did you use?"))
    h = {"X-Claim-Token": fc.access_token}
    r = client.post(f"/api/v1/claims/{fc.reference}/reply", json={"message": "  TRON wallet T123  "}, headers=h)
    assert r.status_code == 200 and r.json() == {"reference": fc.reference, "status": "verifying"}
    with session_scope(engine, write=False) as s:
        msgs = {m.kind: m for m in s.execute(select(ClaimMessage).where(ClaimMessage.claim_id == fc.id)).scalars()}
        assert msgs["reply"].body == "TRON wallet T123"
        assert msgs["request"].answered_at is not None
        assert s.get(Claim, fc.id).status == "verifying"
    v = client.get(f"/api/v1/claims/{fc.reference}", headers=h).json()
    assert v["requests"] == [] and v["timeline"][-1]["event"] == "replied"
    again = client.post(f"/api/v1/claims/{fc.reference}/reply", json={"message": "more"}, headers=h)
    assert again.status_code == 409
    assert client.post(f"/api/v1/claims/{fc.reference}/reply", json={"message": "x"},
                       headers={"X-Claim-Token": "nope"}).status_code == 404
    assert client.post(f"/api/v1/claims/{fc.reference}/reply", json={}, headers=h).status_code == 422


def test_dispute_an_approved_claim(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import ClaimMessage, Notification

    fc = filed_claim(status="approved", flags=(), recognized_loss="800")
    h = {"X-Claim-Token": fc.access_token}
    r = client.post(f"/api/v1/claims/{fc.reference}/dispute", json={"reason": "I lost 1000", "amount": 1000}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "amount"
    r = client.post(f"/api/v1/claims/{fc.reference}/dispute", json={"reason": "I lost 1000", "amount": "1000"}, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "disputed"
    with session_scope(engine, write=False) as s:
        (m,) = s.execute(select(ClaimMessage).where(ClaimMessage.kind == "dispute")).scalars()
        assert (m.body, m.amount) == ("I lost 1000", 1_000_000_000)
        kinds = s.execute(select(Notification.kind)).scalars().all()
        assert kinds == ["dispute_received"]
    assert client.post(f"/api/v1/claims/{fc.reference}/dispute", json={"reason": "again"}, headers=h).status_code == 409
    pending = filed_claim(status="verifying", flags=())
    assert client.post(f"/api/v1/claims/{pending.reference}/dispute", json={"reason": "x"},
                       headers={"X-Claim-Token": pending.access_token}).status_code == 409


# ----------------------------------------------------------------------------- address change


def _notifications(engine, kind: str):
    from claims.db import session_scope
    from claims.models import Notification

    with session_scope(engine, write=False) as s:
        return s.execute(select(Notification).where(Notification.kind == kind)
                         .order_by(Notification.id)).scalars().all()


def test_payout_address_change_after_approval_flags_holds_and_notifies(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim, Flag, Payout

    fc = filed_claim(status="approved", flags=(), recognized_loss="1000")
    payout_id = _round_with_payout(engine, fc.id, state="pending")
    old_address = fc.payout_address
    new_address = make_eth_address(b"\x33" * 20)
    h = {"X-Claim-Token": fc.access_token}
    r = client.post(f"/api/v1/claims/{fc.reference}/payout-address",
                    json={"payout_network": "ethereum", "payout_address": new_address}, headers=h)
    assert r.status_code == 202, r.text
    (req,) = _notifications(engine, "address_change_requested")
    code = req.context["code"]
    assert req.to_email == fc.email and len(code) == 6
    assert code not in r.text
    # A wrong code counts an attempt (kept although the request fails).
    wrong = "000000" if code != "000000" else "111111"
    r = client.post(f"/api/v1/claims/{fc.reference}/payout-address/confirm", json={"code": wrong}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "code"
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, fc.id).payout_address == old_address
    r = client.post(f"/api/v1/claims/{fc.reference}/payout-address/confirm", json={"code": code}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["payout_address"] == new_address and r.json()["status"] == "flagged"
    with session_scope(engine, write=False) as s:
        claim = s.get(Claim, fc.id)
        assert (claim.payout_network, claim.payout_address, claim.status) == ("ethereum", new_address, "flagged")
        assert claim.payout_address_key == new_address.lower()
        assert [f.code for f in s.execute(select(Flag).where(Flag.claim_id == fc.id, Flag.resolved_at.is_(None))).scalars()] == ["address_changed"]
        assert s.get(Payout, payout_id).state == "held"
        actions = s.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars().all()
        assert actions[-4:] == ["claim.address_change_requested", "claim.address_changed", "claim.flagged", "payout.held"]
    (changed,) = _notifications(engine, "address_changed")
    assert changed.context["old_payout_address"] == old_address
    assert changed.context["payout_address"] == new_address
    # Both notices render (a context the template cannot use would fail delivery for good).
    from notifications.render import render

    for n in (req, changed):
        msg = render(n.kind, "en", n.context, public_url="https://restitution.example",
                     mail_from="Restitution <no-reply@example.org>", to=n.to_email,
                     notification_id=n.id)
        assert new_address.encode() in msg.wire_bytes()
    # The code is spent.
    assert client.post(f"/api/v1/claims/{fc.reference}/payout-address/confirm", json={"code": code},
                       headers=h).status_code == 409


def test_address_change_is_revalidated_and_attempts_are_limited(client, filed_claim, engine):
    from claims.db import session_scope
    from claims.models import Claim

    fc = filed_claim(status="verifying", flags=())
    h = {"X-Claim-Token": fc.access_token}
    url = f"/api/v1/claims/{fc.reference}/payout-address"
    r = client.post(url, json={"payout_network": "tron", "payout_address": make_eth_address(b"\x01" * 20)}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "payout_address"
    r = client.post(url, json={"payout_network": "tron", "payout_address": _typo(make_tron_address(b"\x02" * 20))}, headers=h)
    assert r.status_code == 422
    new = make_tron_address(b"\x44" * 20)
    assert client.post(url, json={"payout_network": "tron", "payout_address": new}, headers=h).status_code == 202
    code = _notifications(engine, "address_change_requested")[-1].context["code"]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        assert client.post(url + "/confirm", json={"code": wrong}, headers=h).status_code == 422
    r = client.post(url + "/confirm", json={"code": code}, headers=h)
    assert r.status_code == 429 and "Retry-After" in r.headers
    with session_scope(engine, write=False) as s:
        assert s.get(Claim, fc.id).payout_address == fc.payout_address
    # A new request gives a new code that works; before approval no flag, status unchanged.
    assert client.post(url, json={"payout_network": "tron", "payout_address": new}, headers=h).status_code == 202
    code = _notifications(engine, "address_change_requested")[-1].context["code"]
    r = client.post(url + "/confirm", json={"code": code}, headers=h)
    assert r.status_code == 200 and r.json()["status"] == "verifying"


# ----------------------------------------------------------------------------- token reset


def test_token_reset_mails_a_new_token_only_when_both_match(client, case, engine):
    filed = client.post("/api/v1/claims", json=body(50)).json()
    ref, old = filed["reference"], filed["access_token"]
    miss = [
        {"reference": ref, "email": "someone@example.kz"},
        {"reference": "KZR-ZZZZ-ZZZZ", "email": "victim50@example.kz"},
        {"reference": "junk", "email": "junk"},
    ]
    for b in miss:
        r = client.post("/api/v1/claims/token-reset", json=b)
        assert r.status_code == 202
    assert _notifications(engine, "token_reset") == []
    r = client.post("/api/v1/claims/token-reset", json={"reference": ref.lower(), "email": "VICTIM50@example.kz"})
    assert r.status_code == 202
    (note,) = _notifications(engine, "token_reset")
    new = note.context["access_token"]
    assert note.to_email == "victim50@example.kz"
    assert client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": new}).status_code == 200
    assert client.get(f"/api/v1/claims/{ref}", headers={"X-Claim-Token": old}).status_code == 404
    assert new not in r.text
