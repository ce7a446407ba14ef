"""Benchmark: claim filings per second over HTTP, beside a minimal FastAPI handler.

    .venv/bin/python bench/intake.py [--claims N] [--concurrency C] [--workers W] [--pg URL] [--quick]

For each database (SQLite always; PostgreSQL when ``--pg URL`` or ``RESTITUTION_TEST_DATABASE_URL``
is given — a throw-away database is created on that server and dropped afterwards) it starts
two servers on loopback, each with W uvicorn workers (default 2), one after the other:

* ``restitution serve --workers W --no-background`` — the real ``POST /api/v1/claims``: the
  domain validators, the IIN's keyed hash and Fernet ciphertext, a duplicate check, the claim,
  its ``received`` notification and its audit event (HMAC chain, head row locked) in one
  transaction;
* a minimal FastAPI app with one handler that parses the same JSON body and inserts the same
  ``claim`` row (same engine settings, one transaction per request in a worker thread, writers
  queued by the same SQLite write gate; no validation, no audit, no outbox).

The same N distinct filings (valid IINs, TRON addresses) go to each through C concurrent
keep-alive HTTP/1.1 connections, after a warm-up. The load generator is as light as ``wrk``
(a small asyncio protocol on uvloop sending pre-built requests and reading only the status
line and ``Content-Length`` of each answer; its CPU per request is printed): on a small
machine an HTTP client library would take more CPU than the servers it measures. It prints
claims/s, p50 and p99 latency of each, and the ratio real/minimal. Goals: ≥ 1,000 claims/s
and ≥ 0.5× the minimal handler. Rate limiting is off (``RESTITUTION_RATE_LIMIT=off``), as
for load tests.

The load generator runs on the same machine (it takes CPU from the servers): compare the two
numbers of one run rather than runs on different machines. Because wall-clock rates depend on
what else the machine runs, the bench also prints the servers' CPU time per claim (psutil,
all worker processes): a load-independent cost, and ``cores / CPU per claim`` the rate an idle
machine of that many cores could reach when CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from starlette.requests import Request  # noqa: E402  (resolved by FastAPI in minimal_app)

CASE = "bench-case"


# ----------------------------------------------------------------------------- the minimal app


def minimal_app():
    """A FastAPI app that inserts the claim row as given: the floor for one filing."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from sqlalchemy import insert, select

    from claims.crypto import new_token, token_hash
    from claims.db import get_engine, session_scope
    from claims.db.gate import write_gate
    from claims.intake import new_reference
    from claims.models import Case, Claim, utcnow

    app = FastAPI()
    engine = get_engine()
    with session_scope(engine, write=False) as s:
        case_id = s.execute(select(Case.id).where(Case.code == CASE)).scalar_one()
    table = Claim.__table__

    def store(data: dict) -> dict:
        now = utcnow()
        token = new_token()
        ref = new_reference()
        row = {
            "case_id": case_id, "reference": ref, "status": "submitted",
            "full_name": data["full_name"], "name_key": data["full_name"].lower(),
            "iin_hash": data["iin"], "iin_encrypted": data["iin"].encode(),
            "iin_masked": data["iin"][:2] + "******" + data["iin"][-4:],
            "birth_date": dt.date.fromisoformat(data["date_of_birth"]),
            "date_of_birth": dt.date.fromisoformat(data["date_of_birth"]),
            "email": data["email"], "email_key": data["email"].lower(), "phone": data["phone"],
            "language": data["language"], "scheme_account": None,
            "claimed_amount": 1, "evidence_tx_hashes": [], "payout_network": data["payout_network"],
            "payout_address": data["payout_address"], "payout_address_key": data["payout_address"],
            "access_token_hash": token_hash(token), "consent_at": now, "source": "web",
            "version": 1, "created_at": now, "updated_at": now,
        }
        # The same writer queueing as the real path (an in-process lock and an flock on SQLite)
        # so that the floor is not a strawman drowning in SQLite's busy-wait sleeps.
        with write_gate(engine), session_scope(engine) as s:
            s.connection().execute(insert(table), row)
        return {"reference": ref, "status": "submitted", "access_token": token, "warnings": []}

    @app.post("/api/v1/claims", status_code=201)
    async def file(request: Request):
        data = json.loads(await request.body())
        return JSONResponse(await run_in_threadpool(store, data), status_code=201)

    return app


