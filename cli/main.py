"""The `restitution` command line.

Each command group lives in its own module with a ``register(app)`` function. Modules must be
cheap to import: anything heavy (Prefect, web3, the API) is imported inside the command body.

Registration is lazy: ``restitution blocked list`` imports ``cli.blocked`` and nothing else of
``cli/`` (the other modules' imports and Typer's building of their commands cost ~50 ms, a
tenth of a short command). ``--help`` and a mistyped name load every module, as before.
"""

from __future__ import annotations

import importlib

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


app = typer.Typer(
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
