"""The audit chain (claims/audit.py, `restitution audit verify`): every kind of tampering is
caught and named, and concurrent writers never fork the chain."""

from __future__ import annotations

import json
import threading

import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner

from claims import audit
from claims.audit import Actor, verify_chain
from claims.db import session_scope

N = 6


@pytest.fixture
def chain(engine):
    """N events (ids 1..N), one transaction each."""
    for i in range(1, N + 1):
        with session_scope(engine) as s:
            audit.record(s, Actor.operator(), "test.event", "thing", i,
                         before={"n": i - 1}, after={"n": i, "note": f"event {i}"})
    return engine


def verify(engine):
    with session_scope(engine, write=False) as s:
        return verify_chain(s)


def row(engine, id_: int) -> dict:
    with session_scope(engine, write=False) as s:
        return dict(s.execute(text("SELECT * FROM audit_event WHERE id = :i"), {"i": id_})
                    .mappings().one())


def run_cli(*args):
    from cli import audit_cmd

    app = typer.Typer()
    app.callback()(lambda: None)
    audit_cmd.register(app)
    return CliRunner().invoke(app, ["audit", "verify", *args])


def exec_sql(engine, sql: str, params: dict | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params or {})


def test_intact_chain(chain):
    res = verify(chain)
    assert (res.ok, res.checked, res.broken_id) == (True, N, None)
    r = run_cli()
    assert r.exit_code == 0 and f"intact: {N} events" in r.stdout
    r = run_cli("--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout.splitlines()[-1]) == {
        "ok": True, "checked": N, "broken_event": None, "reason": None}


def test_empty_chain_is_intact(engine):
    assert verify(engine).ok and run_cli().exit_code == 0


def assert_broken(engine, event_id: int, words: str) -> None:
    res = verify(engine)
    assert not res.ok
    assert res.broken_id == event_id, res
    assert words in res.reason
    r = run_cli()
    assert r.exit_code == 1
    assert f"audit chain broken at event {event_id}:" in r.stderr
    r = run_cli("--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["ok"] is False and out["broken_event"] == str(event_id)


def test_edited_row(chain):
    exec_sql(chain, """UPDATE audit_event SET "after" = :a WHERE id = 3""",
             {"a": json.dumps({"n": 3, "note": "nothing to see"})})
    assert_broken(chain, 3, "edited")


def test_edited_actor(chain):
    exec_sql(chain, "UPDATE audit_event SET actor = 'operator:someone-else' WHERE id = 5")
    assert_broken(chain, 5, "edited")


def test_deleted_middle_row(chain):
    exec_sql(chain, "DELETE FROM audit_event WHERE id = 3")
    assert_broken(chain, 3, "missing")


def test_deleted_last_row(chain):
    exec_sql(chain, f"DELETE FROM audit_event WHERE id = {N}")
    assert_broken(chain, N, "deleted")


def test_deleted_last_rows_with_ids_renumbered(chain):
    """Deleting a middle row and renumbering the rest to close the gap still breaks it."""
    exec_sql(chain, "DELETE FROM audit_event WHERE id = 2")
    for i in range(3, N + 1):
        exec_sql(chain, "UPDATE audit_event SET id = :n WHERE id = :i", {"n": i - 1, "i": i})
    assert_broken(chain, 2, "prev_hash")


def _insert_forged(engine, id_: int, prev_hash: str) -> None:
    template = row(engine, 1)
    exec_sql(
        engine,
        'INSERT INTO audit_event (id, occurred_at, actor, role, action, subject_type, subject_id, '
        '"before", "after", prev_hash, hash) VALUES (:id, :occurred_at, :actor, :role, :action, '
        ':subject_type, :subject_id, :before, :after, :prev_hash, :hash)',
        {**template, "id": id_, "action": "payout.release", "before": None,
         "after": json.dumps({"forged": True}), "prev_hash": prev_hash, "hash": "f" * 64},
    )


def test_inserted_row_at_the_end(chain):
    _insert_forged(chain, N + 1, row(chain, N)["hash"])
    assert_broken(chain, N + 1, "edited")


def test_inserted_row_in_the_middle(chain):
    for i in range(N, 3, -1):  # make room at 4
        exec_sql(chain, "UPDATE audit_event SET id = :n WHERE id = :i", {"n": i + 1, "i": i})
    _insert_forged(chain, 4, row(chain, 3)["hash"])
    assert_broken(chain, 4, "edited")


def test_reordered_rows(chain):
    """Swap the contents (everything but the id) of events 2 and 4."""
    r2, r4 = row(chain, 2), row(chain, 4)
    cols = [c for c in r2 if c != "id"]
    assign = ", ".join(f'"{c}" = :{c}' for c in cols)
    for target, source in ((2, r4), (4, r2)):
        params = {c: source[c] for c in cols}
        for c in ("before", "after"):
            params[c] = json.dumps(params[c]) if params[c] is not None else None
        exec_sql(chain, f"UPDATE audit_event SET {assign} WHERE id = :target",
                 {**params, "target": target})
    assert_broken(chain, 2, "prev_hash")


def test_concurrent_writers_do_not_fork_the_chain(engine):
    threads_n, per_thread = 4, 15
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with session_scope(engine) as s:
                    actor = Actor.system(f"writer-{t}")
                    audit.record_batch(s, [
                        (actor, "test.concurrent", "thing", f"{t}-{i}-a", None, {"i": i}),
                        (actor, "test.concurrent", "thing", f"{t}-{i}-b", None, {"i": i}),
                    ])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    total = threads_n * per_thread * 2
    res = verify(engine)
    assert (res.ok, res.checked) == (True, total), res
    with session_scope(engine, write=False) as s:
        ids = s.execute(text("SELECT id FROM audit_event ORDER BY id")).scalars().all()
        prevs = s.execute(text("SELECT prev_hash FROM audit_event")).scalars().all()
        head = s.execute(text("SELECT last_id, count FROM audit_head")).one()
    assert ids == list(range(1, total + 1))
    assert len(set(prevs)) == total  # no two events share a predecessor: no fork
    assert tuple(head) == (total, total)