# ----------------------------------------------------------------------------- load


def make_bodies(n: int, seed: int = 1) -> list[bytes]:
    from claims.validators import make_iin, make_tron_address

    bodies = []
    base = dt.date(1950, 1, 1)
    for k in range(n):
        birth = base + dt.timedelta(days=(k * 7) % 20000)
        serial = (k // 2857) % 9000 + seed * 10
        bodies.append(json.dumps({
            "case_id": CASE,
            "full_name": f"Bench Claimant {k}",
            "iin": make_iin(birth, "male" if k % 2 else "female", serial),
            "date_of_birth": birth.isoformat(),
            "email": f"bench{seed}-{k}@example.kz",
            "phone": "+77012345678",
            "language": ("kk", "ru", "en")[k % 3],
            "claimed_amount": f"{100 + k % 5000}.5",
            "payout_network": "tron",
            "payout_address": make_tron_address((seed * 10_000_000 + k + 1).to_bytes(20, "big")),
            "consent": True,
        }).encode())
    return bodies


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends pre-built requests one at a time and
    reads only what it needs of each answer: the status code and ``Content-Length``."""

    def __init__(self) -> None:
        self.transport = None
        self.buf = bytearray()
        self.waiter = None
        self.lost = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.waiter is None or self.waiter.done():  # nothing asked: keep it for later
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:  # chunked or close-delimited: the servers here never answer so
            self.waiter.set_exception(RuntimeError("answer without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:stop if stop > 0 else len(head)])
        if len(buf) < end + 4 + length:
            return
        status = int(buf[9:12])
        del buf[:end + 4 + length]
        self.waiter.set_result(status)

    async def request(self, raw: bytes) -> int:
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _requests(host: str, port: int, bodies: list[bytes]) -> list[bytes]:
    head = (f"POST /api/v1/claims HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: ").encode()
    return [head + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]


async def _load(base_url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], dict]:
    """C keep-alive connections, each sending its next filing when the last is answered —
    the load of ``wrk`` without pipelining, at a small fraction of an HTTP library's CPU."""
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    host, port = url.hostname, url.port
    queue = _requests(host, port, bodies)
    queue.reverse()
    latencies: list[float] = []
    codes: dict[int | str, int] = {}
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Conn, host, port))[1] for _ in range(concurrency)]
    clock = time.perf_counter

    async def worker(conn: _Conn) -> None:
        while queue:
            raw = queue.pop()
            t = clock()
            try:
                code: int | str = await conn.request(raw)
            except (OSError, RuntimeError) as exc:  # counted, not retried (no double filing)
                code = type(exc).__name__
                latencies.append(clock() - t)
                codes[code] = codes.get(code, 0) + 1
                return
            latencies.append(clock() - t)
            codes[code] = codes.get(code, 0) + 1

    start = clock()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = clock() - start
    if queue:  # every connection broke: say so rather than report a rate for what was not sent
        codes["not sent"] = len(queue)
    for c in conns:
        c.transport.close()
    return elapsed, latencies, codes


def _run(coro):
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the uvicorn workers)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def measure(base_url: str, bodies: list[bytes], warmup: list[bytes], concurrency: int,
            pid: int) -> dict:
    _run(_load(base_url, warmup, concurrency))
    cpu0 = _cpu_seconds(pid)
    client0 = time.process_time()
    elapsed, lat, codes = _run(_load(base_url, bodies, concurrency))
    server_cpu = _cpu_seconds(pid) - cpu0
    client_cpu = time.process_time() - client0
    lat.sort()
    return {
        "rate": len(bodies) / elapsed,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "cpu_ms": server_cpu / len(bodies) * 1000,
        "client_cpu_ms": client_cpu / len(bodies) * 1000,
        "codes": codes,
    }


# ----------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.2)


