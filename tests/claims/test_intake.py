"""claims.intake (the package) and claims/idempotency.py without HTTP."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from fractions import Fraction

import pytest
from sqlalchemy import select

from claims import cases, intake
from claims.errors import DuplicateClaim, InvalidInput, NotFound
from claims.validators import make_iin, make_tron_address

CASE = "unit-case"
BIRTH = dt.date(1991, 2, 3)


def data(n: int = 1, **over) -> dict:
    d = {
        "case_id": CASE, "full_name": f"Name {n}", "iin": make_iin(BIRTH, "female", n),
        "email": f"u{n}@example.kz", "phone": "+77010000000", "language": "en",
        "claimed_amount": "10.000001", "payout_network": "tron",
        "payout_address": make_tron_address(bytes([n]) * 20), "consent": True,
    }
    d.update(over)
    return d


@pytest.fixture
def case(engine):
    from claims.cases import create_case
    from claims.db import session_scope

    with session_scope(engine) as s:
        create_case(s, CASE, "Unit")
    return CASE


def test_references_are_crockford_base32_and_random():
    refs = {intake.new_reference() for _ in range(2000)}
    assert len(refs) == 2000
    assert all(re.fullmatch(r"KZR-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", r) for r in refs)
    # Every symbol of the alphabet shows up: the 40 random bits are spread over 8 characters.
    assert set("".join(r[4:8] + r[9:] for r in refs)) == set(intake.CROCKFORD)


def test_access_tokens_made_in_bulk_are_like_single_ones():
    from claims import crypto

    tokens = crypto.new_tokens(3000)
    assert len(set(tokens)) == 3000
    single = crypto.new_token()
    # 24 random bytes, URL-safe base64 without padding: 32 characters of the same alphabet
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", t) for t in [*tokens, single])
    # every position varies (the bytes are spread over the tokens, not repeated)
    assert all(len({t[i] for t in tokens}) > 32 for i in range(31))


@pytest.mark.parametrize("typed, canonical", [
    ("KZR-AB12-CD34", "KZR-AB12-CD34"),
    ("  kzr-ab12-cd34 ", "KZR-AB12-CD34"),
    ("KZR-ABI2-CDO4", "KZR-AB12-CD04"),
    ("KZR-ABL2-CD34", "KZR-AB12-CD34"),
    ("KZR-AB12-CD3U", None),
    ("KZR-AB12CD34", None),
    ("XYZ-AB12-CD34", None),
    (None, None),
    (12, None),
])
def test_normalize_reference(typed, canonical):
    assert intake.normalize_reference(typed) == canonical


def test_prepare_hashes_encrypts_and_masks_the_iin():
    from claims import crypto

    d = data(1, unknown_field="ignored")
    p = intake.prepare(d)
    assert p.case_code == CASE and p.warnings == []
    v = p.values
    assert v["iin_hash"] == crypto.iin_hash(d["iin"]) and crypto.decrypt(v["iin_encrypted"]) == d["iin"]
    assert v["iin_masked"].endswith(d["iin"][-4:]) and "******" in v["iin_masked"]
    assert "iin" not in v and "unknown_field" not in v
    assert v["claimed_amount"] == 10_000_001 and v["birth_date"] == BIRTH
    assert d["iin"] not in json.dumps({k: x for k, x in v.items() if isinstance(x, (str, int, list))})


def test_prepare_lists_every_bad_field():
    with pytest.raises(InvalidInput) as e:
        intake.prepare(data(1, iin="1", email="@", claimed_amount=10, consent=None))
    assert [x["field"] for x in e.value.errors] == ["iin", "email", "claimed_amount", "consent"]
    with pytest.raises(InvalidInput) as e:
        intake.prepare(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert e.value.errors[0]["field"] == "body"


def test_file_claim_and_duplicates(case, engine):
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim

    filed = intake.file_claim_tx(intake.prepare(data(1)))
    assert filed.response()["status"] == "submitted"
    with pytest.raises(DuplicateClaim) as e:
        intake.file_claim_tx(intake.prepare(data(1, email="other@example.kz")))
    assert filed.reference not in str(e.value.detail)
    with session_scope(engine, write=False) as s:
        assert s.execute(select(Claim.reference)).scalars().all() == [filed.reference]
        trail = json.dumps([e.after for e in s.execute(select(AuditEvent)).scalars()])
        assert data(1)["iin"] not in trail


def test_file_claim_retries_a_reference_collision(case, engine, monkeypatch):
    first = intake.file_claim_tx(intake.prepare(data(1)))
    refs = iter([first.reference, first.reference, "KZR-0000-0001"])
    monkeypatch.setattr(intake.references, "new_references", lambda n: [next(refs) for _ in range(n)])
    second = intake.file_claim_tx(intake.prepare(data(2)))
    assert second.reference == "KZR-0000-0001"


def test_file_many_refuses_duplicates_in_the_batch_and_the_database(case, engine):
    from claims.db import session_scope
    from claims.models import Notification

    intake.file_claim_tx(intake.prepare(data(1)))
    batch = [intake.prepare(data(n)) for n in (1, 2, 3, 2)]
    with session_scope(engine) as s:
        results = intake.file_many(s, cases.get_open_case(s, CASE), batch)
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["DuplicateClaim", "Filed", "Filed", "DuplicateClaim"]
    with session_scope(engine, write=False) as s:
        assert len(s.execute(select(Notification)).scalars().all()) == 3


def test_file_many_stores_the_rows_an_insert_returning_stores(case, engine, monkeypatch):
    """The bulk claim insert (ids taken first, rows by COPY / executemany with each column's
    bind processing) stores exactly what ``INSERT … RETURNING`` stores, ids included."""
    from sqlalchemy import text

    from claims.cases import create_case
    from claims.crypto import decrypt
    from claims.db import session_scope
    from claims.models import Claim, Notification
    from claims.validators import make_eth_address

    with session_scope(engine) as s:
        create_case(s, "other-case", "Other")
    rows = [
        data(1),
        data(2, scheme_account="acc-2", date_of_birth=BIRTH.isoformat(), language="kk",
             evidence_tx_hashes=["ab" * 32, "cd" * 32], full_name="Әсел Ñoño 'quote' \\ back"),
        data(3, payout_network="ethereum", payout_address=make_eth_address(b"\x07" * 20),
             claimed_amount="123456789.123456", language="ru"),
    ]

    def file(code):
        with session_scope(engine) as s:
            out = intake.file_many(s, cases.get_open_case(s, code),
                                   [intake.prepare(dict(r, case_id=code)) for r in rows])
        return out

    new = file(CASE)
    monkeypatch.setattr(intake.filing, "insert_claims", intake.insert_claims_returning)
    old = file("other-case")
    assert [type(f).__name__ for f in new + old] == ["Filed"] * 6
    skip = {"id", "case_id", "reference", "access_token_hash", "iin_encrypted", "consent_at",
            "created_at", "updated_at"}
    cols = [c.name for c in Claim.__table__.columns if c.name not in skip]
    with session_scope(engine, write=False) as s:
        def stored(filed):
            row = s.execute(select(Claim.__table__).where(Claim.reference == filed.reference)).one()
            assert row.id == filed.claim.id  # the id handed on is the row's
            n = s.execute(select(Notification.claim_id).where(Notification.claim_id == row.id)).all()
            assert len(n) == 1  # its notification points at it
            return row
        for a, b in zip(new, old):
            ra, rb = stored(a), stored(b)
            assert {c: getattr(ra, c) for c in cols} == {c: getattr(rb, c) for c in cols}
            assert type(ra.consent_at) is type(rb.consent_at) and ra.consent_at.tzinfo == rb.consent_at.tzinfo
            assert decrypt(ra.iin_encrypted) == decrypt(rb.iin_encrypted)
        # The raw stored text of dates and times is the same as the ORM's (SQLite keeps text).
        raw = {r[0]: r[1:] for r in s.execute(text(
            "SELECT reference, birth_date, date_of_birth, consent_at, evidence_tx_hashes FROM claim"))}
        for a, b in zip(new, old):
            fa, fb = raw[a.reference], raw[b.reference]
            assert [type(v) for v in fa] == [type(v) for v in fb]
            assert fa[0] == fb[0] and fa[1] == fb[1] and fa[3] == fb[3]
            assert len(str(fa[2])) == len(str(fb[2]))
    # Ids keep growing past the ones taken (the next insert by any path does not collide).
    more = intake.file_claim_tx(intake.prepare(data(9)))
    assert more.claim.id > max(f.claim.id for f in new + old)


@pytest.mark.parametrize("bulk", [True, False])
def test_filing_writes_the_notification_and_audit_event_of_the_generic_writers(
        case, engine, bulk):
    """One filing and a bulk filing store the ``received`` context and the ``claim.filed``
    event that ``outbox.enqueue`` and ``audit.record`` store for the same values (the chain's
    hashes, recomputed from the stored values, verify)."""
    from claims.audit import verify_chain
    from claims.db import session_scope
    from claims.models import AuditEvent, Notification

    body = data(1, full_name="Әсел \"Ñoño\" Petrova", claimed_amount="1234.5")
    if bulk:
        with session_scope(engine) as s:
            [filed] = intake.file_many(s, cases.get_open_case(s, CASE), [intake.prepare(body)])
    else:
        filed = intake.file_claim_tx(intake.prepare(body))
    with session_scope(engine, write=False) as s:
        [note] = s.execute(select(Notification)).scalars().all()
        assert (note.kind, note.claim_id, note.to_email, note.language) == (
            "received", filed.claim.id, body["email"], body["language"])
        assert note.context == {"reference": filed.reference, "name": "Әсел \"Ñoño\" Petrova",
                                "claimed_amount": "1234.5", "payout_network": "tron"}
        [event] = s.execute(
            select(AuditEvent).where(AuditEvent.action == "claim.filed")).scalars().all()
        assert (event.actor, event.role, event.action, event.subject_id, event.before) == (
            f"claimant:{filed.reference}", "claimant", "claim.filed", filed.reference, None)
        assert event.after == {"status": "submitted", "case_id": CASE, "source": "import" if bulk
                               else "web", "claimed_amount": 1_234_500_000,
                               "payout_network": "tron", "language": body["language"]}
        assert verify_chain(s).ok


def test_find_claim_gives_the_same_not_found(case, engine):
    from claims.db import session_scope

    filed = intake.file_claim_tx(intake.prepare(data(1)))
    with session_scope(engine, write=False) as s:
        assert intake.find_claim(s, filed.reference.lower(), filed.access_token).reference == filed.reference
        messages = set()
        for ref, tok in [(filed.reference, "x"), (filed.reference, None), ("KZR-0000-0000", filed.access_token),
                         ("garbage", filed.access_token), (filed.reference, "y" * 10_000)]:
            with pytest.raises(NotFound) as e:
                intake.find_claim(s, ref, tok)
            messages.add(e.value.detail)
        assert len(messages) == 1


def test_reset_token_with_unknown_reference_changes_nothing(case, engine):
    from claims.db import session_scope

    filed = intake.file_claim_tx(intake.prepare(data(1)))
    with session_scope(engine) as s:
        assert intake.reset_token(s, "KZR-0000-0000", "u1@example.kz") is False
        assert intake.reset_token(s, filed.reference, None) is False
        assert intake.reset_token(s, filed.reference, " U1@example.kz ".strip()) is True


@pytest.mark.parametrize("network, chain, tx, url", [
    ("tron", None, "ab" * 32, "https://tronscan.org/#/transaction/" + "ab" * 32),
    ("ethereum", 1, "0x" + "cd" * 32, "https://etherscan.io/tx/0x" + "cd" * 32),
    ("ethereum", 131277322940537, "0x" + "cd" * 32, None),  # the in-process test chain
    ("tron", None, None, None),
])
def test_explorer_links(network, chain, tx, url):
    assert intake.explorer_url(network, chain, tx) == url


def test_timeline_events_are_codes_not_flags():
    ev = intake.timeline_event
    assert ev("claim.filed", None, {"status": "submitted"}) == "filed"
    assert ev("claim.verified", {"status": "verifying"}, {"status": "flagged", "flags": ["net_winner"]}) == "status_flagged"
    assert ev("claim.dispute_settled", {"status": "disputed"}, {"status": "approved"}) == "dispute_settled"
    assert ev("claim.whatever", {"status": "disputed"}, {"status": "approved"}) == "dispute_settled"
    assert ev("claim.touch", {"claimed_amount": 1}, {"claimed_amount": 2}) is None


def test_rate_percent():
    assert intake.round_rate_percent("1/4") == "25"
    assert intake.round_rate_percent(f"{Fraction(430, 1900).numerator}/{Fraction(430, 1900).denominator}") == "22.6316"
    assert intake.round_rate_percent("garbage") == "0"
    assert intake.round_rate_percent("1/0") == "0"


def test_idempotency_hash_is_canonical_and_keyed(monkeypatch):
    from claims import idempotency
    from claims.settings import reset_settings

    a = idempotency.request_hash({"b": 1, "a": [1, 2]})
    assert a == idempotency.request_hash({"a": [1, 2], "b": 1})
    assert a != idempotency.request_hash({"a": [2, 1], "b": 1})
    monkeypatch.setenv("RESTITUTION_SECRET_KEY", "another-secret-key-0123456789abcdef0123456789")
    reset_settings()
    try:
        assert idempotency.request_hash({"b": 1, "a": [1, 2]}) != a
    finally:
        monkeypatch.undo()
        reset_settings()


def test_group_commit_files_concurrent_claims_in_one_transaction(case, engine, monkeypatch):
    import asyncio

    from claims.audit import verify_chain
    from claims.db import session_scope
    from claims.errors import InvalidInput
    from claims.models import AuditEvent, Claim, Notification

    gc = intake.GroupCommit(engine)
    batches = []
    real = gc._file_in
    monkeypatch.setattr(gc, "_file_in", lambda s, b, *a: (batches.append(len(b)), real(s, b, *a))[1])
    preps = [intake.prepare(data(n)) for n in (1, 2, 3)]
    preps.append(intake.prepare(data(1, email="again@example.kz")))  # the same IIN again
    preps.append(intake.prepare(data(4, case_id="no-such-case")))

    async def go():
        return await asyncio.gather(*(gc.file_async(p) for p in preps), return_exceptions=True)

    out = asyncio.run(go())
    assert batches == [5]
    assert [type(o).__name__ for o in out] == ["Filed", "Filed", "Filed", "DuplicateClaim", "InvalidInput"]
    assert isinstance(out[4], InvalidInput) and out[4].errors[0]["field"] == "case_id"
    with session_scope(engine, write=False) as s:
        refs = set(s.execute(select(Claim.reference)).scalars())
        assert refs == {o.reference for o in out[:3]}
        assert len(s.execute(select(Notification)).scalars().all()) == 3
        actors = s.execute(select(AuditEvent.actor).where(AuditEvent.action == "claim.filed")).scalars().all()
        assert sorted(actors) == sorted(f"claimant:{r}" for r in refs)
        assert verify_chain(s).ok


def _gate_files(engine):
    from claims.db.gate import drain_gate

    gate = drain_gate(engine)
    assert gate is not None and gate.fd is not None
    path = os.readlink(f"/proc/self/fd/{gate.fd}")
    return gate, path, path[: -len(".write-lock")] + ".write-queue"


def _flock_elsewhere(path):
    """The file locked through another open file description: as another process would."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_write_gate_lets_a_waiting_process_in_first(case, engine):
    """A process leaving the gate and coming straight back queues behind one that waits:
    the waiter holds the turnstile, so taking the free gate without waiting fails."""
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc")
    gate, lock_path, queue_path = _gate_files(engine)
    assert gate.try_enter()
    gate.exit()
    waiter = _flock_elsewhere(queue_path)  # another process waiting for the gate
    try:
        assert not gate.try_enter()
    finally:
        os.close(waiter)
    holder = _flock_elsewhere(lock_path)  # another process inside the gate
    try:
        assert not gate.try_enter()
    finally:
        os.close(holder)
    assert gate.try_enter()
    gate.exit()


