"""The `restitution` root command: every command listed in its fixed order, each command's
module imported only when that command runs (CONTRACT.md "CLI"; issue 2, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_db_only_commands_import_only_their_module(db_url, tmp_path):
    """Through the real entry point, in a fresh interpreter: no Prefect, web3 or API, and of
    cli/ only the module of the command that runs."""
    script = textwrap.dedent("""
        import sys
        from cli.main import main
        for args in (["cases", "create", "kz", "--name", "KZ"],
                     ["blocked", "list"],
                     ["audit", "verify"]):
            sys.argv = ["restitution", *args]
            try:
                main()
            except SystemExit as e:
                assert not e.code, (args, e.code)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("prefect", "web3", "eth_tester", "eth_account", "fastapi", "uvicorn",
                        "rich", "alembic", "api", "flows"))
        print("HEAVY", heavy)
        print("CLI", sorted(m for m in sys.modules if m.startswith("cli.")))
    """)
    env = {**os.environ, "RESTITUTION_DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "HEAVY []"
    assert lines[-1] == "CLI ['cli.audit_cmd', 'cli.blocked', 'cli.cases', 'cli.common', 'cli.main']"
