"""Running a released round's payouts on their rails (docs/payouts.md).

:func:`execute_round` runs a released round to the end and may be run again at any time
(after a crash, by the background pass of ``serve`` — :func:`due_rounds`,
:func:`execute_in_background` —, by ``payouts execute``, by the Prefect flow
``execute-payouts``, which calls :class:`RoundRun`'s steps as tasks): a ``stopped`` round is
left alone; EVM transactions in flight are resumed first
(:class:`~claims.payouts.rails.evm_exec.EvmExecutor`), the wallet's token and gas are checked
against the pending EVM total before any new transfer (an underfunded wallet stops the round
with the reason, nothing sent), then pending EVM payouts are paid in batches
(``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL) and pending custodian payouts exported
(:func:`~claims.payouts.rails.custodian.export_pending`). Each payout's address is read from
its claim when it is signed or exported; a claim that is not payable then (flagged, e.g.
after an address change; blocked address; another network) has its payout ``held`` with the
reason. Notices: ``paid`` (amount, transaction id, network) and ``failed`` go through the
outbox in the transaction that changes the payout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, exists, func, select

from claims import rounds
from claims.audit import Actor
from claims.db import get_engine, session_scope
from claims.gc_pause import gc_paused
from claims.models import ChainTx, DistributionRound, Payout, PayoutState, RoundStatus
from claims.money import format_amount
from claims.payouts.common import ACTIVE, BATCH_SIZE, RAIL_CUSTODIAN, RAIL_EVM
from claims.payouts.rails import custodian
from claims.payouts.rails.evm import ChainMismatch, default_rail
from claims.payouts.rails.evm_exec import EvmExecutor
from claims.payouts.reconciliation import maybe_settle, stop_round
from claims.payouts.release import finish_release

log = logging.getLogger("restitution.payouts")

P = PayoutState
R = RoundStatus

_FUNDED: set[tuple[str, str, int]] = set()
_FUNDED_LOCK = threading.Lock()


def fund_in_process(rail: Any, engine: Engine, round_id: int, needed: int) -> bool:
    """The embedded default: on the in-process chain, deploy the contracts and mint the
    round's pool to the payout wallet (once per round and process) when the wallet cannot
    cover ``needed``. Never on a real node. Returns whether it minted."""
    if not getattr(rail, "in_process", False):
        return False
    key = (str(engine.url), rail.chain_identity().genesis_hash, round_id)
    with _FUNDED_LOCK:
        if rail.token_address is not None and (
            key in _FUNDED or rail.balances()["token_micro"] >= needed
        ):
            return False
        with session_scope(engine, write=False) as s:
            pool = rounds.get_round(s, round_id).pool
        rail.bootstrap(max(pool, needed))
        _FUNDED.add(key)
        return True


@dataclass
class RunResult:
    """What one run did (counts of this run) and where the round stands after it."""

    round_id: int
    status: str = ""
    stopped: str | None = None
    confirmed: int = 0
    failed: int = 0
    held: int = 0
    exported: int = 0
    expired: int = 0
    transactions: int = 0
    batches: int = 0
    settled: bool = False
    funded: bool = False

    def add(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            if hasattr(self, k) and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if k == "round_id" else v) for k, v in self.__dict__.items()}


def round_pk(engine: Engine, round_id: object) -> int:
    """The id of round ``round_id`` (``NotFound`` for an unknown round)."""
    with session_scope(engine, write=False) as s:
        return rounds.get_round(s, round_id).id


def active_counts(engine: Engine, round_id: int) -> dict[str, int]:
    """Payouts of the round still to work on, by rail: ``evm`` (pending, signed, broadcast)
    and ``custodian`` (pending); ``reverted``: those left in a reverted batch."""
    with session_scope(engine, write=False) as s:
        rows = s.execute(
            select(Payout.rail, func.count()).where(
                Payout.round_id == round_id, Payout.state.in_(ACTIVE))
            .group_by(Payout.rail)
        ).all()
        reverted = s.execute(
            select(func.count()).select_from(Payout).join(ChainTx, ChainTx.id == Payout.chain_tx_id)
            .where(Payout.round_id == round_id, ChainTx.state == "reverted",
                   Payout.state == P.broadcast.value)
        ).scalar_one()
    out = {RAIL_EVM: 0, RAIL_CUSTODIAN: 0}
    out.update({k: int(v) for k, v in rows})
    out["reverted"] = int(reverted)
    return out


def work_left(engine: Engine, round_id: int) -> int:
    """How many payouts a run of the round has to work on (its progress bar's total)."""
    counts = active_counts(engine, round_id)
    return counts[RAIL_EVM] + counts[RAIL_CUSTODIAN] + counts["reverted"]


class RoundRun:
    """One run of :func:`execute_round`, step by step (the Prefect flow calls the steps as
    tasks): :meth:`start`, :meth:`evm_prepare`, :meth:`evm_batch` until it returns None,
    :meth:`custodian_batch` until it returns None, :meth:`finish`."""

    def __init__(self, engine: Engine, round_id: int, *, rail: Any = None,
                 batch_size: int = BATCH_SIZE, on_step: Callable[[str, dict], None] | None = None,
                 actor: Actor | None = None) -> None:
        self.engine = engine
        self.round_id = round_id
        self._rail = rail
        # The embedded default funds its in-process chain; a rail given by the caller is used
        # as it is (tests, a real node).
        self.auto_fund = rail is None
        self.batch_size = max(1, int(batch_size))
        self.on_step = on_step
        self.actor = actor or Actor.system("payouts")
        self.result = RunResult(round_id)
        self._executor: EvmExecutor | None = None

    # ---- helpers
    def status(self) -> tuple[str, str | None]:
        with session_scope(self.engine, write=False) as s:
            rnd = rounds.get_round(s, self.round_id)
            return rnd.status, rnd.stopped_reason

    def stop(self, reason: str) -> None:
        with session_scope(self.engine) as s:
            stop_round(s, self.round_id, reason, actor=self.actor)
        self.result.stopped = reason

    def rail(self) -> Any:
        if self._rail is None:
            self._rail = default_rail()
        return self._rail

    def executor(self) -> EvmExecutor:
        if self._executor is None:
            self._executor = EvmExecutor(self.engine, self.round_id, self.rail(),
                                         batch_size=self.batch_size, on_step=self.on_step,
                                         actor=self.actor)
        return self._executor

    def _stopped(self) -> bool:
        status, reason = self.status()
        self.result.status = status
        if status == R.stopped.value:
            self.result.stopped = reason or "stopped"
            return True
        return False

    # ---- steps
    def start(self) -> bool:
        """Whether there is anything to do (the round is released and not stopped)."""
        if self._stopped():
            return False
        return self.result.status == R.released.value

    def evm_prepare(self) -> bool:
        """Resume EVM transactions in flight, then check the wallet against the pending EVM
        total (stopping the round when it cannot pay). Whether new EVM batches may go."""
        counts = active_counts(self.engine, self.round_id)
        if not counts[RAIL_EVM] and not counts["reverted"]:
            return False
        ex = self.executor()
        try:
            self.result.add(ex.resume())
        except ChainMismatch as exc:
            self.stop(f"refusing to resume on another chain: {exc}")
            return False
        if self._stopped():
            return False
        count, total = ex.pending_totals()
        if count == 0:
            return False
        if self.auto_fund and fund_in_process(self.rail(), self.engine, self.round_id, total):
            self.result.funded = True
        problems = self.rail().check_funds(total, count, self.batch_size)
        if problems:
            self.stop("the payout wallet cannot pay the round's pending EVM payouts ("
                      f"{count}, {format_amount(total)} USDT): " + "; ".join(problems)
                      + ". Nothing was sent; top the wallet up, then restart the round.")
            return False
        if self.batch_size > 1 and self.rail().disperse_address is not None:
            self.rail().ensure_allowance()
        return True

    def evm_batch(self) -> dict[str, int] | None:
        """Pay one batch of pending EVM payouts; None when none is left (or the round
        stopped)."""
        if self._stopped():
            return None
        out = self.executor().pay_batch()
        if out is not None:
            self.result.add(out)
        return out

    @gc_paused()
    def custodian_batch(self) -> dict[str, int] | None:
        """Export one step of pending custodian payouts; None when none is left."""
        if self._stopped():
            return None
        with session_scope(self.engine) as s:
            out = custodian.export_pending(s, self.round_id, actor=self.actor,
                                           limit=max(self.batch_size, custodian.EXPORT_STEP))
        if not out["selected"]:
            return None
        self.result.add({"exported": out["exported"], "held": out["held"], "batches": 1})
        return out

    def finish(self) -> RunResult:
        with session_scope(self.engine) as s:
            finish_release(s, self.round_id, actor=self.actor)
            self.result.settled = maybe_settle(s, self.round_id, actor=self.actor)
            self.result.status = rounds.get_round(s, self.round_id).status
        return self.result


def execute_round(engine: Engine, round_id: object, progress: Callable[[int, int], None] | None
                  = None, *, rail: Any = None, batch_size: int = BATCH_SIZE,
                  on_step: Callable[[str, dict], None] | None = None,
                  actor: Actor | None = None) -> dict[str, Any]:
    """Run the round's payouts to the end (see the module docstring); safe to run again at
    any point. ``progress(done, total)`` after every batch; ``rail`` defaults to the
    process's rail from the settings (the in-process chain is funded with the round's pool
    when it cannot pay); ``on_step(name, info)`` is called at each crash-safe step (tests).
    Returns :class:`RunResult` as a dict."""
    rid = round_pk(engine, round_id)
    run = RoundRun(engine, rid, rail=rail, batch_size=batch_size, on_step=on_step, actor=actor)
    if not run.start():
        return run.result.as_dict()
    total = work_left(engine, rid)
    done = 0
    if progress:
        progress(0, total)
    if run.evm_prepare():
        while (out := run.evm_batch()) is not None:
            done += out.get("done", 0)
            if progress:
                progress(done, total)
    while run.result.stopped is None and (out := run.custodian_batch()) is not None:
        done += out["selected"]
        if progress:
            progress(done, total)
    result = run.finish()
    if progress:
        progress(total if result.stopped is None else done, total)
    return result.as_dict()


# ------------------------------------------------------------------ background (serve)

_RUNNING: set[tuple[str, int]] = set()
_RUNNING_LOCK = threading.Lock()


def execute_in_background(round_id: int, engine: Engine | None = None) -> dict | None:
    """``execute_round`` unless this process already runs the round (then None). Errors are
    logged, not raised (a later run resumes)."""
    engine = engine or get_engine()
    key = (str(engine.url), int(round_id))
    with _RUNNING_LOCK:
        if key in _RUNNING:
            return None
        _RUNNING.add(key)
    try:
        return execute_round(engine, round_id)
    except Exception:  # noqa: BLE001 - the background must keep going; a rerun resumes
        log.exception("payout execution of round %s failed; it resumes on the next run",
                      round_id)
        return None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(key)


def due_rounds(engine: Engine) -> list[int]:
    """Released rounds with payouts pending or in flight (``serve``'s background pass runs
    them: this resumes a run that a crash or a restart interrupted)."""
    with session_scope(engine, write=False) as s:
        return list(s.execute(
            select(DistributionRound.id).where(
                DistributionRound.status == R.released.value,
                exists().where(Payout.round_id == DistributionRound.id,
                               Payout.state.in_(ACTIVE)),
            ).order_by(DistributionRound.id)
        ).scalars())
