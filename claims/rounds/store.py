"""A round as stored: which statuses count, the money invariant, reading a round by id and who
may act on rounds (docs/lifecycle.md, "Rounds"; docs/allocation.md, "Round money")."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlmodel import Session

from claims.audit import Actor
from claims.db import get_one
from claims.errors import Forbidden, NotFound
from claims.models import DistributionRound, Role, RoundStatus

R = RoundStatus

#: Rounds whose allocations are commitments: they count as ``paid_before`` in later rounds
#: and take part in dispute settlements.
COUNTING = (R.approved.value, R.released.value, R.settled.value, R.stopped.value)

#: Allocation rows per INSERT batch, notices per outbox batch, plan lines per read.
INSERT_BATCH = 10_000

_ROUND_ID = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ROUND_ID = 2**31 - 1  # distribution_round.id is an INTEGER


class RoundInvariantError(RuntimeError):
    """A round whose money does not balance: a bug, never written."""


def check_invariant(rnd: DistributionRound) -> None:
    """``allocated + reserved + released + undistributed == pool``, nothing negative."""
    parts = (rnd.allocated, rnd.reserved, rnd.released, rnd.undistributed)
    if any(p < 0 for p in parts) or sum(parts) != rnd.pool:
        raise RoundInvariantError(
            f"round {rnd.id} does not balance: allocated {rnd.allocated} + reserved "
            f"{rnd.reserved} + released {rnd.released} + undistributed {rnd.undistributed} "
            f"!= pool {rnd.pool}"
        )


def require_caseworker(actor: Actor, doing: str) -> None:
    """``Forbidden`` unless ``actor`` is a signed-in caseworker (``doing``: for the message)."""
    if actor.role != Role.caseworker.value:
        raise Forbidden(f"only a caseworker may {doing}; you are {actor.role}")
    if actor.staff_id is None:
        raise Forbidden(f"only a signed-in caseworker may {doing}")


def parse_round_id(round_id: object) -> int:
    """A round id from the edge (a string or int) → int; anything else is ``NotFound``."""
    if isinstance(round_id, bool):
        raise NotFound("no such round")
    if isinstance(round_id, str) and _ROUND_ID.fullmatch(round_id):
        round_id = int(round_id)
    if isinstance(round_id, int) and 0 < round_id <= _MAX_ROUND_ID:
        return round_id
    raise NotFound("no such round")


def get_round(session: Session, round_id: object, *, lock: bool = False) -> DistributionRound:
    """The round ``round_id`` (``NotFound`` if none); ``lock``: its row locked for update."""
    rid = parse_round_id(round_id)
    return get_one(session, select(DistributionRound).where(DistributionRound.id == rid),
                   lock=lock, missing=f"no round {rid}")
