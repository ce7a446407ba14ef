"""What every part of the payouts package shares: the states and the moves between them,
the rails, the idempotency key of a payout, who may act, and the size of a bulk step.

See docs/payouts.md for the model (states, rails, attempts)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TypeVar

from claims.audit import Actor
from claims.errors import Forbidden, IllegalTransition, NotFound
from claims.models import PayoutState, RoundStatus

P = PayoutState
R = RoundStatus

STATES: tuple[str, ...] = tuple(s.value for s in PayoutState)
#: A release runs while any payout of the round is in one of these states.
ACTIVE = (P.pending.value, P.signed.value, P.broadcast.value)
#: A transaction carries these payouts (signed, perhaps sent): only the executor moves them.
IN_FLIGHT = (P.signed.value, P.broadcast.value)

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (P.pending.value, P.held.value),
        (P.held.value, P.pending.value),
        (P.pending.value, P.signed.value),
        (P.pending.value, P.exported.value),
        (P.pending.value, P.failed.value),  # refused before anything was sent
        (P.signed.value, P.broadcast.value),
        (P.signed.value, P.confirmed.value),  # mined before "broadcast" was recorded
        (P.signed.value, P.failed.value),
        (P.signed.value, P.pending.value),  # proven expired: a new attempt
        (P.broadcast.value, P.confirmed.value),
        (P.broadcast.value, P.failed.value),
        (P.broadcast.value, P.pending.value),  # proven expired: a new attempt
        (P.broadcast.value, P.signed.value),  # its batch reverted: halves signed anew
        (P.exported.value, P.confirmed.value),
        (P.exported.value, P.failed.value),
        (P.failed.value, P.pending.value),  # retry: a new attempt of the same payout
    }
)

RAIL_EVM = "evm"
RAIL_CUSTODIAN = "custodian"
EVM_NETWORKS = frozenset({"ethereum"})

#: Payouts per EVM transaction (one Disperse batch).
BATCH_SIZE = 200
#: Rows per bulk statement (inserts, ``IN`` lists, audit events and notices of a step).
INSERT_CHUNK = 5000

#: Open flags that stop a claim's payouts at signing (besides a status that is not payable).
BLOCKING_FLAGS = ("address_changed", "blocked_address")

FINANCE = "finance"

T = TypeVar("T")


def chunked(items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """``items`` in consecutive pieces of ``size`` (default :data:`INSERT_CHUNK`, read at
    each call so that a test can make the pieces small)."""
    size = size or INSERT_CHUNK
    for i in range(0, len(items), size):
        yield items[i : i + size]


def payout_key(round_id: int, claim_id: int) -> str:
    """The payout's idempotency key: one per (round, claim), the same on every release."""
    return hashlib.sha256(f"payout:{round_id}:{claim_id}".encode()).hexdigest()[:32]


def rail_for(network: str) -> str:
    """The rail that pays a network: the program's wallet for an EVM network, else a
    custodian."""
    return RAIL_EVM if network in EVM_NETWORKS else RAIL_CUSTODIAN


def check_move(src: str, dst: str) -> None:
    if (src, dst) not in ALLOWED:
        raise IllegalTransition(f"a payout cannot go from {src} to {dst}")


def require_finance(actor: Actor, doing: str) -> None:
    if actor.role != FINANCE:
        raise Forbidden(f"only finance may {doing}; you are {actor.role}")


def parse_payout_id(payout_id: object) -> int:
    """A payout (or mismatch) id from the edge (a string or int) → int; anything else is
    ``NotFound``."""
    if isinstance(payout_id, bool):
        raise NotFound("no such payout")
    if isinstance(payout_id, int) and payout_id > 0:
        return payout_id
    if isinstance(payout_id, str) and payout_id.isascii() and payout_id.isdigit() \
            and 0 < len(payout_id) <= 18 and payout_id[0] != "0":
        return int(payout_id)
    raise NotFound("no such payout")