def test_group_commit_waits_for_the_gate_without_holding_the_event_loop(case, engine):
    """While another process holds the write gate, the loop goes on (requests are read and
    validated meanwhile); the queued filings are written in one batch once it is free."""
    import asyncio
    import threading

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc")
    gate, lock_path, _ = _gate_files(engine)
    holder = _flock_elsewhere(lock_path)
    release = threading.Timer(0.3, os.close, (holder,))
    gc = intake.GroupCommit(engine)
    batches = []
    real = gc._file_in
    gc._file_in = lambda s, b, *a: (batches.append(len(b)), real(s, b, *a))[1]

    async def go():
        ticks = 0
        first = asyncio.ensure_future(gc.file_async(intake.prepare(data(1))))
        release.start()
        while not first.done():
            ticks += 1
            if ticks == 3:  # more filings arrive while the first waits for the gate
                more = [asyncio.ensure_future(gc.file_async(intake.prepare(data(n))))
                        for n in (2, 3)]
            await asyncio.sleep(0.01)
        return ticks, [first.result()] + [await f for f in more]

    ticks, filed = asyncio.run(go())
    assert ticks >= 10  # the loop ran for the 0.3 s the gate was held
    assert [type(f).__name__ for f in filed] == ["Filed"] * 3
    # SQLite: the gate comes first, so the three wait for it together. PostgreSQL: the first
    # batch's rows are written before the gate (only its audit append and commit wait), and
    # the two that came meanwhile form the next batch.
    assert batches == ([3] if engine.dialect.name == "sqlite" else [1, 2])
    assert gate.try_enter()  # and the gate was left
    gate.exit()


