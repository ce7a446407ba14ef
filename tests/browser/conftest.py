"""Browser tests: a real server (uvicorn in a thread on a free loopback port, a temporary
SQLite database) driven by Playwright with Debian's ``chromium``.

- The tests skip, saying why, only when no ``chromium`` binary is installed (``.ci/run``
  installs Debian's package) or the ``playwright`` package is missing.
- Rounds are prepared without a Prefect server (``api.routes.rounds.PREPARE`` is
  ``claims.rounds.prepare_round_committed``, the same work); released payouts run for real
  in the server's background on the in-process EVM chain.
- Seeding goes through ``claims/``: ``cases.create_case``, ``ledger.import_ledger``,
  ``staff.create_user``, ``intake.prepare`` + ``intake.file_claim_tx``,
  ``verification.match_batch`` + ``decide_batch``.
- Screenshots go to ``test-artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "browser test password 1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
_serial = itertools.count(1)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("RESTITUTION_CHROMIUM"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    db_url: str

    def engine(self):
        from claims.db import get_engine

        return get_engine(self.db_url)


@pytest.fixture(scope="module")
def server():
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    if chromium_path() is None:
        pytest.skip("no chromium binary: install Debian's package (apt-get install chromium); "
                    ".ci/run does it")
    import uvicorn

    tmp = Path(tempfile.mkdtemp(prefix="restitution-browser-"))
    db_url = f"sqlite:///{tmp / 'browser.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTITUTION_DATABASE_URL", db_url)
    mp.setenv("RESTITUTION_RATE_LIMIT", "off")
    mp.setenv("RESTITUTION_MAILDIR", str(tmp / "mail"))
    mp.setenv("RESTITUTION_DOCUMENTS_DIR", str(tmp / "documents"))
    from claims.settings import reset_settings

    reset_settings()
    from api.app import create_app
    from api.routes import rounds as rounds_api
    from claims.rounds import prepare_round_committed

    mp.setattr(rounds_api, "PREPARE", prepare_round_committed)
    # cheap argon2 (the sign-in policy is under test elsewhere, argon2's cost is not)
    from argon2 import PasswordHasher

    from claims import crypto

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    mp.setattr(crypto, "_hasher", lambda: hasher)
    app = create_app()
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", access_log=False)
    srv = uvicorn.Server(config)
    srv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=srv.run, name="uvicorn-browser-tests", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield Server(f"http://127.0.0.1:{port}", db_url)
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        mp.undo()
        reset_settings()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True,
                              args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no cookies) per test, phone-wide or desktop by marker."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def shot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def _shot(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return _shot


# ------------------------------------------------------------------ seeding through claims/


@pytest.fixture
def seed(server):
    return Seeder(server)


class Seeder:
    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def engine(self):
        return self.server.engine()

    def case(self, code: str, name: str | None = None) -> str:
        from claims.cases import create_case
        from claims.db import session_scope

        with session_scope(self.engine) as s:
            create_case(s, code, name or f"Scheme {code}")
        return code

    def ledger(self, code: str, accounts: dict[str, tuple[str, str]]) -> None:
        """``{account_id: (deposits, withdrawals)}`` as USDT strings."""
        from claims.ledger import import_ledger

        lines = ["account_id,entry_type,amount,occurred_at"]
        for acc, (dep, wd) in accounts.items():
            lines.append(f"{acc},deposit,{dep},2023-01-10T10:00:00+00:00")
            if wd != "0":
                lines.append(f"{acc},withdrawal,{wd},2023-03-01T10:00:00+00:00")
        import_ledger(self.engine, code, io.BytesIO(("\n".join(lines) + "\n").encode()))

    def staff(self, role: str, username: str | None = None) -> str:
        from claims.audit import Actor
        from claims.db import session_scope
        from claims.staff import create_user

        username = username or f"{role}{next(_serial)}"
        with session_scope(self.engine) as s:
            create_user(s, username, role, PASSWORD, actor=Actor.operator())
        return username

    def claim(self, code: str, *, scheme_account: str | None = None, claimed: str = "1000",
              network: str = "tron", verify: bool = True) -> str:
        """File a claim through intake and verify it (flagged or approved by the rules)."""
        import datetime as dt
        import secrets

        from claims import intake, verification
        from claims.db import session_scope
        from claims.validators import make_eth_address, make_iin, make_tron_address

        n = next(_serial)
        birth = dt.date(1970, 1, 1) + dt.timedelta(days=n * 37 % 9000)
        address = (make_eth_address(secrets.token_bytes(20)) if network == "ethereum"
                   else make_tron_address(secrets.token_bytes(20)))
        prepared = intake.prepare({
            "case_id": code, "full_name": f"Browser Victim {n} {secrets.token_hex(2)}",
            "iin": make_iin(birth, "male", 1000 + n), "email": f"victim{n}-{secrets.token_hex(3)}@example.org",
            "phone": "+77011234567", "language": "en", "scheme_account": scheme_account,
            "claimed_amount": claimed, "payout_network": network, "payout_address": address,
            "consent": True,
        })
        filed = intake.file_claim_tx(prepared, engine=self.engine)
        if verify:
            with session_scope(self.engine) as s:
                ids = [filed.claim.id]
                verification.match_batch(s, ids)
                verification.decide_batch(s, ids)
        return filed.reference

    def status(self, reference: str) -> str:
        from sqlalchemy import select

        from claims.db import session_scope
        from claims.models import Claim

        with session_scope(self.engine, write=False) as s:
            return s.execute(select(Claim.status).where(Claim.reference == reference)
                             ).scalar_one()
