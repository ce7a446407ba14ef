"""Scale-out, end to end: ``prefect server start`` on loopback against PostgreSQL, two
``restitution worker`` processes serving the deployments, and a small case run through
them — verification, the round, the payouts (custodian rail) and the notifications — with
the invariants checked: each claim paid at most once, the confirmed total equal to the
allocation, the round's sum balanced, every notice delivered exactly once, the audit chain
intact.

Needs PostgreSQL (``RESTITUTION_TEST_DATABASE_URL``, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``): both our database and Prefect's are
created fresh on that server and dropped afterwards. It runs for minutes.
"""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("RESTITUTION_TEST_DATABASE_URL")
pytestmark = pytest.mark.skipif(
    not PG_ADMIN_URL,
    reason="scale-out test needs PostgreSQL: set RESTITUTION_TEST_DATABASE_URL "
           "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CODE = "scale-case"
OTHER = "scale-other"
SERVER_START = 240.0
RUN_TIMEOUT = 240.0


def _bench():
    """bench/pipeline.py's stage helpers (case set-up, filing, decisions, custodian)."""
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the process group we started (the server spawns children), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture
def pg_databases():
    """Two fresh PostgreSQL databases: ours (schema at head) and one for Prefect's server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from claims.db import dispose_engines, ensure_schema, make_engine

    tag = uuid.uuid4().hex[:10]
    ours, prefects = f"restitution_scale_{tag}", f"prefect_scale_{tag}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    base = make_url(PG_ADMIN_URL)
    created = []
    try:
        with admin.connect() as conn:
            for name in (ours, prefects):
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        url = base.set(database=ours).render_as_string(hide_password=False)
        engine = make_engine(url)
        ensure_schema(engine)
        engine.dispose()
        prefect_url = base.set(drivername="postgresql+asyncpg", database=prefects) \
            .render_as_string(hide_password=False)
        yield url, prefect_url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _wait_health(api: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START
    while True:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"prefect server not healthy after {SERVER_START:.0f} s:\n{_tail(log)}")
        time.sleep(0.5)


def _wait_deployments(workers: list[subprocess.Popen], logs: list[Path]) -> None:
    """Until the four deployments are registered (the workers' ``serve`` did it)."""
    from prefect.client.orchestration import get_client

    names = ["verify-claims/restitution", "prepare-round/restitution",
             "execute-payouts/restitution", "deliver-notifications/restitution"]
    deadline = time.monotonic() + SERVER_START
    with get_client(sync_client=True) as client:
        while True:
            for w, log in zip(workers, logs):
                if w.poll() is not None:
                    pytest.fail(f"a worker exited with {w.returncode}:\n{_tail(log)}")
            found = 0
            for name in names:
                try:
                    client.read_deployment_by_name(name)
                    found += 1
                except Exception:  # noqa: BLE001 - not registered yet
                    break
            if found == len(names):
                return
            if time.monotonic() > deadline:
                pytest.fail("deployments not registered:\n" + "\n".join(_tail(x) for x in logs))
            time.sleep(1)


def _wait_runs(ids, logs: list[Path]) -> list:
    """Wait until every flow run is final; returns the flow runs (failing on any not
    Completed)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                bad = [r for r in runs if not r.state.is_completed()]
                if bad:
                    pytest.fail(f"flow runs not completed: {[(r.name, r.state) for r in bad]}\n"
                                + "\n".join(_tail(x) for x in logs))
                return runs
            if time.monotonic() > deadline:
                pytest.fail(f"flow runs not final after {RUN_TIMEOUT:.0f} s: "
                            f"{[(r.name, r.state and r.state.type) for r in runs]}\n"
                            + "\n".join(_tail(x) for x in logs))
            time.sleep(0.5)


def test_case_end_to_end_through_deployments_on_two_workers(pg_databases, tmp_path, monkeypatch):
    from sqlalchemy import func, select

    from claims import audit
    from claims.db import dispose_engines, get_engine, session_scope
    from claims.models import Claim, DistributionRound, Notification, Payout
    from claims.settings import reset_settings

    bench = _bench()
    url, prefect_db = pg_databases
    maildir = tmp_path / "mail"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base_env.update({
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PYTHONPATH": str(ROOT),
    })
    server_env = {**base_env, "PREFECT_HOME": str(tmp_path / "prefect-server"),
                  "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db,
                  "PREFECT_UI_ENABLED": "false"}
    worker_env = {**base_env, "PREFECT_API_URL": api,
                  "RESTITUTION_DATABASE_URL": url, "RESTITUTION_MAILDIR": str(maildir),
                  "RESTITUTION_DOCUMENTS_DIR": str(tmp_path / "documents")}

    monkeypatch.setenv("RESTITUTION_DATABASE_URL", url)
    monkeypatch.setenv("RESTITUTION_MAILDIR", str(maildir))
    monkeypatch.setenv("PREFECT_API_URL", api)
    dispose_engines()
    reset_settings()

    server = None
    workers: list[subprocess.Popen] = []
    logs = [tmp_path / "server.log", tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    handles = []
    try:
        # ---- Prefect's server on PostgreSQL, two workers
        handles.append(logs[0].open("wb"))
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, cwd=tmp_path, stdout=handles[-1], stderr=subprocess.STDOUT,
            start_new_session=True)

        # the case, meanwhile: ledger, staff, filings straight into our database
        from cli.demo_data import generate

        engine = get_engine()
        data = generate(40, seed=11)
        bench.all_tron(data)
        actors = bench.setup_case(engine, CODE, data.ledger_csv)["actors"]
        other = generate(20, seed=12)
        bench.all_tron(other)
        from claims import cases, ledger
        from claims.audit import Actor

        with session_scope(engine) as s:
            cases.create_case(s, OTHER, "Second case", actor=Actor.operator())
        ledger.import_ledger(engine, OTHER, io.StringIO(other.ledger_csv),
                             actor=Actor.operator())
        assert bench.file_claims(engine, CODE, data.victims) == 40
        assert bench.file_claims(engine, OTHER, other.victims) == 20

        _wait_health(api, server, logs[0])
        for i in (1, 2):
            handles.append(logs[i].open("wb"))
            workers.append(subprocess.Popen(
                [str(BIN / "restitution"), "worker", "--limit", "2"],
                env={**worker_env, "PREFECT_HOME": str(tmp_path / f"prefect-worker-{i}")},
                cwd=ROOT, stdout=handles[-1], stderr=subprocess.STDOUT, start_new_session=True))

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            _wait_deployments(workers, logs[1:])
            from prefect.deployments import run_deployment

            from flows.deployments import DEPLOYMENT

            def start(flow_name: str, parameters: dict, idempotency_key: str):
                """A run of the deployment ``<flow name>/restitution``, not waited for."""
                return run_deployment(f"{flow_name}/{DEPLOYMENT}", parameters=parameters,
                                      timeout=0, idempotency_key=idempotency_key)

            # ---- verification of both cases at once (two runs, one per case)
            run_a = start("verify-claims", {"case_code": CODE}, idempotency_key=f"verify-{CODE}")
            again = start("verify-claims", {"case_code": CODE}, idempotency_key=f"verify-{CODE}")
            assert again.id == run_a.id  # the idempotency key: one run, not two
            run_b = start("verify-claims", {"case_code": OTHER}, idempotency_key=f"verify-{OTHER}")
            _wait_runs([run_a.id, run_b.id], logs)
            with session_scope(engine, write=False) as s:
                pending = s.execute(select(func.count()).select_from(Claim).where(
                    Claim.status.in_(("submitted", "verifying")))).scalar_one()
            assert pending == 0

            # ---- caseworker decisions (directly), the round through its deployment
            decided = bench.decide_flagged(engine, CODE, actors["alice"])
            assert decided["approve"] + decided["reject"] > 0
            alice = actors["alice"]
            prep = start("prepare-round", {"case_code": CODE, "pool": "545000",
                                           "actor_name": alice.name, "actor_role": alice.role,
                                           "actor_staff_id": alice.staff_id},
                         idempotency_key=f"prepare-{CODE}-1")
            _wait_runs([prep.id], logs)
            with session_scope(engine, write=False) as s:
                rid = s.execute(select(DistributionRound.id).where(
                    DistributionRound.status == "prepared")).scalar_one()
            release = bench.approve_and_release(engine, rid, actors["bob"], actors["carol"])
            assert release["rails"].keys() == {"custodian"}

            # ---- payouts: two runs of the same round at once (each payout exported once)
            pay = [start("execute-payouts", {"round_id": rid}, idempotency_key=f"pay-{rid}-{k}")
                   for k in (1, 2)]
            assert pay[0].id != pay[1].id
            _wait_runs([p.id for p in pay], logs)
            with session_scope(engine, write=False) as s:
                states = dict(s.execute(select(Payout.state, func.count())
                                        .where(Payout.round_id == rid)
                                        .group_by(Payout.state)).all())
            assert states == {"exported": release["payouts"]}, states
            custodian = bench.custodian_round_trip(engine, rid, actors["carol"], tmp_path)
            assert custodian["instructions"] == custodian["confirmed"] == release["payouts"]

            # ---- notifications: two runs at once (each notice delivered once)
            notes = [start("deliver-notifications", {}, idempotency_key=f"notify-{k}")
                     for k in (1, 2)]
            _wait_runs([x.id for x in notes], logs)

        # ---- invariants
        state = bench.outcome(engine, rid, maildir)  # asserts paid once, sums, audit, mail
        assert state["round_status"] == "settled"
        assert state["payouts_confirmed"] == release["payouts"]
        with session_scope(engine, write=False) as s:
            n_notes = s.execute(select(func.count()).select_from(Notification)).scalar_one()
            assert audit.verify_chain(s).ok
        assert state["notifications"] == {"sent": n_notes}
        assert state["maildir_files"] == n_notes
    finally:
        for w in workers:
            _stop(w)
        _stop(server)
        for h in handles:
            h.close()
        dispose_engines()
        reset_settings()