def test_group_commit_refiles_one_by_one_when_the_batch_fails(case, engine, monkeypatch):
    import asyncio

    first = intake.file_claim_tx(intake.prepare(data(1)))
    refs = iter([first.reference] + [f"KZR-0000-000{i}" for i in range(1, 9)])
    monkeypatch.setattr(intake.references, "new_references", lambda n: [next(refs) for _ in range(n)])
    gc = intake.GroupCommit(engine)

    async def go():
        return await asyncio.gather(gc.file_async(intake.prepare(data(2))),
                                    gc.file_async(intake.prepare(data(3))))

    a, b = asyncio.run(go())  # the batch's first reference collides: each is filed again alone
    assert {a.reference, b.reference} <= {f"KZR-0000-000{i}" for i in range(1, 9)}


def test_a_claims_events_carry_its_id_and_make_its_timeline(engine, case):
    """Audit events about a claim are found by the claim's id (``claim_pk``, written with the
    event), so the status page's timeline lists that claim's events and no other's."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.models import AuditEvent, Claim

    with session_scope(engine) as s:
        first = intake.file_claim(s, intake.prepare(data(1)))
        second = intake.file_claim(s, intake.prepare(data(2)))
        c = cases.get_open_case(s, CASE)
        intake.file_many(s, c, [intake.prepare(data(3))], source="import",
                         actor=Actor.operator())
    with session_scope(engine) as s:
        rows = s.execute(select(AuditEvent.subject_id, AuditEvent.claim_pk)
                         .where(AuditEvent.subject_type == "claim")).all()
        ids = dict(s.execute(select(Claim.reference, Claim.id)).all())
        assert len(rows) == 3 and all(pk == ids[ref] for ref, pk in rows)
        other = s.execute(select(AuditEvent.claim_pk)
                          .where(AuditEvent.subject_type != "claim")).scalars().all()
        assert other and set(other) == {None}
        claim = s.get(Claim, first.claim_id)
        view = intake.status_view(s, claim)
        assert [e["event"] for e in view["timeline"]] == ["filed"]
        assert second.claim_id != first.claim_id


def test_migration_0003_derives_claim_ids_of_earlier_events(tmp_path):
    """A database from before 0003 gets ``claim_pk`` filled from the events' references."""
    from alembic import command
    from sqlalchemy import inspect, text

    from claims.db import alembic_config, ensure_schema, make_engine, session_scope

    from claims.cases import create_case

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    ensure_schema(engine)

    with session_scope(engine) as s:
        create_case(s, CASE, "Unit")
        filed = intake.file_claim(s, intake.prepare(data(1)))
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with engine.begin() as conn:
        assert "claim_pk" not in {c["name"] for c in inspect(conn).get_columns("audit_event")}
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT claim_pk FROM audit_event WHERE subject_type = 'claim'")
                            ).scalars().all() == [filed.claim_id]
    engine.dispose()
