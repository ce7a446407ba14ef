"""The `restitution` command line.

Each command group lives in its own module with a ``register(app)`` function. Modules must be
cheap to import: anything heavy (Prefect, web3, the API) is imported inside the command body.

Registration is lazy: ``restitution blocked list`` imports ``cli.blocked`` and nothing else of
``cli/`` (the other modules' imports and Typer's building of their commands are a noticeable
share of a short command). ``--help`` and a mistyped name load every module, as before.

The database-only command groups (:data:`QUICK_EXIT`) start with the cyclic garbage collector
rarely looking at old objects, and leave without tearing the interpreter down (:func:`leave`):
the many objects that SQLAlchemy, SQLModel, Pydantic and the models leave behind live until
the end, and both the collector's repeated passes over them and freeing them one by one at
exit cost CPU to no purpose (measured by bench/cli_start.py).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
import threading
from typing import NoReturn

import typer
from typer.core import TyperGroup

# The commands in the order of `restitution --help` (single commands first, then the groups,
# as Typer listed them when every module registered eagerly) and the module of each.
COMMANDS: dict[str, str] = {
    "demo": "cli.demo",
    "serve": "cli.serve",
    "worker": "cli.worker",
    "verify": "cli.verify",
    "plan": "cli.plan",
    "notify": "cli.notify",
    "cases": "cli.cases",
    "ledger": "cli.ledger",
    "blocked": "cli.blocked",
    "users": "cli.users",
    "claims": "cli.claims_cmd",
    "rounds": "cli.rounds",
    "payouts": "cli.payouts",
    "audit": "cli.audit_cmd",
}

# Every module with a ``register(app)``.
_MODULES = list(dict.fromkeys(COMMANDS.values()))

# The command groups that only read or write the database (no flow, chain, server or thread of
# their own): run from the console, they end through :func:`leave`.
QUICK_EXIT = frozenset({"cases", "ledger", "blocked", "users", "audit"})

# Their collector thresholds: young garbage is still collected (every 10,000 allocations net,
# not 700), objects that survive it are looked at again only every 100 such passes, and the
# objects of the start-up, which outlive them, practically never (Python's: 700, 10, 10).
QUICK_GC_THRESHOLDS = (10_000, 100, 1_000)


def _noop() -> None:
    pass


def load_commands(module: str) -> dict:
    """The Click commands that ``module.register`` adds, built as Typer builds them."""
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    sub.callback()(_noop)  # always a group, even for a module with one command
    importlib.import_module(module).register(sub)
    return dict(typer.main.get_group(sub).commands)


class LazyGroup(TyperGroup):
    """The root group: a command's module is imported when that command is looked up."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS) + [n for n in self.commands if n not in COMMANDS]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            for name, command in load_commands(COMMANDS[cmd_name]).items():
                self.commands.setdefault(name, command)
        return self.commands.get(cmd_name)

    def load_all(self) -> None:
        for name in COMMANDS:
            self.get_command(None, name)

    def resolve_command(self, ctx, args):
        if args and args[0] not in COMMANDS and args[0] not in self.commands:
            self.load_all()  # an unknown name: every command, for "Did you mean …?"
        return super().resolve_command(ctx, args)


def leave(code: int) -> NoReturn:
    """Exit with ``code`` as ``sys.exit`` would, minus the interpreter's teardown.

    What a user or the database can tell apart still happens, in the interpreter's order: other
    threads are waited for, the database connections closed, ``atexit`` handlers run (logging's
    among them) and the standard streams flushed (a failed flush exits 120, as Python does).
    Only the freeing of every module and object is skipped: the operating system does it.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    db = sys.modules.get("claims.db")
    if db is not None:
        db.dispose_engines()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


class Restitution(typer.Typer):
    """The root app; called from the console (``app()``), a :data:`QUICK_EXIT` command ends
    through :func:`leave`. Tests' ``CliRunner`` does not come this way."""

    def __call__(self, *args, **kwargs):
        argv = args[0] if args else kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        quick = bool(argv) and argv[0] in QUICK_EXIT
        if quick:
            gc.set_threshold(*QUICK_GC_THRESHOLDS)
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            if quick and isinstance(exc.code, int):
                leave(exc.code)
            raise


app = Restitution(
    name="restitution",
    help="Return recovered USDT to the victims of pyramid schemes.",
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(_noop)


def main() -> None:  # pragma: no cover - console entry point
    app()
