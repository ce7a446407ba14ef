"""The `restitution` root command: every command listed in its fixed order, each command's
module imported only when that command runs (docs/operations.md; issue 2, item 8)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.main import _MODULES, COMMANDS, app, load_commands

ROOT = Path(__file__).resolve().parents[2]

# The order of `restitution --help` (single commands first, then the groups).
ORDER = ["demo", "serve", "worker", "verify", "plan", "notify", "cases", "ledger", "blocked",
         "users", "claims", "rounds", "payouts", "audit"]


def test_help_lists_every_command_in_order():
    res = CliRunner().invoke(app, ["--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    lines = [ln.strip("│ ").split(" ")[0] for ln in res.output.splitlines()]
    listed = [name for name in lines if name in COMMANDS]
    assert listed == ORDER
    assert "Return recovered USDT" in res.output
    root = typer.main.get_command(app)
    assert root.list_commands(None) == ORDER


def test_every_module_registers_exactly_its_commands():
    """The lazy table names each command's module: nothing missing, nothing stale."""
    found: dict[str, str] = {}
    for module in _MODULES:
        for name in load_commands(module):
            assert name not in found, f"{name} registered twice"
            found[name] = module
    assert found == COMMANDS


def test_a_lazily_loaded_command_behaves_as_registered():
    runner = CliRunner()
    res = runner.invoke(app, ["blocked", "--help"], terminal_width=120)
    assert res.exit_code == 0 and "add" in res.output and "remove" in res.output
    res = runner.invoke(app, ["plan", "--help"], terminal_width=120)
    assert res.exit_code == 0 and "--pool" in res.output
    res = runner.invoke(app, ["blockd"])
    assert res.exit_code == 2 and "Did you mean 'blocked'" in res.output


# The console script (pyproject.toml: restitution = "cli.main:app"), run in a fresh interpreter.
ENTRY = "import sys; from cli.main import app; sys.argv[0] = 'restitution'; app()"


def restitution(args: list[str], cwd: Path, prelude: str = ""):
    return subprocess.run([sys.executable, "-c", prelude + ENTRY, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# Printed at exit by an atexit handler (database-only commands leave through cli.main.leave,
# which must still run them): what the command imported.
REPORT_MODULES = textwrap.dedent("""
    import atexit, sys
    HEAVY = ("prefect", "web3", "eth_tester", "eth_account", "fastapi", "uvicorn", "rich",
             "alembic", "argon2", "cryptography", "api", "flows")
    @atexit.register
    def _report():
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
        print("CLI", sorted(m for m in sys.modules if m.startswith("cli.")))
""")


def test_db_only_commands_import_only_their_module(db_url, tmp_path):
    """Through the real entry point, each in a fresh interpreter: no Prefect, web3, API,
    Alembic (the schema is current), rich, argon2 or cryptography, and of
    cli/ only the module of the command that runs."""
    for args, module in ((["cases", "create", "kz", "--name", "KZ"], "cli.cases"),
                         (["blocked", "list"], "cli.blocked"),
                         (["ledger", "summary", "kz", "--json"], "cli.ledger"),
                         (["users", "list", "--json"], "cli.users"),
                         (["audit", "verify"], "cli.audit_cmd")):
        out = restitution(args, tmp_path, REPORT_MODULES)
        assert out.returncode == 0, (args, out.stderr)
        lines = out.stdout.strip().splitlines()
        assert lines[-2] == "HEAVY []", args
        assert lines[-1] == f"CLI {sorted(['cli.common', 'cli.main', module])}", args


def test_a_database_command_leaves_as_a_normal_exit_would(db_url, tmp_path):
    """Database-only commands skip the interpreter's teardown: their output, exit codes and
    writes are those of a normal exit, and atexit handlers still run."""
    out = restitution(["cases", "create", "kz", "--name", "KZ", "--json"], tmp_path,
                      "import atexit; atexit.register(print, 'atexit ran')\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "atexit ran"
    assert json.loads(out.stdout.splitlines()[-2])["code"] == "kz"

    # committed: another process sees the case (exit 1: a conflict), and the message is out
    again = restitution(["cases", "create", "kz", "--name", "KZ"], tmp_path)
    assert again.returncode == 1
    assert "kz" in again.stderr and "exist" in again.stderr

    bad = restitution(["blocked", "add", "not-an-address", "--reason", "r"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("address")
    usage = restitution(["blocked", "add"], tmp_path)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr

    addresses = [f"0x{i:040x}" for i in range(1, 4)]
    for a in addresses:
        assert restitution(["blocked", "add", a, "--reason", "r"], tmp_path).returncode == 0
    listed = restitution(["blocked", "list", "--json"], tmp_path)
    assert listed.returncode == 0
    assert [it["address"] for it in json.loads(listed.stdout)["items"]] == addresses


def test_settings_read_the_environment_in_any_letter_case(monkeypatch, tmp_path):
    """Settings through pydantic-settings: RESTITUTION_* in any letter case,
    keyword arguments first, values validated (a bad number names its field)."""
    import pydantic

    from claims.settings import Settings

    for key in ("RESTITUTION_SECRET_KEY", "RESTITUTION_PII_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RESTITUTION_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("restitution_token_ttl_seconds", "77")
    monkeypatch.setenv("RESTITUTION_PUBLIC_URL", "https://example.org/")
    monkeypatch.setenv("RESTITUTION_SMTP_URL", "")
    monkeypatch.setenv("RESTITUTION_NOT_A_SETTING", "x")
    s = Settings(maildir="m")
    assert (s.token_ttl_seconds, s.public_url, s.smtp_url, s.maildir) == (
        77, "https://example.org", "", "m")
    assert Settings(public_url="https://other.org/").public_url == "https://other.org"
    # keys not given are generated into var/ (0600) and reused
    assert (tmp_path / "var" / "secret_key").read_text().strip() == s.secret_key
    assert (tmp_path / "var" / "pii_key").stat().st_mode & 0o777 == 0o600
    assert Settings().pii_key == s.pii_key
    monkeypatch.setenv("RESTITUTION_TOKEN_TTL_SECONDS", "soon")
    monkeypatch.delenv("restitution_token_ttl_seconds")
    with pytest.raises(pydantic.ValidationError, match="token_ttl_seconds"):
        Settings()
