"""Background processing for ``restitution serve`` (and ``restitution worker``):

every ``interval`` seconds, one pass that
1. verifies the new claims of every case (flow ``verify-claims``),
2. executes released payouts that are still pending or in flight (resuming interrupted runs),
3. delivers due notifications (flow ``deliver-notifications``).

Each step works on database state alone, so a pass may stop anywhere and the next one picks
up where it left; passes never overlap within a process. Errors are logged and retried on
the next pass, never fatal to the server.
"""

from __future__ import annotations

import logging
import threading

from claims.db import get_engine, session_scope
from claims.verification import pending_case_codes

log = logging.getLogger("restitution.background")

INTERVAL = 10.0


def cases_with_pending_claims(engine) -> list[str]:
    """The codes of the cases with claims to verify."""
    with session_scope(engine, write=False) as s:
        return pending_case_codes(s)


def one_pass(engine=None) -> dict:
    """Run each step once; returns what each did (for logs and tests)."""
    from claims.payouts import due_rounds, execute_in_background
    from flows.common import no_heartbeat
    from flows.notify import deliver_notifications
    from flows.verify import verify_claims

    engine = engine or get_engine()
    done: dict = {"verified": {}, "payouts": {}, "notifications": None}
    for code in cases_with_pending_claims(engine):
        try:
            with no_heartbeat():
                done["verified"][code] = verify_claims(code)
        except Exception:  # noqa: BLE001 - logged, retried next pass
            log.exception("verification of case %s failed; retrying next pass", code)
    # The same guarded executor the release endpoint starts (one run per round and process;
    # the flow ``execute-payouts`` runs the same code under Prefect for ``worker``).
    for round_id in due_rounds(engine):
        done["payouts"][round_id] = execute_in_background(round_id, engine)
    try:
        with no_heartbeat():
            done["notifications"] = deliver_notifications()
    except Exception:  # noqa: BLE001
        log.exception("notification delivery failed; retrying next pass")
    return done


def run(stop: threading.Event, interval: float = INTERVAL) -> None:
    """Loop until ``stop`` is set (``restitution serve``'s background thread)."""
    while not stop.is_set():
        try:
            one_pass()
        except Exception:  # noqa: BLE001
            log.exception("background pass failed")
        stop.wait(interval)