def start_server(kind: str, env: dict, workers: int, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    if kind == "restitution":
        cmd = [str(Path(sys.executable).parent / "restitution"), "serve", "--port", str(port),
               "--workers", str(workers), "--no-background", "--log-level", "warning",
               "--timeout-keep-alive", "60"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "--factory",
               "intake:minimal_app", "--port", str(port), "--workers", str(workers),
               "--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "60"]
    proc = subprocess.Popen(cmd, env={**env, "PYTHONPATH": str(ROOT)}, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/openapi.json", proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()


def prepare_database(url: str, env: dict) -> None:
    os.environ.update(env)
    from claims.cases import create_case
    from claims.db import dispose_engines, get_engine, session_scope
    from claims.settings import reset_settings

    reset_settings()
    dispose_engines()
    with session_scope(get_engine(url)) as s:
        create_case(s, CASE, "Benchmark case")
    dispose_engines()


def count_rows(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        out = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
               for t in ("claim", "notification", "audit_event")}
    engine.dispose()
    return out


def run_backend(name: str, url: str, workdir: Path, args) -> list[dict]:
    env = {
        **os.environ,
        "RESTITUTION_DATABASE_URL": url,
        "RESTITUTION_RATE_LIMIT": "off",
        "RESTITUTION_VAR_DIR": str(workdir / "var"),
        "RESTITUTION_DOCUMENTS_DIR": str(workdir / "documents"),
    }
    prepare_database(url, env)
    rows = []
    for kind, seed in (("minimal", 1), ("restitution", 2)):
        bodies = make_bodies(args.claims + args.warmup, seed)
        proc, base = start_server(kind, env, args.workers, workdir)
        try:
            m = measure(base, bodies[args.warmup:], bodies[:args.warmup], args.concurrency,
                        proc.pid)
        finally:
            stop(proc)
        rows.append({"backend": name, "server": kind, **m})
    counts = count_rows(url)
    return rows, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pg", default=os.environ.get("RESTITUTION_TEST_DATABASE_URL"))
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--quick", action="store_true", help="1,000 claims")
    args = ap.parse_args()
    if args.quick:
        args.claims, args.warmup = 1000, 100

    print(f"intake bench: {args.claims} filings, {args.concurrency} concurrent clients, "
          f"{args.workers} uvicorn workers per server, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="restitution-bench-"))
    try:
        sqlite_dir = tmp / "sqlite"
        sqlite_dir.mkdir()
        rows, counts = run_backend("sqlite", f"sqlite:///{sqlite_dir / 'bench.db'}", sqlite_dir, args)
        results += rows
        print(f"  sqlite rows after the run: {counts}")
        if args.pg and not args.no_pg:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            name = f"restitution_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
            pg_dir = tmp / "pg"
            pg_dir.mkdir()
            try:
                rows, counts = run_backend("postgresql", url, pg_dir, args)
                results += rows
                print(f"  postgresql rows after the run: {counts}")
            finally:
                from claims.db import dispose_engines

                dispose_engines()
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'backend':<11} {'server':<12} {'claims/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'server CPU ms/claim':>20} {'client CPU ms/claim':>20}  answers")
    for r in results:
        print(f"{r['backend']:<11} {r['server']:<12} {r['rate']:>9.0f} {r['p50']:>8.1f} "
              f"{r['p99']:>8.1f} {r['cpu_ms']:>20.2f} {r['client_cpu_ms']:>20.2f}  {r['codes']}")
    print()
    for backend in dict.fromkeys(r["backend"] for r in results):
        real = next(r for r in results if r["backend"] == backend and r["server"] == "restitution")
        floor = next(r for r in results if r["backend"] == backend and r["server"] == "minimal")
        ratio = real["rate"] / floor["rate"]
        goal = "meets" if real["rate"] >= 1000 and ratio >= 0.5 else "misses"
        print(f"{backend}: restitution {real['rate']:.0f} claims/s = {ratio:.2f}x the minimal "
              f"handler ({floor['rate']:.0f}/s); goal >= 1000/s and >= 0.5x: {goal}")
        print(f"{backend}: server CPU per claim {real['cpu_ms']:.2f} ms vs {floor['cpu_ms']:.2f} ms "
              f"(CPU ratio {floor['cpu_ms'] / real['cpu_ms']:.2f}x); CPU-bound capacity "
              f"~{1000 * (os.cpu_count() or 1) / real['cpu_ms']:.0f} claims/s on "
              f"{os.cpu_count()} idle cores")


if __name__ == "__main__":
    main()
