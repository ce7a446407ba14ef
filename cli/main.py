"""The `restitution` command line.

Each command group lives in its own module with a ``register(app)`` function. Modules must be
cheap to import: anything heavy (Prefect, web3, the API) is imported inside the command body.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="restitution",
    help="Return recovered USDT to the victims of pyramid schemes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `restitution --help`.
_MODULES = [
    "cli.demo",
    "cli.serve",
    "cli.worker",
    "cli.cases",
    "cli.ledger",
    "cli.blocked",
    "cli.users",
    "cli.claims_cmd",
    "cli.verify",
    "cli.rounds",
    "cli.payouts",
    "cli.plan",
    "cli.notify",
    "cli.audit_cmd",
]

for _name in _MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()
