"""`restitution users …` and `--as` sign-in (cli/users.py, cli/common.sign_in_as)."""

from __future__ import annotations

import json

import pyotp
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from claims import staff
from claims.db import session_scope
from claims.errors import AuthFailed
from claims.models import AuditEvent, StaffUser

PW = "twelve chars or more"


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    from argon2 import PasswordHasher

    from claims import crypto

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(crypto, "_hasher", lambda: hasher)
    monkeypatch.delenv("RESTITUTION_PASSWORD", raising=False)
    monkeypatch.delenv("RESTITUTION_TOTP", raising=False)
    staff._unknown.clear()


@pytest.fixture
def run(db_url):
    from cli import users as cli_users

    app = typer.Typer()
    app.callback()(lambda: None)
    cli_users.register(app)
    runner = CliRunner()

    def _run(*args, password=None, stdin=None):
        env = {"RESTITUTION_PASSWORD": password} if password else {}
        return runner.invoke(app, ["users", *args], env=env, input=stdin)

    return _run


def rows(engine):
    with session_scope(engine, write=False) as s:
        return {u.username: u for u in s.execute(select(StaffUser)).scalars()}


def test_add_with_password_from_environment_and_stdin(run, engine):
    r = run("add", "alice", "--role", "caseworker", password=PW)
    assert r.exit_code == 0, r.output
    assert "created caseworker alice" in r.stdout and PW not in r.output
    r = run("add", "bob", "--role", "auditor", stdin=PW + "\n")
    assert r.exit_code == 0, r.output
    users = rows(engine)
    assert {n: u.role for n, u in users.items()} == {"alice": "caseworker", "bob": "auditor"}
    with session_scope(engine) as s:
        assert staff.authenticate(s, "bob", PW).role == "auditor"
    with session_scope(engine, write=False) as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.action == "staff.created")).scalars().all()
    assert [(e.subject_id, e.role) for e in events] == [("alice", "operator"), ("bob", "operator")]
    assert all(e.actor.startswith("operator:") for e in events)


@pytest.mark.parametrize("args, password, needle", [
    (["add", "alice", "--role", "caseworker"], "short", "password"),
    (["add", "alice", "--role", "boss"], PW, "boss"),
    (["add", "Alice Smith", "--role", "finance"], PW, "username"),
    (["add", "alice"], PW, "--role"),
])
def test_add_bad_input_exits_2_and_creates_nothing(args, password, needle, run, engine):
    r = run(*args, password=password)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert rows(engine) == {}


def test_add_without_any_password_exits_2(run, engine):
    r = run("add", "alice", "--role", "caseworker", stdin="")
    assert r.exit_code == 2 and "RESTITUTION_PASSWORD" in r.output
    assert rows(engine) == {}


def test_add_duplicate_exits_1(run):
    assert run("add", "alice", "--role", "finance", password=PW).exit_code == 0
    r = run("add", "alice", "--role", "admin", password=PW)
    assert r.exit_code == 1 and "already exists" in r.output


def test_add_totp_prints_the_enrolment_that_works(run, engine):
    r = run("add", "carol", "--role", "finance", "--totp", password=PW)
    assert r.exit_code == 0, r.output
    secret = next(line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                  if line.strip().startswith("secret:"))
    assert "otpauth://totp/" in r.stdout
    with session_scope(engine) as s:
        with pytest.raises(AuthFailed):
            staff.authenticate(s, "carol", PW)
    with session_scope(engine) as s:
        assert staff.authenticate(s, "carol", PW, totp=pyotp.TOTP(secret).now()).username == "carol"


def test_add_json(run):
    r = run("add", "dave", "--role", "admin", "--totp", "--json", password=PW)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"username", "role", "totp", "totp_secret", "totp_uri"}
    assert (out["username"], out["role"], out["totp"]) == ("dave", "admin", True)


def test_disable_enable_and_lock_out(run, engine):
    run("add", "erin", "--role", "caseworker", password=PW)
    assert run("disable", "erin").exit_code == 0
    with session_scope(engine) as s, pytest.raises(AuthFailed, match="disabled"):
        staff.authenticate(s, "erin", PW)
    assert run("enable", "erin").exit_code == 0
    with session_scope(engine) as s:
        user = s.execute(select(StaffUser)).scalar_one()
        user.failed_logins, user.locked_until = staff.LOCK_AFTER, staff.LOCKED_OUT
    listed = json.loads(run("list", "--json").stdout.strip().splitlines()[-1])
    assert listed["users"][0]["locked"] is True
    assert run("enable", "erin").exit_code == 0
    with session_scope(engine) as s:
        assert staff.authenticate(s, "erin", PW).username == "erin"
    with session_scope(engine, write=False) as s:
        actions = [e.action for e in s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()]
    assert actions == ["staff.created", "staff.disabled", "staff.enabled", "staff.enabled"]


def test_unknown_user_exits_2(run):
    for cmd in ("disable", "enable", "reset-password"):
        r = run(cmd, "nobody", password=PW)
        assert r.exit_code == 2, (cmd, r.output)
        assert "nobody" in r.output


def test_reset_password(run, engine):
    run("add", "frank", "--role", "finance", password=PW)
    with session_scope(engine) as s:
        old_token, _ = staff.issue_token(staff.authenticate(s, "frank", PW))
    assert run("reset-password", "frank", password="short").exit_code == 2
    r = run("reset-password", "frank", stdin="a brand new passphrase\n")
    assert r.exit_code == 0, r.output
    with session_scope(engine) as s, pytest.raises(AuthFailed):
        staff.authenticate(s, "frank", PW)
    with session_scope(engine) as s:
        assert staff.authenticate(s, "frank", "a brand new passphrase")
    with session_scope(engine, write=False) as s, pytest.raises(AuthFailed, match="password changed"):
        staff.staff_for_token(s, old_token)


def test_list(run):
    assert json.loads(run("list", "--json").stdout) == {"users": []}
    run("add", "gina", "--role", "auditor", password=PW)
    run("add", "abe", "--role", "caseworker", "--totp", password=PW)
    out = json.loads(run("list", "--json").stdout.strip().splitlines()[-1])
    assert [(u["username"], u["role"], u["totp"], u["disabled"], u["locked"])
            for u in out["users"]] == [("abe", "caseworker", True, False, False),
                                        ("gina", "auditor", False, False, False)]
    table = run("list")
    assert table.exit_code == 0 and "gina" in table.stdout and "active" in table.stdout


# ------------------------------------------------------------------ --as (cli.common.sign_in_as)


def test_sign_in_as_and_its_failures_are_counted(run, engine, monkeypatch):
    from cli.common import EXIT_AUTH, sign_in_as

    run("add", "hana", "--role", "caseworker", password=PW)
    monkeypatch.setenv("RESTITUTION_PASSWORD", PW)
    actor = sign_in_as("hana", "caseworker")
    assert (actor.name, actor.role) == ("hana", "caseworker") and actor.staff_id
    with pytest.raises(typer.Exit) as exc:
        sign_in_as("hana", "finance")
    assert exc.value.exit_code == EXIT_AUTH
    monkeypatch.setenv("RESTITUTION_PASSWORD", "wrong password!!")
    for _ in range(2):
        with pytest.raises(typer.Exit) as exc:
            sign_in_as("hana", "caseworker")
        assert exc.value.exit_code == EXIT_AUTH
    # counted although sign_in_as's session_scope rolled back
    assert rows(engine)["hana"].failed_logins == 2


def test_users_group_is_registered_in_the_cli():
    import typer

    from cli.main import app

    assert "users" in typer.main.get_command(app).list_commands(None)
